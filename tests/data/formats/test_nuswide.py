"""NUS-WIDE loader: a tiny copy of the official release layout (image lists with Windows
backslashes, Groundtruth label files, Concepts81.txt, All_Tags.txt, PNG images) and the
feature layouts (DCMH XAll/YAll/LAll incl. a v7.3 file, Hu et al. Doc2Vec HDF5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

import gcrdp.data.formats.nuswide  # noqa: F401  (registers "nus-wide")
from gcrdp.data import load_dataset
from gcrdp.data.inspect import format_summary, summarize_dataset
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


def test_raw_tag_line_with_id_and_no_tags_is_left_out_and_counted(tmp_path):
    """All_Tags.txt has lines with the photo id and no tag (e.g. line 6 is '147514'): such an
    image has no text; it is left out and counted, not a problem that stops the load."""
    rows = write_raw(tmp_path)
    lines = (tmp_path / "NUS_WID_Tags/All_Tags.txt").read_text().split("\n")
    lines[0] = rows[0]["photo"]  # the id, no tags
    lines[5] = rows[5]["photo"] + "   "  # the id and trailing blanks
    (tmp_path / "NUS_WID_Tags/All_Tags.txt").write_text("\n".join(lines))
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    assert len(ds) == len(rows) - 2 and ds.meta["n_skipped"] == 0
    assert ds.meta["n_without_tags"] == 2 and set(ds.meta["without_tags"]) == {_sid(rows[0]), _sid(rows[5])}
    assert {_sid(rows[0]), _sid(rows[5])}.isdisjoint(s.id for s in ds.samples)
    assert any("have no tags" in n for n in ds.meta["notes"])


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


def test_raw_images_stored_by_photo_id(tmp_path):
    """Images saved by Flickr downloaders in one folder, named by photo id (``<id>.jpg``,
    ``<n>_<id>_<secret>_m.jpg``, ``<id>_<secret>_m.jpg``) instead of the release's tree."""
    rows = write_raw(tmp_path, images=False)
    flickr = tmp_path / "Flickr"
    flickr.mkdir()
    for i, r in enumerate(rows):
        name = (
            f"{r['photo']}.jpg",
            f"{i}_{r['photo']}_3f2a9c1b7e_m.jpg",
            f"{r['photo']}_a1b2c3d4e5_m.jpg",
            f"{r['photo']}_3f2a9c1b7e.jpg",  # no size suffix
            f"{r['photo']}_{9876543210 + i}.jpg",  # an all-digit secret
        )[i % 5]
        Image.new("RGB", (4, 4), (i, 80, 160)).save(flickr / name, format="JPEG")
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    assert len(ds) == len(rows) and all(s.image is not None and s.image.parent == flickr for s in ds.samples)
    by_id = {s.id: s for s in ds.samples}
    for r in rows:
        assert r["photo"] in by_id[_sid(r)].image.name
    assert ds.meta["images_found_by"] == {"list path": 0, "file stem": 0, "photo id": len(rows)}
    assert "images found by photo id 44" in format_summary(summarize_dataset(ds, check_files=False))
    # a photo id claimed by two files is a problem of that sample, named
    (flickr / f"{rows[0]['photo']}_ffffffff_b.jpg").write_bytes((flickr / f"{rows[0]['photo']}.jpg").read_bytes())
    with pytest.raises(DataError, match=rf"several files are named by its photo id {rows[0]['photo']}"):
        load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi", skip_bad=True)
    assert len(ds) == len(rows) - 1


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


# ------------------------------------------------------------------------------ low-level features
def _matrix_lines(m: np.ndarray, sep: str = " ", fmt: str = "{:.6f}") -> list[str]:
    return [sep.join(fmt.format(v) for v in row) + sep for row in m]  # the release ends lines with a separator


