"""Dataset ``wikipedia``: fixtures written in the real formats (list files, categories, XML
articles that are not well-formed, MATLAB v5 and v7.3 feature files, an image tree), every
check and error, and the real data in ``../shared/data/wikipedia``."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gcrdp.data import load_dataset
from gcrdp.errors import ConfigError, DataError

CLASSES = ["art", "biology", "geography", "history"]
# as in the real categories_originalids.list (trailing spaces included): line i = original id i
ORIGINAL = [
    "Art, architecture and archaeology",
    "Awards, decorations and vexillology",
    "Biology",
    "Geography and places",
    "Health and medicine ",
    "History",
    "Warfare ",
]
ORIG_ID = {"art": 1, "biology": 3, "geography": 4, "history": 6}
N_TRAIN, N_TEST = 3, 2  # per class
D_IMG, D_TXT = 8, 3


def _hex(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def _rows():
    """[(split, text id, image id, class 1..4)] in list-file order (classes interleaved)."""
    out = []
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for k in range(n):
            for c in range(1, len(CLASSES) + 1):
                out.append((split, f"{_hex(f'{split}{k}{c}')}-{k + 1}", _hex(f"img{split}{k}{c}"), c))
    return out


ROWS = _rows()


def _article(tid: str, cat: int, name: str, body: str) -> str:
    return f'<document id="{tid}" name="{name}" cat="{cat}">\n<text>\n{body}\n</text>\n</document>\n'


def make_wikipedia(root: Path, *, images: bool = False, features: bool = True) -> dict:
    """A small Wikipedia folder in the real layout; returns the arrays written."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "categories.list").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    (root / "categories_originalids.list").write_text("\n".join(ORIGINAL) + "\n", encoding="utf-8")
    for split, fname in (("train", "trainset_txt_img_cat.list"), ("test", "testset_txt_img_cat.list")):
        lines = [f"{t}\t{i}\t{c}" for s, t, i, c in ROWS if s == split]
        (root / fname).write_text("\n".join(lines) + "\n", encoding="utf-8")
    texts = root / "texts"
    texts.mkdir()
    for n, (_, tid, _, c) in enumerate(ROWS):
        body = f"Article {n} about {CLASSES[c - 1]}."
        if n == 0:  # like the real files: a bare '&' and an HTML entity — not well-formed XML
            body = "Rock & roll in 1950&ndash;1960 &amp; the <b>art</b> of &quot;it&quot;."
        (texts / f"{tid}.xml").write_text(_article(tid, ORIG_ID[CLASSES[c - 1]], f"Page_{n}", body), encoding="utf-8")
    rng = np.random.default_rng(0)
    out = {}
    for split, suf in (("train", "tr"), ("test", "te")):
        labs = np.array([[c] for s, _, _, c in ROWS if s == split], dtype=np.uint8)
        out[f"I_{suf}"] = rng.random((len(labs), D_IMG))
        out[f"T_{suf}"] = rng.dirichlet(np.ones(D_TXT), size=len(labs))
        out[f"L_{suf}"] = labs
    if features:
        import scipy.io

        (root / "features").mkdir()
        scipy.io.savemat(root / "features" / "wikiData_with_labels.mat", out)
    if images:
        from PIL import Image

        for n, (_, _, iid, c) in enumerate(ROWS):
            d = root / "images" / CLASSES[c - 1]
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 3), (n * 10 % 256, 0, 0)).save(d / f"{iid}.jpg")
    return out


def _counts(ds, split):
    c = Counter(s.labels[0] for s in ds.samples if s.split == split)
    return [c[k] for k in ds.classes]


@pytest.fixture
def wiki(tmp_path):
    root = tmp_path / "wikipedia"
    arrays = make_wikipedia(root)
    return root, arrays


