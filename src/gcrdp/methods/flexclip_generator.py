"""FLEX-CLIP's stage 1: one conditional VAE-GAN per modality that generates features for the
rare classes from their class-name embeddings (:func:`fit_feature_generator`). The method that
uses it is :mod:`gcrdp.methods.flexclip`; its loss terms are in :mod:`gcrdp.losses.generative`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..losses.generative import (
    bce_critic_loss,
    bce_generator_loss,
    gradient_penalty,
    vae_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from ..training.seeding import numpy_rng

GAN_LOSSES = ("wgan-gp", "bce", "none")
DECODER_VARIANCES = ("calibrated", "unit")
_TAG_GEN_BATCHES = 7101
_TAG_GEN_NOISE = 7102
_TAG_GEN_INIT = 7103


def _derived_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of integers (for ``torch.manual_seed`` / ``torch.Generator``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class GeneratorConfig:
    """Settings of one modality's conditional VAE-GAN (stage 1; module docstring).

    Attributes:
        latent_dim: dimension of z.
        hidden_dim: width of the encoder, generator and critic hidden layer.
        steps: generator (and critic) update steps.
        batch_size: pairs per step.
        lr: Adam learning rate (β = (0.5, 0.999)).
        kl_weight: β, the weight of the KL term.
        gan_loss: ``wgan-gp``, ``bce`` or ``none``.
        gan_weight: γ, the weight of the adversarial term in the generator's loss.
        gp_weight: λ_gp of the WGAN gradient penalty.
        n_critic: critic steps per generator step.
        decoder_variance: ``calibrated`` (per-dimension ML variance) or ``unit``.
        sample_noise: draws add the decoder noise σ_dec ⊙ ε to G(z, c).
    """

    latent_dim: int = 32
    hidden_dim: int = 256
    steps: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    kl_weight: float = 1.0
    gan_loss: str = "wgan-gp"
    gan_weight: float = 1.0
    gp_weight: float = 10.0
    n_critic: int = 1
    decoder_variance: str = "calibrated"
    sample_noise: bool = True

    def __post_init__(self) -> None:
        if self.decoder_variance not in DECODER_VARIANCES:
            raise ConfigError(
                f"flex-clip option generator.decoder_variance must be one of {DECODER_VARIANCES}, got {self.decoder_variance!r}"
            )
        checks = [
            ("latent_dim", self.latent_dim >= 1, ">= 1"),
            ("hidden_dim", self.hidden_dim >= 1, ">= 1"),
            ("steps", self.steps >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 2, ">= 2"),
            ("lr", self.lr > 0, "> 0"),
            ("kl_weight", self.kl_weight >= 0, ">= 0"),
            ("gan_weight", self.gan_weight >= 0, ">= 0"),
            ("gp_weight", self.gp_weight >= 0, ">= 0"),
            ("n_critic", self.n_critic >= 1, ">= 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"flex-clip option generator.{name} must be {want}, got {getattr(self, name)!r}")
        if self.gan_loss not in GAN_LOSSES:
            raise ConfigError(f"flex-clip option generator.gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")


def class_conditions(labels: np.ndarray, class_features: np.ndarray) -> np.ndarray:
    """(n, dc) float32: per row the mean of the L2-normalised class-name embeddings of its labels
    (``labels`` (n, C) multi-hot, ``class_features`` (C, dc)); a row without labels gets 0."""
    emb = np.asarray(class_features, dtype=np.float64)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    hot = np.asarray(labels, dtype=np.float64)
    return (hot @ emb / np.maximum(hot.sum(1, keepdims=True), 1.0)).astype(np.float32)


# =============================================================================== stage-1 model
def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim))


class ConditionalVAEGAN(nn.Module):
    """One modality's encoder q(z|x,c), generator G(z,c) and critic D(x,c), with the
    standardisation of its feature space (buffers ``mean``, ``std``). ``x`` arguments of
    :meth:`encode`, :meth:`decode` and :meth:`critic_score` are standardised features."""

    # buffers
    mean: torch.Tensor
    std: torch.Tensor
    noise_std: torch.Tensor

    def __init__(self, feat_dim: int, cond_dim: int, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.feat_dim, self.cond_dim, self.latent_dim = feat_dim, cond_dim, cfg.latent_dim
        self.encoder = _mlp(feat_dim + cond_dim, cfg.hidden_dim, 2 * cfg.latent_dim)
        self.decoder = _mlp(cfg.latent_dim + cond_dim, cfg.hidden_dim, feat_dim)
        self.critic = _mlp(feat_dim + cond_dim, cfg.hidden_dim, 1)
        self.register_buffer("mean", torch.zeros(feat_dim))
        self.register_buffer("std", torch.ones(feat_dim))
        self.register_buffer("noise_std", torch.zeros(feat_dim))  # decoder σ_j (standardised units)
        self.sample_noise = cfg.sample_noise

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(torch.cat([x, c], dim=-1)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)  # (B, Z) each

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, c], dim=-1))  # (B, d)

    def critic_score(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([x, c], dim=-1)).squeeze(-1)  # (B,)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def unstandardize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def draw(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standardised samples ``G(z, c) [+ σ ⊙ ε]``, ``z, ε ~ N(0, I)``, one per row of ``cond``
        (the decoder noise σ only with ``sample_noise``; differentiable in the generator)."""
        z = torch.randn(cond.shape[0], self.latent_dim, device=cond.device, generator=generator)
        x = self.decode(z, cond)
        if self.sample_noise:
            x = x + self.noise_std * torch.randn(x.shape, device=x.device, generator=generator)
        return x

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Un-standardised features drawn for the conditions ``cond`` (n, dc): (n, d)."""
        return self.unstandardize(self.draw(cond, generator))


@contextlib.contextmanager
def _stage1_threads(device: str) -> Iterator[None]:
    """Stage 1 on the CPU runs single-threaded: its small matrix products gain little from
    threads (and lose much on a shared machine), and one thread makes the generated features
    independent of the host's thread count (reproducible resumes across machines)."""
    if str(device).startswith("cuda"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fit_feature_generator(
    features: np.ndarray, cond: np.ndarray, cfg: GeneratorConfig, *, seed: int, tag: int = 0, device: str = "cpu"
) -> tuple[ConditionalVAEGAN, dict[str, float]]:
    """Train a :class:`ConditionalVAEGAN` on ``features`` (n, d) with conditions ``cond`` (n, dc).

    Deterministic given ``seed`` and ``tag`` (e.g. the modality): the module is initialised
    from ``torch.manual_seed`` inside ``torch.random.fork_rng`` (the caller's global RNG is
    untouched), batches come from ``numpy_rng(seed, _TAG_GEN_BATCHES, tag, epoch)`` and the
    noise from an explicit ``torch.Generator``; on the CPU it runs single-threaded. Returns the
    model (eval mode, parameters frozen) and the mean losses of the last 10 % of the steps.
    """
    with _stage1_threads(device):
        return _fit_feature_generator(features, cond, cfg, seed=seed, tag=tag, device=device)


def _fit_feature_generator(
    features: np.ndarray, cond: np.ndarray, cfg: GeneratorConfig, *, seed: int, tag: int, device: str
) -> tuple[ConditionalVAEGAN, dict[str, float]]:
    x_all = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)
    c_all = torch.as_tensor(np.ascontiguousarray(cond, dtype=np.float32), device=device)
    n = x_all.shape[0]
    if n < 2 or c_all.shape[0] != n:
        raise DataError(
            f"fit_feature_generator needs >= 2 rows of features and as many conditions, got {tuple(x_all.shape)} and {tuple(c_all.shape)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, _TAG_GEN_INIT, tag))
        model = ConditionalVAEGAN(x_all.shape[1], c_all.shape[1], cfg).to(device)
    model.mean.copy_(x_all.mean(0))
    model.std.copy_(x_all.std(0, unbiased=False).clamp_min(1e-6))
    x_all = model.standardize(x_all)
    gen = torch.Generator(device=device)
    gen.manual_seed(_derived_seed(seed, _TAG_GEN_NOISE, tag))
    eg_params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt_g = torch.optim.Adam(eg_params, lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.critic.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    adversarial = cfg.gan_loss != "none" and cfg.gan_weight > 0
    bs = min(cfg.batch_size, n)
    order: list[int] = []
    epoch = 0
    tail = max(1, cfg.steps // 10)
    sums: dict[str, float] = {}
    model.train()

    def next_batch(k: int) -> torch.Tensor:
        nonlocal order, epoch
        while len(order) < k:
            epoch += 1
            order += numpy_rng(seed, _TAG_GEN_BATCHES, tag, epoch).permutation(n).tolist()
        idx, order = order[:k], order[k:]
        return torch.as_tensor(idx, dtype=torch.long, device=device)

    for step in range(cfg.steps):
        parts: dict[str, float] = {}
        if adversarial:
            for _ in range(cfg.n_critic):
                idx = next_batch(bs)
                x, c = x_all[idx], c_all[idx]
                with torch.no_grad():
                    fake = model.draw(c, gen)
                d_real, d_fake = model.critic_score(x, c), model.critic_score(fake, c)
                if cfg.gan_loss == "wgan-gp":
                    alpha = torch.rand(bs, 1, device=device, generator=gen)
                    d_loss = wgan_critic_loss(d_real, d_fake) + cfg.gp_weight * gradient_penalty(model.critic_score, x, fake, c, alpha)
                else:
                    d_loss = bce_critic_loss(d_real, d_fake)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            parts["critic"] = float(d_loss.detach())
        idx = next_batch(bs)
        x, c = x_all[idx], c_all[idx]
        mu, logvar = model.encode(x, c)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, device=device, generator=gen)
        x_rec = model.decode(z, c)
        loss, vparts = vae_loss(x, x_rec, mu, logvar, cfg.kl_weight, cfg.decoder_variance)
        if cfg.sample_noise:  # running estimate of the decoder σ_j used by draw()
            with torch.no_grad():
                mse = (x - x_rec).pow(2).mean(0)
                model.noise_std.copy_((0.9 * model.noise_std.pow(2) + 0.1 * mse).sqrt() if step else mse.sqrt())
        parts.update(vparts)
        if adversarial:
            d_fake = model.critic_score(model.draw(c, gen), c)
            adv = wgan_generator_loss(d_fake) if cfg.gan_loss == "wgan-gp" else bce_generator_loss(d_fake)
            loss = loss + cfg.gan_weight * adv
            parts["adversarial"] = float(adv.detach())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite feature-generator loss at step {step + 1}: {parts}")
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        if step >= cfg.steps - tail:
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {k: round(v / tail, 6) for k, v in sums.items()}
