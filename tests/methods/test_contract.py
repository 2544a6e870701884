"""The method contract, checked for every registered method (issue 13): a clear error before
fit; fit; finite embeddings of one shared dimension; a save/load round trip that embeds
identically; pooled-only input (a set of one feature per sample); declared capabilities that
hold (issue 24); and for every resumable one, a killed fit that resumes bit-identical — each
also with issue 25's options for faster fits set (``pca_dim``, ``precision="bf16"``)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest

from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import ConfigError, NotFittedError
from gcrdp.methods import METHODS, build_method
from gcrdp.methods.base import CheckpointableMethod, MethodTags, method_tags
from gcrdp.methods.persistence import check_checkpointable, load_method, save_method
from tests.helpers import fit_data_by_class, synthetic_features

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
    fit = fit_data_by_class(
        feats,
        labels,
        6,
        class_names=tuple(f"c{i}" for i in range(8)),
        class_name_features=np.random.default_rng(0).normal(size=(8, feats.text.pooled_dim)).astype(np.float32),
    )
    return feats, fit


#: issue 25's options for faster fits, set: they follow the contract too (off, every case above)
FAST_FIT_CASES = [
    ("gap-infonce", {"pca_dim": 5}),
    ("gcrdp", {"pca_dim": 5}),
    ("gcrdp", {"precision": "bf16"}),
    ("gcrdp", {"pca_dim": 4, "precision": "bf16", "warm_start": True, "warm_epochs": 1}),
]
CONTRACT_CASES = [(n, {}) for n in METHODS.names()] + FAST_FIT_CASES


def _case_id(case) -> str:
    name, extra = case
    return name + "".join(f"-{k}={v}" for k, v in extra.items())


@pytest.mark.parametrize(("name", "extra"), CONTRACT_CASES, ids=[_case_id(c) for c in CONTRACT_CASES])
def test_every_method_follows_the_contract(name, extra, tmp_path):
    feats, data = _data(name)
    method = build_method(name, {**_options(name), **extra})
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


# ----------------------------------------------------------------------------- declared capabilities
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_declares_its_capabilities_and_has_what_they_promise(name):
    method = build_method(name, _options(name))
    tags = method_tags(method)
    assert isinstance(tags, MethodTags) and tags == method.tags()
    if tags.checkpointable:
        check_checkpointable(method)
        assert isinstance(method, CheckpointableMethod)
    if tags.refit:
        _feats, data = _data(name)
        report = method.fit(data, seed=0)
        options = method.refit_options(report)
        refit = build_method(name, {**_options(name), **options})  # options the method takes
        assert refit.config_dict().items() >= {k: v for k, v in options.items()}.items()
    assert tags.resumable <= tags.checkpointable  # resuming writes checkpoints
    if tags.needs_class_name_features:
        _feats, data = _data(name)
        data.class_name_features = None
        with pytest.raises(ConfigError, match="class_name_features"):
            build_method(name, _options(name)).fit(data, seed=0)


def test_the_trainable_methods_resume_and_the_closed_form_ones_do_not():
    """The kill-and-resume test below runs over what the tags say; this keeps it from running over
    nothing (every trainable method of the registry resumes)."""
    resumable = {n for n in METHODS.names() if method_tags(build_method(n)).resumable}
    assert resumable == set(METHODS.names()) - {"cca", "zero-shot"}
    assert method_tags(build_method("gcrdp", {"score": "sets"})).score_metric == "set-max:3"
    assert method_tags(build_method("flex-clip")).needs_class_name_features
    assert not any(method_tags(build_method(n)).needs_class_name_features for n in METHODS.names() if n != "flex-clip")


def test_a_method_that_declares_nothing_gets_the_defaults():
    class Plain:
        name = "plain"

    assert method_tags(Plain()) == MethodTags() and MethodTags().score_metric == "cosine"
    assert not MethodTags().checkpointable and not MethodTags().refit


# ----------------------------------------------------------------------------- kill and resume
@contextlib.contextmanager
def _killed_inside_epoch_2():
    """A ``KeyboardInterrupt`` at the second optimizer step after :func:`~gcrdp.training.fit_loop`
    finished (and checkpointed) epoch 1: the fit dies inside epoch 2, whatever the method."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from gcrdp.training.loop import observe_epochs

    state = {"armed": False, "steps": 0}

    def arm(info):
        if not info["start"] and info["epoch"] == 1:
            state["armed"] = True

    def step(_optimizer, _args, _kwargs):
        if state["armed"]:
            state["steps"] += 1
            if state["steps"] == 2:
                raise KeyboardInterrupt

    handle = register_optimizer_step_pre_hook(step)
    try:
        with observe_epochs(arm):
            yield state
    finally:
        handle.remove()


RESUMABLE = [n for n in METHODS.names() if method_tags(build_method(n)).resumable]
RESUME_CASES = [(n, {}) for n in RESUMABLE] + FAST_FIT_CASES[:3]


@pytest.mark.parametrize(("name", "extra"), RESUME_CASES, ids=[_case_id(c) for c in RESUME_CASES])
def test_a_killed_and_resumed_fit_ends_like_the_uninterrupted_one(name, extra, tmp_path):
    """Every resumable method (its tags), and issue 25's options set: a fit killed inside epoch
    2 and resumed from its checkpoint ends bit-identical to an uninterrupted one of the same seed
    — history, chosen epoch and embeddings (the torch RNG of dropout, the optimizer and the
    counters resume too; with ``pca_dim`` the basis is fitted again, the same)."""
    feats, data = _data(name)
    opts = {**_options(name), **extra, "max_epochs": 4, "patience": 10}
    ref = build_method(name, opts)
    ref_report = ref.fit(data, seed=2)
    killed = build_method(name, opts)
    with _killed_inside_epoch_2() as state, pytest.raises(KeyboardInterrupt):
        killed.fit(data, seed=2, checkpoint_dir=tmp_path / "last")
    assert state["steps"] == 2
    resumed = build_method(name, opts)
    report = resumed.fit(data, seed=2, checkpoint_dir=tmp_path / "last")
    assert report.extra["resumed_from_epoch"] == 1
    assert report.history == ref_report.history and len(report.history) == 4
    assert (report.best_epoch, report.best_val_map) == (ref_report.best_epoch, ref_report.best_val_map)
    assert np.array_equal(resumed.embed_images(feats.image), ref.embed_images(feats.image))
    assert np.array_equal(resumed.embed_texts(feats.text), ref.embed_texts(feats.text))
