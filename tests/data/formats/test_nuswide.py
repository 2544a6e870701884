"""NUS-WIDE loader: a tiny copy of the official release layout (image lists with Windows
backslashes, Groundtruth label files, Concepts81.txt, All_Tags.txt, PNG images) and the
feature layouts (DCMH XAll/YAll/LAll incl. a v7.3 file, Hu et al. Doc2Vec HDF5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import gcrdp.data.formats.nuswide  # noqa: F401  (registers "nus-wide")
from gcrdp.data import load_dataset
from gcrdp.errors import ConfigError, DataError

CONCEPTS = ["animal", "beach", "clouds", "flowers", "food", "grass", "lake", "person", "sky", "toy", "water", "window"]
MAIN = [c for c in CONCEPTS if c not in ("beach", "lake")]  # the 10 biggest in the fixture
EXTRA = [
    ("sky", {"sky", "clouds"}, "train"),  # two top-10 labels: not in subset "10"
    ("water", {"water", "lake"}, "test"),  # one top-10 label (lake is not top-10): in "10"
    ("beach", {"beach"}, "train"),  # no top-10 label
    ("lake", {"lake", "beach"}, "test"),
]


def _rows(per_class: int = 4):
    rows = []
    for c in MAIN:
        for k in range(per_class):
            rows.append((c, {c}, "train" if k < per_class // 2 else "test"))
    rows.extend(EXTRA)
    out = []
    for i, (folder, labels, split) in enumerate(rows):
        photo = str(2124494100 + i)
        out.append(
            {
                "folder": folder,
                "file": f"{i:04d}_{photo}.jpg",
                "photo": photo,
                "labels": labels,
                "split": split,
                "tags": [sorted(labels)[0], "flickr", f"tag{i}"],
            }
        )
    out.sort(key=lambda r: (r["folder"], r["file"]))  # Imagelist order differs from train/test
    return out


def write_raw(
    root: Path, *, labels: str = "all", crlf: bool = False, windows_prefix: bool = False, images: bool = True, per_class: int = 4
) -> list[dict]:
    """The official layout; ``labels``: ``"all"`` (AllLabels) or ``"traintest"``."""
    rows = _rows(per_class)
    nl = "\r\n" if crlf else "\n"

    def write(rel: str, lines: list[str]) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes((nl.join(lines) + nl).encode("utf-8"))

    prefix = "C:\\ImageData\\Flickr\\" if windows_prefix else ""
    write("ImageList/Imagelist.txt", [f"{prefix}{r['folder']}\\{r['file']}" for r in rows])
    train = [r for r in rows if r["split"] == "train"][::-1]
    test = [r for r in rows if r["split"] == "test"]
    write("ImageList/TrainImagelist.txt", [f"{r['folder']}\\{r['file']}" for r in train])
    write("ImageList/TestImagelist.txt", [f"{r['folder']}\\{r['file']}" for r in test])
    write("ConceptsList/Concepts81.txt", CONCEPTS)
    for c in CONCEPTS:
        if labels == "all":
            write(f"Groundtruth/AllLabels/Labels_{c}.txt", ["1" if c in r["labels"] else "0" for r in rows])
        else:
            for split, lst in (("Train", train), ("Test", test)):
                write(f"Groundtruth/TrainTestLabels/Labels_{c}_{split}.txt", ["1" if c in r["labels"] else "0" for r in lst])
    write("NUS_WID_Tags/All_Tags.txt", [f"{r['photo']}      " + " ".join(r["tags"]) for r in rows])
    if images:
        for i, r in enumerate(rows):
            d = root / "Flickr" / r["folder"]
            d.mkdir(parents=True, exist_ok=True)
            # PNG files under the list's .jpg name stem: found by stem at any depth
            Image.new("RGB", (4, 4), (i * 5 % 256, 80, 160)).save(d / (r["file"][:-4] + ".png"))
    return rows


def _sid(r: dict) -> str:
    return f"{r['folder']}/{r['file'][:-4]}"


# ------------------------------------------------------------------------------ raw
def test_raw_single_label_top10(tmp_path):
    rows = write_raw(tmp_path)
    ds = load_dataset("nus-wide", root=str(tmp_path))
    assert ds.name == "nus-wide" and ds.meta["format"] == "raw"
    assert ds.classes == MAIN  # concept-list order
    assert ds.meta["concepts"] == MAIN and "10 concepts with the most images" in ds.meta["concept_selection"]
    assert ds.meta["concept_counts"]["sky"] == 5 and ds.meta["concept_counts"]["animal"] == 4
    assert len(ds) == 10 * 4 + 1 and not ds.is_multilabel
    assert len(ds.split_indices("train")) == 20 and len(ds.split_indices("test")) == 21
    by_id = {s.id: s for s in ds.samples}
    water_lake = next(r for r in rows if r["labels"] == {"water", "lake"})
    s = by_id[_sid(water_lake)]
    assert s.labels == ("water",) and s.split == "test"
    assert s.text == " ".join(water_lake["tags"]) and s.image is not None and s.image.is_file()
    assert s.image.suffix == ".png"
    two = next(r for r in rows if r["labels"] == {"sky", "clouds"})
    assert _sid(two) not in by_id
    counts = {c: sum(x.labels == (c,) for x in ds.samples) for c in MAIN}
    assert counts["water"] == 5 and counts["sky"] == 4
    assert ds.features is None and ds.meta["labels_from"] == "Groundtruth/AllLabels"
    assert ds.meta["tag_photo_ids_checked"] is True


def test_raw_multi_label_matrix(tmp_path):
    rows = write_raw(tmp_path)
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    assert ds.classes == CONCEPTS and len(ds) == len(rows) and ds.is_multilabel
    m = ds.label_matrix()
    i = next(k for k, s in enumerate(ds.samples) if set(s.labels) == {"sky", "clouds"})
    assert m[i].sum() == 2 and m[i, CONCEPTS.index("sky")] and m[i, CONCEPTS.index("clouds")]
    assert ds.meta["label_mode"] == "multi-label"
    with pytest.raises(DataError, match="subset 21 needs 21 concepts"):
        load_dataset("nus-wide", root=str(tmp_path), subset=21)


def test_raw_given_concepts(tmp_path):
    write_raw(tmp_path)
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi", concepts=["sky", "clouds", "lake"])
    assert ds.classes == ["sky", "clouds", "lake"] and ds.meta["concept_selection"] == "given (concepts=)"
    assert len(ds) == 4 + 4 + 1 + 1 + 1  # sky, clouds, sky+clouds, water+lake, lake+beach
    single = load_dataset("nus-wide", root=str(tmp_path), concepts="sky,clouds")
    assert len(single) == 8 and all(len(s.labels) == 1 for s in single.samples)
    with pytest.raises(ConfigError, match="unknown concept.*'kitten'"):
        load_dataset("nus-wide", root=str(tmp_path), concepts=["sky", "kitten"])
    with pytest.raises(ConfigError, match="subset must be one of"):
        load_dataset("nus-wide", root=str(tmp_path), subset="top5")


def test_raw_traintest_labels_crlf_and_windows_paths_agree(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_raw(a)
    write_raw(b, labels="traintest", crlf=True, windows_prefix=True)
    da = load_dataset("nus-wide", root=str(a), subset="multi")
    db = load_dataset("nus-wide", root=str(b), subset="multi")
    assert db.meta["labels_from"] == "Groundtruth/TrainTestLabels"
    assert [(s.id, s.labels, s.split, s.text) for s in da.samples] == [(s.id, s.labels, s.split, s.text) for s in db.samples]


def test_raw_empty_tags_and_skip_bad(tmp_path):
    rows = write_raw(tmp_path)
    lines = (tmp_path / "NUS_WID_Tags/All_Tags.txt").read_text().split("\n")
    lines[0] = rows[0]["photo"]  # no tags
    lines[5] = rows[5]["photo"] + "   "  # no tags
    (tmp_path / "NUS_WID_Tags/All_Tags.txt").write_text("\n".join(lines))
    with pytest.raises(DataError) as err:
        load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    msg = str(err.value)
    assert "2 problem(s)" in msg and "no tags" in msg and _sid(rows[0]) in msg and _sid(rows[5]) in msg
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi", skip_bad=True)
    assert len(ds) == len(rows) - 2
    assert {p["sample"] for p in ds.meta["skipped"]} == {_sid(rows[0]), _sid(rows[5])}


def test_raw_photo_id_mismatch_is_a_problem(tmp_path):
    write_raw(tmp_path)
    p = tmp_path / "NUS_WID_Tags/All_Tags.txt"
    lines = p.read_text().split("\n")
    lines[2] = "999 some tags"
    p.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"All_Tags.txt line 3 is photo '999' but the image is photo"):
        load_dataset("nus-wide", root=str(tmp_path), subset="multi")


def test_raw_missing_images_grouped_with_count(tmp_path):
    rows = write_raw(tmp_path)
    gone = [r for r in rows if r["labels"] <= set(MAIN) and len(r["labels"]) == 1][:7]
    for r in gone:
        (tmp_path / "Flickr" / r["folder"] / (r["file"][:-4] + ".png")).unlink()
    with pytest.raises(DataError) as err:
        load_dataset("nus-wide", root=str(tmp_path))
    msg = str(err.value)
    assert "missing image files under" in msg and "7 sample(s)" in msg and "(and 2 more)" in msg
    ds = load_dataset("nus-wide", root=str(tmp_path), skip_bad=True)
    assert len(ds) == 41 - 7 and ds.meta["n_skipped"] == 7


def test_raw_bad_label_value_is_a_problem(tmp_path):
    write_raw(tmp_path, labels="traintest")
    p = tmp_path / "Groundtruth/TrainTestLabels/Labels_sky_Train.txt"
    lines = p.read_text().split("\n")
    lines[1] = "-1130179"  # the known bad value of the real Labels_lake_Train.txt
    p.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"Labels_sky_Train.txt line 2: '-1130179' is not 0 or 1"):
        load_dataset("nus-wide", root=str(tmp_path))
    ds = load_dataset("nus-wide", root=str(tmp_path), skip_bad=True)
    assert ds.meta["n_skipped"] == 1
    # a concept that is not selected does not matter
    ds2 = load_dataset("nus-wide", root=str(tmp_path), concepts=["animal", "toy"])
    assert ds2.meta["n_skipped"] == 0 and len(ds2) == 8


def test_raw_length_mismatches_name_both_files(tmp_path):
    write_raw(tmp_path)
    p = tmp_path / "Groundtruth/AllLabels/Labels_toy.txt"
    p.write_text(p.read_text() + "0\n")
    with pytest.raises(DataError, match=r"Labels_toy.txt has 45 lines but .*Imagelist.txt lists 44"):
        load_dataset("nus-wide", root=str(tmp_path))
    t = tmp_path / "tt"
    write_raw(t, labels="traintest")
    p = t / "Groundtruth/TrainTestLabels/Labels_toy_Test.txt"
    p.write_text("0\n0\n")
    with pytest.raises(DataError, match=r"Labels_toy_Test.txt has 2 lines but .*TestImagelist.txt lists 22"):
        load_dataset("nus-wide", root=str(t))
    u = tmp_path / "u"
    write_raw(u)
    p = u / "NUS_WID_Tags/All_Tags.txt"
    p.write_text("\n".join(p.read_text().split("\n")[:10]))
    with pytest.raises(DataError, match=r"All_Tags.txt has 10 lines but .*Imagelist.txt lists 44"):
        load_dataset("nus-wide", root=str(u))


def test_raw_missing_files_are_named(tmp_path):
    write_raw(tmp_path)
    (tmp_path / "ImageList/TestImagelist.txt").unlink()
    with pytest.raises(DataError, match=r"needs the test image list .*TestImagelist.txt"):
        load_dataset("nus-wide", root=str(tmp_path))
    v = tmp_path / "v"
    write_raw(v)
    (v / "Groundtruth/AllLabels/Labels_grass.txt").unlink()
    with pytest.raises(DataError, match=r"label file not found: .*Labels_grass.txt"):
        load_dataset("nus-wide", root=str(v))
    w = tmp_path / "w"
    write_raw(w)
    (w / "NUS_WID_Tags/All_Tags.txt").unlink()
    with pytest.raises(DataError, match=r"needs the tags .*All_Tags.txt"):
        load_dataset("nus-wide", root=str(w), source="raw")
    x = tmp_path / "x"
    write_raw(x)
    with (x / "ImageList/TrainImagelist.txt").open("a") as f:
        f.write("zebra\\9999_1.jpg\n")
    with pytest.raises(DataError, match=r"TrainImagelist.txt lists 1 image\(s\) that Imagelist.txt does not"):
        load_dataset("nus-wide", root=str(x))


def test_auto_source_without_images_reads_features(tmp_path):
    write_raw(tmp_path, images=False)
    with pytest.raises(DataError, match="NUS-WIDE: no feature files under"):
        load_dataset("nus-wide", root=str(tmp_path))
    with pytest.raises(DataError, match="needs the images in"):
        load_dataset("nus-wide", root=str(tmp_path), source="raw")


# ------------------------------------------------------------------------------ features
def _dcmh_arrays(n_per_class: int = 4, n_classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    lab = np.zeros((n_per_class * n_classes + 6, n_classes), dtype=np.uint8)
    for c in range(n_classes):
        lab[c * n_per_class : (c + 1) * n_per_class, c] = 1
    lab[-6:, 0] = 1
    lab[-6:-3, 1] = 1  # three rows with two labels
    rng.shuffle(lab)
    x = (lab @ rng.normal(size=(n_classes, 16)) + 0.1 * rng.normal(size=(len(lab), 16))).astype(np.float32)
    y = (rng.random((len(lab), 20)) < 0.3).astype(np.float64)
    y[:, 0] = 1  # no empty text
    return x, y, lab


def write_dcmh(folder: Path, tag: str = "tc10", v73_text: bool = True) -> tuple:
    h5py = pytest.importorskip("h5py")
    folder.mkdir(parents=True, exist_ok=True)
    x, y, lab = _dcmh_arrays()
    scipy.io.savemat(folder / f"nus-wide-{tag}-xall-vgg.mat", {"XAll": x})
    scipy.io.savemat(folder / f"nus-wide-{tag}-lall.mat", {"LAll": lab})
    if v73_text:  # MATLAB v7.3: HDF5 after a 512-byte header, arrays stored transposed
        path = folder / f"nus-wide-{tag}-yall.mat"
        with h5py.File(path, "w", userblock_size=512) as f:
            f["YAll"] = np.ascontiguousarray(y.T)
        with open(path, "r+b") as fh:
            fh.write(b"MATLAB 7.3 MAT-file".ljust(128, b" "))
    else:
        scipy.io.savemat(folder / f"nus-wide-{tag}-yall.mat", {"YAll": y})
    scipy.io.savemat(folder / f"nus-wide-{tag}-iall.mat", {"IAll": np.zeros((2, 2, 3, len(x)), np.uint8)})
    return x, y, lab


def test_dcmh_features_multi_and_single_label(tmp_path):
    x, y, lab = write_dcmh(tmp_path)
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi", test_size=10)
    assert ds.meta["format"] == "features" and ds.meta["layout"] == "one set + split"
    assert len(ds) == 46 and len(ds.split_indices("test")) == 10 and ds.is_multilabel
    assert ds.classes == [str(i) for i in range(10)]
    np.testing.assert_array_equal(ds.label_matrix(), lab.astype(bool))
    np.testing.assert_allclose(ds.features.text.pooled, y)  # the v7.3 file, transposed back
    assert ds.samples[0].id == "row-000000" and ds.samples[-1].id == "row-000045"
    assert all(s.text is None and s.image is None for s in ds.samples)
    assert not any("iall" in f for f in ds.meta["features_files"])
    single = load_dataset("nus-wide", root=str(tmp_path), subset="10", test_size=10)
    assert len(single) == 46 - 3 and not single.is_multilabel
    with pytest.raises(DataError, match="Pass test_size=N"):
        load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    names = [f"k{i}" for i in range(10)]
    named = load_dataset("nus-wide", root=str(tmp_path), test_size=10, class_names=names, subset="multi", concepts=["k0", "k1"])
    assert named.classes == ["k0", "k1"] and len(named) == 4 + 4 + 6


def test_dcmh_split_array_and_subset_tag(tmp_path):
    x, y, lab = write_dcmh(tmp_path, tag="tc21")
    write_dcmh(tmp_path, tag="tc10")
    scipy.io.savemat(tmp_path / "nus-wide-tc10-split.mat", {"is_test": (np.arange(len(x)) % 5 == 0).astype(np.uint8)})
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="10")
    assert all("tc10" in f for f in ds.meta["features_files"])
    assert ds.meta["arrays"]["test"]["split"].endswith("is_test")
    assert len(ds.split_indices("test")) == sum(1 for i in range(46) if i % 5 == 0 and lab[i].sum() == 1)
    only21 = tmp_path / "only21"
    write_dcmh(only21, tag="tc21")  # no tc10 files: subset "10" takes the top 10 of these
    assert len(load_dataset("nus-wide", root=str(only21), test_size=10)) == 43
    # both subsets' files given: XAll is in two files -> named as ambiguous
    with pytest.raises(DataError, match=r"in several files \(left out\): .*XAll"):
        load_dataset("nus-wide", root=str(tmp_path), subset="multi", features_file=str(tmp_path))


def test_hu_doc2vec_features_single_label(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "nus_wide_deep_doc2vec_data_42941.h5py", "w") as f:
        for split, n in (("train", 30), ("test", 20)):
            lab = np.arange(n) % 10 + 1
            f[f"{split}_imgs_deep"] = rng.normal(size=(n, 8)).astype(np.float32)
            f[f"{split}_text"] = rng.normal(size=(n, 5)).astype(np.float32)
            f[f"{split}_imgs_labels"] = lab
            f[f"{split}_texts_labels"] = lab
    ds = load_dataset("nus-wide", root=str(tmp_path))
    assert len(ds) == 50 and ds.classes == [str(i) for i in range(10)] and ds.meta["label_base"] == 1
    assert ds.samples[0].id == "train-000000" and ds.samples[30].labels == ("0",)
    with pytest.raises(DataError, match="subset 21 needs 21 concepts"):
        load_dataset("nus-wide", root=str(tmp_path), subset="21")


def test_features_and_raw_in_one_root(tmp_path):
    write_raw(tmp_path)
    x, y, lab = _dcmh_arrays()
    lab = lab[:, :10]
    scipy.io.savemat(
        tmp_path / "nus-wide.mat", {"XAll": x, "YAll": y, "LAll": lab[:, :10], "split": np.array(["train"] * 36 + ["test"] * 10)}
    )
    raw = load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    feats = load_dataset("nus-wide", root=str(tmp_path), source="features", subset="multi")
    assert raw.features is None and raw.has_texts and feats.features is not None and not feats.has_texts
    assert len(feats) == 46 and len(feats.split_indices("test")) == 10


def test_features_disagreeing_labels_and_lengths(tmp_path):
    rng = np.random.default_rng(1)
    img_lab = np.arange(40) % 10
    txt_lab = img_lab.copy()
    txt_lab[[1, 2]] = (txt_lab[[1, 2]] + 1) % 10
    arrays = {
        "I_tr": rng.normal(size=(30, 8)),
        "T_tr": rng.normal(size=(30, 4)),
        "L_tr": img_lab[:30, None],
        "I_te": rng.normal(size=(10, 8)),
        "T_te": rng.normal(size=(10, 4)),
        "L_te": img_lab[30:, None],
        "train_txt_lab": txt_lab[:30, None],
        "test_txt_lab": txt_lab[30:, None],
    }
    scipy.io.savemat(tmp_path / "nus-wide.mat", arrays)
    with pytest.raises(DataError, match=r"(?s)2 problem\(s\).*train-000001.*but text label"):
        load_dataset("nus-wide", root=str(tmp_path), source="features")
    ds = load_dataset("nus-wide", root=str(tmp_path), source="features", skip_bad=True)
    assert len(ds) == 38 and {p["sample"] for p in ds.meta["skipped"]} == {"train-000001", "train-000002"}
    arrays["T_te"] = rng.normal(size=(9, 4))
    scipy.io.savemat(tmp_path / "nus-wide.mat", arrays)
    with pytest.raises(DataError, match=r"test arrays disagree in rows: I_te 10, T_te 9"):
        load_dataset("nus-wide", root=str(tmp_path), source="features")
