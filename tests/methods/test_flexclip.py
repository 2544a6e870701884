"""FLEX-CLIP (``flex-clip``): the conditional VAE-GAN feature generator, its loss terms against
naive references, the gated residual projection, fitting, checkpoints/resume and the runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import ConfigError, DataError
from gcrdp.losses import symmetric_infonce
from gcrdp.methods import FitData, build_method
from gcrdp.methods.base import flatten_options, method_tags
from gcrdp.methods.flexclip import (
    FlexCLIPConfig,
    FlexCLIPMethod,
    GatedResidualProjection,
    GeneratorConfig,
    bce_critic_loss,
    bce_generator_loss,
    calibrated_nll,
    class_conditions,
    fit_feature_generator,
    gaussian_kl,
    gradient_penalty,
    input_vectors,
    plan_targets,
    reconstruction_nll,
    vae_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from tests.helpers import one_hot, synthetic_features

SMALL = {
    "batch_size": 16,
    "hidden_dim": 16,
    "latent_dim": 8,
    "generator": {"hidden_dim": 32, "latent_dim": 4, "steps": 40, "batch_size": 32},
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one torch thread is much faster on a shared CI machine (and changes no result
    of stage 1, which always runs single-threaded)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _fewshot_data(seed: int = 0, shots: int = 1, n_classes: int = 12, names_dim: int = 16):
    """Classes 0-5 seen (train), 6-7 validation, 8-11 unseen with ``shots`` train pairs each."""
    feats, labels = synthetic_features(n_per_class=12, n_classes=n_classes, seed=seed)
    y = one_hot(labels)
    train = np.flatnonzero(labels < 6)
    val = np.flatnonzero((labels >= 6) & (labels < 8))
    few = np.concatenate([np.flatnonzero(labels == c)[:shots] for c in range(8, n_classes)]).astype(np.int64)
    test = np.setdiff1d(np.flatnonzero(labels >= 8), few)
    tr = np.sort(np.concatenate([train, few]))
    names = np.random.default_rng(seed).normal(size=(n_classes, names_dim)).astype(np.float32)
    data = FitData(
        train=feats.subset(tr),
        train_labels=y[tr],
        oversample=np.isin(tr, few),
        val=feats.subset(val),
        val_labels=y[val],
        class_names=tuple(f"c{i}" for i in range(n_classes)),
        class_name_features=names,
    )
    return feats, y, data, test


# ------------------------------------------------------------------------ (a) the generator
def test_generator_samples_follow_the_class_statistics_also_for_a_rare_class():
    """12 classes of correlated 2-D Gaussians with means on a circle; the condition is the
    (noisy) direction of the mean. Class 11 has only 4 training samples: its samples must still
    have the right mean and (roughly) the right covariance, learnt from the other classes."""
    rng = np.random.default_rng(0)
    k = 12
    ang = 2 * np.pi * np.arange(k) / k
    means = 3.0 * np.stack([np.cos(ang), np.sin(ang)], 1)
    chol = np.array([[0.5, 0.0], [0.3, 0.25]])
    cov = chol @ chol.T
    counts = [150] * (k - 1) + [4]
    x = np.concatenate([means[c] + rng.normal(size=(n, 2)) @ chol.T for c, n in enumerate(counts)])
    lab = np.repeat(np.arange(k), counts)
    cond = (means / 3.0 + 0.02 * rng.normal(size=(k, 2))).astype(np.float32)
    cfg = GeneratorConfig(latent_dim=4, hidden_dim=64, steps=600, batch_size=128)
    model, losses = fit_feature_generator(x, cond[lab], cfg, seed=0)
    assert set(losses) == {"critic", "recon", "kl", "adversarial"}
    g = torch.Generator().manual_seed(1)
    sd = np.sqrt(np.diag(cov))
    for c in (0, 5, k - 1):
        s = model.sample(torch.from_numpy(np.repeat(cond[c : c + 1], 4000, 0)), g).numpy()
        assert np.all(np.abs(s.mean(0) - means[c]) < 0.25), (c, s.mean(0), means[c])
        ratio = s.std(0) / sd
        assert np.all((ratio > 0.75) & (ratio < 1.35)), (c, ratio)
        corr = np.corrcoef(s.T)[0, 1]
        assert 0.35 < corr < 0.95, (c, corr)  # true 0.77: the GAN term recovers it (the VAE alone gives ~0.2)
    # deterministic from the seed (and the tag)
    short = GeneratorConfig(latent_dim=4, hidden_dim=16, steps=20)
    a, _ = fit_feature_generator(x, cond[lab], short, seed=0)
    b, _ = fit_feature_generator(x, cond[lab], short, seed=0)
    c, _ = fit_feature_generator(x, cond[lab], short, seed=0, tag=1)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.decoder[0].weight, c.decoder[0].weight)


# ------------------------------------------------------------------- (b) the loss terms
def test_vae_terms_match_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    ref_kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), ref_kl)

    x, x_hat = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    const = 0.5 * 4 * math.log(2 * math.pi)
    ref_unit = -torch.distributions.Normal(x_hat, 1.0).log_prob(x).sum(-1) - const
    torch.testing.assert_close(reconstruction_nll(x, x_hat), ref_unit)
    sigma = torch.stack([((x[:, j] - x_hat[:, j]) ** 2).mean().sqrt() for j in range(4)])  # per-dimension ML σ
    ref_cal = -torch.distributions.Normal(x_hat, sigma).log_prob(x).sum(-1) - const
    torch.testing.assert_close(calibrated_nll(x, x_hat), ref_cal)

    mu2, lv2 = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    for var, nll in (("unit", ref_unit), ("calibrated", ref_cal)):
        total, parts = vae_loss(x, x_hat, mu2, lv2, kl_weight=0.3, decoder_variance=var)
        torch.testing.assert_close(total, nll.mean() + 0.3 * gaussian_kl(mu2, lv2).mean())
        assert parts["recon"] == pytest.approx(float(reconstruction_nll(x, x_hat).mean()))


def test_gan_losses_and_gradient_penalty_match_naive_references():
    torch.manual_seed(1)
    d_real, d_fake = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    assert float(wgan_critic_loss(d_real, d_fake)) == pytest.approx(float(d_fake.mean() - d_real.mean()))
    assert float(wgan_generator_loss(d_fake)) == pytest.approx(float(-d_fake.mean()))
    sig = torch.sigmoid
    ref_d = -(torch.log(sig(d_real)).mean() + torch.log(1 - sig(d_fake)).mean())
    assert float(bce_critic_loss(d_real, d_fake)) == pytest.approx(float(ref_d))
    assert float(bce_generator_loss(d_fake)) == pytest.approx(float(-torch.log(sig(d_fake)).mean()))

    net = torch.nn.Sequential(torch.nn.Linear(3 + 2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()

    def critic(x, c):
        return net(torch.cat([x, c], -1)).squeeze(-1)

    real, fake = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    cond, alpha = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, 1, dtype=torch.float64)
    pens = []
    for i in range(5):  # one sample at a time
        xi = (alpha[i] * real[i] + (1 - alpha[i]) * fake[i]).clone().requires_grad_(True)
        (gi,) = torch.autograd.grad(critic(xi[None], cond[i : i + 1]).sum(), xi)
        pens.append((gi.norm() - 1) ** 2)
    gp = gradient_penalty(critic, real, fake, cond, alpha)
    torch.testing.assert_close(gp, torch.stack(pens).mean())
    gp.backward()  # differentiable in the critic's weights (create_graph)
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()


def _naive_class_contrastive(img, txt, labels, tau):
    b = img.shape[0]
    share = (labels.double() @ labels.double().T) > 0
    per = []
    for a, c in ((img, txt), (txt, img)):
        rows = []
        for i in range(b):
            logits = torch.stack([a[i] @ c[j] for j in range(b)]) / tau
            logp = logits - torch.logsumexp(logits, 0)
            pos = [j for j in range(b) if j == i or share[i, j]]
            rows.append(-sum(logp[j] for j in pos) / len(pos))
        per.append(torch.stack(rows).mean())
    return 0.5 * (per[0] + per[1])


def test_stage2_loss_is_the_class_aware_cross_modal_infonce_plus_label_term():
    m = FlexCLIPMethod.from_options({"latent_dim": 6, "hidden_dim": 8, "temperature": 0.3, "label_weight": 0.5, "dropout": 0.0})
    torch.manual_seed(0)
    model = m.init_model(image_dim=5, text_dim=4, n_classes=3)
    labels = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.bool)
    xi, xt = torch.randn(5, 5), torch.randn(5, 4)
    batch = {
        "image_local": xi[:, None],
        "image_mask": torch.ones(5, 1, dtype=torch.bool),
        "text_local": xt[:, None],
        "text_mask": torch.ones(5, 1, dtype=torch.bool),
        "labels": labels,
    }
    loss, parts = m._loss(model, batch)
    zi, zt = model.encode_image(xi), model.encode_text(xt)
    con = _naive_class_contrastive(zi.double(), zt.double(), labels, 0.3).detach()
    assert parts["contrastive"] == pytest.approx(float(con), rel=1e-5)
    bce = lambda z: F.binary_cross_entropy_with_logits(model.classifier(z), labels.float())
    lab = (0.5 * (bce(zi) + bce(zt))).detach()
    assert parts["label"] == pytest.approx(float(lab), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(con) + 0.5 * float(lab), rel=1e-5)
    # without class positives: exactly the CLIP loss
    m2 = FlexCLIPMethod.from_options({"latent_dim": 6, "hidden_dim": 8, "temperature": 0.3, "class_positives": False, "dropout": 0.0})
    m2.model_ = model
    _, p2 = m2._loss(model, batch)
    assert p2["contrastive"] == pytest.approx(float(symmetric_infonce(zi, zt, 0.3).detach()), rel=1e-5)


# -------------------------------------------------------- (c) the gated residual projection
def _fixed_weights(head: GatedResidualProjection) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_gate_zero_is_the_linear_skip_and_gate_one_the_mlp(value):
    head = GatedResidualProjection(5, FlexCLIPConfig(latent_dim=4, hidden_dim=7, dropout=0.0, gate="fixed", gate_value=value))
    _fixed_weights(head)
    head.eval()
    x = torch.randn(6, 5)
    w1, b1 = head.mlp[0].weight, head.mlp[0].bias
    w2, b2 = head.mlp[3].weight, head.mlp[3].bias
    mlp = F.gelu(x @ w1.T + b1) @ w2.T + b2
    skip = x @ head.skip.weight.T + head.skip.bias
    want = F.normalize(skip if value == 0.0 else mlp, dim=-1)
    torch.testing.assert_close(head(x), want)
    # the input-dependent gate saturated at the same value gives the same map
    gated = GatedResidualProjection(5, FlexCLIPConfig(latent_dim=4, hidden_dim=7, dropout=0.0, gate="input"))
    gated.load_state_dict({k: v for k, v in head.state_dict().items() if k != "gate_fixed"}, strict=False)
    with torch.no_grad():
        gated.gate.weight.zero_()
        gated.gate.bias.fill_(40.0 if value == 1.0 else -40.0)
    gated.eval()
    torch.testing.assert_close(gated(x), want)


def test_gate_mixes_both_paths_and_identity_skip():
    cfg = FlexCLIPConfig(latent_dim=5, hidden_dim=7, dropout=0.0, gate="vector", skip="identity", gate_bias=0.3)
    head = GatedResidualProjection(5, cfg)
    head.eval()
    x = torch.randn(4, 5)
    g = torch.sigmoid(torch.tensor(0.3))
    torch.testing.assert_close(head(x), F.normalize(g * head.mlp(x) + (1 - g) * x, dim=-1))
    with pytest.raises(ConfigError, match="skip='identity' needs input dim = latent_dim"):
        GatedResidualProjection(6, cfg)


# ------------------------------------------------------------- planning and options
def test_target_classes_per_generate_for():
    _feats, _y, data, _ = _fewshot_data(shots=1)
    plan = plan_targets(data, FlexCLIPConfig())
    assert plan.classes.tolist() == [6, 7, 8, 9, 10, 11]  # validation + unseen classes
    assert plan.n_per_class == 12  # median seen-class count
    assert plan_targets(data, FlexCLIPConfig(generate_for="fewshot")).classes.tolist() == [8, 9, 10, 11]
    assert plan_targets(data, FlexCLIPConfig(generate_val=False)).classes.tolist() == [8, 9, 10, 11]
    assert plan_targets(data, FlexCLIPConfig(generate_for="none")).classes.size == 0
    assert plan_targets(data, FlexCLIPConfig(n_generate=500, max_generate=30)).n_per_class == 30
    # all_rare adds seen classes with fewer than rare_fraction x the median count
    rare = np.flatnonzero(data.train_labels[:, 0])[:9]
    keep = np.setdiff1d(np.arange(len(data.train)), rare)
    thin = FitData(
        train=data.train.subset(keep),
        train_labels=data.train_labels[keep],
        oversample=data.oversample[keep],
        val=data.val,
        val_labels=data.val_labels,
    )
    assert plan_targets(thin, FlexCLIPConfig(generate_for="all_rare")).classes.tolist() == [0, 6, 7, 8, 9, 10, 11]
    assert plan_targets(thin, FlexCLIPConfig(generate_for="unseen")).classes.tolist() == [6, 7, 8, 9, 10, 11]
    # zero shots: the unseen classes are generated from their names alone
    _, _, zero, _ = _fewshot_data(shots=0)
    assert plan_targets(zero, FlexCLIPConfig()).classes.tolist() == [6, 7, 8, 9, 10, 11]
    assert plan_targets(zero, FlexCLIPConfig(generate_for="fewshot")).classes.size == 0


def test_class_conditions_average_the_normalised_label_rows():
    names = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
    np.testing.assert_allclose(class_conditions(labels, names), [[1, 0], [0.5, 0.5], [0, 0]], atol=1e-6)


def test_options_and_errors():
    with pytest.raises(ConfigError, match="generate_for must be one of"):
        build_method("flex-clip", {"generate_for": "seen"})
    with pytest.raises(ConfigError, match="n_generate must be a positive integer or 'median'"):
        build_method("flex-clip", {"n_generate": 0})
    with pytest.raises(ConfigError, match="generator.gan_loss must be one of"):
        build_method("flex-clip", {"generator": {"gan_loss": "lsgan"}})
    with pytest.raises(ConfigError, match="generator.steps must be >= 1"):
        build_method("flex-clip", {"generator.steps": 0})
    with pytest.raises(ConfigError, match=r"no option\(s\) 'generator.lrr'.*generator.lr,"):
        build_method("flex-clip", {"generator": {"lrr": 1}})
    with pytest.raises(ConfigError, match=r"Unknown method option\(s\) \['shots'\]"):
        build_method("flex-clip", {"shots": 3})
    m = build_method("flex-clip", {"n_generate": 7, "pairing": "generated"})
    again = build_method("flex-clip", {k: v for k, v in m.config_dict().items() if k != "method"})
    assert again.config_dict() == m.config_dict() and m.config_dict()["method"] == "flex-clip"
    assert method_tags(m).needs_class_name_features is True
    _, _, data, _ = _fewshot_data()
    data.class_name_features = None
    with pytest.raises(ConfigError, match="class_name_features is None"):
        build_method("flex-clip", SMALL).fit(data, seed=0)
    report = build_method("flex-clip", {**SMALL, "generate_for": "none", "max_epochs": 1}).fit(data, seed=0)
    assert report.extra["generation"]["n_generated"] == 0  # the ablation needs no class names
    data.class_name_features = np.zeros((3, 4), np.float32)
    with pytest.raises(DataError, match=r"class_name_features must be a finite \(12, d\) array"):
        build_method("flex-clip", SMALL).fit(data, seed=0)


def test_augmented_training_set_and_pairing():
    _feats, _y, data, _ = _fewshot_data(shots=2)
    m = build_method("flex-clip", {**SMALL, "n_generate": 3, "pairing": "mixed"})
    aug, info = m.augment(data, seed=0)
    n = len(data.train)
    assert info["n_generated"] == 18 and info["target_classes"] == ["c6", "c7", "c8", "c9", "c10", "c11"]
    assert len(aug.train) == n + 18 and aug.train.image.local.shape[1] == 1
    np.testing.assert_allclose(aug.train.image.pooled[:n], input_vectors(data.train.image, "pooled", True), atol=1e-6)
    assert not aug.oversample[n:].any() and np.array_equal(aug.oversample[:n], data.oversample)
    gen_labels = aug.train_labels[n:]
    assert (gen_labels.sum(1) == 1).all() and gen_labels.argmax(1).tolist() == [c for c in range(6, 12) for _ in range(3)]
    # mixed pairing: a class with real pairs gets (generated image, real text), (real image, generated text), ...
    real_txt = {tuple(np.round(r, 5)) for r in aug.train.text.pooled[:n]}
    real_img = {tuple(np.round(r, 5)) for r in aug.train.image.pooled[:n]}
    rows_c8 = np.flatnonzero(gen_labels[:, 8]) + n
    assert tuple(np.round(aug.train.text.pooled[rows_c8[0]], 5)) in real_txt
    assert tuple(np.round(aug.train.image.pooled[rows_c8[1]], 5)) in real_img
    rows_c6 = np.flatnonzero(gen_labels[:, 6]) + n  # validation class: no real pair, both generated
    assert tuple(np.round(aug.train.text.pooled[rows_c6[0]], 5)) not in real_txt
    # deterministic from the seed, different for another seed
    again, _ = build_method("flex-clip", {**SMALL, "n_generate": 3, "pairing": "mixed"}).augment(data, seed=0)
    assert np.array_equal(again.train.image.pooled, aug.train.image.pooled)
    other, _ = m.augment(data, seed=1)
    assert not np.array_equal(other.train.image.pooled[n:], aug.train.image.pooled[n:])


# ------------------------------------------------------------------------- (d) fitting
def test_fit_on_synthetic_features_beats_chance_on_unseen_classes():
    from gcrdp.evaluation import chance_map, cross_modal_metrics

    feats, y, data, test = _fewshot_data(shots=1)
    m = build_method("flex-clip", {**SMALL, "max_epochs": 15})
    report = m.fit(data, seed=0)
    h = report.history[0]
    for key in ("loss", "contrastive", "gate_image", "gate_text", "val_map"):
        assert key in h, key
    gen = report.extra["generation"]
    assert gen["n_generated"] == 6 * 12 and set(gen["generator_losses"]) == {"image", "text"}
    img, txt = m.embed_images(feats.image.subset(test)), m.embed_texts(feats.text.subset(test))
    assert img.shape == (len(test), 8) and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    res = cross_modal_metrics(img, txt, y[test], img, txt, y[test])
    assert res["mean_map"] > chance_map(y[test], y[test]) + 0.3


def test_local_mean_input():
    feats, _y, data, _test = _fewshot_data(shots=1)
    m = build_method("flex-clip", {**SMALL, "max_epochs": 2, "input": "local_mean", "generate_for": "fewshot"})
    m.fit(data, seed=0)
    local = ModalityFeatures(feats.text.local, feats.text.mask, np.zeros((len(feats), 3), np.float32))
    np.testing.assert_allclose(m.embed_texts(local), m.embed_texts(feats.text), atol=1e-6)  # pooled unused
    with pytest.raises(DataError, match="text local_mean features have dim 5, the model expects 8"):
        m.embed_texts(ModalityFeatures(feats.text.local[:, :, :5], feats.text.mask, feats.text.pooled))


def test_the_generator_options_are_nested_and_round_trip():
    m = build_method("flex-clip", {"generator": {"lr": 2e-3, "steps": 7}, "generator.gan_loss": "bce"})
    assert m.cfg.generator == GeneratorConfig(lr=2e-3, steps=7, gan_loss="bce")
    cfg = m.config_dict()
    assert cfg["generator"]["lr"] == 2e-3 and not any(k.startswith("gen_") for k in cfg)
    again = build_method("flex-clip", {k: v for k, v in cfg.items() if k != "method"})
    assert again.config_dict() == cfg
    assert FlexCLIPConfig(generator={"steps": 3}).generator.steps == 3
    with pytest.raises(ConfigError, match="generator must be a group of options"):
        FlexCLIPConfig(generator=3)  # type: ignore[arg-type]


OLD_GENERATOR_OPTIONS = {
    "gen_latent_dim": 5,
    "gen_hidden_dim": 17,
    "gen_steps": 9,
    "gen_batch_size": 12,
    "gen_lr": 3e-3,
    "kl_weight": 0.5,
    "gan_loss": "bce",
    "gan_weight": 0.7,
    "gp_weight": 2.0,
    "n_critic": 2,
    "decoder_variance": "unit",
    "gen_sample_noise": False,
}


def test_the_old_flat_generator_options_still_work_with_a_deprecation_warning():
    """A config or a checkpoint written before the options were nested (``gen_lr``, ``kl_weight``,
    …) builds the same method, and each old key names its new one."""
    with pytest.warns(FutureWarning) as caught:
        old = build_method("flex-clip", {**OLD_GENERATOR_OPTIONS, "latent_dim": 16})
    (message,) = [str(w.message) for w in caught]  # one warning naming every old key
    assert "flex-clip option(s) 'gen_latent_dim', 'gen_hidden_dim'" in message and "are deprecated" in message
    assert "use 'generator.latent_dim', 'generator.hidden_dim', 'generator.steps', 'generator.batch_size', 'generator.lr'," in message
    assert "'generator.sample_noise' (in a config a group: {'generator': {...}}; on the command line" in message
    assert "--option flex-clip.generator.latent_dim=VALUE). The old names still work." in message
    new = build_method(
        "flex-clip",
        {
            "generator": {
                "latent_dim": 5,
                "hidden_dim": 17,
                "steps": 9,
                "batch_size": 12,
                "lr": 3e-3,
                "kl_weight": 0.5,
                "gan_loss": "bce",
                "gan_weight": 0.7,
                "gp_weight": 2.0,
                "n_critic": 2,
                "decoder_variance": "unit",
                "sample_noise": False,
            },
            "latent_dim": 16,
        },
    )
    assert old.config_dict() == new.config_dict()
    assert flatten_options(new.config_dict())["generator.lr"] == 3e-3
    with pytest.raises(ConfigError, match="'generator.lr' is given twice"), pytest.warns(FutureWarning):
        build_method("flex-clip", {"gen_lr": 1e-3, "generator": {"lr": 2e-3}})


def test_a_checkpoint_with_the_old_generator_options_loads(tmp_path):
    """A final checkpoint whose stored config has the flat ``gen_*`` keys (written before the
    options were nested) loads and embeds like the method it holds."""
    import json

    from gcrdp.methods.persistence import load_method

    feats, _y, data, _ = _fewshot_data(shots=1)
    m = build_method("flex-clip", {**SMALL, "max_epochs": 1})
    m.fit(data, seed=0)
    m.save(tmp_path / "final")
    state = json.loads((tmp_path / "final" / "state.json").read_text())
    flat = {k: v for k, v in state["method_config"].items() if k != "generator"}
    old_names = {new.removeprefix("generator."): old for old, new in FlexCLIPMethod.renamed_options.items()}
    flat.update({old_names[k]: v for k, v in state["method_config"]["generator"].items()})
    state["method_config"] = flat
    (tmp_path / "final" / "state.json").write_text(json.dumps(state))
    with pytest.warns(FutureWarning, match="gen_lr"):
        loaded = FlexCLIPMethod.load(tmp_path / "final")
    assert loaded.config_dict() == m.config_dict()
    assert np.array_equal(loaded.embed_images(feats.image), m.embed_images(feats.image))
    with pytest.warns(FutureWarning, match="gen_lr"):
        assert isinstance(load_method(tmp_path / "final"), FlexCLIPMethod)


# --------------------------------------------------------------- (e) checkpoints, resume
def test_checkpoint_round_trip_keeps_only_the_retrieval_model(tmp_path):
    """Only the retrieval model is saved; stage 1 is re-run from the seed on resume, so a
    checkpoint of another seed is refused (kill and resume: tests/methods/test_contract.py)."""
    feats, _y, data, _ = _fewshot_data(shots=1)
    opts = {**SMALL, "max_epochs": 2, "patience": 10}
    ref = build_method("flex-clip", opts)
    ref.fit(data, seed=2, checkpoint_dir=tmp_path / "last")
    ref.save(tmp_path / "final")
    loaded = FlexCLIPMethod.load(tmp_path / "final")
    assert np.array_equal(loaded.embed_images(feats.image), ref.embed_images(feats.image))
    assert np.array_equal(loaded.embed_texts(feats.text), ref.embed_texts(feats.text))
    assert not any(k.startswith(("encoder", "decoder", "critic")) for k in ref.model_.state_dict())
    # another seed cannot resume this checkpoint: its pseudo pairs (and seed) differ
    with pytest.raises(ConfigError):
        build_method("flex-clip", opts).fit(data, seed=3, checkpoint_dir=tmp_path / "last")


# ------------------------------------------------------------------- (f) the runner
def test_run_experiment_zero_and_one_shot_with_class_name_embeddings():
    from gcrdp.data import ClassSplit, Dataset, Sample
    from gcrdp.experiments import RunConfig, run_experiment

    names = ["red apple", "green pear", "blue car", "yellow bus", "black cat", "white dog", "brown bear", "grey fish"]
    feats, labels = synthetic_features(n_per_class=10, n_classes=len(names), seed=4)
    samples = [
        Sample(id=f"s{i}", text=f"a {names[c]} {i}", labels=(names[c],), split="test" if i % 10 >= 7 else "train")
        for i, c in enumerate(labels.tolist())
    ]
    ds = Dataset("toy-flex", samples, list(names), ClassSplit("toy-flex", "1", tuple(names[:5]), tuple(names[5:])))
    order = [ds.classes.index(n) for n in names]  # Dataset keeps its classes as given
    assert order == list(range(len(names)))
    cfg = RunConfig(
        dataset="toy-flex",
        shots=[0, 1],
        seeds=[0],
        methods=["flex-clip"],
        method_options={"flex-clip": {**SMALL, "max_epochs": 3}},
        device="cpu",
    )
    res = run_experiment(cfg, progress=False, dataset=ds, features=feats)
    recs = {r["shots"]: r for r in res["records"]}
    assert set(recs) == {0, 1}
    for r in recs.values():
        gen = r["fit"]["generation"]
        assert gen["n_generated"] > 0 and set(names[5:]) <= set(gen["target_classes"])  # from names alone at 0 shots
        assert 0.0 <= r["test"]["mean_map"] <= 1.0
    assert r["method_config"]["method"] == "flex-clip"


def test_input_vectors_of_pooled_only_features():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    fs = FeatureSet(ModalityFeatures.from_array(x), ModalityFeatures.from_array(x), ("a", "b", "c", "d"))
    np.testing.assert_allclose(input_vectors(fs.image, "local_mean"), x, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(input_vectors(fs.image, "pooled", True), axis=1), 1, atol=1e-6)
