"""The method contract, checked for every registered method (issue 13): a clear error before
fit; fit; finite embeddings of one shared dimension; a save/load round trip that embeds
identically; pooled-only input (a set of one feature per sample)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import NotFittedError
from gcrdp.methods import METHODS, FitData, build_method
from gcrdp.methods.persistence import load_method, save_method
from tests.helpers import one_hot, synthetic_features

SMALL = {"max_epochs": 2, "hidden_dim": 16, "latent_dim": 8, "batch_size": 32}


def _options(name: str) -> dict:
    accepted = set(build_method(name).config_dict())
    return {k: v for k, v in SMALL.items() if k in accepted}


def _aligned(feats: FeatureSet) -> FeatureSet:
    """The same pooled features on both sides (zero-shot needs one shared space)."""
    return FeatureSet(
        feats.image,
        ModalityFeatures(feats.image.local, feats.image.mask, feats.image.pooled),
        feats.sample_ids,
        {"format": "clip-retrieval"},
    )


def _pooled_only(feats: FeatureSet) -> FeatureSet:
    one = lambda m: ModalityFeatures(m.pooled[:, None, :], np.ones((len(m), 1), bool), m.pooled)  # noqa: E731
    return FeatureSet(one(feats.image), one(feats.text), feats.sample_ids, dict(feats.meta))


def _data(name: str, pooled_only: bool = False):
    feats, labels = synthetic_features(n_per_class=10, n_classes=8, seed=4)
    if name == "zero-shot":
        feats = _aligned(feats)
    if pooled_only:
        feats = _pooled_only(feats)
    y = one_hot(labels)
    train, val = np.flatnonzero(labels < 6), np.flatnonzero(labels >= 6)
    fit = FitData(
        train=feats.subset(train),
        train_labels=y[train],
        oversample=np.zeros(len(train), bool),
        val=feats.subset(val),
        val_labels=y[val],
        class_names=tuple(f"c{i}" for i in range(8)),
        class_name_features=np.random.default_rng(0).normal(size=(8, feats.text.pooled_dim)).astype(np.float32),
    )
    return feats, fit


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_follows_the_contract(name, tmp_path):
    feats, data = _data(name)
    method = build_method(name, _options(name))
    with pytest.raises(NotFittedError, match="call fit"):
        method.embed_images(feats.image)
    t0 = time.perf_counter()
    report = method.fit(data, seed=0)
    elapsed = time.perf_counter() - t0
    # the fit's own time, measured inside fit: positive and no more than the call took
    assert 0 < report.seconds <= elapsed
    assert report.to_dict()["seconds"] == round(report.seconds, 3)
    img, txt = method.embed_images(feats.image), method.embed_texts(feats.text)
    assert img.shape[0] == txt.shape[0] == len(feats) and img.shape[1] == txt.shape[1]
    assert img.dtype == np.float32 and np.isfinite(img).all() and np.isfinite(txt).all()
    save_method(method, tmp_path / "m", fit=report.to_dict())
    loaded = load_method(tmp_path / "m")
    np.testing.assert_array_equal(loaded.embed_images(feats.image), img)
    np.testing.assert_array_equal(loaded.embed_texts(feats.text), txt)
    assert loaded.config_dict() == method.config_dict()


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_takes_pooled_only_features(name):
    feats, data = _data(name, pooled_only=True)
    method = build_method(name, _options(name))
    method.fit(data, seed=0)
    emb = method.embed_images(feats.image)
    assert emb.shape[0] == len(feats) and np.isfinite(emb).all()
