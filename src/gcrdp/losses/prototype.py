"""The prototype loss of CLIP4CMR-style heads: cross-entropy of the cosine to learned class
prototypes (multi-label targets split evenly)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DataError


def prototype_loss(embeddings: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of ``softmax_k(cos(f_i, c_k) / temperature)`` against the labels.

    Args:
        embeddings: (B, D) L2-normalised embeddings f_i.
        prototypes: (C, D) class prototypes (normalised here).
        labels: (B, C) multi-hot labels; the target of row i is ``y_i / sum(y_i)`` (one-hot
            rows: the usual cross-entropy). Rows without a label are skipped.
        temperature: τ > 0.

    Returns:
        Scalar: mean over the labelled rows of ``−Σ_k target_ik log softmax_k``; 0 (with a
        gradient of 0) when no row has a label.
    """
    if labels.shape != (embeddings.shape[0], prototypes.shape[0]):
        raise DataError(f"labels must be (batch, classes) = ({embeddings.shape[0]}, {prototypes.shape[0]}), got {tuple(labels.shape)}")
    logits = embeddings @ F.normalize(prototypes, dim=-1).T / temperature  # (B, C)
    y = labels.to(logits.dtype)
    count = y.sum(dim=1)
    keep = count > 0
    target = y[keep] / count[keep, None]
    if target.shape[0] == 0:
        return logits.sum() * 0.0
    return -(target * F.log_softmax(logits[keep], dim=1)).sum(dim=1).mean()
