"""DSCMR's loss terms (Zhen et al., CVPR 2019): the label-space term, the common-space
pairwise likelihood over label similarity, and the modality-invariance term; :func:`dscmr_loss`
combines them as :mod:`gcrdp.methods.dscmr` trains with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

NORMS = ("l2", "squared")


def _norms(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row ||x_i|| (``l2``) or ||x_i||² (``squared``) of a (B, k) tensor -> (B,)."""
    if norm == "l2":
        return torch.linalg.vector_norm(x, dim=1)  # gradient 0 (not NaN) at x_i = 0
    if norm == "squared":
        return x.pow(2).sum(dim=1)
    raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")


def dscmr_label_loss(image_pred: torch.Tensor, text_pred: torch.Tensor, labels: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """DSCMR's label-space discrimination: ``mean_i ||p^v_i − y_i|| + mean_i ||p^t_i − y_i||``
    (``norm="squared"``: squared norms).

    Args:
        image_pred, text_pred: (B, C) outputs of the shared linear classifier.
        labels: (B, C) multi-hot labels (bool or float)."""
    if image_pred.shape != labels.shape or text_pred.shape != labels.shape:
        raise DataError(
            f"predictions {tuple(image_pred.shape)}/{tuple(text_pred.shape)} and labels {tuple(labels.shape)} must all be (batch, classes)"
        )
    y = labels.to(image_pred.dtype)
    return _norms(image_pred - y, norm).mean() + _norms(text_pred - y, norm).mean()


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """(B_a, B_b) float: 1 where the two samples share at least one label, else 0."""
    return ((labels_a.float() @ labels_b.float().T) > 0).float()


def half_cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Θ_ij = ½ cos(a_i, b_j) of (B_a, k) and (B_b, k) rows; the product of the norms is
    clamped at ``eps`` (as in the authors' code)."""
    na = torch.linalg.vector_norm(a, dim=1, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=1, keepdim=True)
    return (a @ b.T) / (na @ nb.T).clamp_min(eps) / 2.0


def pairwise_likelihood_loss(a: torch.Tensor, b: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """``mean_ij [log(1 + exp Θij) − S_ij Θij]`` with ``Θ = half_cosine(a, b)``: the negative
    log-likelihood of the label similarities S under ``p(S_ij = 1) = σ(Θij)``."""
    theta = half_cosine(a, b)
    return (F.softplus(theta) - sim * theta).mean()


def common_space_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DSCMR's common-space discrimination: :func:`pairwise_likelihood_loss` over the
    image–image, image–text and text–text pairs of the batch (all B² pairs each, the diagonal
    included), summed. ``image``/``text``: (B, D) common representations U, V."""
    sim = label_similarity(labels, labels)
    return (
        pairwise_likelihood_loss(image, image, sim) + pairwise_likelihood_loss(image, text, sim) + pairwise_likelihood_loss(text, text, sim)
    )


def modality_invariance_loss(image: torch.Tensor, text: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """DSCMR's modality invariance: ``mean_i ||u_i − v_i||`` (``squared``: ``||·||²``)."""
    return _norms(image - text, norm).mean()


def dscmr_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    image_pred: torch.Tensor,
    text_pred: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    norm: str = "l2",
) -> tuple[torch.Tensor, dict[str, float]]:
    """``J_label + alpha · J_common + beta · J_inv``; returns (total, unweighted parts)."""
    j_label = dscmr_label_loss(image_pred, text_pred, labels, norm)
    j_common = common_space_loss(image, text, labels)
    j_inv = modality_invariance_loss(image, text, norm)
    total = j_label + alpha * j_common + beta * j_inv
    return total, {"label": float(j_label.detach()), "common": float(j_common.detach()), "invariance": float(j_inv.detach())}
