"""The ``dscmr`` baseline: loss terms against plain loops, learning, checkpoints, options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import ConfigError, DataError
from gcrdp.methods import (
    FitData,
    build_method,
    dscmr,  # registers "dscmr"
)
from tests.helpers import one_hot, synthetic_features

SMALL = {"batch_size": 16, "hidden_dim": 16, "latent_dim": 8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(seed: int = 0, dtype=np.float32):
    feats, labels = synthetic_features(n_per_class=12, n_classes=12, seed=seed, dtype=dtype)
    y = one_hot(labels)
    train, val = np.flatnonzero(labels < 8), np.flatnonzero(labels >= 8)
    return (
        feats,
        y,
        FitData(
            train=feats.subset(train),
            train_labels=y[train],
            oversample=np.zeros(len(train), bool),
            val=feats.subset(val),
            val_labels=y[val],
        ),
    )


def _tensors(seed=0, B=5, D=4, C=3):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
    pu = torch.randn(B, C, generator=g, dtype=torch.float64, requires_grad=True)
    pv = torch.randn(B, C, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=torch.bool)[:B]
    return u, v, pu, pv, y


# ----------------------------------------------------------------------- naive references
def _norm(xs, squared):
    s = sum(x * x for x in xs)
    return s if squared else torch.sqrt(s)


def _naive_label(pu, pv, y, squared):
    B, C = y.shape
    total = 0
    for p in (pu, pv):
        total = total + sum(_norm([p[i, k] - float(y[i, k]) for k in range(C)], squared) for i in range(B)) / B
    return total


def _naive_common(u, v, y):
    B = y.shape[0]

    def cos(a, b):
        return sum(a[k] * b[k] for k in range(len(a))) / (_norm(list(a), False) * _norm(list(b), False))

    total = 0
    for a, b in ((u, u), (u, v), (v, v)):
        acc = 0
        for i in range(B):
            for j in range(B):
                s = 1.0 if any(bool(y[i, k]) and bool(y[j, k]) for k in range(y.shape[1])) else 0.0
                theta = 0.5 * cos(a[i], b[j])
                acc = acc + torch.log(1 + torch.exp(theta)) - s * theta
        total = total + acc / B**2
    return total


def _naive_invariance(u, v, squared):
    B, D = u.shape
    return sum(_norm([u[i, k] - v[i, k] for k in range(D)], squared) for i in range(B)) / B


def _grads(value, inputs):
    return torch.autograd.grad(value, inputs)


@pytest.mark.parametrize("norm", ["l2", "squared"])
def test_label_and_invariance_terms_equal_plain_loops_with_gradients(norm):
    u, v, pu, pv, y = _tensors()
    sq = norm == "squared"
    fast, ref = dscmr.dscmr_label_loss(pu, pv, y, norm), _naive_label(pu, pv, y, sq)
    torch.testing.assert_close(fast, ref)
    for a, b in zip(_grads(fast, (pu, pv)), _grads(ref, (pu, pv))):
        torch.testing.assert_close(a, b)
    fast, ref = dscmr.modality_invariance_loss(u, v, norm), _naive_invariance(u, v, sq)
    torch.testing.assert_close(fast, ref)
    for a, b in zip(_grads(fast, (u, v)), _grads(ref, (u, v))):
        torch.testing.assert_close(a, b)


def test_common_space_term_equals_plain_loops_with_gradients():
    u, v, _, _, y = _tensors(seed=1)
    fast, ref = dscmr.common_space_loss(u, v, y), _naive_common(u, v, y)
    torch.testing.assert_close(fast, ref)
    for a, b in zip(_grads(fast, (u, v)), _grads(ref, (u, v))):
        torch.testing.assert_close(a, b)


def test_similarity_is_binary_for_multi_label_rows_and_zero_for_unlabelled():
    y = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    s = dscmr.label_similarity(y, y)
    assert torch.equal(s, torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 0]]))


def test_total_is_the_weighted_sum_and_zero_rows_keep_l2_gradients_finite():
    u, v, pu, pv, y = _tensors(seed=2)
    total, parts = dscmr.dscmr_loss(u, v, pu, pv, y, alpha=0.3, beta=0.7)
    expect = parts["label"] + 0.3 * parts["common"] + 0.7 * parts["invariance"]
    assert math.isclose(float(total.detach()), expect, rel_tol=1e-9)
    # identical rows: ||u_i − v_i|| = 0 must not give NaN gradients
    same = u.detach().clone().requires_grad_(True)
    (g,) = _grads(dscmr.modality_invariance_loss(same, same.detach().clone()), (same,))
    assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0


def test_global_inputs_masked_mean_pooled_and_idempotent():
    feats, _ = synthetic_features(n_per_class=3, n_classes=2, seed=4)
    t = feats.text
    g = dscmr.global_inputs(t, "mean_local")
    expect = np.stack([t.local[i][t.mask[i]].astype(np.float64).mean(0) for i in range(len(t))])
    np.testing.assert_allclose(g.pooled, expect, rtol=1e-6)
    assert g.local.shape == (len(t), 1, t.dim) and g.mask.all() and g.local.dtype == np.float32
    again = dscmr.global_inputs(g, "mean_local")
    assert np.array_equal(again.pooled, g.pooled)
    p = dscmr.global_inputs(t, "pooled")
    assert np.array_equal(p.pooled, t.pooled.astype(np.float32))
    assert np.array_equal(dscmr.global_inputs(p, "pooled").pooled, p.pooled)
    with pytest.raises(ConfigError, match="input must be one of"):
        dscmr.global_inputs(t, "max")


# ----------------------------------------------------------------------------- the method
def test_dscmr_learns_transferable_common_space_and_logs_its_loss_parts():
    from gcrdp.evaluation import chance_map, cross_modal_metrics

    feats, y, data = _data()
    m = build_method("dscmr", {**SMALL, "max_epochs": 20})
    report = m.fit(data, seed=0)
    for key in ("label", "common", "invariance", "loss", "val_map"):
        assert key in report.history[0], key
    assert m.model_.classifier.out_features == 12  # one output per label column (all classes)
    held = np.flatnonzero(y[:, 8:].any(1))  # classes never seen in training
    img, txt = m.embed_images(feats.image.subset(held)), m.embed_texts(feats.text.subset(held))
    assert img.shape == (len(held), 8) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    res = cross_modal_metrics(img, txt, y[held], img, txt, y[held])
    assert res["mean_map"] > chance_map(y[held], y[held]) + 0.25


def test_checkpoint_round_trip_records_the_input_dims(tmp_path):
    feats, _y, data = _data()
    opts = {**SMALL, "max_epochs": 2, "patience": 10}
    ref = build_method("dscmr", opts)
    ref.fit(data, seed=2)
    ref.save(tmp_path / "final")
    loaded = dscmr.DSCMRMethod.load(tmp_path / "final")
    assert loaded.input_dims_ == {"image_dim": 12, "text_dim": 8, "n_classes": 12}
    assert np.array_equal(loaded.embed_images(feats.image), ref.embed_images(feats.image))
    assert np.array_equal(loaded.embed_texts(feats.text), ref.embed_texts(feats.text))


def test_options_validation_and_config_round_trip():
    m = build_method("dscmr", {"alpha": 0.01, "beta": 0.5, "norm": "squared", "input": "pooled", "lr": 1e-4})
    cfg = m.config_dict()
    assert cfg["method"] == "dscmr" and cfg["norm"] == "squared" and cfg["lr"] == 1e-4
    again = build_method("dscmr", {k: v for k, v in cfg.items() if k != "method"})
    assert again.config_dict() == cfg
    default = build_method("dscmr").config_dict()
    assert (default["hidden_dim"], default["latent_dim"], default["alpha"], default["beta"]) == (2048, 1024, 1e-3, 0.1)
    assert (default["norm"], default["input"], default["dropout"]) == ("l2", "mean_local", 0.0)
    for opts, msg in [
        ({"alpha": -1}, "alpha must be a finite number >= 0"),
        ({"beta": float("nan")}, "beta must be a finite number >= 0"),
        ({"norm": "l1"}, "norm must be one of"),
        ({"input": "cls"}, "input must be one of"),
        ({"hidden_dim": 0}, "hidden_dim must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"lambda": 1}, r"Unknown method option\(s\) \['lambda'\]"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            build_method("dscmr", opts)


def test_pooled_only_float16_and_pooled_input_features():
    feats, labels = synthetic_features(n_per_class=8, n_classes=5, seed=1, dtype=np.float16)
    y = one_hot(labels)
    one = lambda m: ModalityFeatures(m.pooled[:, None, :], np.ones((len(m), 1), bool), m.pooled)
    pooled = FeatureSet(one(feats.image), one(feats.text), feats.sample_ids)
    for fs, opts in ((pooled, {}), (feats, {}), (feats, {"input": "pooled"})):
        data = FitData(train=fs, train_labels=y, oversample=np.zeros(len(y), bool), val=fs, val_labels=y)
        m = build_method("dscmr", {**SMALL, "max_epochs": 3, **opts})
        report = m.fit(data, seed=0)
        assert all(np.isfinite(h["loss"]) for h in report.history)
        emb = m.embed_images(fs.image)
        assert emb.dtype == np.float32 and np.isfinite(emb).all()
    # on L = 1 features the two inputs are the same numbers
    a = build_method("dscmr", {**SMALL, "max_epochs": 2})
    b = build_method("dscmr", {**SMALL, "max_epochs": 2, "input": "pooled"})
    data = FitData(train=pooled, train_labels=y, oversample=np.zeros(len(y), bool))
    a.fit(data, seed=5), b.fit(data, seed=5)
    assert np.array_equal(a.embed_texts(pooled.text), b.embed_texts(pooled.text))


def test_pooled_input_reads_the_global_features_and_checks_their_dim():
    feats, labels = synthetic_features(n_per_class=6, n_classes=4, seed=2)
    rng = np.random.default_rng(0)
    wide = ModalityFeatures(
        feats.image.local, feats.image.mask, rng.normal(size=(len(feats), 5)).astype(np.float32)
    )  # pooled dim 5 ≠ local 12
    fs = FeatureSet(wide, feats.text, feats.sample_ids)
    y = one_hot(labels)
    m = build_method("dscmr", {**SMALL, "max_epochs": 1, "input": "pooled"})
    m.fit(FitData(train=fs, train_labels=y, oversample=np.zeros(len(y), bool)), seed=0)
    assert m.input_dims_["image_dim"] == 5
    assert m.embed_images(fs.image).shape == (len(fs), 8)
    with pytest.raises(DataError, match="image pooled features have dim 12, the model expects 5"):
        m.embed_images(feats.image)


def test_run_experiment_end_to_end_few_shot(tmp_path):
    from gcrdp.experiments import RunConfig, run_experiment

    feats, labels = synthetic_features(n_per_class=10, n_classes=8, seed=3)
    path = tmp_path / "feats.npz"
    np.savez(
        path,
        image=feats.image.local,
        image_mask=feats.image.mask,
        text=feats.text.local,
        text_mask=feats.text.mask,
        labels=labels,
        split=np.array(["test" if i % 10 < 3 else "train" for i in range(len(labels))]),
    )
    cfg = RunConfig(
        dataset="features",
        dataset_options={"path": str(path), "split_seed": 1},  # seed 0 draws 2 of 8 classes unseen: refused
        shots=[0, 1],
        seeds=[0],
        methods=["dscmr", "dscmr@sq"],
        device="cpu",
        method_options={"dscmr": {**SMALL, "max_epochs": 3}, "dscmr@sq": {**SMALL, "max_epochs": 3, "norm": "squared"}},
    )
    res = run_experiment(cfg, progress=False)
    assert len(res["records"]) == 4
    for rec in res["records"]:
        for d in ("i2t", "t2i"):
            assert math.isfinite(rec["test"][d]["map"]) and 0.0 < rec["test"][d]["map"] <= 1.0
    assert {r["method_config"]["norm"] for r in res["records"]} == {"l2", "squared"}
