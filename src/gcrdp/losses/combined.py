"""The joint GCRDP objective ``L = L_mpc + α·L_reg + λ·L_rdp`` (SPEC §3.6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass
class LossWeights:
    """Weights of the joint loss: ``alpha`` (regulariser) and ``lam`` (RDP), both finite ≥ 0."""

    alpha: float = 0.1
    lam: float = 0.1

    def __post_init__(self) -> None:
        for name in ("alpha", "lam"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"LossWeights.{name} must be a finite number >= 0, got {value!r}.")


def combine_losses(
    mpc: torch.Tensor,
    reg: torch.Tensor | None,
    rdp: torch.Tensor | None,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``total = mpc + alpha·reg + lam·rdp``; a ``None`` part is skipped and reported as 0.

    Returns:
        ``(total, {"mpc", "reg", "rdp", "total"})`` — the parts as unweighted floats, and the
        weighted total.
    """
    total = mpc
    parts = {"mpc": float(mpc.detach()), "reg": 0.0, "rdp": 0.0}
    if reg is not None:
        total = total + weights.alpha * reg
        parts["reg"] = float(reg.detach())
    if rdp is not None:
        total = total + weights.lam * rdp
        parts["rdp"] = float(rdp.detach())
    parts["total"] = float(total.detach())
    return total, parts