# ----------------------------------------------------------------------------- happy paths
def test_features_source(wiki):
    root, arr = wiki
    ds = load_dataset("wikipedia", root=root, source="features")
    assert ds.classes == CLASSES and len(ds) == len(ROWS)
    assert _counts(ds, "train") == [N_TRAIN] * 4 and _counts(ds, "test") == [N_TEST] * 4
    assert [s.id for s in ds.samples] == [r[1] for r in ROWS]
    assert [s.split for s in ds.samples] == [r[0] for r in ROWS]
    assert [s.labels for s in ds.samples] == [(CLASSES[r[3] - 1],) for r in ROWS]
    assert all(s.image is None for s in ds.samples)
    f = ds.features
    assert f.image.local.shape == (len(ROWS), 1, D_IMG) and f.text.local.shape == (len(ROWS), 1, D_TXT)
    assert f.image.mask.all() and f.text.mask.all()
    np.testing.assert_allclose(f.image.pooled, np.concatenate([arr["I_tr"], arr["I_te"]]), rtol=1e-6)
    np.testing.assert_allclose(f.text.local[:, 0], np.concatenate([arr["T_tr"], arr["T_te"]]), rtol=1e-6)
    assert f.sample_ids == tuple(r[1] for r in ROWS)
    # the article texts are attached, entities unescaped, the bare '&' kept
    assert ds.meta["texts"] == "attached" and all(s.text for s in ds.samples)
    assert ds.samples[0].text == 'Rock & roll in 1950\u20131960 & the <b>art</b> of "it".'
    assert ds.samples[1].text == "Article 1 about biology."
    assert ds.meta["features_file"].endswith("wikiData_with_labels.mat")
    assert ds.meta["n_skipped"] == 0 and ds.meta["skipped"] == []
    assert ds.meta["class_split_source"].startswith("shipped: wikipedia v1, restricted to the 4 present")
    assert set(ds.class_split.seen) | set(ds.class_split.unseen) == set(CLASSES)


def test_features_without_texts_and_without_labels(tmp_path):
    import scipy.io

    root = tmp_path / "w"
    arr = make_wikipedia(root, features=False)
    import shutil

    shutil.rmtree(root / "texts")
    (root / "features").mkdir()
    scipy.io.savemat(root / "features" / "raw_features.mat", {k: v for k, v in arr.items() if not k.startswith("L_")})
    ds = load_dataset("wikipedia", root=root)  # auto: no images folder → features
    assert ds.meta["format"] == "features" and ds.meta["texts"] == "absent"
    assert all(s.text is None for s in ds.samples) and ds.features is not None
    assert ds.meta["features_file"].endswith("raw_features.mat")


def test_raw_source_and_auto(tmp_path):
    root = tmp_path / "w"
    make_wikipedia(root, images=True)
    for source in ("raw", "auto"):
        ds = load_dataset("wikipedia", root=root, source=source)
        assert ds.meta["format"] == "raw" and ds.features is None
        assert [s.image.name for s in ds.samples] == [f"{r[2]}.jpg" for r in ROWS]
        assert all(s.image.is_file() and s.image.parent.name == s.labels[0] for s in ds.samples)
        assert ds.samples[0].text.startswith("Rock & roll in 1950\u20131960")
    ds = load_dataset("wikipedia", root=root, source="features")  # explicit source wins over auto
    assert ds.features is not None and all(s.image is None for s in ds.samples)
    # images_dir elsewhere
    (root / "images").rename(tmp_path / "pics")
    assert load_dataset("wikipedia", root=root).meta["format"] == "features"
    ds = load_dataset("wikipedia", root=root, source="raw", images_dir=tmp_path / "pics")
    assert all(s.image is not None for s in ds.samples)


