"""The clip-retrieval embeddings layout: import (dataset ``clip-retrieval``), export, round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import gcrdp.data.formats.clip_retrieval  # noqa: F401  (registers "clip-retrieval")
from gcrdp.data import load_dataset
from gcrdp.data.formats.clip_retrieval import export_clip_retrieval, export_embeddings, part_name
from gcrdp.errors import ConfigError, DataError


def _write_part(root: Path, name: str, img: np.ndarray, txt: np.ndarray, meta: dict) -> None:
    for folder in ("img_emb", "text_emb", "metadata"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    np.save(root / "img_emb" / f"img_emb_{name}.npy", img)
    np.save(root / "text_emb" / f"text_emb_{name}.npy", txt)
    pq.write_table(pa.Table.from_pydict(meta), root / "metadata" / f"metadata_{name}.parquet")


def _clustered(n_classes: int, per_class: int, d_img: int = 16, d_txt: int = 12, seed: int = 0, dtype=np.float16):
    """Unit-norm class-clustered embeddings (image and text spaces linked by a latent code)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    z = rng.normal(size=(n_classes, 4))
    img = z[labels] @ rng.normal(size=(4, d_img)) + 0.3 * rng.normal(size=(len(labels), d_img))
    txt = z[labels] @ rng.normal(size=(4, d_txt)) + 0.3 * rng.normal(size=(len(labels), d_txt))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return img.astype(dtype), txt.astype(dtype), labels


def _write_folder(root: Path, n_classes=8, per_class=12, part_size=25, with_split=False, seed=0):
    img, txt, labels = _clustered(n_classes, per_class, seed=seed)
    n = len(labels)
    order = np.random.default_rng(seed + 1).permutation(n)  # classes interleaved over parts
    img, txt, labels = img[order], txt[order], labels[order]
    for p, lo in enumerate(range(0, n, part_size)):
        hi = min(n, lo + part_size)
        meta = {
            "image_path": [f"/elsewhere/{i}.jpg" for i in range(lo, hi)],
            "caption": [f"a picture of class {labels[i]}" for i in range(lo, hi)],
            "label": [f"c{labels[i]}" for i in range(lo, hi)],
        }
        if with_split:
            meta["split"] = ["test" if i % 4 == 0 else "train" for i in range(lo, hi)]
        _write_part(root, str(p), img[lo:hi], txt[lo:hi], meta)
    return img, txt, labels


