"""A fit on 2 ranks (gloo, CPU) against the same fit in one process (issue 22 item 2).

One spawn of two processes (``file://`` rendezvous) runs every scenario and saves what each rank
ended with; the tests compare with one process on the same global batches. Without dropout the
two fits are the same computation up to float round-off (the rows of a matmul are summed in
another order), so the tolerances are float ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from gcrdp.errors import ConfigError
from gcrdp.methods import FitData, build_method
from gcrdp.training import TrainConfig
from gcrdp.training import distributed as gd
from gcrdp.training.loop import fit_loop, observe_epochs
from tests.helpers import one_hot, synthetic_features

pytestmark = [
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available in this build"
    ),
    pytest.mark.slow,  # every trainable method fitted on 2 ranks (the module's `runs`): about 45 s on 2 loaded cores
]

WORLD = 2
SMALL = {"max_epochs": 5, "batch_size": 15, "hidden_dim": 16, "latent_dim": 8, "dropout": 0.0}
#: method entry -> options; every trainable method, and GCRDP with each part on (GMM, RDP,
#: regulariser, class-aware views, a teacher, the warm start)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "gap-infonce": ("gap-infonce", {}),
    "gap-infonce-cp": ("gap-infonce", {"class_positives": True}),
    "gap-infonce-stop": ("gap-infonce", {"patience": 1, "max_epochs": 12}),  # stops early
    "gcrdp": ("gcrdp", {}),
    "gcrdp-cp-teacher": ("gcrdp", {"class_positives": True, "rdp_teacher": "cross", "pi_weighted": True, "global_weight": 0.5}),
    "gcrdp-warm": ("gcrdp", {"warm_start": True, "warm_epochs": 2}),
    "clip4cmr": ("clip4cmr", {"loss": "both"}),
    "dscmr": ("dscmr", {}),
    "flex-clip": ("flex-clip", {}),
}
STOP_AFTER = 2  # the interrupted fits stop after this epoch


def _options(name: str, extra: dict[str, Any]) -> dict[str, Any]:
    accepted = set(build_method(name).config_dict())
    return {k: v for k, v in {**SMALL, **extra}.items() if k in accepted}


def _data() -> tuple[Any, FitData]:
    feats, labels = synthetic_features(n_per_class=12, n_classes=10, seed=3)
    y = one_hot(labels)
    train, val = np.flatnonzero(labels < 7), np.flatnonzero(labels >= 7)  # 84 train pairs: batches of 15 split 8 + 7
    over = np.zeros(len(train), bool)
    over[:5] = True  # a few oversampled pairs, as in an N-shot run
    fit = FitData(
        train=feats.subset(train),
        train_labels=y[train],
        oversample=over,
        val=feats.subset(val),
        val_labels=y[val],
        class_names=tuple(f"c{i}" for i in range(10)),
        class_name_features=np.random.default_rng(0).normal(size=(10, feats.text.pooled_dim)).astype(np.float32),
    )
    return feats, fit


def _fit(case: str, data: FitData, feats: Any, checkpoint_dir: Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Fit a case; its report and embeddings of every item (or ``{"stopped": epoch}``)."""
    name, extra = CASES[case]
    method = build_method(name, _options(name, extra))

    def stop(info: dict[str, Any]) -> None:
        if stop_after is not None and not info.get("start") and info["epoch"] >= stop_after:
            raise KeyboardInterrupt  # not an Exception: the loop's display guard lets it through

    try:
        with observe_epochs(stop):
            report = method.fit(data, seed=11, checkpoint_dir=checkpoint_dir)
    except KeyboardInterrupt:
        return {"stopped": stop_after}
    return {
        "report": report.to_dict(),
        "image": method.embed_images(feats.image),
        "text": method.embed_texts(feats.text),
    }


