"""Pooling of padded feature sets."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid elements of each set (global average pooling with padding).

    Args:
        x: (batch, L, dim) features.
        mask: (batch, L) bool, True for valid elements; every row has at least one.

    Returns:
        (batch, dim) the mean of the valid rows of each set.
    """
    w = mask.to(x.dtype).unsqueeze(-1)  # (batch, L, 1)
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
