"""Projection heads: a small MLP applied to every local feature of a modality."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class ProjectionHead(nn.Module):
    """Maps each local feature ``(..., in_dim)`` to the shared latent space ``(..., out_dim)``.

    ``num_layers=1`` is a single linear map; ``num_layers=2`` (default) is
    Linear → GELU → Dropout → Linear. The head acts on the last axis only, so it is applied
    to every element of a padded set ``(batch, L, in_dim)`` at once.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 256,
        hidden_dim: int = 512,
        num_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or hidden_dim < 1:
            raise ConfigError(f"ProjectionHead dims must be positive, got in_dim={in_dim}, out_dim={out_dim}, hidden_dim={hidden_dim}")
        if num_layers not in (1, 2):
            raise ConfigError(f"ProjectionHead num_layers must be 1 or 2, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"ProjectionHead dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.out_dim = in_dim, out_dim
        if num_layers == 1:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, out_dim),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_dim) -> (..., out_dim)
        return self.net(x)
