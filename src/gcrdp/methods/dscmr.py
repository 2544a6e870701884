"""``dscmr``: Deep Supervised Cross-Modal Retrieval (Zhen, Hu, Wang & Peng, CVPR 2019) on frozen
features.

The method's notes — what it is, the choices made where the paper is silent, and how it is
tested — are in docs/methods/dscmr.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..losses.dscmr import (  # noqa: F401  (re-exported: DSCMR's loss terms)
    NORMS,
    common_space_loss,
    dscmr_label_loss,
    dscmr_loss,
    half_cosine,
    label_similarity,
    modality_invariance_loss,
    pairwise_likelihood_loss,
)
from ..model import masked_mean
from ..training.distributed import global_rows
from ..training.loop import Batch
from .base import METHODS, FitData
from .inputs import INPUTS, GlobalInputMixin, global_feature_set, global_fit_data, global_inputs  # noqa: F401
from .trainable import TrainableHeadsMethod, label_dims


# --------------------------------------------------------------------------- model
@dataclass
class DSCMRConfig:
    """Architecture and loss settings of DSCMR (training settings live in TrainConfig).

    Attributes:
        hidden_dim: width of each modality's ReLU layer (authors: 2048).
        latent_dim: dimension of the common space, the shared last layer's output (authors: 1024).
        dropout: dropout after the ReLU (authors: none).
        alpha: weight of the common-space discrimination loss (authors: 1e-3).
        beta: weight of the modality-invariance loss (authors: 0.1).
        norm: ``l2`` (authors' code) or ``squared`` norms in the label and invariance terms.
        input: ``mean_local`` (masked mean of the local features) or ``pooled`` (the encoder's
            global feature), see :func:`global_inputs`.
    """

    hidden_dim: int = 2048
    latent_dim: int = 1024
    dropout: float = 0.0
    alpha: float = 1e-3
    beta: float = 0.1
    norm: str = "l2"
    input: str = "mean_local"

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "latent_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.input not in INPUTS:
            raise ConfigError(f"input must be one of {INPUTS}, got {self.input!r}")


class ModalityBranch(nn.Module):
    """``Linear(in_dim, hidden_dim) → ReLU (→ Dropout)``: one modality's own layer."""

    def __init__(self, in_dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1:
            raise ConfigError(f"input dim must be positive, got {in_dim}")
        self.in_dim = in_dim
        self.linear = nn.Linear(in_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.relu(self.linear(x)))


class DSCMRModel(nn.Module):
    """Two modality branches, the shared common-space layer and the shared label classifier."""

    def __init__(self, image_dim: int, text_dim: int, n_classes: int, cfg: DSCMRConfig) -> None:
        super().__init__()
        if n_classes < 1:
            raise DataError(f"dscmr needs at least one label column, got n_classes={n_classes}")
        self.image_head = ModalityBranch(image_dim, cfg.hidden_dim, cfg.dropout)
        self.text_head = ModalityBranch(text_dim, cfg.hidden_dim, cfg.dropout)
        self.common = nn.Linear(cfg.hidden_dim, cfg.latent_dim)  # shared by both modalities
        self.classifier = nn.Linear(cfg.latent_dim, n_classes)  # shared P

    def represent(self, which: str, local: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, d) local features + mask -> (B, latent_dim) common representations (raw)."""
        head = self.image_head if which == "image" else self.text_head
        return self.common(head(masked_mean(local, mask)))


class DSCMRMethod(GlobalInputMixin, TrainableHeadsMethod):
    """DSCMR behind the common method interface (see module docstring).

    Checkpointable (contract in :mod:`gcrdp.methods.base`): ``init_model(image_dim=, text_dim=,
    n_classes=)``, ``fit(..., checkpoint_dir=, resume=)``, ``save(path)`` / ``DSCMRMethod.load(path)``.
    """

    name = "dscmr"
    config_type = DSCMRConfig

    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        model = cast(DSCMRModel, model)
        # the global batch's rows (this rank's alone in one process)
        u = cast(torch.Tensor, global_rows(model.represent("image", batch["image_local"], batch["image_mask"])))
        v = cast(torch.Tensor, global_rows(model.represent("text", batch["text_local"], batch["text_mask"])))
        labels = cast(torch.Tensor, global_rows(batch["labels"], grad=False))
        return dscmr_loss(
            u, v, model.classifier(u), model.classifier(v), labels, alpha=self.cfg.alpha, beta=self.cfg.beta, norm=self.cfg.norm
        )

    def init_model(self, *, image_dim: int, text_dim: int, n_classes: int) -> DSCMRModel:
        """Build the untrained model (initialised from the torch global RNG) on the device."""
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim), "n_classes": int(n_classes)}
        self.model_ = DSCMRModel(int(image_dim), int(text_dim), int(n_classes), self.cfg).to(self.device)
        return self.model_

    def _model_dims(self, data: FitData) -> dict[str, int]:
        return label_dims(super()._model_dims(data), data)

    def _encode_batch(self, model, which, local, mask):
        return F.normalize(model.represent(which, local, mask), dim=-1)

    def _embed_dim(self) -> int:
        return self.cfg.latent_dim


@METHODS.register("dscmr")
def _build(options: dict[str, Any], device: str) -> DSCMRMethod:
    return DSCMRMethod.from_options(options, device)