def _one_process(case: str, checkpoint_dir: Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
    feats, data = _data()
    torch.set_num_threads(1)
    return _fit(case, data, feats, checkpoint_dir, stop_after)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    env = gd.DistEnv(rank=rank, world_size=WORLD, local_rank=rank, master_addr="127.0.0.1", master_port=0, source="torchrun")
    gd.init_distributed("cpu", env=env, init_method=f"file://{init_file}", timeout_s=120)
    out = Path(out_dir)
    try:
        feats, data = _data()
        res: dict[str, Any] = {"fits": {case: _fit(case, data, feats) for case in CASES}}
        # interrupted on 2 ranks, to be resumed in one process; resumed on 2 ranks from one process's checkpoint
        for case in ("gcrdp", "gap-infonce"):
            res[f"stopped-{case}"] = _fit(case, data, feats, out / f"ckpt-2to1-{case}", stop_after=STOP_AFTER)
            res[f"resumed-{case}"] = _fit(case, data, feats, out / f"ckpt-1to2-{case}")
        # a step loss that does not gather the global batch is refused, on every rank
        model = torch.nn.Linear(2, 2)
        try:
            fit_loop(
                model,
                lambda m, b: (torch.zeros((), requires_grad=True), {}),
                lambda f: (np.zeros((len(f), 2), np.float32), np.zeros((len(f), 2), np.float32)),
                data,
                TrainConfig(),
                seed=0,
            )
            res["refused"] = None
        except ConfigError as exc:
            res["refused"] = str(exc)
        torch.save(res, out / f"rank{rank}.pt")
    finally:
        gd.shutdown_distributed()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("distfit")
    # checkpoints of one-process fits stopped after STOP_AFTER epochs, for the 2 ranks to resume
    for case in ("gcrdp", "gap-infonce"):
        assert _one_process(case, folder / f"ckpt-1to2-{case}", stop_after=STOP_AFTER) == {"stopped": STOP_AFTER}
    torch.multiprocessing.spawn(_worker, args=(str(folder / "rendezvous"), str(folder)), nprocs=WORLD, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    single = {case: _one_process(case) for case in CASES}
    resumed_here = {case: _one_process(case, folder / f"ckpt-2to1-{case}") for case in ("gcrdp", "gap-infonce")}
    return {"ranks": ranks, "single": single, "resumed_here": resumed_here, "folder": folder}


def _same_fit(a: dict[str, Any], b: dict[str, Any], tol: float = 2e-5) -> None:
    ra, rb = a["report"], b["report"]
    assert (ra["epochs"], ra["best_epoch"]) == (rb["epochs"], rb["best_epoch"])
    assert ra["best_val_map"] == pytest.approx(rb["best_val_map"], abs=tol)
    assert len(ra["history"]) == len(rb["history"])
    for ha, hb in zip(ra["history"], rb["history"]):
        assert ha.keys() == hb.keys()
        for k in ha:
            assert ha[k] == pytest.approx(hb[k], abs=tol, rel=tol), (k, ha, hb)
    for which in ("image", "text"):
        assert np.abs(a[which] - b[which]).max() < tol


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_fit_as_one_process(runs: dict[str, Any], case: str) -> None:
    """The same epochs, early stop, history (loss parts and validation mAP) and final embeddings
    as one process on the same global batches."""
    _same_fit(runs["ranks"][0]["fits"][case], runs["single"][case])


def test_early_stopping_decides_once_for_every_rank(runs: dict[str, Any]) -> None:
    """The validation score is rank 0's, sent to all: both ranks stop at the same epoch, before
    the last one, as one process does."""
    reports = [r["fits"]["gap-infonce-stop"]["report"] for r in runs["ranks"]]
    assert reports[0]["epochs"] == reports[1]["epochs"] == runs["single"]["gap-infonce-stop"]["report"]["epochs"] < 12
    assert reports[0]["best_epoch"] == reports[1]["best_epoch"] < reports[0]["epochs"]


@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_ends_with_the_same_model(runs: dict[str, Any], case: str) -> None:
    a, b = (r["fits"][case] for r in runs["ranks"])
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["text"], b["text"])
    assert a["report"]["history"] == b["report"]["history"]


def test_a_fit_stopped_on_two_ranks_resumes_in_one_process(runs: dict[str, Any]) -> None:
    for case in ("gcrdp", "gap-infonce"):
        assert runs["ranks"][0][f"stopped-{case}"] == {"stopped": STOP_AFTER}
        resumed = runs["resumed_here"][case]
        assert resumed["report"]["resumed_from_epoch"] == STOP_AFTER
        _same_fit(resumed, runs["single"][case])


def test_a_fit_stopped_in_one_process_resumes_on_two_ranks(runs: dict[str, Any]) -> None:
    for case in ("gcrdp", "gap-infonce"):
        for r in runs["ranks"]:
            assert r[f"resumed-{case}"]["report"]["resumed_from_epoch"] == STOP_AFTER
            _same_fit(r[f"resumed-{case}"], runs["single"][case])


def test_a_loss_that_does_not_gather_is_refused_on_every_rank(runs: dict[str, Any]) -> None:
    for r in runs["ranks"]:
        assert r["refused"] is not None and "does not train on several ranks" in r["refused"]
