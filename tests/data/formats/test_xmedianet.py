"""XMediaNet loader: the feature layouts cross-modal code shares (DSCMR folder, Hu et al.
Doc2Vec HDF5, one .mat with split keys, five-view cells), written here in their real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

import gcrdp.data.formats.xmedianet  # noqa: F401  (registers "xmedianet")
from gcrdp.data import load_dataset
from gcrdp.data.inspect import format_summary, summarize_dataset
from gcrdp.errors import ConfigError, DataError
from tests.helpers import save_mat_v73

N_CLASSES = 8


def _pairs(n_per_class: int, seed: int, n_classes: int = N_CLASSES, d_img: int = 12, d_txt: int = 6):
    """Class-clustered image/text features and their 0-based class ids (row order shuffled)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    rng.shuffle(labels)
    ci = np.random.default_rng(100).normal(size=(n_classes, d_img))
    ct = np.random.default_rng(101).normal(size=(n_classes, d_txt))
    img = ci[labels] + 0.3 * rng.normal(size=(len(labels), d_img))
    txt = ct[labels] + 0.3 * rng.normal(size=(len(labels), d_txt))
    return img.astype(np.float32), txt.astype(np.float32), labels


def write_dscmr(folder: Path, n_train: int = 6, n_test: int = 3, valid: int = 0, txt_lab: bool = False, base: int = 0) -> dict:
    """A DSCMR folder: one .mat per array keyed by the file stem, labels as (n, 1) ids."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2), ("valid", valid, 3)):
        if not n:
            continue
        img, txt, lab = _pairs(n, seed)
        scipy.io.savemat(folder / f"{split}_img.mat", {f"{split}_img": img})
        scipy.io.savemat(folder / f"{split}_txt.mat", {f"{split}_txt": txt})
        scipy.io.savemat(folder / f"{split}_img_lab.mat", {f"{split}_img_lab": (lab + base).reshape(-1, 1)})
        if txt_lab:
            scipy.io.savemat(folder / f"{split}_txt_lab.mat", {f"{split}_txt_lab": (lab + base).reshape(-1, 1)})
        out[split] = (img, txt, lab)
    return out


def test_dscmr_folder_counts_ids_and_features(tmp_path):
    got = write_dscmr(tmp_path, n_train=6, n_test=3)
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert ds.name == "xmedianet" and len(ds) == N_CLASSES * 9
    assert ds.classes == [str(i) for i in range(N_CLASSES)]
    assert len(ds.split_indices("train")) == 48 and len(ds.split_indices("test")) == 24
    per_class = {c: sum(s.labels == (c,) and s.split == "train" for s in ds.samples) for c in ds.classes}
    assert set(per_class.values()) == {6}
    assert ds.samples[0].id == "train-000000" and ds.samples[48].id == "test-000000"
    assert all(s.text is None and s.image is None for s in ds.samples)
    # features in sample order, pooled-only, ids equal
    assert ds.features is not None and ds.features.sample_ids == tuple(s.id for s in ds.samples)
    np.testing.assert_allclose(ds.features.image.pooled[:48], got["train"][0])
    np.testing.assert_allclose(ds.features.text.pooled[48:], got["test"][1])
    assert ds.features.image.local.shape == (72, 1, 12)
    assert [s.labels[0] for s in ds.samples[:48]] == [str(v) for v in got["train"][2]]
    assert ds.meta["layout"] == "split keys" and ds.meta["label_base"] == 0
    assert ds.meta["class_split_generated"] and ds.class_split is not None
    assert not ds.is_multilabel


def test_dscmr_valid_goes_to_train_and_can_be_dropped(tmp_path):
    write_dscmr(tmp_path, n_train=4, n_test=2, valid=1)
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert len(ds.split_indices("train")) == 8 * 5
    assert sum(s.id.startswith("valid-") for s in ds.samples) == 8
    assert ds.meta["valid_split"] == "train"
    ds2 = load_dataset("xmedianet", root=str(tmp_path), valid_split="drop")
    assert len(ds2) == 8 * 6
    ds3 = load_dataset("xmedianet", root=str(tmp_path), valid_split="test")
    assert len(ds3.split_indices("test")) == 8 * 3
    with pytest.raises(ConfigError, match="valid_split"):
        load_dataset("xmedianet", root=str(tmp_path), valid_split="val")


def test_hu_doc2vec_h5py_one_based_with_text_labels_and_class_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    names = [f"cls{i}" for i in range(N_CLASSES)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    with h5py.File(tmp_path / "xmedianet_deep_doc2vec_data.h5py", "w") as f:
        for split, n, seed in (("train", 5, 1), ("valid", 1, 3), ("test", 2, 2)):
            img, txt, lab = _pairs(n, seed)
            f[f"{split}_imgs_deep"] = img
            f[f"{split}_text"] = txt
            f[f"{split}_imgs_labels"] = lab + 1  # 1-based, as the Hu et al. files
            f[f"{split}_texts_labels"] = lab + 1
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert ds.classes == names and ds.meta["label_base"] == 1
    assert ds.meta["class_names"].startswith("file ")
    assert len(ds.split_indices("train")) == 8 * 6 and len(ds.split_indices("test")) == 16
    assert ds.meta["arrays"]["train"]["image"] == "train_imgs_deep"
    # label_base=0 makes the ids 1..8: id 8 has no name among 8 names -> problems
    with pytest.raises(DataError, match="not a class id in 0..7"):
        load_dataset("xmedianet", root=str(tmp_path), label_base=0)


def test_single_mat_with_split_keys_row_vector_labels_and_given_names(tmp_path):
    tr = _pairs(4, 1)
    te = _pairs(2, 2)
    scipy.io.savemat(
        tmp_path / "xmedianet.mat",
        {
            "img_train": tr[0],
            "text_train": tr[1],
            "label_train": tr[2].reshape(1, -1),
            "img_test": te[0],
            "text_test": te[1],
            "label_test": te[2].reshape(1, -1),
        },
    )
    names = [f"c{i}" for i in range(N_CLASSES)]
    ds = load_dataset("xmedianet", root=str(tmp_path), class_names=names)
    assert ds.classes == names and len(ds) == 48
    assert [s.labels[0] for s in ds.samples[:32]] == [names[v] for v in tr[2]]
    with pytest.raises(DataError, match="lists class name"):
        load_dataset("xmedianet", root=str(tmp_path), class_names=["a", "a"] + names[2:])


def test_five_view_cells(tmp_path):
    cells, labs = {}, {}
    for split, n, seed in (("train", 4, 1), ("valid", 1, 3), ("test", 2, 2)):
        img, txt, lab = _pairs(n, seed)
        views = np.empty((1, 5), dtype=object)
        lv = np.empty((1, 5), dtype=object)
        for v in range(5):
            views[0, v] = img if v == 0 else txt if v == 1 else np.zeros((3, 2))
            lv[0, v] = (lab + 1).reshape(-1, 1) if v < 2 else np.zeros((3, 1))
        cells[split], labs[f"{split}_labels"] = views, lv
    scipy.io.savemat(tmp_path / "XMediaNet5View_Doc2Vec.mat", {**cells, **labs})
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert ds.meta["layout"] == "five-view cells"
    assert len(ds) == 8 * 7 and len(ds.split_indices("test")) == 16
    assert ds.features.image.dim == 12 and ds.features.text.dim == 6


def test_explicit_keys_and_features_file(tmp_path):
    tr, te = _pairs(3, 1), _pairs(2, 2)
    scipy.io.savemat(tmp_path / "odd.mat", {"A": tr[0], "B": tr[1], "C": tr[2], "D": te[0], "E": te[1], "F": te[2]})
    keys = {"train_image": "A", "train_text": "B", "train_label": "C", "test_image": "D", "test_text": "E", "test_label": "F"}
    ds = load_dataset("xmedianet", root=str(tmp_path), features_file="odd.mat", keys=keys)
    assert len(ds) == 40 and ds.meta["arrays"]["test"]["label"] == "F"
    with pytest.raises(ConfigError, match="Unknown keys role"):
        load_dataset("xmedianet", root=str(tmp_path), features_file="odd.mat", keys={"train_img": "A"})
    with pytest.raises(DataError, match=r"no array 'Z'.*it has A \(24, 12\)"):
        load_dataset("xmedianet", root=str(tmp_path), features_file="odd.mat", keys={**keys, "test_label": "Z"})
    with pytest.raises(DataError, match="cannot tell the layout"):
        load_dataset("xmedianet", root=str(tmp_path), features_file="odd.mat")


# ------------------------------------------------------------------------------ errors
def test_no_features_names_what_was_looked_for(tmp_path):
    with pytest.raises(DataError, match=r"no feature files under .*xmedianet_deep_doc2vec_data\.h5py.*DSCMR"):
        load_dataset("xmedianet", root=str(tmp_path))
    with pytest.raises(DataError, match="features file not found: .*nope.mat"):
        load_dataset("xmedianet", root=str(tmp_path), features_file="nope.mat")
    with pytest.raises(DataError, match="XMediaNet folder not found"):
        load_dataset("xmedianet", root=str(tmp_path / "missing"))


def test_missing_test_split_is_named(tmp_path):
    write_dscmr(tmp_path, n_train=2, n_test=0)
    with pytest.raises(DataError, match="no test image/text arrays"):
        load_dataset("xmedianet", root=str(tmp_path))


def test_incomplete_split_names_missing_array(tmp_path):
    write_dscmr(tmp_path, n_train=2, n_test=2)
    (tmp_path / "test_txt.mat").unlink()
    with pytest.raises(DataError, match="test split .* has no text array"):
        load_dataset("xmedianet", root=str(tmp_path))


def test_row_counts_that_disagree_are_an_error(tmp_path):
    write_dscmr(tmp_path, n_train=3, n_test=2)
    scipy.io.savemat(tmp_path / "train_txt.mat", {"train_txt": np.ones((5, 6), np.float32)})
    with pytest.raises(DataError, match=r"train arrays disagree in rows: .*train_img 24.*train_txt 5"):
        load_dataset("xmedianet", root=str(tmp_path))


def test_text_label_length_mismatch_is_an_error(tmp_path):
    write_dscmr(tmp_path, n_train=3, n_test=2, txt_lab=True)
    scipy.io.savemat(tmp_path / "test_txt_lab.mat", {"test_txt_lab": np.zeros((3, 1))})
    with pytest.raises(DataError, match=r"test arrays disagree in rows: .*test_txt_lab 3"):
        load_dataset("xmedianet", root=str(tmp_path))


def test_feature_sizes_must_agree_between_splits(tmp_path):
    write_dscmr(tmp_path, n_train=3, n_test=2)
    scipy.io.savemat(tmp_path / "test_img.mat", {"test_img": np.ones((16, 5), np.float32)})
    with pytest.raises(DataError, match="image feature sizes differ between splits"):
        load_dataset("xmedianet", root=str(tmp_path))


def test_disagreeing_labels_empty_text_and_skip_bad(tmp_path):
    got = write_dscmr(tmp_path, n_train=4, n_test=2, txt_lab=True)
    lab = got["train"][2].copy()
    lab[[3, 7]] = (lab[[3, 7]] + 1) % N_CLASSES  # two text labels disagree
    scipy.io.savemat(tmp_path / "train_txt_lab.mat", {"train_txt_lab": lab.reshape(-1, 1)})
    txt = got["test"][1].copy()
    txt[5] = 0.0  # an empty text
    scipy.io.savemat(tmp_path / "test_txt.mat", {"test_txt": txt})
    with pytest.raises(DataError) as err:
        load_dataset("xmedianet", root=str(tmp_path))
    msg = str(err.value)
    assert "3 problem(s)" in msg and "train-000003" in msg and "train-000007" in msg
    assert "image label" in msg and "but text label" in msg and "test-000005" in msg and "all zero" in msg
    ds = load_dataset("xmedianet", root=str(tmp_path), skip_bad=True)
    assert len(ds) == 48 - 3
    skipped = {p["sample"] for p in ds.meta["skipped"]}
    assert skipped == {"train-000003", "train-000007", "test-000005"}
    assert ds.meta["n_skipped"] == 3
    assert ds.features.sample_ids == tuple(s.id for s in ds.samples)


def test_unpaired_files_get_a_hint(tmp_path):
    got = write_dscmr(tmp_path, n_train=4, n_test=2, txt_lab=True)
    scipy.io.savemat(tmp_path / "train_txt_lab.mat", {"train_txt_lab": ((got["train"][2] + 1) % N_CLASSES).reshape(-1, 1)})
    with pytest.raises(DataError, match="do not look paired"):
        load_dataset("xmedianet", root=str(tmp_path))


def test_bad_label_values_and_multi_hot_rows(tmp_path):
    got = write_dscmr(tmp_path, n_train=3, n_test=2)
    lab = got["train"][2].astype(np.float64).reshape(-1, 1)
    lab[2] = 2.5
    lab[4] = -1
    scipy.io.savemat(tmp_path / "train_img_lab.mat", {"train_img_lab": lab})
    onehot = np.eye(N_CLASSES)[got["test"][2]]
    onehot[0, (got["test"][2][0] + 1) % N_CLASSES] = 1  # two classes
    onehot[1] = 0  # none
    scipy.io.savemat(tmp_path / "test_img_lab.mat", {"test_img_lab": onehot})
    with pytest.raises(DataError, match="class ids in one split and"):
        load_dataset("xmedianet", root=str(tmp_path))
    scipy.io.savemat(
        tmp_path / "train_img_lab.mat", {"train_img_lab": np.eye(N_CLASSES)[got["train"][2]] * np.where(np.arange(24) == 2, 3, 1)[:, None]}
    )
    with pytest.raises(DataError) as err:
        load_dataset("xmedianet", root=str(tmp_path))
    msg = str(err.value)
    assert "train-000002" in msg and "is not 0/1" in msg
    assert "test-000000" in msg and "single-label" in msg and "test-000001" in msg and "no label" in msg
    ds = load_dataset("xmedianet", root=str(tmp_path), skip_bad=True)
    assert len(ds) == 40 - 3 and not ds.is_multilabel


def test_v73_mat_is_read_transposed(tmp_path):
    h5py = pytest.importorskip("h5py")
    tr, te = _pairs(3, 1), _pairs(2, 2)
    path = tmp_path / "xmedianet.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in (
            ("img_train", tr[0]),
            ("text_train", tr[1]),
            ("label_train", tr[2][None, :]),
            ("img_test", te[0]),
            ("text_test", te[1]),
            ("label_test", te[2][None, :]),
        ):
            f[name] = np.ascontiguousarray(arr.T)  # MATLAB stores column-major
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, written by a test".ljust(128, b" "))
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert len(ds) == 40 and ds.features.image.dim == 12
    np.testing.assert_allclose(ds.features.text.pooled[:24], tr[1])


# ------------------------------------------------------------------------------ published files
@pytest.mark.parametrize("v73", [False, True], ids=["v5", "v7.3"])
def test_xmedianet_features_mat_with_labels_of_both_splits_in_one_array(tmp_path, v73):
    """``XMediaNetFeatures.mat``: ``I_tr``/``I_te``/``T_tr``/``T_te`` and ``I_labs``/``T_labs``
    holding the train rows then the test rows (1-based ids, as (1, n) rows in v5)."""
    tr, te = _pairs(6, 1), _pairs(3, 2)
    labs = np.concatenate([tr[2], te[2]]) + 1
    arrays = {"I_tr": tr[0], "I_te": te[0], "T_tr": tr[1], "T_te": te[1], "I_labs": labs[None, :], "T_labs": labs[:, None]}
    path = tmp_path / "XMediaNetFeatures.mat"
    if v73:
        pytest.importorskip("h5py")
        save_mat_v73(path, arrays)
    else:
        scipy.io.savemat(path, arrays)
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert len(ds) == 72 and len(ds.split_indices("test")) == 24 and ds.meta["label_base"] == 1
    assert [s.labels[0] for s in ds.samples] == [str(v) for v in np.concatenate([tr[2], te[2]])]
    np.testing.assert_allclose(ds.features.image.pooled[48:], te[0])
    assert ds.meta["arrays"]["test"]["label"] == "I_labs[48:72]" and ds.meta["arrays"]["train"]["text_label"] == "T_labs[0:48]"
    text = format_summary(summarize_dataset(ds, check_files=False))
    form = "MATLAB v7.3 (HDF5)" if v73 else "MATLAB v5"
    assert (
        f"recognised: split keys + labels of all splits in one array layout (XMediaNetFeatures.mat): XMediaNetFeatures.mat ({form})" in text
    )


def test_joint_labels_of_the_wrong_length_name_the_arrays(tmp_path):
    tr, te = _pairs(6, 1), _pairs(3, 2)
    labs = np.concatenate([tr[2], te[2]])[:70]
    scipy.io.savemat(tmp_path / "XMediaNetFeatures.mat", {"I_tr": tr[0], "I_te": te[0], "T_tr": tr[1], "T_te": te[1], "I_labs": labs})
    with pytest.raises(DataError, match=r"I_labs has 70 rows but the train I_tr 48 \+ test I_te 24 = 72 pairs"):
        load_dataset("xmedianet", root=str(tmp_path))


def test_four_view_pairs_file_is_found(tmp_path):
    cells, labs = {}, {}
    for split, n, seed in (("train", 4, 1), ("test", 2, 2)):
        img, txt, lab = _pairs(n, seed)
        views = np.empty((1, 4), dtype=object)
        lv = np.empty((1, 4), dtype=object)
        for v in range(4):
            views[0, v] = img if v == 0 else txt if v == 1 else np.zeros((3, 2))
            lv[0, v] = (lab + 1).reshape(-1, 1) if v < 2 else np.zeros((3, 1))
        cells[split], labs[f"{split}_labels"] = views, lv
    scipy.io.savemat(tmp_path / "XMediaNet4View_pairs.mat", {**cells, **labs})
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert ds.meta["found_as"] == "XMediaNet4View_pairs.mat" and ds.meta["layout"] == "five-view cells"
    assert len(ds) == 8 * 6 and len(ds.split_indices("test")) == 16


def test_doc2vec_texts_doc_keys_and_a_file_named_xmedianet(tmp_path):
    h5py = pytest.importorskip("h5py")
    d = tmp_path / "features"
    d.mkdir()
    with h5py.File(d / "XMediaNet_doc2vec_vgg19.h5py", "w") as f:
        for split, n, seed in (("train", 4, 1), ("valid", 1, 3), ("test", 2, 2)):
            img, txt, lab = _pairs(n, seed)
            f[f"{split}_imgs_deep"] = img
            f[f"{split}_texts_doc"] = txt
            f[f"{split}_imgs_labels"] = lab
            f[f"{split}_texts_labels"] = lab
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert len(ds) == 8 * 7 and ds.meta["arrays"]["train"]["text"] == "train_texts_doc"
    assert ds.meta["found_as"].startswith("the one *xmedianet* file in")
    with h5py.File(d / "xmedianet_other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match=r"2 feature files named \*xmedianet\*: .*Name the one to read with features_file="):
        load_dataset("xmedianet", root=str(tmp_path))


# ------------------------------------------------------------------------------ pipeline
def test_run_experiment_end_to_end(tmp_path):
    from gcrdp.experiments import RunConfig, run_experiment

    write_dscmr(tmp_path, n_train=6, n_test=3)
    config = RunConfig(
        dataset="xmedianet",
        dataset_options={"root": str(tmp_path), "split_seed": 1},  # seed 0 draws 2 of 8 classes unseen: refused
        shots=[1],
        seeds=[0],
        methods=["gap-infonce"],
        device="cpu",
        method_options={"gap-infonce": {"max_epochs": 2, "batch_size": 16, "hidden_dim": 16, "latent_dim": 8}},
    )
    res = run_experiment(config, progress=False)
    (rec,) = res["records"]
    assert 0.0 <= rec["test"]["i2t"]["map"] <= 1.0 and 0.0 <= rec["test"]["t2i"]["map"] <= 1.0
    assert rec["split"]["n_fewshot"] == rec["split"]["n_test_classes"] >= 1  # one shot per unseen class
    assert res["resolved"]["dataset_meta"]["layout"] == "split keys"
    assert res["summary"][0]["i2t_map_mean"] == rec["test"]["i2t"]["map"]


def test_known_file_in_features_wins_over_another_xmedianet_file_in_root(tmp_path):
    tr, te = _pairs(6, 1), _pairs(3, 2)
    labs = np.concatenate([tr[2], te[2]])
    (tmp_path / "features").mkdir()
    arrays = {"I_tr": tr[0], "I_te": te[0], "T_tr": tr[1], "T_te": te[1], "I_labs": labs, "T_labs": labs}
    scipy.io.savemat(tmp_path / "features" / "XMediaNetFeatures.mat", arrays)
    scipy.io.savemat(tmp_path / "xmedianet_class_split.mat", {"seen": np.arange(5)})  # not features
    ds = load_dataset("xmedianet", root=str(tmp_path))
    assert ds.meta["found_as"] == "XMediaNetFeatures.mat" and len(ds) == 72
    # joint labels with a split whose features are missing: the missing array is named
    del arrays["I_tr"]
    arrays["I_train_unknown"] = tr[0]
    scipy.io.savemat(tmp_path / "features" / "XMediaNetFeatures.mat", arrays)
    with pytest.raises(DataError, match=r"the train split of .* has no image"):
        load_dataset("xmedianet", root=str(tmp_path))