def test_matlab_v73_features(wiki, tmp_path):
    """v7.3 .mat files are HDF5 (after a 512-byte header) with every array stored transposed."""
    h5py = pytest.importorskip("h5py")
    from gcrdp.data.formats.arrays import _is_hdf5, read_arrays

    root, arr = wiki
    v73 = root / "features" / "wikiData.mat"
    with h5py.File(v73, "w", userblock_size=512) as f:
        for k, v in arr.items():
            f[k] = np.ascontiguousarray(v.T)
    with open(v73, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    plain = tmp_path / "plain.mat"  # an HDF5 .mat without the header
    with h5py.File(plain, "w") as f:
        for k, v in arr.items():
            f[k] = np.ascontiguousarray(v.T)
    assert _is_hdf5(v73) and _is_hdf5(plain) and not _is_hdf5(root / "features" / "wikiData_with_labels.mat")
    for p in (v73, plain):
        got = read_arrays(p)
        assert set(got) == set(arr)
        for k, v in arr.items():
            assert got[k].shape == v.shape
            np.testing.assert_array_equal(got[k], v)
    ref = load_dataset("wikipedia", root=root, source="features")
    for p in (v73, plain):
        ds = load_dataset("wikipedia", root=root, source="features", features_file=p)
        np.testing.assert_array_equal(ds.features.image.local, ref.features.image.local)
        np.testing.assert_array_equal(ds.features.text.local, ref.features.text.local)
        assert [s.labels for s in ds.samples] == [s.labels for s in ref.samples]
    ds = load_dataset("wikipedia", root=root, source="features", features_file="features/wikiData.mat")
    assert ds.meta["features_file"] == str(v73.resolve())


# ----------------------------------------------------------------------------- problems
def test_label_disagreement_with_mat_labels(wiki):
    import scipy.io

    root, arr = wiki
    arr["L_tr"][2, 0] = 1  # the list file says 3
    arr["L_te"][5, 0] = 4  # the list file says 2
    scipy.io.savemat(root / "features" / "wikiData_with_labels.mat", arr)
    with pytest.raises(DataError) as exc:
        load_dataset("wikipedia", root=root, source="features")
    msg = str(exc.value)
    assert "2 problem(s) in 20 samples" in msg
    assert (
        f"trainset_txt_img_cat.list line 3 (sample {ROWS[2][1]!r}): class 3 in the list file but 1 in wikiData_with_labels.mat L_tr" in msg
    )
    assert "testset_txt_img_cat.list line 6" in msg and "L_te" in msg
    assert "--skip-bad" in msg
    ds = load_dataset("wikipedia", root=root, source="features", skip_bad=True)
    bad = {ROWS[2][1], ROWS[12 + 5][1]}
    assert len(ds) == len(ROWS) - 2 and bad.isdisjoint(s.id for s in ds.samples)
    assert ds.meta["n_skipped"] == 2 and {p["sample"] for p in ds.meta["skipped"]} == bad
    keep = [i for i, r in enumerate(ROWS) if r[1] not in bad]
    full = np.concatenate([arr["I_tr"], arr["I_te"]])
    np.testing.assert_allclose(ds.features.image.pooled, full[keep], rtol=1e-6)
    assert ds.features.sample_ids == tuple(s.id for s in ds.samples)


def test_xml_category_disagreement(wiki):
    root, _ = wiki
    _, tid, _, c = ROWS[4]  # class 1 (art)
    (root / "texts" / f"{tid}.xml").write_text(_article(tid, ORIG_ID["history"], "X", "A text."), encoding="utf-8")
    _, tid2, _, _ = ROWS[9]
    (root / "texts" / f"{tid2}.xml").write_text(_article(tid2, 2, "Y", "Awards."), encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_dataset("wikipedia", root=root, source="features")
    msg = str(exc.value)
    assert f"trainset_txt_img_cat.list line 5 (sample {tid!r}): class 1 in the list file but the XML category '6' maps to 4" in msg
    assert "category '2' maps to no class" in msg
    ds = load_dataset("wikipedia", root=root, source="features", skip_bad=True)
    assert {tid, tid2}.isdisjoint(s.id for s in ds.samples) and ds.meta["n_skipped"] == 2
    assert [p["sample"] for p in ds.meta["skipped"]] == [tid, tid2]


def test_xml_id_and_structure_problems(wiki):
    root, _ = wiki
    t1, t2, t3 = ROWS[1][1], ROWS[2][1], ROWS[3][1]
    (root / "texts" / f"{t1}.xml").write_text(_article("other-id", ORIG_ID["biology"], "X", "B."), encoding="utf-8")
    (root / "texts" / f"{t2}.xml").write_text("just some text without markup", encoding="utf-8")
    (root / "texts" / f"{t3}.xml").unlink()
    with pytest.raises(DataError) as exc:
        load_dataset("wikipedia", root=root, source="features")
    msg = str(exc.value)
    assert f"{t1}.xml has document id 'other-id'" in msg
    assert f"{t2}.xml has no <document …><text>…</text> structure" in msg
    assert f"{t3}.xml does not exist" in msg


def test_invalid_utf8_article(wiki):
    root, _ = wiki
    tid = ROWS[7][1]
    p = root / "texts" / f"{tid}.xml"
    p.write_bytes(_article(tid, ORIG_ID["history"], "X", "caf").encode()[:-30] + b"\xe9 au lait</text></document>")
    with pytest.raises(DataError) as exc:
        load_dataset("wikipedia", root=root, source="features")
    msg = str(exc.value)
    assert f"text file {p} is not valid UTF-8 (byte 0xe9 at offset" in msg
    assert "trainset_txt_img_cat.list line 8" in msg
    ds = load_dataset("wikipedia", root=root, source="features", skip_bad=True)
    assert tid not in {s.id for s in ds.samples}
    assert ds.meta["skipped"][0]["where"] == "trainset_txt_img_cat.list line 8"


def test_missing_images_grouped(tmp_path):
    root = tmp_path / "w"
    make_wikipedia(root, images=True)
    gone = [ROWS[0], ROWS[6], ROWS[15]]
    for _, _, iid, c in gone:
        (root / "images" / CLASSES[c - 1] / f"{iid}.jpg").unlink()
    with pytest.raises(DataError) as exc:
        load_dataset("wikipedia", root=root, source="raw")
    msg = str(exc.value)
    assert f"missing image files under {root / 'images'}: 3 sample(s)" in msg
    assert f"image {gone[0][2]!r} not found" in msg
    ds = load_dataset("wikipedia", root=root, skip_bad=True)
    assert len(ds) == len(ROWS) - 3 and ds.meta["n_skipped"] == 3
    assert {p["sample"] for p in ds.meta["skipped"]} == {r[1] for r in gone}


def test_list_file_problems(wiki):
    root, arr = wiki
    p = root / "trainset_txt_img_cat.list"
    lines = p.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].rsplit("\t", 1)[0] + "\t11"  # class out of range
    lines[1] = lines[1].rsplit("\t", 1)[0]  # two fields
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_dataset("wikipedia", root=root, source="features")
    msg = str(exc.value)
    assert "trainset_txt_img_cat.list line 1" in msg and "class '11' is not in 1..4 (categories.list)" in msg
    assert "trainset_txt_img_cat.list line 2" in msg and "expected 'text_id<TAB>image_id<TAB>class'" in msg
    assert "2 problem(s)" in msg  # no follow-up noise (.mat label, XML category) for those lines
    # the bad lines are skippable, and the feature rows stay aligned with the list file
    ds = load_dataset("wikipedia", root=root, source="features", skip_bad=True)
    assert [s.id for s in ds.samples] == [r[1] for r in ROWS[2:]]
    full = np.concatenate([arr["I_tr"], arr["I_te"]])
    np.testing.assert_allclose(ds.features.image.pooled, full[2:], rtol=1e-6)
    assert {p["sample"] for p in ds.meta["skipped"]} == {ROWS[0][1], ROWS[1][1]}


def test_duplicate_text_id_cannot_be_skipped(wiki):
    root, _ = wiki
    p = root / "testset_txt_img_cat.list"
    lines = p.read_text(encoding="utf-8").splitlines()
    lines[0] = ROWS[0][1] + "\t" + lines[0].split("\t", 1)[1]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for skip in (False, True):
        with pytest.raises(DataError, match=r"listed twice \(first: trainset_txt_img_cat.list line 1\)"):
            load_dataset("wikipedia", root=root, source="features", skip_bad=skip)


def test_missing_files(wiki, tmp_path):
    root, _ = wiki
    (root / "testset_txt_img_cat.list").rename(root / "x.list")
    with pytest.raises(DataError, match="testset_txt_img_cat.list not found: .*testset_txt_img_cat.list"):
        load_dataset("wikipedia", root=root, source="features")
    (root / "x.list").rename(root / "testset_txt_img_cat.list")
    (root / "categories.list").unlink()
    with pytest.raises(DataError, match="categories.list not found"):
        load_dataset("wikipedia", root=root, source="features")
    with pytest.raises(DataError, match="Wikipedia folder not found"):
        load_dataset("wikipedia", root=tmp_path / "absent")


def test_missing_features_and_texts(tmp_path):
    root = tmp_path / "w"
    make_wikipedia(root, features=False)
    with pytest.raises(DataError, match="needs a features file; none of features/wikiData_with_labels.mat"):
        load_dataset("wikipedia", root=root, source="features")
    with pytest.raises(DataError, match="features file not found: .*nope.mat"):
        load_dataset("wikipedia", root=root, source="features", features_file="nope.mat")
    with pytest.raises(DataError, match="needs the images in"):
        load_dataset("wikipedia", root=root, source="raw")
    import shutil

    shutil.rmtree(root / "texts")
    with pytest.raises(DataError, match="needs the articles in"):
        load_dataset("wikipedia", root=root, source="raw")
    with pytest.raises(ConfigError, match="source must be one of"):
        load_dataset("wikipedia", root=root, source="images")
    with pytest.raises(ConfigError, match="skip_bad"):
        load_dataset("wikipedia", root=root, skip_bad="yes")


def test_feature_rows_differ_from_list(wiki):
    import scipy.io

    root, arr = wiki
    bad = dict(arr, I_te=arr["I_te"][:-1])
    scipy.io.savemat(root / "features" / "wikiData_with_labels.mat", bad)
    with pytest.raises(DataError, match=r"I_te has shape \(7, 8\) but testset_txt_img_cat.list lists 8 pairs"):
        load_dataset("wikipedia", root=root, source="features")
    bad = dict(arr, L_tr=arr["L_tr"][:-2])
    scipy.io.savemat(root / "features" / "wikiData_with_labels.mat", bad)
    with pytest.raises(DataError, match="L_tr has 10 labels but trainset_txt_img_cat.list lists 12 pairs"):
        load_dataset("wikipedia", root=root, source="features")
    bad = {k: v for k, v in arr.items() if k != "T_tr"}
    scipy.io.savemat(root / "features" / "wikiData_with_labels.mat", bad)
    with pytest.raises(DataError, match=r"no train text \(T_tr\) array.*I_te \(8, 8\)"):
        load_dataset("wikipedia", root=root, source="features")
    bad = dict(arr, T_te=np.ones((8, D_TXT + 1)))
    scipy.io.savemat(root / "features" / "wikiData_with_labels.mat", bad)
    with pytest.raises(DataError, match="train and test feature dimensions differ"):
        load_dataset("wikipedia", root=root, source="features")


# ----------------------------------------------------------------------------- real data
REAL_TRAIN = [138, 272, 244, 248, 202, 178, 186, 144, 214, 347]
REAL_TEST = [34, 88, 96, 85, 65, 58, 51, 41, 71, 104]


def _list_counts(path: Path, n_classes: int) -> list[int]:
    c = Counter(int(line.split("\t")[2]) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [c[i] for i in range(1, n_classes + 1)]


@pytest.mark.shared_data
@pytest.mark.parametrize("features_file", ["features/raw_features.mat", "features/wikiData_with_labels.mat"])
def test_real_wikipedia_features(shared_data, features_file):
    root = shared_data / "wikipedia"
    classes = [c.strip() for c in (root / "categories.list").read_text(encoding="utf-8").splitlines() if c.strip()]
    train = _list_counts(root / "trainset_txt_img_cat.list", len(classes))
    test = _list_counts(root / "testset_txt_img_cat.list", len(classes))
    assert train == REAL_TRAIN and test == REAL_TEST and sum(train) == 2173 and sum(test) == 693

    ds = load_dataset("wikipedia", root=root, source="features", features_file=features_file)
    assert (
        ds.classes == classes == ["art", "biology", "geography", "history", "literature", "media", "music", "royalty", "sport", "warfare"]
    )
    assert _counts(ds, "train") == train and _counts(ds, "test") == test
    assert len(ds) == 2866 and ds.meta["n_train"] == 2173 and ds.meta["n_test"] == 693
    # list files, .mat labels (when present) and XML categories agree: nothing to skip
    assert ds.meta["n_skipped"] == 0 and ds.meta["skipped"] == []
    assert ds.features.image.local.shape == (2866, 1, 128) and ds.features.text.local.shape == (2866, 1, 10)
    assert ds.features.image.dim == 128 and ds.features.text.dim == 10
    assert np.isfinite(ds.features.image.pooled).all() and np.isfinite(ds.features.text.pooled).all()
    ids = [
        ln.split("\t")[0]
        for f in ("trainset_txt_img_cat.list", "testset_txt_img_cat.list")
        for ln in (root / f).read_text(encoding="utf-8").splitlines()
        if ln.strip()
    ]
    assert [s.id for s in ds.samples] == ids
    assert ds.meta["texts"] == "attached" and all(s.text and s.text.strip() for s in ds.samples)
    assert not any("&ndash;" in s.text or "&amp;" in s.text for s in ds.samples)
    assert ds.meta["class_split_source"] == "shipped: wikipedia v1"


@pytest.mark.shared_data
def test_real_wikipedia_mat_labels_match_list(shared_data):
    from gcrdp.data.formats.arrays import read_arrays

    root = shared_data / "wikipedia"
    arr = read_arrays(root / "features" / "wikiData_with_labels.mat")
    for suf, fname in (("tr", "trainset_txt_img_cat.list"), ("te", "testset_txt_img_cat.list")):
        text = (root / fname).read_text(encoding="utf-8")
        listed = [int(ln.split("\t")[2]) for ln in text.splitlines() if ln.strip()]
        assert arr[f"L_{suf}"].reshape(-1).tolist() == listed
    raw = read_arrays(root / "features" / "raw_features.mat")
    for k in ("I_tr", "I_te", "T_tr", "T_te"):
        np.testing.assert_array_equal(raw[k], arr[k])


@pytest.mark.slow  # run_experiment on the real features, 2 methods: about 20 s on 2 loaded cores
@pytest.mark.shared_data
def test_real_wikipedia_fewshot_run(shared_data):
    from gcrdp.experiments import RunConfig, run_experiment

    methods = ["gap-infonce", "gcrdp"]
    cfg = RunConfig(
        dataset="wikipedia",
        dataset_options={"root": str(shared_data / "wikipedia"), "source": "features"},
        shots=[1],
        seeds=[0],
        methods=methods,
        method_options={m: {"max_epochs": 3, "latent_dim": 64, "hidden_dim": 64} for m in methods},
        device="cpu",
    )
    res = run_experiment(cfg, progress=False)
    assert [r["method"] for r in res["records"]] == methods
    for rec in res["records"]:
        assert rec["shots"] == 1 and rec["seed"] == 0
        assert rec["split"]["n_fewshot"] == 5  # 5 unseen classes × 1 shot
        assert rec["split"]["n_test_query"] == sum(REAL_TEST[i] for i in (2, 4, 5, 7, 9))
        for d in ("i2t", "t2i"):
            v = rec["test"][d]["map"]
            assert math.isfinite(v) and 0.0 < v <= 1.0
        assert rec["fit"]["epochs"] in (1, 2, 3)
    assert res["resolved"]["n_samples"] == 2866 and res["resolved"]["n_classes"] == 10
    assert len(res["summary"]) == 2
