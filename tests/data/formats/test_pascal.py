"""Dataset ``pascal-sentence`` (raw captions + images, and DSCMR feature folders) and dataset
``dscmr``: fixtures in the real formats, every check and error, and the real data in
``../shared/data/pascal_sentence``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gcrdp.data import load_dataset
from gcrdp.data.formats.pascal import VOC_CLASSES
from gcrdp.errors import ConfigError, DataError

CATS = ["aeroplane", "bicycle", "bird"]
PER_CLASS = 6


def _entries():
    """{file name: (category, captions)} — 6 images per class, 5 (or 4/6) captions each."""
    out = {}
    n = 0
    for cat in CATS:
        for k in range(PER_CLASS):
            n += 1
            caps = [f"A {cat} number {k}, sentence {j}." for j in range(5 - (n % 7 == 0) + (n % 11 == 0))]
            out[f"2008_{n:06d}.jpg"] = (cat, caps)
    return out


ENTRIES = _entries()


def _write_images(folder: Path, names) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        sub = folder / ENTRIES[name][0] if i % 2 else folder  # any depth
        sub.mkdir(exist_ok=True)
        Image.new("RGB", (3, 3), (i * 7 % 256, 0, 0)).save(sub / name)


def make_json(root: Path, *, order=None, images=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    names = list(ENTRIES) if order is None else order
    doc = {name: {"category": ENTRIES[name][0], "captions": ENTRIES[name][1]} for name in names}
    (root / "captions").mkdir(exist_ok=True)
    p = root / "captions" / "pascal_sentences.json"
    p.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    if images:
        _write_images(root / "images", list(ENTRIES))
    return p


def make_sentence_folders(root: Path) -> None:
    for name, (cat, caps) in ENTRIES.items():
        d = root / "sentence" / cat
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{Path(name).stem}.txt").write_text("\n".join(f" {c} " for c in caps) + "\n\n", encoding="utf-8")
    _write_images(root / "images", list(ENTRIES))


def _counts(ds, split):
    c = Counter(s.labels[0] for s in ds.samples if s.split == split)
    return {k: c[k] for k in ds.classes}


# ----------------------------------------------------------------------------- raw: captions JSON
def test_raw_json_seeded_split(tmp_path):
    make_json(tmp_path / "p")
    ds = load_dataset("pascal-sentence", root=tmp_path / "p", test_per_class=2)
    assert ds.meta["format"] == "raw" and ds.features is None
    assert ds.classes == CATS and len(ds) == 18
    assert _counts(ds, "test") == {c: 2 for c in CATS} and _counts(ds, "train") == {c: 4 for c in CATS}
    assert [s.id for s in ds.samples] == sorted(ENTRIES)
    assert all(s.image is not None and s.image.name == s.id for s in ds.samples)
    assert all(s.labels == (ENTRIES[s.id][0],) for s in ds.samples)
    assert ds.meta["class_split_source"].startswith("shipped: pascal-sentence v1, restricted to the 3")
    # deterministic, and independent of the order of the file
    again = load_dataset("pascal-sentence", root=tmp_path / "p", test_per_class=2)
    make_json(tmp_path / "q", order=list(reversed(ENTRIES)))
    shuffled = load_dataset("pascal-sentence", root=tmp_path / "q", test_per_class=2)
    split = {s.id: s.split for s in ds.samples}
    assert {s.id: s.split for s in again.samples} == split
    assert {s.id: s.split for s in shuffled.samples} == split
    # the seed changes the draw, not the counts
    other = [load_dataset("pascal-sentence", root=tmp_path / "p", test_per_class=2, split_seed=s) for s in (1, 2)]
    assert any({s.id: s.split for s in o.samples} != split for o in other)
    assert all(_counts(o, "test") == {c: 2 for c in CATS} for o in other)
    # the split is the documented sha256 order
    import hashlib

    for cat in CATS:
        names = sorted((n for n in ENTRIES if ENTRIES[n][0] == cat), key=lambda n: hashlib.sha256(f"0\0{n}".encode()).hexdigest())
        assert {n for n in names[:2]} == {i for i, sp in split.items() if sp == "test" and ENTRIES[i][0] == cat}


def test_raw_captions_join_and_first(tmp_path):
    make_json(tmp_path / "p")
    joined = load_dataset("pascal-sentence", root=tmp_path / "p", test_per_class=2)
    first = load_dataset("pascal-sentence", root=tmp_path / "p", test_per_class=2, captions="first")
    for s, f in zip(joined.samples, first.samples):
        caps = ENTRIES[s.id][1]
        assert s.text == " ".join(caps) and f.text == caps[0]
    assert {len(ENTRIES[s.id][1]) for s in joined.samples} == {4, 5, 6}
    assert joined.meta["captions"] == "join" and first.meta["captions"] == "first"
    with pytest.raises(ConfigError, match="captions must be 'join' or 'first'"):
        load_dataset("pascal-sentence", root=tmp_path / "p", captions="all")
    with pytest.raises(ConfigError, match="test_per_class must be a positive integer"):
        load_dataset("pascal-sentence", root=tmp_path / "p", test_per_class=0)


def test_raw_sentence_folders(tmp_path):
    root = tmp_path / "p"
    make_sentence_folders(root)
    ds = load_dataset("pascal-sentence", root=root, source="raw", test_per_class=1)
    assert ds.classes == CATS and len(ds) == 18
    assert _counts(ds, "test") == {c: 1 for c in CATS}
    for s in ds.samples:
        assert s.text == " ".join(ENTRIES[s.id][1])  # lines stripped, blank lines dropped
        assert s.image.name == s.id
    first = load_dataset("pascal-sentence", root=root, source="raw", captions="first", test_per_class=1)
    assert all(s.text == ENTRIES[s.id][1][0] for s in first.samples)
    # the same seeded split as the JSON form of the same data
    make_json(tmp_path / "j")
    js = load_dataset("pascal-sentence", root=tmp_path / "j", test_per_class=1)
    assert {s.id: s.split for s in js.samples} == {s.id: s.split for s in ds.samples}


def test_raw_missing_images_grouped(tmp_path):
    root = tmp_path / "p"
    make_json(root)
    gone = sorted(ENTRIES)[:7]
    for p in (root / "images").rglob("*.jpg"):
        if p.name in gone:
            p.unlink()
    with pytest.raises(DataError) as exc:
        load_dataset("pascal-sentence", root=root, test_per_class=2)
    msg = str(exc.value)
    assert "7 problem(s) in 18 samples" in msg
    assert f"missing image files under {root / 'images'}: 7 sample(s)" in msg and "(and 2 more)" in msg
    ds = load_dataset("pascal-sentence", root=root, test_per_class=2, skip_bad=True)
    assert len(ds) == 11 and set(gone).isdisjoint(s.id for s in ds.samples)
    assert ds.meta["n_skipped"] == 7 and {p["sample"] for p in ds.meta["skipped"]} == set(gone)
    # another images folder
    (root / "images").rename(tmp_path / "pics")
    with pytest.raises(DataError, match=r"the folder does not exist\): 18 sample\(s\)"):
        load_dataset("pascal-sentence", root=root, test_per_class=2)
    ds = load_dataset("pascal-sentence", root=root, test_per_class=2, images_dir=tmp_path / "pics", skip_bad=True)
    assert len(ds) == 11


def test_raw_entry_problems(tmp_path):
    root = tmp_path / "p"
    p = make_json(root)
    doc = json.loads(p.read_text(encoding="utf-8"))
    names = sorted(doc)
    doc[names[0]] = {"category": "aeroplane", "captions": "one string"}
    doc[names[1]]["captions"] = ["  ", ""]
    doc[names[2]] = ["not", "an", "object"]
    p.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_dataset("pascal-sentence", root=root, test_per_class=2)
    msg = str(exc.value)
    assert f"pascal_sentences.json entry {names[0]!r}: 'captions' must be a list of strings" in msg
    assert f"pascal_sentences.json entry {names[1]!r}: no sentence" in msg
    assert f"pascal_sentences.json entry {names[2]!r}: expected {{'category'" in msg
    ds = load_dataset("pascal-sentence", root=root, test_per_class=2, skip_bad=True)
    assert set(names[:3]).isdisjoint(s.id for s in ds.samples) and len(ds) == 15
    # a class with no more images than test_per_class
    make_json(tmp_path / "q")
    with pytest.raises(DataError) as exc:
        load_dataset("pascal-sentence", root=tmp_path / "q", test_per_class=6)
    msg = str(exc.value)
    assert "18 problem(s) in 18 samples" in msg
    for cat in CATS:  # one line per class
        assert msg.count(f"class {cat!r} has 6 images, not more than test_per_class=6: 6 sample(s)") == 1
    p.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="is not valid JSON"):
        load_dataset("pascal-sentence", root=root)
    with pytest.raises(DataError, match="captions file not found"):
        load_dataset("pascal-sentence", root=root, captions_file=tmp_path / "none.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="needs the sentences"):
        load_dataset("pascal-sentence", root=empty)
    with pytest.raises(DataError, match="needs a DSCMR folder"):
        load_dataset("pascal-sentence", root=empty, source="features")


def test_raw_invalid_utf8_sentence_file(tmp_path):
    root = tmp_path / "p"
    make_sentence_folders(root)
    bad = root / "sentence" / "bird" / "2008_000013.txt"
    bad.write_bytes(b"A bird \xff on a branch.\n")
    with pytest.raises(DataError, match=f"{bad} is not valid UTF-8 \\(byte 0xff at offset 7\\)"):
        load_dataset("pascal-sentence", root=root, test_per_class=1)
    ds = load_dataset("pascal-sentence", root=root, test_per_class=1, skip_bad=True)
    assert "2008_000013.jpg" not in {s.id for s in ds.samples} and len(ds) == 17


# ----------------------------------------------------------------------------- DSCMR folders
def _dscmr_arrays(n_train=40, n_test=20, n_valid=0, d_img=12, d_txt=6, n_classes=20, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("valid", n_valid)):
        if not n:
            continue
        lab = (np.arange(n) % n_classes).astype(np.int64)[:, None]
        out[f"{split}_img"] = rng.normal(size=(n, d_img)).astype(np.float32)
        out[f"{split}_txt"] = rng.normal(size=(n, d_txt)).astype(np.float32)
        out[f"{split}_img_lab"] = lab
    return out


def write_dscmr(folder: Path, arrays: dict) -> Path:
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        scipy.io.savemat(folder / f"{k}.mat", {k: v})  # one .mat per array, the key = the stem
    return folder


def test_pascal_dscmr_features_voc_names(tmp_path):
    arr = _dscmr_arrays()
    write_dscmr(tmp_path / "p" / "dscmr", arr)
    ds = load_dataset("pascal-sentence", root=tmp_path / "p")  # auto → features
    assert ds.meta["format"] == "dscmr" and ds.meta["label_base"] == 0 and ds.meta["class_names"] == "given"
    assert ds.classes == list(VOC_CLASSES)
    assert [s.labels[0] for s in ds.samples] == [
        VOC_CLASSES[int(i)] for i in np.concatenate([arr["train_img_lab"], arr["test_img_lab"]])[:, 0]
    ]
    assert [s.id for s in ds.samples[:2]] == ["train-000000", "train-000001"] and ds.samples[40].id == "test-000000"
    assert ds.meta["n_train"] == 40 and ds.meta["n_test"] == 20
    assert ds.features.image.local.shape == (60, 1, 12) and ds.features.text.local.shape == (60, 1, 6)
    np.testing.assert_array_equal(ds.features.image.pooled, np.concatenate([arr["train_img"], arr["test_img"]]))
    assert ds.meta["class_split_source"] == "shipped: pascal-sentence v1"
    # the files straight under root, and class_names overriding the VOC names
    write_dscmr(tmp_path / "flat", arr)
    names = [f"c{i}" for i in range(20)]
    flat = load_dataset("pascal-sentence", root=tmp_path / "flat", source="features", class_names=names)
    assert flat.classes == names and flat.samples[3].labels == ("c3",)
    # the generic loader: label ids as names
    generic = load_dataset("dscmr", root=tmp_path / "flat")
    assert generic.name == "flat" and generic.classes == [str(i) for i in range(20)]


def test_dscmr_valid_merged_into_train(tmp_path):
    arr = _dscmr_arrays(n_valid=20)
    write_dscmr(tmp_path / "d", arr)
    ds = load_dataset("dscmr", root=tmp_path / "d", class_names=list(VOC_CLASSES))
    assert ds.meta["valid_merged_into_train"] == "valid" and ds.meta["n_train"] == 60
    assert [s.id for s in ds.samples if s.split == "train"][-1] == "train-000059"
    np.testing.assert_array_equal(ds.features.image.pooled[:60], np.concatenate([arr["train_img"], arr["valid_img"]]))
    np.testing.assert_array_equal(ds.features.text.pooled[60:], arr["test_txt"])
    # a valid split whose dimensions differ is an error, not a numpy crash
    write_dscmr(tmp_path / "d", {"valid_img": np.ones((20, 13), np.float32)})
    with pytest.raises(
        DataError,
        match=r"the valid split cannot be merged into train: valid_img has shape "
        r"\(20, 13\) but train_img has \(40, 12\)",
    ):
        load_dataset("dscmr", root=tmp_path / "d")
    # an incomplete valid split is named too
    (tmp_path / "d" / "valid_img.mat").unlink()
    with pytest.raises(DataError, match="split 'valid' is incomplete: missing valid_img.mat"):
        load_dataset("dscmr", root=tmp_path / "d")


def test_dscmr_txt_labels_disagree(tmp_path):
    arr = _dscmr_arrays()
    txt_lab = arr["test_img_lab"].copy()
    txt_lab[3, 0] = 7
    arr["test_txt_lab"] = txt_lab
    arr["train_txt_lab"] = arr["train_img_lab"].copy()
    write_dscmr(tmp_path / "p" / "dscmr", arr)
    with pytest.raises(DataError) as exc:
        load_dataset("pascal-sentence", root=tmp_path / "p")
    msg = str(exc.value)
    assert "1 problem(s) in 60 samples" in msg
    assert "test row 3 (sample 'test-000003'): image and text labels disagree (3 vs 7)" in msg
    ds = load_dataset("pascal-sentence", root=tmp_path / "p", skip_bad=True)
    assert len(ds) == 59 and "test-000003" not in {s.id for s in ds.samples}
    assert ds.meta["skipped"] == [{"where": "test row 3", "sample": "test-000003", "reason": "image and text labels disagree (3 vs 7)"}]
    keep = [i for i in range(60) if i != 43]
    full = np.concatenate([arr["train_txt"], arr["test_txt"]])
    np.testing.assert_array_equal(ds.features.text.pooled, full[keep])
    # with a valid split merged into train, train's text labels are still checked
    bad = dict(_dscmr_arrays(n_valid=20))
    tl = bad["train_img_lab"].copy()
    tl[5, 0] = 0
    bad["train_txt_lab"] = tl
    write_dscmr(tmp_path / "v", bad)
    with pytest.raises(DataError, match=r"train row 5 \(sample 'train-000005'\): image and text labels disagree"):
        load_dataset("dscmr", root=tmp_path / "v")


def test_dscmr_incomplete_split_and_rows(tmp_path):
    arr = _dscmr_arrays()
    folder = write_dscmr(tmp_path / "p" / "dscmr", {k: v for k, v in arr.items() if k != "train_img"})
    with pytest.raises(DataError) as exc:
        load_dataset("pascal-sentence", root=tmp_path / "p")
    msg = str(exc.value)
    assert "split 'train' is incomplete: missing train_img.mat (found train_txt.mat, train_img_lab.mat)" in msg
    ds = load_dataset("pascal-sentence", root=tmp_path / "p", splits=["test"])
    assert len(ds) == 20 and ds.meta["splits"] == ["test"]
    write_dscmr(folder, {"train_img": arr["train_img"][:-1]})
    with pytest.raises(DataError, match="the train files disagree in rows: train_img.mat 39, train_txt.mat 40, train_img_lab.mat 40"):
        load_dataset("pascal-sentence", root=tmp_path / "p")
    write_dscmr(folder, {"train_img": arr["train_img"], "test_txt": np.ones((20, 7), np.float32)})
    with pytest.raises(DataError, match="feature dimensions differ between splits"):
        load_dataset("pascal-sentence", root=tmp_path / "p")
    for name in ("test_img", "test_txt", "test_img_lab"):
        (folder / f"{name}.mat").unlink()
    with pytest.raises(DataError, match=r"split 'test' is missing.*Pass splits=\['train'\]"):
        load_dataset("pascal-sentence", root=tmp_path / "p")
    with pytest.raises(ConfigError, match="splits must be 'train' and/or 'test'"):
        load_dataset("pascal-sentence", root=tmp_path / "p", splits=["valid"])


def test_dscmr_other_keys_and_class_ids(tmp_path):
    import scipy.io

    arr = _dscmr_arrays(n_classes=5)
    folder = write_dscmr(tmp_path / "d", arr)
    scipy.io.savemat(folder / "test_img.mat", {"feats": arr["test_img"]})  # one array, another key
    ds = load_dataset("dscmr", root=folder, class_names=["a", "b", "c", "d", "e"])
    np.testing.assert_array_equal(ds.features.image.pooled[40:], arr["test_img"])
    scipy.io.savemat(folder / "test_img.mat", {"feats": arr["test_img"], "other": arr["test_img"]})
    with pytest.raises(DataError, match="has no array under the key 'test_img'"):
        load_dataset("dscmr", root=folder)
    scipy.io.savemat(folder / "test_img.mat", {"test_img": arr["test_img"]})
    with pytest.raises(DataError, match=r"class ids \[3, 4\] have no name in class_names \(3 names, ids from 0\)"):
        load_dataset("dscmr", root=folder, class_names=["a", "b", "c"])
    # 1-based ids with names
    one = {k: (v + 1 if k.endswith("_lab") else v) for k, v in arr.items()}
    write_dscmr(tmp_path / "one", one)
    ds = load_dataset("dscmr", root=tmp_path / "one", class_names=["a", "b", "c", "d", "e"])
    assert ds.meta["label_base"] == 1 and ds.samples[0].labels == ("a",)
    # multi-hot labels
    mh = np.zeros((40, 5), np.uint8)
    mh[np.arange(40), np.arange(40) % 5] = 1
    mh[::4, 4] = 1
    write_dscmr(tmp_path / "one", {"train_img_lab": mh, "test_img_lab": np.eye(5, dtype=np.uint8)[np.arange(20) % 5]})
    ds = load_dataset("dscmr", root=tmp_path / "one")
    assert ds.is_multilabel and ds.samples[0].labels == ("0", "4")


# ----------------------------------------------------------------------------- real data
@pytest.mark.shared_data
def test_real_pascal_test_split(shared_data):
    ds = load_dataset("pascal-sentence", root=shared_data / "pascal_sentence", splits=["test"])
    assert len(ds) == 100 and len(ds.classes) == 20 and ds.classes == list(VOC_CLASSES)
    assert set(Counter(s.labels[0] for s in ds.samples).values()) == {5}
    assert all(s.split == "test" for s in ds.samples)
    assert ds.features.image.dim == 4096 and ds.features.text.dim == 300
    assert ds.features.image.local.shape == (100, 1, 4096)
    assert np.isfinite(ds.features.image.pooled).all() and np.isfinite(ds.features.text.pooled).all()
    assert ds.meta["n_skipped"] == 0 and ds.meta["label_base"] == 0


@pytest.mark.shared_data
def test_real_pascal_default_splits_need_train_img(shared_data):
    with pytest.raises(DataError, match="missing train_img.mat"):
        load_dataset("pascal-sentence", root=shared_data / "pascal_sentence")


@pytest.mark.shared_data
def test_real_pascal_captions(shared_data, tmp_path):
    path = shared_data / "pascal_sentence" / "captions" / "pascal_sentences.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert len(doc) == 1000
    per_class = Counter(e["category"] for e in doc.values())
    assert sorted(per_class) == list(VOC_CLASSES) and set(per_class.values()) == {50}
    assert Counter(len(e["captions"]) for e in doc.values()) == {5: 996, 4: 3, 6: 1}
    # the raw source without the images: one grouped problem for the 1000 missing images
    with pytest.raises(DataError) as exc:
        load_dataset("pascal-sentence", root=shared_data / "pascal_sentence", source="raw")
    msg = str(exc.value)
    assert "1000 problem(s) in 1000 samples" in msg and ": 1000 sample(s): " in msg
    assert "missing image files under" in msg and "(and 995 more)" in msg
    # with images (links to one tiny file): the seeded 800/200 split, 10 per class
    from PIL import Image

    img = tmp_path / "one.jpg"
    Image.new("RGB", (2, 2)).save(img)
    images = tmp_path / "images"
    images.mkdir()
    for name in doc:
        (images / name).symlink_to(img)
    ds = load_dataset("pascal-sentence", root=shared_data / "pascal_sentence", source="raw", images_dir=images)
    assert len(ds) == 1000 and ds.meta["n_train"] == 800 and ds.meta["n_test"] == 200
    assert set(_counts(ds, "test").values()) == {10} and set(_counts(ds, "train").values()) == {40}
    assert ds.classes == list(VOC_CLASSES) and ds.meta["class_split_source"] == "shipped: pascal-sentence v1"
    assert all(s.text == " ".join(c.strip() for c in doc[s.id]["captions"]) for s in ds.samples)


def test_dscmr_label_base_zero_based_without_class_zero(tmp_path):
    """Ids 1..3 with four names are 0-based (DSCMR) ids missing class 0 — not shifted; ids
    1..4 with four names are 1-based; label_base says it explicitly."""
    rng = np.random.default_rng(0)

    def folder(name, labels):
        lab = np.asarray(labels, dtype=np.int64)[:, None]
        n = len(lab)
        return write_dscmr(
            tmp_path / name,
            {
                "train_img": rng.normal(size=(n, 3)).astype(np.float32),
                "train_txt": rng.normal(size=(n, 2)).astype(np.float32),
                "train_img_lab": lab,
                "test_img": rng.normal(size=(n, 3)).astype(np.float32),
                "test_txt": rng.normal(size=(n, 2)).astype(np.float32),
                "test_img_lab": lab,
            },
        )

    names = ["w", "x", "y", "z"]
    ds = load_dataset("dscmr", root=folder("zero", [1, 2, 3, 1, 2, 3]), class_names=names)
    assert ds.meta["label_base"] == 0 and [s.labels[0] for s in ds.samples[:3]] == ["x", "y", "z"]
    ds = load_dataset("dscmr", root=folder("one", [1, 2, 3, 4, 1, 2]), class_names=names)
    assert ds.meta["label_base"] == 1 and [s.labels[0] for s in ds.samples[:4]] == names
    ds = load_dataset("dscmr", root=tmp_path / "zero", class_names=names, label_base=1)
    assert [s.labels[0] for s in ds.samples[:3]] == ["w", "x", "y"]
    with pytest.raises(ConfigError, match="label_base"):
        load_dataset("dscmr", root=tmp_path / "zero", class_names=names, label_base=2)


@pytest.mark.shared_data
def test_real_pascal_test_split_resplit_for_training(shared_data):
    ds = load_dataset("pascal-sentence", root=shared_data / "pascal_sentence", splits=["test"], resplit=0.4)
    per = Counter((s.labels[0], s.split) for s in ds.samples)
    assert all(per[(c, "train")] == 3 and per[(c, "test")] == 2 for c in VOC_CLASSES)
    assert "re-split" in ds.meta["resplit"]
    again = load_dataset("pascal-sentence", root=shared_data / "pascal_sentence", splits=["test"], resplit=0.4)
    assert [s.split for s in again.samples] == [s.split for s in ds.samples]
