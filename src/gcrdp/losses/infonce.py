"""Symmetric cross-modal InfoNCE (the CLIP loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_infonce(image: torch.Tensor, text: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """The symmetric cross-modal InfoNCE loss of CLIP.

    Args:
        image: (batch, dim) L2-normalised image embeddings.
        text: (batch, dim) L2-normalised text embeddings; row i is paired with image row i.
        temperature: τ > 0; logits are cosine similarities / τ.

    Returns:
        Scalar: ½·(CE(image→text) + CE(text→image)), each the mean over the batch of
        ``-log softmax(logits)[i, i]``.
    """
    logits = image @ text.T / temperature  # (batch, batch)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
