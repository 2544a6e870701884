"""The data commands (``gcrdp datasets``, ``gcrdp inspect``), the data flags of ``run``
(``--features``, ``--root``, ``--skip-bad``, ``--clip``, ``--encoder-option``) and the skipped-
samples report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_cli import assert_user_error, run_cli, write_manifest

FAST = ("--option", "max_epochs=2", "--option", "batch_size=16")


def write_features(path: Path, n_classes: int = 6, per_class: int = 12, seed: int = 0, nan_rows=()) -> Path:
    """Pooled-only features of different image/text dims, class-clustered, with a split."""
    rng = np.random.default_rng(seed)
    n = n_classes * per_class
    labels = np.repeat(np.arange(n_classes), per_class)
    z = rng.normal(size=(n_classes, 4))
    image = z[labels] @ rng.normal(size=(4, 9)) + 0.3 * rng.normal(size=(n, 9))
    text = z[labels] @ rng.normal(size=(4, 5)) + 0.3 * rng.normal(size=(n, 5))
    for r in nan_rows:
        image[r, 0] = np.nan
    split = np.array(["test" if i % 4 == 0 else "train" for i in range(n)])
    np.savez(
        path,
        image=image.astype(np.float32),
        text=text.astype(np.float32),
        labels=labels,
        split=split,
        classes=np.array([f"class-{c}" for c in range(n_classes)]),  # a usable generated split at split_seed 0
    )
    return path


def test_datasets_lists_every_loader_and_shows_one(capsys):
    code, out, err = run_cli(capsys, "datasets")
    assert code == 0, err
    for name in ("twemoji", "manifest", "wikipedia", "pascal-sentence", "dscmr", "features"):
        assert f"  {name} " in out
    code, out, err = run_cli(capsys, "datasets", "wikipedia")
    assert code == 0, err
    assert "trainset_txt_img_cat.list" in out and "root (required)" in out and "skip_bad = False" in out
    code, out, err = run_cli(capsys, "datasets", "no-such-set")
    assert_user_error(code, err, "no-such-set", "wikipedia")


def test_inspect_features_file_prints_the_summary_and_json(tmp_path, capsys):
    path = write_features(tmp_path / "f.npz")
    code, out, err = run_cli(capsys, "inspect", "--features", path, "--json", tmp_path / "s.json")
    assert code == 0, err
    assert "72 samples (test 18, train 54), 6 classes" in out
    assert "image features: local (72, 1, 9)" in out and "text features: local (72, 1, 5)" in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["classes"]["class-0"] == {"train": 9, "test": 3}
    assert summary["features"]["image"]["pooled_only"] is True


def test_run_on_features_with_bad_rows_fails_then_skips_with_a_report(tmp_path, capsys):
    path = write_features(tmp_path / "f.npz", nan_rows=(5, 17))
    out_dir = tmp_path / "o"
    code, out, err = run_cli(capsys, "run", "--features", path, "--shots", "1", "--seeds", "0", *FAST, "--output-dir", out_dir, "-q")
    assert_user_error(code, err, "2 problem(s)", "row 5", "row 17", "NaN", "--skip-bad")
    assert not out_dir.exists()
    code, out, err = run_cli(
        capsys, "run", "--features", path, "--skip-bad", "--shots", "1", "--seeds", "0", *FAST, "--output-dir", out_dir, "-q"
    )
    assert code == 0, err
    report = json.loads((out_dir / "skipped.json").read_text())
    assert [p["sample"] for p in report["skipped"]] == ["row-000005", "row-000017"]
    res = json.loads((out_dir / "results.json").read_text())
    assert res["resolved"]["n_samples"] == 70
    assert res["resolved"]["dataset_meta"]["n_skipped"] == 2
    assert res["resolved"]["feature_dims"] == {"image": [1, 9], "text": [1, 5]}


def test_inspect_skip_bad_writes_the_report_where_asked(tmp_path, capsys):
    path = write_features(tmp_path / "f.npz", nan_rows=(3,))
    code, out, err = run_cli(capsys, "inspect", "--features", path, "--skip-bad", "--report", tmp_path / "r.json")
    assert code == 0, err
    assert "skipped bad samples: 1" in out
    assert json.loads((tmp_path / "r.json").read_text())["skipped"][0]["where"] == "row 3"


def test_data_flag_mistakes(tmp_path, capsys):
    path = write_features(tmp_path / "f.npz")
    code, _, err = run_cli(capsys, "inspect", "--features", path, "--manifest", tmp_path / "m.csv")
    assert_user_error(code, err, "--manifest and --features")
    code, _, err = run_cli(capsys, "inspect", "--features", path, "--dataset", "wikipedia")
    assert_user_error(code, err, "--features", "--dataset wikipedia")
    code, _, err = run_cli(capsys, "inspect", "--features", tmp_path / "nope.npz")
    assert_user_error(code, err, "not found", "nope.npz")
    code, _, err = run_cli(capsys, "inspect", "--dataset", "wikipedia", "--root", tmp_path / "absent")
    assert_user_error(code, err, "Wikipedia folder not found")
    code, _, err = run_cli(capsys, "run", "--features", path, "--encoder-option", "size=3", "-q", "--output-dir", tmp_path / "o")
    assert_user_error(code, err, "image.KEY=VALUE")


def test_run_and_extract_with_a_local_clip_folder(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.clip_fixture import make_clip_dir

    clip = make_clip_dir(tmp_path / "clip")
    manifest = write_manifest(tmp_path / "data")
    code, out, err = run_cli(
        capsys, "extract", "--manifest", manifest, "--clip", clip, "--cache-dir", tmp_path / "c", "--output", tmp_path / "f.npz", "-q"
    )
    assert code == 0, err
    with np.load(tmp_path / "f.npz") as z:
        assert z["image_local"].shape == (40, 16, 32)  # 16 patch tokens of the tiny vision tower
        assert z["image_pooled"].shape == (40, 16) and z["text_pooled"].shape == (40, 16)
        np.testing.assert_allclose(np.linalg.norm(z["image_pooled"].astype(np.float32), axis=1), 1, atol=2e-3)
    code, out, err = run_cli(
        capsys,
        "run",
        "--manifest",
        manifest,
        "--clip",
        clip,
        "--shots",
        "1",
        "--seeds",
        "0",
        *FAST,
        "--cache-dir",
        tmp_path / "c",
        "--output-dir",
        tmp_path / "o",
        "-q",
    )
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["image_encoder"] == "clip" and res["config"]["text_encoder"] == "clip"
    assert res["config"]["image_encoder_options"]["model_dir"] == str(clip.resolve())
    assert res["resolved"]["features"]["cache_hit"] is True
    # The exported features load back as a 'features' dataset and run without any encoder.
    code, out, err = run_cli(
        capsys, "run", "--features", tmp_path / "f.npz", "--shots", "1", "--seeds", "0", *FAST, "--output-dir", tmp_path / "o2", "-q"
    )
    assert code == 0, err


def test_clip_flag_errors(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "data", per_class=3)
    code, _, err = run_cli(capsys, "extract", "--manifest", manifest, "--clip", tmp_path / "no-clip", "--cache-dir", tmp_path / "c", "-q")
    assert_user_error(code, err, "no-clip")
    code, _, err = run_cli(capsys, "extract", "--manifest", manifest, "--clip", tmp_path, "--image-encoder", "efficientnet-lite0", "-q")
    assert_user_error(code, err, "--clip", "--image-encoder efficientnet-lite0")


def test_train_then_export_embeddings_in_the_clip_retrieval_layout(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pyarrow")
    from gcrdp.data import load_dataset

    data = tmp_path / "data"
    data.mkdir()
    write_features(data / "f.npz")
    monkeypatch.chdir(tmp_path)  # a relative --features path must still work from elsewhere later
    code, out, err = run_cli(
        capsys,
        "train",
        "--features",
        "data/f.npz",
        "--method",
        "gcrdp",
        "--shots",
        "1",
        "--option",
        "max_epochs=2",
        "--checkpoint-dir",
        "ckpt",
        "-q",
    )
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "export", "--checkpoint", tmp_path / "ckpt", "--output", tmp_path / "emb", "--part-size", "50", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "emb" / "img_emb").iterdir()) == ["img_emb_0.npy", "img_emb_1.npy"]
    back = load_dataset("clip-retrieval", root=str(tmp_path / "emb"))
    orig = load_dataset("features", path=str(data / "f.npz"))
    assert [s.id for s in back.samples] == [s.id for s in orig.samples]
    assert [s.labels for s in back.samples] == [s.labels for s in orig.samples]
    assert [s.split for s in back.samples] == [s.split for s in orig.samples]
    emb = back.features.image.pooled.astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # unit-norm model embeddings
    # exporting again into the same folder refuses and keeps the first export
    code, out, err = run_cli(capsys, "export", "--checkpoint", tmp_path / "ckpt", "--output", tmp_path / "emb", "-q")
    assert_user_error(code, err, "not empty")
    assert (tmp_path / "emb" / "img_emb" / "img_emb_1.npy").is_file()
