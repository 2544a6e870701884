"""Issue 20, item 1 from the command line: a generated class split that cannot be learned from
stops `run`, `train` and `experiment` before any work and names a split_seed that works; the
split a run uses is printed at its start; a manifest without a split column runs, and its
generated train/test split is written beside the results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from gcrdp.data.splits import find_split_seed
from tests.cli.test_cli import assert_user_error, needs_encoders, run_cli

ICONS = ["devices", "actions", "apps", "places", "status", "mimetypes", "emblems"]  # split_seed 0: 1 seen, 6 unseen
TINY = ("--option", "max_epochs=2", "--option", "latent_dim=16", "--option", "hidden_dim=16")


def icon_features(path: Path, per_class: int = 10) -> Path:
    """Pooled-only features of the 7 icon classes, no split column (a seeded one is generated)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(ICONS)), per_class)
    z = rng.normal(size=(len(ICONS), 4))
    np.savez(
        path,
        image=(z[labels] @ rng.normal(size=(4, 9)) + 0.3 * rng.normal(size=(len(labels), 9))).astype(np.float32),
        text=(z[labels] @ rng.normal(size=(4, 5)) + 0.3 * rng.normal(size=(len(labels), 5))).astype(np.float32),
        labels=labels,
        classes=np.array(ICONS),
    )
    return path


def test_run_and_train_stop_on_a_lopsided_split_before_any_work_and_name_a_seed(tmp_path, capsys):
    feats = icon_features(tmp_path / "icons.npz")
    good = find_split_seed(ICONS, start=1)
    for argv in (
        ("run", "--features", feats, "--methods", "gap-infonce", "--output-dir", tmp_path / "o"),
        ("train", "--features", feats, "--method", "gap-infonce", "--checkpoint-dir", tmp_path / "ck"),
    ):
        code, _, err = run_cli(capsys, *argv, "--cache-dir", tmp_path / "cache")
        assert_user_error(code, err, "seen 1 [devices]", "1 seen class", f"--dataset-option split_seed={good}")
        assert not (tmp_path / "o").exists() and not (tmp_path / "ck").exists()
        assert not (tmp_path / "cache").exists()  # stopped before any work


def test_the_named_seed_runs_and_the_run_prints_its_split(tmp_path, capsys):
    feats = icon_features(tmp_path / "icons.npz")
    good = find_split_seed(ICONS, start=1)
    out = tmp_path / "o"
    code, _, err = run_cli(
        capsys, "run", "--features", feats, "--dataset-option", f"split_seed={good}", "--methods", "gap-infonce", "--shots", "1",
        "--seeds", "0", "1", *TINY, "--output-dir", out,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    rec = res["records"][0]["split"]
    assert f"seen {len(rec['seen_classes'])}: {', '.join(rec['seen_classes'])}" in err
    assert f"unseen {len(rec['unseen_classes'])} (tested on): {', '.join(rec['unseen_classes'])}" in err
    assert "validation classes" in err and "seed 0 (" in err and "seed 1 (" in err
    for r in res["records"]:
        val = set(r["split"]["val_classes"])
        trained_only = set(r["split"]["train_classes"]) - val - set(r["split"]["unseen_classes"])
        assert len(val) >= 2 and trained_only and not val & trained_only
    # the generated train/test split is written beside the results
    test_split = json.loads((out / "test_split.json").read_text())
    assert test_split["n_test"] == 2 * len(ICONS) and len(test_split["test"]) == test_split["n_test"]
    assert res["resolved"]["test_split_file"] == str(out / "test_split.json")
    # -q prints nothing of it
    code, _, err = run_cli(
        capsys, "run", "--features", feats, "--dataset-option", f"split_seed={good}", "--methods", "cca", "--shots", "1",
        "--seeds", "0", "--output-dir", tmp_path / "q", "-q",
    )  # fmt: skip
    assert code == 0 and "unseen" not in err


def test_experiment_stops_too_and_prints_the_split(tmp_path, capsys):
    feats = icon_features(tmp_path / "icons.npz")
    good = find_split_seed(ICONS, start=1)
    cfg = {
        "name": "icons",
        "output_dir": str(tmp_path / "out"),
        "defaults": {"shots": [1], "seeds": [0]},
        "datasets": {"icons": {"dataset": "features", "dataset_options": {"path": str(feats)}}},
        "methods": ["cca"],
    }
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, "experiment", path)
    assert_user_error(code, err, f"split_seed={good}")
    cfg["datasets"]["icons"]["dataset_options"]["split_seed"] = good
    path.write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, "experiment", path)
    assert code == 0, err
    assert "validation classes" in err and "(tested on)" in err


def test_too_few_classes_for_the_protocol_say_so_and_standard_runs(tmp_path, capsys):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 8)
    feats = tmp_path / "four.npz"
    np.savez(feats, image=rng.normal(size=(32, 6)).astype(np.float32), text=rng.normal(size=(32, 5)).astype(np.float32), labels=labels)
    code, _, err = run_cli(capsys, "run", "--features", feats, "--methods", "cca", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "has 4 classes, too few for the fewshot protocol", "--protocol standard")
    code, _, err = run_cli(
        capsys, "run", "--features", feats, "--methods", "cca", "--protocol", "standard", "--seeds", "0", "--output-dir", tmp_path / "s"
    )
    assert code == 0, err
    assert "every class seen" in err


@pytest.mark.slow  # about 20 s on 2 loaded cores
@needs_encoders
def test_the_users_icon_manifest_without_a_split_column(tmp_path, capsys):
    """The scenario of the issue: 7 categories, a CSV of image, text and label, no split column."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    with open(tmp_path / "icons.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "label"])
        for k, c in enumerate(ICONS):
            for i in range(5):
                Image.new("RGB", (32, 32), (35 * k, 40 * i, 120)).save(tmp_path / "img" / f"{c}{i}.png")
                w.writerow([f"img/{c}{i}.png", f"a {c} icon, number {i}", c])
    common = ("--methods", "cca", "--shots", "1", "--seeds", "0", "--cache-dir", tmp_path / "cache")
    code, _, err = run_cli(capsys, "run", "--manifest", tmp_path / "icons.csv", *common, "--output-dir", tmp_path / "o")
    good = find_split_seed(ICONS, start=1)
    assert_user_error(code, err, f"--dataset-option split_seed={good}")
    assert not (tmp_path / "cache").exists()
    code, out, err = run_cli(
        capsys,
        "run",
        "--manifest",
        tmp_path / "icons.csv",
        "--dataset-option",
        f"split_seed={good}",
        *common,
        "--output-dir",
        tmp_path / "o",
    )
    assert code == 0, err
    assert "icons: 7 classes, 28 train / 7 test pairs (generated" in err
    assert (tmp_path / "o" / "test_split.json").is_file() and (tmp_path / "o" / "class_split.json").is_file()
    assert "| cca" in out