def test_parts_in_numeric_order(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for p in range(11):  # unpadded names: img_emb_10 sorts before img_emb_2 by name
        img = rng.normal(size=(2, 6)).astype(np.float32)
        txt = rng.normal(size=(2, 5)).astype(np.float32)
        ids = [f"p{p}r{r}" for r in range(2)]
        _write_part(tmp_path, str(p), img, txt, {"id": ids, "label": ["a", "b"], "split": ["train", "test"]})
        rows.append((ids, img, txt))
    (tmp_path / "img_emb" / ".img_emb_99.npy").write_bytes(b"hidden, ignored")
    (tmp_path / "metadata" / "notes.txt").write_text("ignored", encoding="utf-8")
    ds = load_dataset("clip-retrieval", root=str(tmp_path))
    assert [s.id for s in ds.samples] == [i for ids, _, _ in rows for i in ids]
    np.testing.assert_array_equal(ds.features.image.pooled, np.concatenate([r[1] for r in rows]))
    np.testing.assert_array_equal(ds.features.text.pooled, np.concatenate([r[2] for r in rows]))
    assert ds.features.image.local.shape == (22, 1, 6)  # pooled-only: a set of one feature
    assert ds.features.image.pooled.dtype == np.float32
    assert ds.meta["parts"] == list(range(11))
    assert [s.split for s in ds.samples[:2]] == ["train", "test"]
    assert ds.meta["split_source"] == "column 'split'"
    assert all(s.text is None and s.image is None for s in ds.samples)


def test_unaligned_part_and_dimensions(tmp_path):
    a = np.zeros((3, 4), np.float32)
    _write_part(tmp_path, "0", a, a, {"label": ["x"] * 3})
    _write_part(tmp_path, "1", a, a[:2], {"label": ["x"] * 3})
    with pytest.raises(
        DataError,
        match=r"part 1 is not aligned: img_emb_1.npy has 3 rows, "
        r"text_emb_1.npy 2 rows, metadata_1.parquet 3 rows",
    ):
        load_dataset("clip-retrieval", root=str(tmp_path))
    _write_part(tmp_path, "1", np.zeros((3, 5), np.float32), a, {"label": ["x"] * 3})
    with pytest.raises(DataError, match="image dimension 5 but img_emb_0.npy has 4"):
        load_dataset("clip-retrieval", root=str(tmp_path))
    (tmp_path / "img_emb" / "img_emb_1.npy").unlink()
    with pytest.raises(DataError, match=r"img_emb/ lacks part\(s\) 1"):
        load_dataset("clip-retrieval", root=str(tmp_path))
    np.save(tmp_path / "img_emb" / "img_emb_00.npy", a)
    with pytest.raises(DataError, match="both part 0"):
        load_dataset("clip-retrieval", root=str(tmp_path))


def test_missing_folders(tmp_path):
    a = np.zeros((3, 4), np.float32)
    _write_part(tmp_path, "0", a, a, {"label": ["x"] * 3})
    for f in (tmp_path / "text_emb").iterdir():
        f.unlink()
    (tmp_path / "text_emb").rmdir()
    with pytest.raises(DataError, match="no text_emb/ folder.*enable_text"):
        load_dataset("clip-retrieval", root=str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        load_dataset("clip-retrieval", root=str(tmp_path / "nope"))


def test_labels_splits_and_problems(tmp_path):
    a = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    a[5, 1] = np.nan
    _write_part(
        tmp_path,
        "0",
        a,
        a,
        {
            "id": ["s0", "s1", "s2", "s3", "s4", "s5"],
            "label": ["cat", "cat|dog", " ", None, "dog", "cat"],
            "split": ["train", "TEST", "train", "train", "val", "test"],
        },
    )
    _write_part(
        tmp_path,
        "1",
        a[:3],
        a[:3],
        {  # another part may type the column as lists
            "id": ["t0", "t1", "t2"],
            "label": [["owl", "cat"], [], ["dog"]],
            "split": ["test", "train", "train"],
        },
    )
    with pytest.raises(DataError) as e:
        load_dataset("clip-retrieval", root=str(tmp_path))
    msg = str(e.value)
    assert "5 problem(s)" in msg
    for where, why in (
        ("metadata_0.parquet row 2", "no label in column 'label'"),
        ("metadata_0.parquet row 3", "no label"),
        ("metadata_0.parquet row 4", "'val' in column 'split' is not 'train' or 'test'"),
        ("metadata_0.parquet row 5", "NaN or infinite values in its image and text"),
        ("metadata_1.parquet row 1", "no label"),
    ):
        assert where in msg and why in msg
    ds = load_dataset("clip-retrieval", root=str(tmp_path), skip_bad=True)
    assert [s.id for s in ds.samples] == ["s0", "s1", "t0", "t2"]
    assert ds.samples[1].labels == ("cat", "dog") and ds.samples[1].split == "test"
    assert ds.samples[2].labels == ("owl", "cat")
    assert ds.is_multilabel and ds.classes == ["cat", "dog", "owl"]
    assert len(ds.features) == 4
    np.testing.assert_array_equal(ds.features.image.pooled[:2], a[:2])
    assert {p["sample"] for p in ds.meta["skipped"]} == {"s2", "s3", "s4", "s5", "t1"}
    # a separator of "" never splits
    ds2 = load_dataset("clip-retrieval", root=str(tmp_path), skip_bad=True, label_sep="")
    assert ds2.samples[1].labels == ("cat|dog",)


def test_duplicate_ids_and_missing_columns(tmp_path):
    a = np.zeros((2, 3), np.float32) + 1
    _write_part(tmp_path, "0", a, a, {"id": ["x", "x"], "category": ["a", "b"], "split": ["train"] * 2})
    with pytest.raises(DataError, match=r"no column 'label'; the columns are 'id', 'category', 'split'"):
        load_dataset("clip-retrieval", root=str(tmp_path))
    with pytest.raises(DataError, match="no column 'fold'"):
        load_dataset("clip-retrieval", root=str(tmp_path), label_column="category", split_column="fold")
    with pytest.raises(DataError, match="id 'x' also at metadata_0.parquet row 0"):
        load_dataset("clip-retrieval", root=str(tmp_path), label_column="category", skip_bad=True)
    ds = load_dataset("clip-retrieval", root=str(tmp_path), label_column="category", id_column="category")
    assert [s.id for s in ds.samples] == ["a", "b"]


def test_generated_split_texts_images_and_dtype(tmp_path):
    img, txt, labels = _write_folder(tmp_path, n_classes=3, per_class=10, part_size=7)
    meta_path = tmp_path / "metadata" / "metadata_0.parquet"
    t = pq.read_table(meta_path).to_pydict()
    Image.new("RGB", (2, 2)).save(tmp_path / "here.png")
    t["image_path"][0] = "here.png"  # relative to root, exists
    pq.write_table(pa.Table.from_pydict(t), meta_path)
    ds = load_dataset("clip-retrieval", root=str(tmp_path))
    assert [s.id for s in ds.samples] == [str(i) for i in range(30)]  # ids: row numbers
    assert ds.samples[0].image == tmp_path / "here.png"
    assert all(s.image is None for s in ds.samples[1:])
    assert ds.meta["images_found"] == 1
    assert ds.samples[3].text == f"a picture of class {labels[3]}"
    assert ds.features.image.pooled.dtype == np.float16  # float16 parts stay float16
    np.testing.assert_array_equal(ds.features.image.pooled, img)
    assert ds.meta["split_source"].startswith("generated (seed 0")
    for c in ds.classes:  # floor(0.2 * 10 + 0.5) = 2 test samples per class
        assert sum(s.split == "test" for s in ds.samples if s.labels == (c,)) == 2
    other = load_dataset("clip-retrieval", root=str(tmp_path), split_seed=1)
    assert [s.split for s in other.samples] != [s.split for s in ds.samples]
    none = load_dataset("clip-retrieval", root=str(tmp_path), split_column=None)
    assert [s.split for s in none.samples] == [s.split for s in ds.samples]


# --------------------------------------------------------------------------- export
def _meta(n):
    return {
        "id": [f"s{i}" for i in range(n)],
        "caption": [f"text {i}" for i in range(n)],
        "label": ["a" if i % 2 else "b|c" for i in range(n)],
        "split": ["test" if i % 3 == 0 else "train" for i in range(n)],
    }


def test_export_layout_loads_like_faiss_tooling_expects(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(23, 8)).astype(np.float32)
    txt = rng.normal(size=(23, 6)).astype(np.float16)
    out = export_clip_retrieval(tmp_path / "out", img, txt, _meta(23), part_size=2)
    assert out == tmp_path / "out"
    names = sorted(p.name for p in (out / "img_emb").iterdir())
    assert names[:3] == ["img_emb_00.npy", "img_emb_01.npy", "img_emb_02.npy"]
    assert len(names) == 12 and names[-1] == "img_emb_11.npy"  # name order = row order
    assert part_name("metadata", 3, 1, ".parquet") == "metadata_3.parquet"
    got_i, got_t, n_rows = [], [], 0
    for name in names:
        i = name[len("img_emb_") : -len(".npy")]
        a = np.load(out / "img_emb" / name)
        b = np.load(out / "text_emb" / f"text_emb_{i}.npy")
        table = pq.read_table(out / "metadata" / f"metadata_{i}.parquet")
        for arr, d in ((a, 8), (b, 6)):
            assert arr.flags["C_CONTIGUOUS"] and arr.dtype.kind == "f"
            assert arr.ndim == 2 and arr.shape == (table.num_rows, d)
        got_i.append(a)
        got_t.append(b)
        n_rows += table.num_rows
    assert n_rows == 23
    np.testing.assert_array_equal(np.concatenate(got_i), img)
    np.testing.assert_array_equal(np.concatenate(got_t), txt)
    assert np.concatenate(got_t).dtype == np.float16  # as given
    assert pq.read_table(out / "metadata" / "metadata_00.parquet").column_names == ["id", "caption", "label", "split"]
    ds = load_dataset("clip-retrieval", root=str(out))
    assert [s.id for s in ds.samples] == _meta(23)["id"]
    assert ds.samples[0].labels == ("b", "c") and ds.samples[0].text == "text 0"


def test_export_refuses_to_overwrite_and_checks_inputs(tmp_path):
    a = np.ones((3, 2), np.float32)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep", encoding="utf-8")
    with pytest.raises(ConfigError, match="not empty; refusing to overwrite"):
        export_clip_retrieval(tmp_path / "full", a, a, _meta(3))
    assert (tmp_path / "full" / "x").read_text(encoding="utf-8") == "keep"
    (tmp_path / "empty").mkdir()
    export_clip_retrieval(tmp_path / "empty", a, a, [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    assert pq.read_table(tmp_path / "empty" / "metadata" / "metadata_0.parquet").num_rows == 3
    with pytest.raises(DataError, match="3 rows but text_emb 2"):
        export_clip_retrieval(tmp_path / "o", a, a[:2], _meta(3))
    with pytest.raises(DataError, match="one value per embedding row"):
        export_clip_retrieval(tmp_path / "o", a, a, _meta(4))
    with pytest.raises(ConfigError, match="part_size"):
        export_clip_retrieval(tmp_path / "o", a, a, _meta(3), part_size=0)
    assert not (tmp_path / "o").exists()


def test_export_is_atomic(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(10, 4)).astype(np.float32)
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_clip_retrieval(tmp_path / "out", img, img, _meta(10), part_size=4)
    assert calls["n"] == 2
    assert list(tmp_path.iterdir()) == []  # neither out nor a temporary folder remains


# --------------------------------------------------------------------------- round trip, end to end
def test_export_embeddings_round_trip(tmp_path):
    from gcrdp.methods import FitData, build_method

    _write_folder(tmp_path / "src", n_classes=4, per_class=6, part_size=10, with_split=True)
    ds = load_dataset("clip-retrieval", root=str(tmp_path / "src"))
    method = build_method("gap-infonce", {"max_epochs": 1, "latent_dim": 8, "hidden_dim": 8, "batch_size": 8})
    train = ds.split_indices("train")
    method.fit(
        FitData(
            train=ds.features.subset(train),
            train_labels=ds.label_matrix(train),
            oversample=np.zeros(len(train), bool),
            class_names=tuple(ds.classes),
        ),
        seed=0,
    )
    out = export_embeddings(method, ds, None, tmp_path / "emb", part_size=7)
    back = load_dataset("clip-retrieval", root=str(out))
    assert [s.id for s in back.samples] == [s.id for s in ds.samples]
    assert [s.labels for s in back.samples] == [s.labels for s in ds.samples]
    assert [s.split for s in back.samples] == [s.split for s in ds.samples]
    assert [s.text for s in back.samples] == [s.text for s in ds.samples]
    want_i = method.embed_images(ds.features.image)
    want_t = method.embed_texts(ds.features.text)
    assert back.features.image.pooled.shape == (len(ds), 8)
    np.testing.assert_allclose(back.features.image.pooled, want_i, rtol=0, atol=0)
    np.testing.assert_allclose(back.features.text.pooled, want_t, rtol=0, atol=0)
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet")
    assert meta.column_names == ["id", "caption", "image_path", "label", "split"]
    assert set(meta.column("image_path").to_pylist()) == {""}
    with pytest.raises(DataError, match="sample ids differ"):
        export_embeddings(method, ds, ds.features.subset([0, 1]), tmp_path / "emb2")


def test_run_experiment_end_to_end(tmp_path):
    from gcrdp.experiments import RunConfig, run_experiment

    _write_folder(tmp_path, n_classes=8, per_class=12, part_size=25)
    res = run_experiment(
        RunConfig(
            dataset="clip-retrieval",
            dataset_options={"root": str(tmp_path), "split_seed": 1},  # seed 0 draws 1 of 8 classes unseen: refused
            shots=[1],
            seeds=[0],
            methods=["gap-infonce"],
            method_options={"gap-infonce": {"max_epochs": 2}},
            cache_dir=str(tmp_path / "cache"),
            device="cpu",
        ),
        progress=False,
    )
    records = res["records"]
    assert len(records) == 1 and records[0]["method"] == "gap-infonce" and records[0]["shots"] == 1
    assert 0.0 <= records[0]["test"]["mean_map"] <= 1.0
    assert not (tmp_path / "cache").exists()  # pre-extracted: nothing encoded or cached


def test_split_column_in_some_parts_only(tmp_path):
    a = np.ones((2, 3), np.float32)
    _write_part(tmp_path, "0", a, a, {"label": ["x", "y"], "split": ["train", "test"]})
    _write_part(tmp_path, "1", a, a, {"label": ["x", "y"]})
    with pytest.raises(DataError, match=r"'split' column is in part\(s\) '0' but not in part\(s\) '1'"):
        load_dataset("clip-retrieval", root=str(tmp_path))
