"""Dataset ``features`` (user feature files): every format, the label and split conventions,
every error message, and a fit of every registered method on pooled-only features."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from gcrdp.data import load_dataset
from gcrdp.data.formats.featurefiles import load_feature_files
from gcrdp.errors import ConfigError, DataError

CLASSES = ["apple", "boat", "cat", "dog", "eel", "fox", "goat", "hen"]


def _data(n_per_class=6, n_classes=4, d_img=7, d_txt=5, L=None, seed=0):
    """Class-clustered (n, d) — or (n, L, d) image — features, class ids, ids, splits."""
    rng = np.random.default_rng(seed)
    n = n_per_class * n_classes
    y = np.repeat(np.arange(n_classes), n_per_class)
    ci, ct = rng.normal(size=(n_classes, d_img)), rng.normal(size=(n_classes, d_txt))
    if L is None:
        img = ci[y] + 0.3 * rng.normal(size=(n, d_img))
    else:
        img = ci[y][:, None, :] + 0.3 * rng.normal(size=(n, L, d_img))
    txt = ct[y] + 0.3 * rng.normal(size=(n, d_txt))
    ids = np.array([f"s{i:03d}" for i in range(n)])
    split = np.array(["test" if i % n_per_class == 0 else "train" for i in range(n)])
    return {
        "image": img.astype(np.float32),
        "text": txt.astype(np.float32),
        "labels": y,
        "ids": ids,
        "split": split,
        "classes": np.array(CLASSES[:n_classes]),
    }


def _counts(ds, split):
    return {c: sum(1 for s in ds.samples if s.split == split and s.labels[0] == c) for c in ds.classes}


# ----------------------------------------------------------------------------- formats
def test_npz_pooled_only_with_class_ids_names_ids_split(tmp_path):
    d = _data()
    np.savez(tmp_path / "f.npz", **d)
    ds = load_dataset("features", path=str(tmp_path / "f.npz"))
    assert ds.name == "f" and ds.classes == CLASSES[:4] and len(ds) == 24
    assert [s.id for s in ds.samples] == d["ids"].tolist()
    assert _counts(ds, "test") == {c: 1 for c in CLASSES[:4]}
    assert _counts(ds, "train") == {c: 5 for c in CLASSES[:4]}
    assert [s.labels[0] for s in ds.samples] == [CLASSES[i] for i in d["labels"]]
    f = ds.features
    assert f.image.local.shape == (24, 1, 7) and f.text.local.shape == (24, 1, 5)
    assert f.image.mask.all() and f.text.mask.all()
    np.testing.assert_allclose(f.image.pooled, d["image"])
    np.testing.assert_allclose(f.text.pooled, d["text"])
    assert ds.meta["split"] == "from 'split'" and ds.meta["n_skipped"] == 0
    assert f.sample_ids == tuple(s.id for s in ds.samples)


def test_npz_local_sets_with_mask(tmp_path):
    d = _data(L=3)
    mask = np.ones((24, 3), bool)
    mask[::2, 2] = False
    np.savez(tmp_path / "f.npz", image_local=d["image"], image_mask=mask, text=d["text"], labels=d["labels"], split=d["split"])
    ds = load_dataset("features", path=tmp_path / "f.npz")
    f = ds.features
    assert f.image.local.shape == (24, 3, 7) and f.image.mask.tolist() == mask.tolist()
    assert np.all(f.image.local[::2, 2] == 0)  # padding zeroed
    want = (d["image"] * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(f.image.pooled, want, rtol=1e-5, atol=1e-6)
    assert f.text.local.shape == (24, 1, 5)
    assert ds.classes == ["0", "1", "2", "3"]  # no class names: the ids as strings
    # a mask for (n, d) features is an error
    np.savez(tmp_path / "g.npz", image=d["image"][:, 0], image_mask=mask, text=d["text"], labels=d["labels"])
    with pytest.raises(DataError, match="image_mask is given but image is not"):
        load_dataset("features", path=tmp_path / "g.npz")


def test_extract_export_round_trip(tmp_path):
    from gcrdp.data.formats.featurefiles import save_features_npz

    d = _data(L=4)
    mask = np.ones((24, 4), bool)
    mask[1::3, 3:] = False
    np.savez(
        tmp_path / "src.npz",
        image_local=d["image"],
        image_mask=mask,
        image_pooled=d["image"].max(1),
        text=d["text"],
        labels=d["labels"],
        classes=d["classes"],
        ids=d["ids"],
        split=d["split"],
    )
    ds = load_dataset("features", path=tmp_path / "src.npz")
    out = tmp_path / "export.npz"
    save_features_npz(ds.features, ds, out)
    with np.load(out) as z:
        assert set(z.files) == {
            "image_local",
            "image_mask",
            "image_pooled",
            "text_local",
            "text_mask",
            "text_pooled",
            "labels",
            "classes",
            "ids",
            "split",
        }
        assert z["labels"].dtype == bool and z["labels"].shape == (24, 4)
    back = load_dataset("features", path=out)
    assert back.classes == ds.classes and [s.id for s in back.samples] == [s.id for s in ds.samples]
    assert [s.split for s in back.samples] == [s.split for s in ds.samples]
    assert [s.labels for s in back.samples] == [s.labels for s in ds.samples]
    assert not back.meta["multilabel"]
    for a, b in ((ds.features.image, back.features.image), (ds.features.text, back.features.text)):
        np.testing.assert_array_equal(a.local, b.local)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.pooled, b.pooled)
    np.testing.assert_array_equal(back.features.image.pooled, d["image"].max(1))
    assert back.features.content_digest() == ds.features.content_digest()
    np.testing.assert_array_equal(back.label_matrix(), ds.label_matrix())


def test_safetensors_metadata_and_is_test(tmp_path):
    from safetensors.numpy import save_file

    d = _data()
    is_test = (d["split"] == "test").astype(np.uint8)
    save_file(
        {"image": d["image"], "text": d["text"], "labels": d["labels"].astype(np.int64), "is_test": is_test},
        str(tmp_path / "f.safetensors"),
        metadata={"classes": json.dumps(CLASSES[:4]), "ids": json.dumps(d["ids"].tolist())},
    )
    ds = load_dataset("features", path=tmp_path / "f.safetensors")
    assert ds.classes == CLASSES[:4] and [s.id for s in ds.samples] == d["ids"].tolist()
    assert [s.split for s in ds.samples] == d["split"].tolist()
    assert ds.meta["split"] == "from 'is_test'"
    np.testing.assert_allclose(ds.features.image.pooled, d["image"])
    # metadata that is not a JSON list
    save_file(
        {"image": d["image"], "text": d["text"], "labels": d["labels"].astype(np.int64)},
        str(tmp_path / "g.safetensors"),
        metadata={"classes": "apple,boat"},
    )
    with pytest.raises(DataError, match="metadata 'classes' must be a JSON list"):
        load_dataset("features", path=tmp_path / "g.safetensors")


def test_npy_folder_with_sidecars(tmp_path):
    d = _data()
    folder = tmp_path / "feats"
    folder.mkdir()
    np.save(folder / "image.npy", d["image"])
    np.save(folder / "text.npy", d["text"])
    np.save(folder / "labels.npy", d["labels"])
    np.save(folder / "split.npy", d["split"])
    (folder / "classes.txt").write_text("\n".join(CLASSES[:4]) + "\n", encoding="utf-8")
    (folder / "ids.txt").write_text("\n".join(d["ids"]) + "\n", encoding="utf-8")
    ds = load_dataset("features", path=folder)
    assert ds.name == "feats" and ds.classes == CLASSES[:4]
    assert [s.id for s in ds.samples] == d["ids"].tolist()
    assert [s.split for s in ds.samples] == d["split"].tolist()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="has no .npy files"):
        load_dataset("features", path=empty)


def test_mat_v5(tmp_path):
    import scipy.io

    d = _data()
    # savemat stores 1-D arrays as (1, n) rows and string lists as space-padded char matrices
    scipy.io.savemat(
        tmp_path / "f.mat",
        {
            "image": d["image"].astype(np.float64),
            "text": d["text"],
            "labels": d["labels"],
            "classes": np.array(["apple", "boat", "cat", "doggy"]),
            "ids": d["ids"],
            "split": d["split"],
        },
    )
    ds = load_dataset("features", path=tmp_path / "f.mat")
    assert ds.classes == ["apple", "boat", "cat", "doggy"]
    assert [s.id for s in ds.samples] == d["ids"].tolist()
    assert [s.split for s in ds.samples] == d["split"].tolist()
    assert _counts(ds, "train") == {c: 5 for c in ds.classes}
    np.testing.assert_allclose(ds.features.image.pooled, d["image"], rtol=1e-6)
    # string labels with class names from a MATLAB cell array
    names = np.array(["apple", "boat", "cat", "doggy"], dtype=object)
    scipy.io.savemat(
        tmp_path / "g.mat",
        {"image": d["image"], "text": d["text"], "classes": names, "labels": np.array([str(names[i]) for i in d["labels"]], dtype=object)},
    )
    ds2 = load_dataset("features", path=tmp_path / "g.mat")
    assert ds2.classes == ["apple", "boat", "cat", "doggy"]
    assert [s.labels[0] for s in ds2.samples] == [str(names[i]) for i in d["labels"]]


def test_mat_v73_hdf5_transposed(tmp_path):
    h5py = pytest.importorskip("h5py")
    from gcrdp.data.formats.arrays import _is_hdf5

    d = _data()
    p = tmp_path / "f.mat"
    with h5py.File(p, "w", userblock_size=512) as f:  # MATLAB v7.3: 512-byte header, then HDF5
        f["image"] = d["image"].T  # column-major: h5py sees the dims reversed
        f["text"] = d["text"].T
        f["labels"] = d["labels"][None, :].astype(np.float64)  # MATLAB (n, 1) double
        f["is_test"] = (d["split"] == "test")[None, :].astype(np.uint8)
    with open(p, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .".ljust(128))
    assert _is_hdf5(p)
    ds = load_dataset("features", path=p)
    np.testing.assert_allclose(ds.features.image.pooled, d["image"])
    np.testing.assert_allclose(ds.features.text.pooled, d["text"])
    assert [s.split for s in ds.samples] == d["split"].tolist()
    assert ds.classes == ["0", "1", "2", "3"]


def test_h5_with_string_datasets(tmp_path):
    h5py = pytest.importorskip("h5py")
    d = _data()
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["image"] = d["image"]
        f["text"] = d["text"]
        f["labels"] = d["labels"]
        f.create_dataset("classes", data=CLASSES[:4], dtype=h5py.string_dtype())
        f["ids"] = d["ids"].astype("S")
        f.create_dataset("split", data=d["split"].tolist(), dtype=h5py.string_dtype())
    ds = load_dataset("features", path=tmp_path / "f.h5")
    assert ds.classes == CLASSES[:4]
    assert [s.id for s in ds.samples] == d["ids"].tolist()
    assert [s.split for s in ds.samples] == d["split"].tolist()


def test_class_names_as_labels_and_multi_hot(tmp_path):
    d = _data()
    names = np.array([CLASSES[i] for i in d["labels"]])
    np.savez(tmp_path / "names.npz", image=d["image"], text=d["text"], labels=names, split=d["split"])
    ds = load_dataset("features", path=tmp_path / "names.npz")
    assert ds.classes == sorted(CLASSES[:4]) and [s.labels[0] for s in ds.samples] == names.tolist()

    multi = np.zeros((24, 4), bool)
    multi[np.arange(24), d["labels"]] = True
    multi[::3, 3] = True  # a second label on some rows
    np.savez(
        tmp_path / "multi.npz", image=d["image"], text=d["text"], labels=multi.astype(np.uint8), classes=d["classes"], split=d["split"]
    )
    ds = load_dataset("features", path=tmp_path / "multi.npz")
    assert ds.meta["multilabel"] and ds.is_multilabel
    np.testing.assert_array_equal(ds.label_matrix(), multi)
    assert ds.samples[3].labels == ("apple", "dog")
    multi[5] = False  # a row without a label is a problem
    np.savez(tmp_path / "nolabel.npz", image=d["image"], text=d["text"], labels=multi, split=d["split"])
    with pytest.raises(DataError, match=r"row 5 \(sample 'row-000005'\): no label"):
        load_dataset("features", path=tmp_path / "nolabel.npz")
    # a class id without a name
    y = d["labels"].copy()
    y[2] = 9
    np.savez(tmp_path / "badid.npz", image=d["image"], text=d["text"], labels=y, classes=d["classes"])
    with pytest.raises(DataError, match="class id 9 has no name"):
        load_dataset("features", path=tmp_path / "badid.npz")
    ds = load_dataset("features", path=tmp_path / "badid.npz", skip_bad=True)
    assert len(ds) == 23 and "row-000002" not in {s.id for s in ds.samples}


def test_seeded_split_without_split_array(tmp_path):
    d = _data(n_per_class=10)
    d["labels"][-1] = 3
    lab = d["labels"].copy()
    lab[-2:] = 4  # a class of two samples
    lab[-3] = 5  # and one of one sample
    names = np.array(CLASSES[:6])
    np.savez(tmp_path / "f.npz", image=d["image"], text=d["text"], labels=lab, ids=d["ids"], classes=names)
    a = load_dataset("features", path=tmp_path / "f.npz")
    b = load_dataset("features", path=tmp_path / "f.npz")
    assert [s.split for s in a.samples] == [s.split for s in b.samples]
    assert a.meta["split"].startswith("seeded per-class split")
    tests = _counts(a, "test")
    sizes = {c: sum(1 for s in a.samples if s.labels[0] == c) for c in a.classes}
    for c, n in sizes.items():
        if n >= 2:
            assert tests[c] in range(1, n)
        else:
            assert tests[c] == 0
    assert tests["apple"] == 2  # round(0.2 * 10)
    # the split depends on ids and labels only, not on the row order
    perm = np.random.default_rng(1).permutation(len(lab))
    np.savez(tmp_path / "g.npz", image=d["image"][perm], text=d["text"][perm], labels=lab[perm], ids=d["ids"][perm], classes=names)
    c = load_dataset("features", path=tmp_path / "g.npz")
    assert {s.id: s.split for s in c.samples} == {s.id: s.split for s in a.samples}
    other = load_dataset("features", path=tmp_path / "f.npz", split_seed=3)
    assert [s.split for s in other.samples] != [s.split for s in a.samples]
    assert _counts(other, "test") == tests


# ----------------------------------------------------------------------------- errors
def test_lengths_disagree_names_each_array(tmp_path):
    d = _data()
    np.savez(tmp_path / "f.npz", image=d["image"], text=d["text"][:-1], labels=d["labels"], split=d["split"][:-2])
    with pytest.raises(DataError) as exc:
        load_dataset("features", path=tmp_path / "f.npz")
    msg = str(exc.value)
    assert "disagree in length" in msg
    for part in ("image 24", "text 23", "labels 24", "split 22"):
        assert part in msg


def test_missing_labels_lists_keys(tmp_path):
    d = _data()
    np.savez(tmp_path / "f.npz", image=d["image"], text=d["text"], target=d["labels"])
    with pytest.raises(DataError) as exc:
        load_dataset("features", path=tmp_path / "f.npz")
    msg = str(exc.value)
    assert "no labels array" in msg and "'labels'" in msg
    for key in ("image (24, 7)", "target (24,)", "text (24, 5)"):
        assert key in msg
    np.savez(tmp_path / "g.npz", img_feats=d["image"], text=d["text"], labels=d["labels"])
    with pytest.raises(DataError, match="no image feature array.*img_feats"):
        load_dataset("features", path=tmp_path / "g.npz")


def test_split_and_is_test_both(tmp_path):
    d = _data()
    np.savez(
        tmp_path / "f.npz",
        image=d["image"],
        text=d["text"],
        labels=d["labels"],
        split=d["split"],
        is_test=(d["split"] == "test").astype(np.uint8),
    )
    with pytest.raises(DataError, match="has both 'split' and 'is_test'"):
        load_dataset("features", path=tmp_path / "f.npz")
    np.savez(tmp_path / "g.npz", image=d["image"], text=d["text"], labels=d["labels"], is_test=np.full(24, 2))
    with pytest.raises(DataError, match="is_test must be 0/1"):
        load_dataset("features", path=tmp_path / "g.npz")


def test_unknown_split_strings(tmp_path):
    d = _data()
    split = d["split"].copy()
    split[[4, 9]] = ["valid", "TEST?"]
    np.savez(tmp_path / "f.npz", image=d["image"], text=d["text"], labels=d["labels"], split=split, ids=d["ids"])
    with pytest.raises(DataError) as exc:
        load_dataset("features", path=tmp_path / "f.npz")
    assert "2 problem(s)" in str(exc.value)
    assert "row 4 (sample 's004'): split 'valid' is not 'train' or 'test'" in str(exc.value)
    ds = load_dataset("features", path=tmp_path / "f.npz", skip_bad=True)
    assert len(ds) == 22 and {"s004", "s009"}.isdisjoint(s.id for s in ds.samples)
    assert ds.meta["n_skipped"] == 2 and [p["sample"] for p in ds.meta["skipped"]] == ["s004", "s009"]


def test_nan_rows_problem_and_consistent_skip(tmp_path):
    d = _data(L=2)
    d["image"][3, 1, 0] = np.nan
    d["text"][7, 2] = np.inf
    np.savez(tmp_path / "f.npz", image=d["image"], text=d["text"], labels=d["labels"], ids=d["ids"], split=d["split"], classes=d["classes"])
    with pytest.raises(DataError) as exc:
        load_dataset("features", path=tmp_path / "f.npz")
    msg = str(exc.value)
    assert "row 3 (sample 's003'): NaN or infinite image features" in msg
    assert "row 7 (sample 's007'): NaN or infinite text features" in msg
    ds = load_dataset("features", path=tmp_path / "f.npz", skip_bad=True)
    keep = [i for i in range(24) if i not in (3, 7)]
    assert [s.id for s in ds.samples] == d["ids"][keep].tolist()
    assert ds.features.sample_ids == tuple(d["ids"][keep])
    np.testing.assert_array_equal(ds.features.image.local, d["image"][keep])
    np.testing.assert_array_equal(ds.features.text.pooled, d["text"][keep])
    assert [s.labels[0] for s in ds.samples] == [CLASSES[i] for i in d["labels"][keep]]
    assert [s.split for s in ds.samples] == d["split"][keep].tolist()
    assert np.isfinite(ds.features.image.local).all() and np.isfinite(ds.features.text.local).all()
    assert {p["sample"] for p in ds.meta["skipped"]} == {"s003", "s007"}


def test_pickled_objects_refused(tmp_path):
    d = _data()
    np.savez(tmp_path / "f.npz", image=d["image"], text=d["text"], labels=np.array([{"c": int(i)} for i in d["labels"]], dtype=object))
    with pytest.raises(DataError, match="pickled Python objects"):
        load_dataset("features", path=tmp_path / "f.npz")
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "image.npy", d["image"])
    np.save(folder / "text.npy", d["text"])
    np.save(folder / "labels.npy", np.array([[1], "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled Python objects"):
        load_dataset("features", path=folder)


def test_unknown_extension_and_missing_path(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("image,text\n")
    with pytest.raises(DataError, match=r"unknown extension '.csv'; known: .mat"):
        load_dataset("features", path=p)
    with pytest.raises(DataError, match="not found"):
        load_dataset("features", path=tmp_path / "absent.npz")
    # a damaged file is reported as such (np.load alone would take it for a pickle)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="Cannot read .*bad.npz as a .npz archive: it is not a zip"):
        load_dataset("features", path=tmp_path / "bad.npz")
    folder = tmp_path / "npy"
    folder.mkdir()
    (folder / "image.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="Cannot read .*image.npy as a .npy array"):
        load_dataset("features", path=folder)


def test_duplicate_ids_and_classes(tmp_path):
    d = _data()
    ids = d["ids"].copy()
    ids[5] = ids[4]
    np.savez(tmp_path / "f.npz", image=d["image"], text=d["text"], labels=d["labels"], ids=ids)
    with pytest.raises(DataError, match="duplicate sample ids 's004'"):
        load_dataset("features", path=tmp_path / "f.npz")
    np.savez(tmp_path / "g.npz", image=d["image"], text=d["text"], labels=d["labels"], classes=np.array(["a", "b", "a", "c"]))
    with pytest.raises(DataError, match="list a name twice"):
        load_dataset("features", path=tmp_path / "g.npz")


# ----------------------------------------------------------------------------- every method
@pytest.fixture(scope="module")
def pooled_file(tmp_path_factory):
    d = _data(n_per_class=14, n_classes=8, d_img=12, d_txt=6, seed=3)
    p = tmp_path_factory.mktemp("pooled") / "pooled.npz"
    np.savez(
        p,
        image=d["image"],
        text=d["text"],
        labels=d["labels"],
        classes=d["classes"],
        split=np.array(["test" if i % 14 < 4 else "train" for i in range(len(d["labels"]))]),
    )
    return p


def _method_names():
    from gcrdp.methods import METHODS

    # zero-shot needs aligned features of one dimension (these differ): see test_zeroshot.py
    # flex-clip's generator takes about 40 s here on 2 loaded cores: slow
    return [pytest.param(m, marks=pytest.mark.slow) if m == "flex-clip" else m for m in METHODS.names() if m != "zero-shot"]


@pytest.mark.parametrize("method", _method_names())
def test_every_method_fits_pooled_only_features(pooled_file, method):
    from gcrdp.experiments import RunConfig, run_experiment

    ds = load_feature_files(pooled_file)
    assert ds.features.image.local.shape == (112, 1, 12) and ds.features.text.local.shape == (112, 1, 6)
    from gcrdp.methods import build_method

    accepted = set(build_method(method).config_dict())
    small = {k: v for k, v in {"max_epochs": 2, "latent_dim": 16, "hidden_dim": 16}.items() if k in accepted}
    cfg = RunConfig(
        dataset="features",
        dataset_options={"path": str(pooled_file)},
        shots=[0, 1],
        seeds=[0],
        methods=[method],
        method_options={method: small},
        device="cpu",
    )
    res = run_experiment(cfg, progress=False)
    assert len(res["records"]) == 2
    for rec in res["records"]:
        assert rec["method"] == method
        for d in ("i2t", "t2i"):
            v = rec["test"][d]["map"]
            assert math.isfinite(v) and 0.0 < v <= 1.0
        assert rec["split"]["n_test_query"] == 4 * len(ds.class_split.unseen)  # 4 test pairs a class
    assert res["resolved"]["dataset_meta"]["features"] == "pre-extracted"


@pytest.mark.parametrize("lazy", [False, True])
def test_a_streamed_npy_folder_reads_back_as_the_same_dataset(tmp_path, monkeypatch, lazy):
    """``gcrdp extract --output DIR``: the folder reads back with the same features, labels,
    splits, classes and ids — row by row when the files are large."""
    from gcrdp.data.formats import arrays as arrays_mod
    from gcrdp.data.formats.featurefiles import save_features
    from tests.helpers import toy_run_dataset

    ds, feats = toy_run_dataset()
    save_features(feats, ds, tmp_path / "out")
    assert not list(tmp_path.glob(".tmp-*"))
    if lazy:
        monkeypatch.setattr(arrays_mod, "LAZY_NPY_BYTES", 0)
    back = load_feature_files(tmp_path / "out", class_split=ds.class_split)
    assert back.features is not None and back.features.on_disk == lazy
    assert back.classes == ds.classes and [s.id for s in back.samples] == [s.id for s in ds.samples]
    assert [(s.labels, s.split) for s in back.samples] == [(s.labels, s.split) for s in ds.samples]
    assert back.features.content_digest() == feats.content_digest()
    with pytest.raises(ConfigError, match="exists"):
        save_features(feats, ds, tmp_path / "out")


# ------------------------------------------------------------------ hostile arrays (issue 21)
@pytest.mark.parametrize(
    "labels, shown",
    [
        (np.array([0.0, math.nan]), "label nan"),
        (np.array([0.0, math.inf]), "label inf"),
        (np.array([0.0, 1.5]), "label 1.5"),
        (np.array([0.0, 1e300]), "label 1e+300"),  # was cast to int64 -9223372036854775808: a class of its own
        (np.array([0, 2**64 - 1], dtype=np.uint64), "label 18446744073709551615"),  # was wrapped to class -1
        (np.array([0, -3]), "label -3"),  # was a class named '-3'
    ],
    ids=["nan", "inf", "fraction", "huge-float", "huge-uint64", "negative"],
)
def test_bad_label_values_are_problems_of_their_rows(tmp_path, labels, shown):
    arrays = _data()
    y = arrays["labels"].astype(labels.dtype)
    y[5] = labels[1]
    arrays.update(labels=y)
    del arrays["classes"]
    path = tmp_path / "f.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=rf"row 5 \(sample .s005.\): {re.escape(shown)} is not a class id"):
        load_feature_files(path)
    ds = load_feature_files(path, skip_bad=True)
    assert len(ds) == len(arrays["ids"]) - 1 and ds.classes == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("image_mask", np.full((24, 3), math.nan), "image_mask must hold booleans or 0/1"),  # NaN read as True
        ("image_mask", np.full((24, 3), "no"), "image_mask must hold booleans or 0/1, got dtype <U2"),  # 'no' read as True
        ("image_pooled", np.full((24, 2), "x"), "image_pooled must hold numbers, got dtype <U1"),  # was a ValueError
        ("labels", np.array([b"a", b"\xff"] * 12), r"labels\[1\] is not valid UTF-8"),  # was a UnicodeDecodeError
    ],
    ids=["nan-mask", "string-mask", "string-pooled", "bad-utf8-labels"],
)
def test_wrong_dtypes_are_data_errors(tmp_path, key, value, message):
    arrays = _data(L=3)
    arrays[key] = value
    if key == "labels":
        del arrays["classes"]
    path = tmp_path / "f.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_feature_files(path)


def test_a_stray_huge_class_id_in_a_split_file_is_a_problem_of_its_row(tmp_path):
    """featurerows numbers the classes 0..the largest id: one label of 1e12 (or a uint64 -1) made
    a trillion classes (names listed one by one); now it is a problem of its row."""
    import scipy.io

    import gcrdp.data.formats.xmedianet  # noqa: F401  (registers "xmedianet")
    from gcrdp.data.formats.featurerows import MAX_CLASS_ID

    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 12)):
        lab = np.tile(np.arange(4), n // 4).astype(np.float64)
        if split == "train":
            lab[3] = 1e12
        scipy.io.savemat(tmp_path / f"{split}_img.mat", {f"{split}_img": rng.normal(size=(n, 5)).astype(np.float32)})
        scipy.io.savemat(tmp_path / f"{split}_txt.mat", {f"{split}_txt": rng.normal(size=(n, 3)).astype(np.float32) + 1})
        scipy.io.savemat(tmp_path / f"{split}_img_lab.mat", {f"{split}_img_lab": lab.reshape(-1, 1)})
    with pytest.raises(DataError, match=r"train_img_lab row 3: 1000000000000.0 is not a class id in 0\.\.3"):
        load_dataset("xmedianet", root=str(tmp_path))
    ds = load_dataset("xmedianet", root=str(tmp_path), skip_bad=True)
    assert len(ds) == 35 and len(ds.classes) == 4
    assert MAX_CLASS_ID >= 1 << 16


@pytest.mark.parametrize("skip_bad", [False, True])
def test_no_usable_label_at_all_is_a_data_error(tmp_path, skip_bad):
    """Found by the property tests: every label bad left no class, and the loader failed with an IndexError."""
    arrays = _data()
    arrays["labels"] = np.full(len(arrays["ids"]), 1.5)
    del arrays["classes"]
    path = tmp_path / "f.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match="is not a class id" if not skip_bad else "no sample has a usable label"):
        load_feature_files(path, skip_bad=skip_bad)


def test_a_damaged_mat_file_is_a_data_error(tmp_path):
    """Found by the property tests: scipy's MatReadError (and an IndexError) on a damaged .mat escaped as tracebacks."""
    path = tmp_path / "f.mat"
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(DataError, match=r"f\.mat"):
        load_feature_files(path)
