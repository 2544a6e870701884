"""The generative loss terms (FLEX-CLIP's stage 1): the VAE's KL and reconstruction terms, and
the WGAN-GP and BCE adversarial terms. Pure functions on tensors, tested against their formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^logvar) ‖ N(0, I)) per sample: ``½ Σ_j (e^{lv_j} + μ_j² − 1 − lv_j)``.
    Inputs (B, Z); returns (B,)."""
    return 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(dim=-1)


def reconstruction_nll(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of x under N(x̂, I) up to a constant: ``½ ‖x − x̂‖²`` per
    sample. Inputs (B, d); returns (B,)."""
    return 0.5 * (x - x_hat).pow(2).sum(dim=-1)


def calibrated_nll(x: torch.Tensor, x_hat: torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    """Gaussian negative log-likelihood per sample with a diagonal decoder variance set to its
    maximum-likelihood value on the batch, ``σ_j² = max(mean_b (x_bj − x̂_bj)², floor)`` (the
    "optimal σ-VAE" of Rybkin et al., 2021, per dimension):
    ``Σ_j [½ (x_j − x̂_j)²/σ_j² + ½ log σ_j²]`` (up to a constant). The reconstruction–KL
    balance then does not depend on the feature scale, and a dimension whose class-conditional
    spread is small is not left to posterior collapse. Inputs (B, d); returns (B,)."""
    var = (x - x_hat).pow(2).mean(dim=0).clamp_min(floor)  # (d,)
    return (0.5 * (x - x_hat).pow(2) / var + 0.5 * var.log()).sum(dim=-1)


def vae_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float = 1.0,
    decoder_variance: str = "calibrated",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``mean_b [NLL(x | x̂) + β·KL]`` with NLL :func:`calibrated_nll` (default) or
    :func:`reconstruction_nll` (``decoder_variance="unit"``). Returns (scalar, parts):
    ``recon`` = mean ½‖x − x̂‖² (whatever the variance), ``kl`` the mean KL."""
    nll = calibrated_nll(x, x_hat) if decoder_variance == "calibrated" else reconstruction_nll(x, x_hat)
    kl = gaussian_kl(mu, logvar).mean()
    return nll.mean() + kl_weight * kl, {"recon": float(reconstruction_nll(x, x_hat).detach().mean()), "kl": float(kl.detach())}


def wgan_critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Critic loss of the Wasserstein GAN: ``E[D(fake)] − E[D(real)]``; inputs (B,)."""
    return d_fake.mean() - d_real.mean()


def wgan_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Generator loss of the Wasserstein GAN: ``−E[D(fake)]``."""
    return -d_fake.mean()


def bce_critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of the standard GAN on logits: ``−E[log σ(D(real))] − E[log(1 − σ(D(fake)))]``."""
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def bce_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: ``−E[log σ(D(fake))]``."""
    return F.softplus(-d_fake).mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty ``mean_b (‖∇_x̂ D(x̂, c)‖₂ − 1)²`` at ``x̂ = α·real + (1 − α)·fake``.

    Args:
        critic: ``(x (B, d), c (B, dc)) -> (B,)``.
        real, fake: (B, d); cond: (B, dc); alpha: (B, 1) in [0, 1].
    """
    x_hat = (alpha * real + (1.0 - alpha) * fake).detach().requires_grad_(True)
    out = critic(x_hat, cond)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return (grad.norm(2, dim=1) - 1.0).pow(2).mean()