def write_lowlevel(root: Path, rows: list[dict], *, split_files: bool = False, seed: int = 0) -> dict:
    """The release's Low_Level_Features (.dat text matrices, rows = Imagelist, or Train_/Test_
    files, rows = the split lists) and its 1000-d tag vectors (AllTags1k.txt, tab-separated)."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    feats = {"CH": rng.random((n, 64)).astype(np.float32), "BoW_int": rng.integers(0, 5, (n, 500)).astype(np.float32)}
    tags = (rng.random((n, 1000)) < 0.01).astype(np.float32)
    tags[:, 7] = 1
    low = root / "Low_Level_Features"
    low.mkdir(parents=True)
    fmt = {"CH": "{:.6f}", "BoW_int": "{:.0f}"}
    name = {"CH": "Normalized_CH", "BoW_int": "BoW_int"}
    train = [i for i, r in enumerate(rows) if r["split"] == "train"][::-1]  # TrainImagelist order (write_raw)
    test = [i for i, r in enumerate(rows) if r["split"] == "test"]
    (root / "NUS_WID_Tags").mkdir(exist_ok=True)
    if not split_files:
        for k, m in feats.items():
            (low / f"{name[k]}.dat").write_text("\n".join(_matrix_lines(m, fmt=fmt[k])) + "\n")
        (root / "NUS_WID_Tags/AllTags1k.txt").write_text("\n".join(_matrix_lines(tags, "\t", "{:.0f}")) + "\n")
    else:
        for split, idx in (("Train", train), ("Test", test)):
            for k, m in feats.items():
                # Train_Normalized_CH.dat, and BoW_Train_int.dat as the release names the split BoW files
                fname = f"BoW_{split}_int" if k == "BoW_int" else f"{split}_{name[k]}"
                (low / f"{fname}.dat").write_text("\r\n".join(_matrix_lines(m[idx], fmt=fmt[k])) + "\r\n")
            (root / f"NUS_WID_Tags/{split}_Tags1k.dat").write_text("\n".join(_matrix_lines(tags[idx], "\t", "{:.0f}")) + "\n")
    return {"features": feats, "tags": tags}


def test_lowlevel_features_of_the_release(tmp_path):
    rows = write_raw(tmp_path, images=False)
    got = write_lowlevel(tmp_path, rows)
    ds = load_dataset("nus-wide", root=str(tmp_path))  # no images, no feature files: the low-level features
    assert ds.meta["format"] == "lowlevel" and ds.meta["low_level"] == ["CH", "BoW_int"]
    assert len(ds) == 41 and ds.meta["subset"] == "10" and ds.classes == MAIN
    assert ds.features.image.dim == 64 + 500 and ds.features.text.dim == 1000
    order = [i for i, r in enumerate(rows) if _sid(r) in {s.id for s in ds.samples}]
    assert [s.id for s in ds.samples] == [_sid(rows[i]) for i in order]
    want = np.concatenate([got["features"]["CH"], got["features"]["BoW_int"]], axis=1)[order]
    np.testing.assert_allclose(ds.features.image.pooled, want, atol=1e-6)
    np.testing.assert_array_equal(ds.features.text.pooled, got["tags"][order])
    text = format_summary(summarize_dataset(ds, check_files=False))
    assert "recognised: the official release with its low-level features" in text
    assert "CH (Normalized_CH.dat, 64-d) + BoW_int (BoW_int.dat, 500-d); text features AllTags1k.txt (1000-d)" in text
    one = load_dataset("nus-wide", root=str(tmp_path), low_level="BoW_int", subset="multi")
    assert one.features.image.dim == 500 and len(one) == len(rows)
    with pytest.raises(ConfigError, match=r"low_level: .SIFT. not in .*\(it has CH, BoW_int\)"):
        load_dataset("nus-wide", root=str(tmp_path), low_level=["SIFT"])


def test_lowlevel_train_test_files_agree_with_whole_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rows = write_raw(a, images=False)
    write_lowlevel(a, rows)
    write_raw(b, images=False)
    write_lowlevel(b, rows, split_files=True)
    da = load_dataset("nus-wide", root=str(a), subset="multi")
    db = load_dataset("nus-wide", root=str(b), source="lowlevel", subset="multi")
    assert [s.id for s in da.samples] == [s.id for s in db.samples]
    np.testing.assert_array_equal(da.features.image.pooled, db.features.image.pooled)
    np.testing.assert_array_equal(da.features.text.pooled, db.features.text.pooled)
    assert "Train_Normalized_CH.dat + Test_Normalized_CH.dat" in db.meta["recognised"]
    assert "BoW_int (BoW_Train_int.dat + BoW_Test_int.dat, 500-d)" in db.meta["recognised"]
    # an image in neither split list has no row in the Train_/Test_ files: a problem, not an untagged image
    lst = b / "ImageList/TestImagelist.txt"
    lines = lst.read_text().split("\n")
    lst.write_text("\n".join(lines[1:]))
    for p in sorted((b / "Low_Level_Features").glob("*Test*.dat")) + [b / "NUS_WID_Tags/Test_Tags1k.dat"]:
        p.write_text("\n".join(p.read_text().replace("\r\n", "\n").split("\n")[1:]))
    with pytest.raises(DataError, match=r"is in neither TrainImagelist.txt nor TestImagelist.txt"):
        load_dataset("nus-wide", root=str(b), source="lowlevel", subset="multi")


def test_lowlevel_untagged_rows_counted_and_bad_files_named(tmp_path):
    rows = write_raw(tmp_path, images=False)
    got = write_lowlevel(tmp_path, rows)
    tags = got["tags"].copy()
    tags[3] = 0  # an image without tags
    (tmp_path / "NUS_WID_Tags/AllTags1k.txt").write_text("\n".join(_matrix_lines(tags, "\t", "{:.0f}")) + "\n")
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    assert len(ds) == len(rows) - 1 and ds.meta["n_without_tags"] == 1 and ds.meta["without_tags"] == [_sid(rows[3])]
    ch = tmp_path / "Low_Level_Features/Normalized_CH.dat"
    lines = ch.read_text().split("\n")
    ch.write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(DataError, match=r"Normalized_CH.dat has 42 lines but .*Imagelist.txt lists 44"):
        load_dataset("nus-wide", root=str(tmp_path))
    ch.write_text("\n".join(lines[:-1] + [lines[0], "", ""]))  # one line too many (then blank lines: ignored)
    with pytest.raises(DataError, match=r"Normalized_CH.dat has more than 44 lines but .*Imagelist.txt lists 44"):
        load_dataset("nus-wide", root=str(tmp_path))
    ch.write_text("\r\n".join(lines[:2] + [""] + lines[2:]))  # a blank line is not a row
    assert len(load_dataset("nus-wide", root=str(tmp_path), subset="multi")) == len(rows) - 1
    ch.write_text("\n".join(lines[:2] + [lines[2] + " 0.5"] + lines[3:]))
    with pytest.raises(DataError, match=r"Normalized_CH.dat line 3 has 65 numbers but the first line has 64"):
        load_dataset("nus-wide", root=str(tmp_path))
    ch.write_text("\n".join(lines[:2] + ["n/a " + lines[2].split(" ", 1)[1]] + lines[3:]))
    with pytest.raises(DataError, match=r"Normalized_CH.dat line 3: 'n/a' is not a number"):
        load_dataset("nus-wide", root=str(tmp_path))
    (tmp_path / "NUS_WID_Tags/AllTags1k.txt").unlink()
    ch.unlink()
    with pytest.raises(DataError, match=r"needs the tag vectors .*AllTags1k.txt"):
        load_dataset("nus-wide", root=str(tmp_path))
    with pytest.raises(DataError, match=r"low-level features .*read them with source='lowlevel'"):
        load_dataset("nus-wide", root=str(tmp_path), features_file="Low_Level_Features/BoW_int.dat")
    empty = tmp_path / "empty"
    write_raw(empty, images=False)
    with pytest.raises(DataError, match="needs the release's low-level features"):
        load_dataset("nus-wide", root=str(empty), source="lowlevel")


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
    """DCMH's files of a subset: XAll (v5), YAll (v7.3 by default), LAll with one column per
    concept of the subset (10 or 21), IAll raw images (ignored by the loader)."""
    h5py = pytest.importorskip("h5py")
    folder.mkdir(parents=True, exist_ok=True)
    x, y, lab = _dcmh_arrays(n_classes=int(tag[2:]))
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
    with pytest.warns(UserWarning, match="subset='tc10'"):
        single = load_dataset("nus-wide", root=str(tmp_path), subset="10", test_size=10)
    assert len(single) == 46 - 3 and not single.is_multilabel
    with pytest.raises(DataError, match="Pass test_size=N"):
        load_dataset("nus-wide", root=str(tmp_path), subset="multi")
    names = [f"k{i}" for i in range(10)]
    named = load_dataset("nus-wide", root=str(tmp_path), test_size=10, class_names=names, subset="multi", concepts=["k0", "k1"])
    assert named.classes == ["k0", "k1"] and len(named) == 4 + 4 + 6


def test_dcmh_tc10_default_is_the_published_multilabel_benchmark(tmp_path):
    """DCMH's NUS-WIDE-TC-10 files (XAll v5, YAll v7.3, LAll multi-hot, IAll raw images) read
    by default as published (DCMH, DJSRH, UCCH): every pair, multi-label; subset='10' keeps the
    single-label pairs and warns."""
    x, y, lab = write_dcmh(tmp_path)
    ds = load_dataset("nus-wide", root=str(tmp_path), test_size=10)
    assert len(ds) == 46 and ds.is_multilabel and ds.meta["subset"] == "tc10"
    assert ds.meta["n_pairs_with_several_labels"] == 3 and ds.meta["notes"] == []
    assert "published NUS-WIDE-TC-10 benchmark" in ds.meta["concept_selection"]
    np.testing.assert_array_equal(ds.label_matrix(), lab.astype(bool))
    text = format_summary(summarize_dataset(ds, check_files=False))
    assert "recognised: DCMH NUS-WIDE-TC-10 files; one set + split layout" in text
    assert "nus-wide-tc10-yall.mat (MATLAB v7.3 (HDF5))" in text and "nus-wide-tc10-lall.mat (MATLAB v5)" in text
    assert "subset: tc10 (multi-label)" in text
    assert "pass class_names= in the files' column order" in ds.meta["class_names"]
    assert load_dataset("nus-wide", root=str(tmp_path), test_size=10, subset="tc10").meta["n_in_subset"] == 46
    with pytest.warns(UserWarning, match=r"keeps the 43 of 46 pairs .* published NUS-WIDE-TC-10 benchmark"):
        single = load_dataset("nus-wide", root=str(tmp_path), subset="10", test_size=10)
    assert len(single) == 43 and "published NUS-WIDE-TC-10" in single.meta["notes"][0]


def test_dcmh_class_names_from_a_concept_list_beside_the_files(tmp_path):
    write_dcmh(tmp_path)
    (tmp_path / "Concepts81.txt").write_text("\n".join(f"c{i}" for i in range(81)) + "\n")
    ds = load_dataset("nus-wide", root=str(tmp_path), test_size=10)
    assert ds.classes == [str(i) for i in range(10)]  # 81 names for 10 columns: not used
    assert "Concepts81.txt lists 81, not 10" in ds.meta["class_names"]
    tc10 = ["sky", "clouds", "person", "water", "animal", "grass", "buildings", "window", "plants", "lake"]
    (tmp_path / "nus-wide-tc10-concepts.txt").write_text("\r\n".join(tc10) + "\r\n")
    ds = load_dataset("nus-wide", root=str(tmp_path), test_size=10)
    assert ds.classes == tc10 and ds.meta["class_names"].endswith("nus-wide-tc10-concepts.txt")
    # 81 label columns with the release's Concepts81.txt: its names
    big = tmp_path / "big"
    big.mkdir()
    lab81 = np.zeros((20, 81), np.uint8)
    lab81[np.arange(20), np.arange(20) % 3] = 1
    scipy.io.savemat(big / "nus-wide.mat", {"XAll": np.ones((20, 4)), "YAll": np.ones((20, 3)), "LAll": lab81})
    (big / "ConceptsList").mkdir()
    (big / "ConceptsList" / "Concepts81.txt").write_text("\n".join(f"c{i}" for i in range(81)))
    ds81 = load_dataset("nus-wide", root=str(big), test_size=5)
    assert ds81.classes == ["c0", "c1", "c2"] and ds81.meta["class_names"].endswith("Concepts81.txt")


def test_dcmh_clean_set_beside_the_plain_one_names_features_file(tmp_path):
    x, y, lab = write_dcmh(tmp_path, tag="tc21", v73_text=False)
    keep = lab.sum(axis=1) == 1  # a "-clean" set with other rows
    for name, key, arr in (("xall-vgg", "XAll", x), ("yall", "YAll", y), ("lall", "LAll", lab)):
        scipy.io.savemat(tmp_path / f"nus-wide-tc21-{name}-clean.mat", {key: arr[keep]})
    scipy.io.savemat(tmp_path / "nus-wide-tc21-param.mat", {"seed": 1})  # another file beside them: part of both lists
    with pytest.raises(DataError) as err:
        load_dataset("nus-wide", root=str(tmp_path), test_size=10)
    msg = str(err.value)
    assert "two DCMH feature sets" in msg and "features_file=" in msg
    clean = ["nus-wide-tc21-lall-clean.mat", "nus-wide-tc21-param.mat", "nus-wide-tc21-xall-vgg-clean.mat", "nus-wide-tc21-yall-clean.mat"]
    assert f"features_file={json.dumps(clean)} (the clean files)" in msg
    ds = load_dataset("nus-wide", root=str(tmp_path), test_size=10, features_file=clean)
    assert len(ds) == int(keep.sum()) and ds.meta["subset"] == "tc21"
    plain = ["nus-wide-tc21-lall.mat", "nus-wide-tc21-xall-vgg.mat", "nus-wide-tc21-yall.mat"]
    assert len(load_dataset("nus-wide", root=str(tmp_path), test_size=10, features_file=plain)) == 90
    # only the clean set in a folder: read, and said so
    only = tmp_path / "only"
    only.mkdir()
    for p in clean:
        (only / p).write_bytes((tmp_path / p).read_bytes())
    ds = load_dataset("nus-wide", root=str(only), test_size=10)
    assert len(ds) == int(keep.sum()) and ds.meta["found_as"].startswith("DCMH clean files")


def test_dcmh_split_array_and_subset_tag(tmp_path):
    write_dcmh(tmp_path, tag="tc21")
    x, y, lab = write_dcmh(tmp_path, tag="tc10")
    scipy.io.savemat(tmp_path / "nus-wide-tc10-split.mat", {"is_test": (np.arange(len(x)) % 5 == 0).astype(np.uint8)})
    with pytest.warns(UserWarning):
        ds = load_dataset("nus-wide", root=str(tmp_path), subset="10")
    assert all("tc10" in f for f in ds.meta["features_files"])
    assert ds.meta["arrays"]["test"]["split"].endswith("is_test")
    assert len(ds.split_indices("test")) == sum(1 for i in range(46) if i % 5 == 0 and lab[i].sum() == 1)
    assert len(load_dataset("nus-wide", root=str(tmp_path), subset="tc10")) == 46
    with pytest.raises(DataError, match=r"files of 2 subsets \(TC-10: .*; TC-21: .*\); say which to read with subset='tc10' or 'tc21'"):
        load_dataset("nus-wide", root=str(tmp_path))
    only21 = tmp_path / "only21"
    write_dcmh(only21, tag="tc21")  # unset subset: the TC-21 benchmark these files are
    ds21 = load_dataset("nus-wide", root=str(only21), test_size=10)
    assert len(ds21) == 90 and ds21.meta["subset"] == "tc21" and len(ds21.classes) == 21
    with pytest.warns(UserWarning, match="subset='tc21'"):
        assert (
            len(load_dataset("nus-wide", root=str(only21), test_size=10, subset="10")) == 43
        )  # the 40 one-concept rows + 3 of the 6 extra
    # both subsets' files given: XAll is in two files -> named as ambiguous
    with pytest.raises(DataError, match=r"in several files \(left out\): .*XAll"):
        load_dataset("nus-wide", root=str(tmp_path), subset="multi", features_file=str(tmp_path))


def test_one_file_tc21_with_split_keys(tmp_path):
    """``nus-wide-tc21.mat`` as noisy-label cross-modal code ships it: ``img_train``/``img_val``/
    ``img_test``, ``txt_*``, multi-hot ``train_labs``/``val_labs``/``test_labs``."""
    rng = np.random.default_rng(3)
    arrays = {}
    for split, n in (("train", 30), ("val", 6), ("test", 9)):
        lab = np.zeros((n, 21), np.uint8)
        lab[np.arange(n), np.arange(n) % 21] = 1
        lab[0, 20] = 1  # a pair with two labels
        arrays |= {f"img_{split}": rng.normal(size=(n, 8)), f"txt_{split}": rng.random((n, 5)) + 0.1, f"{split}_labs": lab}
    scipy.io.savemat(tmp_path / "nus-wide-tc21.mat", arrays)
    ds = load_dataset("nus-wide", root=str(tmp_path))
    assert ds.meta["found_as"] == "nus-wide-tc21.mat" and ds.meta["subset"] == "tc21" and ds.is_multilabel
    assert len(ds) == 45 and len(ds.split_indices("test")) == 9  # val joins train
    assert ds.meta["arrays"]["train"]["label"] == "train_labs" and "recognised: NUS-WIDE-TC-21 files; split keys" in format_summary(
        summarize_dataset(ds, check_files=False)
    )
    scipy.io.savemat(tmp_path / "nus-wide-tc10.mat", arrays)
    with pytest.raises(DataError, match=r"files of 2 subsets \(TC-10: nus-wide-tc10.mat; TC-21: nus-wide-tc21.mat\); say which"):
        load_dataset("nus-wide", root=str(tmp_path))
    assert load_dataset("nus-wide", root=str(tmp_path), subset="tc21").meta["found_as"] == "nus-wide-tc21.mat"


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


def test_gcrdp_inspect_says_which_form_it_recognised(tmp_path, capsys):
    from tests.cli.test_cli import assert_user_error, run_cli

    write_dcmh(tmp_path, tag="tc21")
    code, out, err = run_cli(capsys, "inspect", "--dataset", "nus-wide", "--root", tmp_path, "--dataset-option", "test_size=10")
    assert code == 0, err
    assert "recognised: DCMH NUS-WIDE-TC-21 files; one set + split layout" in out
    assert "subset: tc21 (multi-label), all 21 label columns of the files (the published NUS-WIDE-TC-21 benchmark" in out
    rows = write_raw(tmp_path / "raw", images=False)
    write_lowlevel(tmp_path / "raw", rows)
    code, out, err = run_cli(capsys, "inspect", "--dataset", "nus-wide", "--root", tmp_path / "raw")
    assert code == 0, err
    assert "recognised: the official release with its low-level features" in out and "format: lowlevel" in out
    for p in tmp_path.glob("nus-wide-tc21-*.mat"):
        (tmp_path / p.name.replace(".mat", "-clean.mat")).write_bytes(p.read_bytes())
    code, out, err = run_cli(capsys, "inspect", "--dataset", "nus-wide", "--root", tmp_path, "--dataset-option", "test_size=10")
    assert_user_error(code, err, "two DCMH feature sets", "--dataset-option 'features_file=[…]'")
    clean = json.dumps(sorted(p.name for p in tmp_path.glob("*-clean.mat") if "iall" not in p.name))
    code, out, err = run_cli(
        capsys,
        "inspect",
        "--dataset",
        "nus-wide",
        "--root",
        tmp_path,
        "--dataset-option",
        "test_size=10",
        "--dataset-option",
        f"features_file={clean}",
    )
    assert code == 0, err
    assert "recognised: DCMH NUS-WIDE-TC-21 files; one set + split layout (features_file)" in out and "lall-clean.mat (MATLAB v5)" in out


def test_the_cli_prints_the_subset_warning_plainly(tmp_path, capsys):
    from tests.cli.test_cli import run_cli

    write_dcmh(tmp_path)
    code, out, err = run_cli(
        capsys, "inspect", "--dataset", "nus-wide", "--root", tmp_path, "--dataset-option", "test_size=10", "--dataset-option", "subset=10"
    )
    assert code == 0, err
    assert "gcrdp inspect: warning: NUS-WIDE: subset='10' keeps the 43 of 46 pairs" in err and "UserWarning" not in err
    assert "note: NUS-WIDE: subset='10' keeps" in out  # and the summary keeps it


def test_options_say_which_source_reads_them(tmp_path):
    rows = write_raw(tmp_path)  # images present: auto would read the raw release
    write_lowlevel(tmp_path, rows)
    write_dcmh(tmp_path / "features")
    feats = load_dataset("nus-wide", root=str(tmp_path), test_size=10)  # an option of the features source
    assert feats.meta["format"] == "features" and len(feats) == 46
    low = load_dataset("nus-wide", root=str(tmp_path), low_level="CH")
    assert low.meta["format"] == "lowlevel" and low.features.image.dim == 64
    with pytest.raises(ConfigError, match=r"source 'raw' does not read low_level \(low_level: source='lowlevel'\)"):
        load_dataset("nus-wide", root=str(tmp_path), source="raw", low_level="CH")
    with pytest.raises(ConfigError, match=r"does not read .*features_file.*low_level"):
        load_dataset("nus-wide", root=str(tmp_path), features_file="features", low_level="CH")


def test_nested_low_level_folder_and_feature_file_stems(tmp_path):
    rows = write_raw(tmp_path, images=False)
    write_lowlevel(tmp_path, rows)
    low = tmp_path / "Low_Level_Features"
    inner = low / "Low_Level_Features"
    inner.mkdir()
    for p in low.glob("*.dat"):
        p.rename(inner / p.name)  # unpacked with its own folder inside
    ds = load_dataset("nus-wide", root=str(tmp_path), low_level=["Normalized_CH"], subset="multi")
    assert ds.meta["low_level"] == ["CH"] and ds.features.image.dim == 64


def test_tags_file_without_photo_ids_and_with_foreign_ids(tmp_path):
    rows = write_raw(tmp_path)
    mine = tmp_path / "tags_only.txt"
    mine.write_text("\n".join(" ".join(r["tags"]) for r in rows) + "\n")  # tags only, no id first
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="multi", tags_file=str(mine))
    assert ds.meta["tag_photo_ids_checked"] is False
    assert {s.id: s.text for s in ds.samples}[_sid(rows[0])] == " ".join(rows[0]["tags"])  # no tag lost
    other = tmp_path / "other_ids.txt"
    other.write_text("\n".join(f"{int(r['photo']) + 7} " + " ".join(r["tags"]) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"starts its lines with photo ids, but none is the photo id of its Imagelist.txt line"):
        load_dataset("nus-wide", root=str(tmp_path), subset="multi", tags_file=str(other))


def test_tc10_files_beside_the_one_file_tc21(tmp_path):
    write_dcmh(tmp_path, tag="tc10")
    arrays = {}
    for split, n in (("train", 20), ("test", 5)):
        lab = np.zeros((n, 21), np.uint8)
        lab[np.arange(n), np.arange(n) % 21] = 1
        arrays |= {f"img_{split}": np.ones((n, 3)), f"txt_{split}": np.ones((n, 2)), f"{split}_labs": lab}
    scipy.io.savemat(tmp_path / "nus-wide-tc21.mat", arrays)
    ds = load_dataset("nus-wide", root=str(tmp_path), subset="tc10", test_size=10)
    assert all("tc10" in f for f in ds.meta["features_files"]) and len(ds) == 46
    assert load_dataset("nus-wide", root=str(tmp_path), subset="tc21").meta["found_as"] == "nus-wide-tc21.mat"
    with pytest.raises(DataError, match=r"files of 2 subsets \(TC-10: nus-wide-tc10-lall.mat, .*; TC-21: nus-wide-tc21.mat\)"):
        load_dataset("nus-wide", root=str(tmp_path), test_size=10)
    only21 = tmp_path / "only21"
    only21.mkdir()
    (only21 / "nus-wide-tc21.mat").write_bytes((tmp_path / "nus-wide-tc21.mat").read_bytes())
    with pytest.warns(UserWarning, match=r"subset='tc10' asked for, but the files found are NUS-WIDE-TC-21"):
        ds = load_dataset("nus-wide", root=str(only21), subset="tc10")
    assert len(ds.classes) == 10 and "not the published NUS-WIDE-TC-10 files" in ds.meta["notes"][0]
