"""An unbiased validation figure beside ``best_val_map`` (issue 23 item 3): a seeded, stratified
share of the validation pairs is held out of the choice of epoch, and the chosen model's mAP on
it is recorded as ``fit.report_val_map``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gcrdp.data.registry import load_dataset
from gcrdp.errors import ConfigError
from gcrdp.evaluation import cross_modal_metrics
from gcrdp.experiments import RunConfig, run_experiment
from gcrdp.experiments.runner import fit_key, plan_splits, report_holdout
from gcrdp.methods.persistence import load_method
from tests.cli.test_cli_data import write_features


def test_report_holdout_is_stratified_disjoint_and_seeded() -> None:
    labels = np.zeros((40, 4), bool)
    cls = np.array([0] * 10 + [1] * 9 + [2] * 2 + [3] * 1 + [0] * 18)
    labels[np.arange(40), cls] = True
    val = np.arange(22)  # class 0: 10 pairs, 1: 9, 2: 2, 3: 1
    sel, rep = report_holdout(val, labels, 0.5, seed=3)
    assert np.array_equal(np.union1d(sel, rep), val) and not np.intersect1d(sel, rep).size
    assert list(np.bincount(cls[rep], minlength=4)) == [5, 4, 1, 0]  # round(f × n), at least 1, never all; 1 pair: selects
    again, other = report_holdout(val, labels, 0.5, seed=3), report_holdout(val, labels, 0.5, seed=4)
    assert np.array_equal(again[1], rep) and not np.array_equal(other[1], rep)
    with pytest.raises(ConfigError, match="val_report_fraction"):
        RunConfig(val_report_fraction=1.0)


def test_the_report_figure_is_the_chosen_model_on_the_held_out_pairs(tmp_path: Path) -> None:
    feats = write_features(tmp_path / "f.npz", n_classes=10, per_class=16)
    config = RunConfig(
        dataset="features",
        dataset_options={"path": str(feats)},
        methods=["gap-infonce"],
        method_options={"gap-infonce": {"max_epochs": 6, "latent_dim": 8, "hidden_dim": 8}},
        shots=[1],
        seeds=[0],
        val_report_fraction=0.5,
        val_min_classes=2,
        val_min_pairs=10,
    )
    folder = tmp_path / "fit"
    res = run_experiment(config, tmp_path / "out", progress=False, checkpoints=lambda *_: folder)
    fit = res["records"][0]["fit"]
    ds = load_dataset("features", path=str(feats))
    split = plan_splits(ds, config, [1], [0])[(1, 0)]
    labels = ds.label_matrix()
    sel, rep = report_holdout(split.val, labels, 0.5, 0)
    assert (fit["n_val_select"], fit["n_val_report"]) == (len(sel), len(rep)) and len(rep) >= 2
    method = load_method(folder / "final")
    f = ds.features
    assert f is not None
    img, txt = method.embed_images(f.image.subset(rep)), method.embed_texts(f.text.subset(rep))
    want = cross_modal_metrics(img, txt, labels[rep], img, txt, labels[rep])["mean_map"]
    assert fit["report_val_map"] == pytest.approx(float(want), abs=1e-9)
    # best_val_map is the selection pairs' score at the best epoch, as before
    assert fit["best_val_map"] == pytest.approx(max(h["val_map"] for h in fit["history"]), abs=1e-6)


def test_a_run_without_the_holdout_keeps_its_fit_key() -> None:
    """Resumable run folders written before the option existed still match their fits."""
    base = RunConfig(methods=["gcrdp"])
    with_default = fit_key(base, "gcrdp", 1, 0, "k")
    assert with_default == fit_key(RunConfig(methods=["gcrdp"], val_report_fraction=0.0), "gcrdp", 1, 0, "k")
    assert with_default != fit_key(RunConfig(methods=["gcrdp"], val_report_fraction=0.5), "gcrdp", 1, 0, "k")
