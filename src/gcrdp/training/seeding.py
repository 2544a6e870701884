"""Explicit seeding: every random draw in training goes through generators made here."""

from __future__ import annotations

import numpy as np
import torch


def numpy_rng(*keys: int) -> np.random.Generator:
    """A NumPy generator seeded by a tuple of integers (e.g. ``(seed, epoch)``)."""
    return np.random.default_rng([int(k) for k in keys])


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available else ``"cpu"``; other values pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
