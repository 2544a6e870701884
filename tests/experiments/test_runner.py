"""The runner reads what a method declares (issue 24): a method is built to check its entry and
once per fit (a refit builds its own), never to probe an attribute; a run asks of a method only
what its tags promise (a refit, checkpoints, class-name features)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gcrdp.errors import ConfigError
from gcrdp.experiments import RunConfig, run_experiment
from gcrdp.experiments import runner as runner_mod
from gcrdp.methods import METHODS, FitReport
from gcrdp.methods.base import MethodTags
from tests.cli.test_cli_data import write_features


def _config(tmp_path: Path, methods: list[str], **kw: Any) -> RunConfig:
    feats = write_features(tmp_path / "f.npz", n_classes=10, per_class=16)
    return RunConfig(
        dataset="features",
        dataset_options={"path": str(feats)},
        methods=methods,
        method_options={m: {"max_epochs": 2, "latent_dim": 8, "hidden_dim": 8} for m in methods if m == "gap-infonce"},
        shots=[1],
        seeds=[0, 1],
        val_min_classes=2,
        val_min_pairs=10,
        **kw,
    )


def _count_builds(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> Counter:
    builds: Counter = Counter()
    for name in names:
        factory = METHODS.get(name)

        def counted(options: dict, device: str, name: str = name, factory: Any = factory) -> Any:
            builds[name] += 1
            return factory(options, device)

        monkeypatch.setitem(METHODS._items, name, counted)
    return builds


@pytest.mark.parametrize("refit", [False, True])
def test_a_method_is_built_to_check_its_entry_and_once_per_fit(tmp_path, monkeypatch, refit):
    builds = _count_builds(monkeypatch, ["gap-infonce", "cca"])
    res = run_experiment(_config(tmp_path, ["gap-infonce", "cca"], refit=refit), progress=False)
    assert len(res["records"]) == 4 and all(("refit" in r) == refit for r in res["records"])
    per_fit = 2 if refit else 1  # a refit is a fit of its own
    # the check: the entry (and, when it is given options, the plain method whose keys they are checked against)
    checks = {"gap-infonce": 2, "cca": 1}
    assert builds == {name: checks[name] + 2 * per_fit for name in checks}


class _Plain:
    """A method of the protocol that declares nothing (no ``tags()``): cosine of the pooled features."""

    name = "plain-test"

    def __init__(self) -> None:
        self.fitted = False

    def fit(self, data, *, seed):
        self.fitted = True
        self.dims = (data.train.image.pooled_dim, data.train.text.pooled_dim)
        return FitReport(epochs=0, best_epoch=0, best_val_map=None, seconds=0.001)

    def _embed(self, feats):
        x = np.asarray(feats.pooled, np.float32)[:, :4]
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def embed_images(self, features):
        return self._embed(features)

    def embed_texts(self, features):
        return self._embed(features)

    def config_dict(self):
        return {"method": self.name}


class _Named(_Plain):
    """Declares that it needs the class names' embeddings, and records what it got."""

    name = "named-test"
    got: list = []

    def tags(self) -> MethodTags:
        return MethodTags(needs_class_name_features=True)

    def fit(self, data, *, seed):
        _Named.got.append(data.class_name_features)
        return super().fit(data, seed=seed)


def test_a_run_asks_of_a_method_only_what_its_tags_promise(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS._items, "plain-test", lambda options, device: _Plain())
    monkeypatch.setitem(METHODS._items, "named-test", lambda options, device: _Named())
    plain = _config(tmp_path, ["plain-test"])
    res = run_experiment(plain, progress=False)  # the defaults: fitted and scored by cosine
    assert len(res["records"]) == 2 and res["records"][0]["method_config"] == {"method": "plain-test"}
    with pytest.raises(ConfigError, match=r"refit: method 'plain-test' does not say how to refit.*refit=False"):
        run_experiment(_config(tmp_path, ["plain-test"], refit=True), progress=False)
    with pytest.raises(ConfigError, match=r"'plain-test' cannot be checkpointed: it does not declare checkpointable=True"):
        run_experiment(plain, progress=False, checkpoints=lambda *_: tmp_path / "ckpt")
    # class-name features: embedded once for the run, given to the method whose tags ask for them only
    calls: list = []

    def embed_names(names, config):
        calls.append(list(names))
        return np.ones((len(names), 3), np.float32)

    monkeypatch.setattr(runner_mod, "class_name_features", embed_names)
    _Named.got = []
    run_experiment(_config(tmp_path, ["plain-test", "named-test"]), progress=False)
    assert len(calls) == 1 and len(_Named.got) == 2 and all(g.shape == (10, 3) for g in _Named.got)
    run_experiment(plain, progress=False)
    assert len(calls) == 1  # no method asked: the names are not embedded


def test_workers_take_the_fits_with_most_shots_first():
    """--jobs: the longer fits (more shots, more training pairs) start first, in their given
    order otherwise, so that no long fit runs alone at the end; every task is taken once."""
    from gcrdp.experiments.runner import submission_order

    tasks = [(m, s, seed) for s in (0, 1, 3, 5) for seed in (0, 1) for m in ("gap-infonce", "gcrdp")]
    order = submission_order(tasks)
    assert sorted(order) == sorted(tasks)
    assert [t[1] for t in order] == sorted((t[1] for t in tasks), reverse=True)
    assert order[:4] == [("gap-infonce", 5, 0), ("gcrdp", 5, 0), ("gap-infonce", 5, 1), ("gcrdp", 5, 1)]
