"""The ``clip4cmr`` baseline: the prototype loss against a plain loop (and the authors'
squared-distance form), the loss choices, learning, checkpoints, options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import ConfigError
from gcrdp.losses import symmetric_infonce
from gcrdp.methods import (
    FitData,
    build_method,
    clip4cmr,  # registers "clip4cmr"
)
from gcrdp.methods.inputs import global_feature_set
from gcrdp.training.loop import as_tensors
from tests.helpers import one_hot, synthetic_features

SMALL = {"batch_size": 16, "hidden_dim": 16, "latent_dim": 8}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(seed: int = 0, dtype=np.float32, val: bool = True):
    feats, labels = synthetic_features(n_per_class=12, n_classes=12, seed=seed, dtype=dtype)
    y = one_hot(labels)
    train, held = np.flatnonzero(labels < 8), np.flatnonzero(labels >= 8)
    return (
        feats,
        y,
        FitData(
            train=feats.subset(train),
            train_labels=y[train],
            oversample=np.zeros(len(train), bool),
            val=feats.subset(held) if val else None,
            val_labels=y[held] if val else None,
        ),
    )


def _naive_prototype_loss(f, c, y, tau):
    """Per labelled row: −Σ_k t_ik log softmax_k(cos(f_i, c_k)/τ), t = y/|y|; mean over rows."""
    B, C = y.shape
    total, rows = 0, 0
    for i in range(B):
        n = int(y[i].sum())
        if n == 0:
            continue
        logits = [torch.dot(f[i], c[k]) / torch.linalg.vector_norm(c[k]) / tau for k in range(C)]
        lse = torch.log(sum(torch.exp(z) for z in logits))
        total = total - sum((float(y[i, k]) / n) * (logits[k] - lse) for k in range(C))
        rows += 1
    return total / rows


def test_prototype_loss_equals_a_plain_loop_with_gradients():
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    c = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 0, 1]], dtype=torch.bool)
    fast, ref = clip4cmr.prototype_loss(f, c, y, 0.3), _naive_prototype_loss(f, c, y, 0.3)
    torch.testing.assert_close(fast, ref)
    for a, b in zip(torch.autograd.grad(fast, (f, c)), torch.autograd.grad(ref, (f, c))):
        torch.testing.assert_close(a, b)


def test_prototype_loss_at_half_temperature_is_the_authors_squared_distance_form():
    """PAN / CLIP4CMR: logits −||f − c_k||² on unit vectors = 2·cos − 2 ⇒ τ = 0.5."""
    g = torch.Generator().manual_seed(1)
    f = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=-1)
    c = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=-1)
    cls = torch.tensor([0, 3, 1, 1, 2, 0])
    pan = F.cross_entropy(-torch.cdist(f, c).pow(2), cls)
    torch.testing.assert_close(clip4cmr.prototype_loss(f, c, F.one_hot(cls, 4).bool(), 0.5), pan)


def test_prototype_loss_without_labelled_rows_is_zero_with_zero_gradient():
    f = F.normalize(torch.randn(3, 4), dim=-1).requires_grad_(True)
    loss = clip4cmr.prototype_loss(f, torch.randn(2, 4), torch.zeros(3, 2, dtype=torch.bool), 0.5)
    assert float(loss.detach()) == 0.0
    (grad,) = torch.autograd.grad(loss, f)
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("loss", ["prototype", "contrastive", "both"])
def test_method_loss_is_the_chosen_combination(loss):
    _feats, _y, data = _data()
    m = build_method("clip4cmr", {**SMALL, "loss": loss, "contrastive_weight": 0.3, "prototype_weight": 2.0, "dropout": 0.0})
    torch.manual_seed(0)
    model = m.init_model(image_dim=12, text_dim=8, n_classes=12)
    t = as_tensors(global_feature_set(data.train.subset(np.arange(10)), "pooled"), data.train_labels[:10])
    batch = {k: v.float() if v.dtype != torch.bool else v for k, v in t.items()}
    total, parts = m._loss(model, batch)
    img = model.encode("image", batch["image_local"], batch["image_mask"])
    txt = model.encode("text", batch["text_local"], batch["text_mask"])
    con = symmetric_infonce(img, txt, 0.2)
    if loss == "contrastive":
        expect = con
    else:
        pro = clip4cmr.prototype_loss(img, model.prototypes, batch["labels"], 0.5) + clip4cmr.prototype_loss(
            txt, model.prototypes, batch["labels"], 0.5
        )
        expect = pro if loss == "prototype" else 0.3 * con + 2.0 * pro
    torch.testing.assert_close(total, expect)
    assert set(parts) == {"prototype": {"prototype"}, "contrastive": {"infonce"}, "both": {"infonce", "prototype"}}[loss]
    if loss == "contrastive":
        assert model.prototypes is None and "prototypes" not in model.state_dict()
    else:
        assert model.prototypes.shape == (12, 8) and "prototypes" in model.state_dict()
        np.testing.assert_allclose(model.prototypes.norm(dim=1).numpy(), 1.0, rtol=1e-6)


def test_fixed_prototypes_stay_learned_ones_move():
    _feats, _y, data = _data(val=False)
    fixed = build_method("clip4cmr", {**SMALL, "max_epochs": 2})
    torch.manual_seed(4)
    init = fixed.init_model(image_dim=12, text_dim=8, n_classes=12).prototypes.clone()
    fixed.fit(data, seed=4)
    assert torch.equal(fixed.model_.prototypes, init)
    assert not any(p is fixed.model_.prototypes for p in fixed.model_.parameters())
    learned = build_method("clip4cmr", {**SMALL, "max_epochs": 2, "learn_prototypes": True})
    learned.fit(data, seed=4)
    assert isinstance(learned.model_.prototypes, torch.nn.Parameter)
    assert not torch.equal(learned.model_.prototypes.detach(), init)


@pytest.mark.parametrize("loss", ["prototype", "contrastive", "both"])
def test_learns_retrieval_on_train_and_held_out_classes(loss):
    from gcrdp.evaluation import chance_map, cross_modal_metrics

    feats, y, data = _data(val=False)  # no early stopping: the loss alone has to do it
    m = build_method("clip4cmr", {**SMALL, "max_epochs": 20, "loss": loss})
    report = m.fit(data, seed=0)
    assert report.epochs == 20
    for cols, margin in ((slice(0, 8), 0.35), (slice(8, 12), 0.2)):
        idx = np.flatnonzero(y[:, cols].any(1))
        img, txt = m.embed_images(feats.image.subset(idx)), m.embed_texts(feats.text.subset(idx))
        assert img.shape == (len(idx), 8)
        np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
        res = cross_modal_metrics(img, txt, y[idx], img, txt, y[idx])
        assert res["mean_map"] > chance_map(y[idx], y[idx]) + margin, (cols, res["mean_map"])


def test_checkpoint_round_trip_keeps_the_prototypes(tmp_path):
    feats, _y, data = _data()
    opts = {**SMALL, "max_epochs": 4, "patience": 10, "loss": "both", "learn_prototypes": True}
    ref = build_method("clip4cmr", opts)
    ref.fit(data, seed=2)
    ref.save(tmp_path / "final")
    loaded = clip4cmr.CLIP4CMRMethod.load(tmp_path / "final")
    assert torch.equal(loaded.model_.prototypes, ref.model_.prototypes)
    assert np.array_equal(loaded.embed_images(feats.image), ref.embed_images(feats.image))
    assert np.array_equal(loaded.embed_texts(feats.text), ref.embed_texts(feats.text))


def test_fixed_prototypes_survive_a_save_load_round_trip(tmp_path):
    _feats, _y, data = _data()
    m = build_method("clip4cmr", {**SMALL, "max_epochs": 1})
    m.fit(data, seed=7)
    m.save(tmp_path / "m")
    loaded = clip4cmr.CLIP4CMRMethod.load(tmp_path / "m")
    assert torch.equal(loaded.model_.prototypes, m.model_.prototypes)  # a buffer, not re-drawn


def test_options_validation_and_config_round_trip():
    m = build_method(
        "clip4cmr", {"loss": "both", "input": "mean_local", "learn_prototypes": True, "prototype_temperature": 0.1, "num_layers": 1}
    )
    cfg = m.config_dict()
    assert cfg["method"] == "clip4cmr" and cfg["loss"] == "both" and cfg["learn_prototypes"] is True
    again = build_method("clip4cmr", {k: v for k, v in cfg.items() if k != "method"})
    assert again.config_dict() == cfg
    d = build_method("clip4cmr").config_dict()
    assert (d["hidden_dim"], d["latent_dim"], d["dropout"], d["num_layers"]) == (256, 1024, 0.1, 2)
    assert (d["loss"], d["input"], d["prototype_temperature"], d["learn_prototypes"]) == ("prototype", "pooled", 0.5, False)
    for opts, msg in [
        ({"loss": "triplet"}, "loss must be one of"),
        ({"input": "cls"}, "input must be one of"),
        ({"temperature": 0}, r"temperature must be in \(0, 10\]"),
        ({"prototype_temperature": 11}, r"prototype_temperature must be in \(0, 10\]"),
        ({"prototype_weight": -1}, "prototype_weight must be a finite number >= 0"),
        ({"learn_prototypes": "yes"}, "learn_prototypes must be true or false"),
        ({"num_layers": 3}, "num_layers must be 1 or 2"),
        ({"latent_dim": 0}, "latent_dim must be a positive integer"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"margin": 0.2}, r"Unknown method option\(s\) \['margin'\]"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            build_method("clip4cmr", opts)


def test_pooled_only_float16_and_mean_local_features():
    feats, labels = synthetic_features(n_per_class=8, n_classes=5, seed=1, dtype=np.float16)
    y = one_hot(labels)
    one = lambda m: ModalityFeatures(m.pooled[:, None, :], np.ones((len(m), 1), bool), m.pooled)
    pooled = FeatureSet(one(feats.image), one(feats.text), feats.sample_ids)
    for fs, inp, loss in (
        (pooled, "pooled", "prototype"),
        (pooled, "mean_local", "contrastive"),
        (feats, "pooled", "contrastive"),
        (feats, "mean_local", "both"),
    ):
        data = FitData(train=fs, train_labels=y, oversample=np.zeros(len(y), bool), val=fs, val_labels=y)
        m = build_method("clip4cmr", {**SMALL, "max_epochs": 3, "loss": loss, "input": inp})
        report = m.fit(data, seed=0)
        assert all(np.isfinite(h["loss"]) for h in report.history)
        emb = m.embed_texts(fs.text)
        assert emb.dtype == np.float32 and np.isfinite(emb).all()


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
    methods = ["clip4cmr", "clip4cmr@con", "clip4cmr@both"]
    cfg = RunConfig(
        dataset="features",
        dataset_options={"path": str(path), "split_seed": 1},  # seed 0 draws 2 of 8 classes unseen: refused
        shots=[0, 1],
        seeds=[0],
        methods=methods,
        device="cpu",
        method_options={
            "clip4cmr": {**SMALL, "max_epochs": 3},
            "clip4cmr@con": {**SMALL, "max_epochs": 3, "loss": "contrastive"},
            "clip4cmr@both": {**SMALL, "max_epochs": 3, "loss": "both", "input": "mean_local"},
        },
    )
    res = run_experiment(cfg, progress=False)
    assert len(res["records"]) == 6
    for rec in res["records"]:
        for d in ("i2t", "t2i"):
            assert math.isfinite(rec["test"][d]["map"]) and 0.0 < rec["test"][d]["map"] <= 1.0
