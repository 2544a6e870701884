"""``clip4cmr``: CLIP4CMR-style heads (Zeng & Mao, 2022, "A Comprehensive Empirical Study of
Vision-Language Pre-trained Model for Supervised Cross-Modal Retrieval", arXiv:2201.02772) on
frozen features.

The method's notes — what it is, the choices made where the paper is silent, and how it is
tested — are in docs/methods/clip4cmr.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from ..losses import symmetric_infonce
from ..losses.prototype import prototype_loss  # noqa: F401  (re-exported)
from ..model import ProjectionHead, masked_mean
from ..training.distributed import global_rows
from ..training.loop import Batch
from .base import METHODS, FitData
from .inputs import INPUTS, GlobalInputMixin
from .trainable import TrainableHeadsMethod, label_dims

LOSSES = ("prototype", "contrastive", "both")


@dataclass
class CLIP4CMRConfig:
    """Architecture and loss settings of the CLIP4CMR heads.

    Attributes:
        hidden_dim: width of the heads' hidden layer (authors: 256).
        latent_dim: the common space (authors: 1024).
        num_layers: 2 (MLP, authors) or 1 (linear) per head.
        dropout: dropout inside the heads (authors: 0.1).
        loss: ``prototype`` (authors' best, PCL), ``contrastive`` (symmetric InfoNCE) or ``both``.
        temperature: InfoNCE temperature τ (as ``gap-infonce``).
        prototype_temperature: τ of the prototype softmax over cosines (0.5 = the authors'
            ``−||f − c||²`` logits on unit vectors).
        learn_prototypes: train the prototypes (authors: fixed random unit vectors).
        contrastive_weight, prototype_weight: the weights of the two terms in ``both``.
        input: ``pooled`` (the encoder's global feature, authors) or ``mean_local``.
    """

    hidden_dim: int = 256
    latent_dim: int = 1024
    num_layers: int = 2
    dropout: float = 0.1
    loss: str = "prototype"
    temperature: float = 0.2
    prototype_temperature: float = 0.5
    learn_prototypes: bool = False
    contrastive_weight: float = 1.0
    prototype_weight: float = 1.0
    input: str = "pooled"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.input not in INPUTS:
            raise ConfigError(f"input must be one of {INPUTS}, got {self.input!r}")
        for name in ("temperature", "prototype_temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v <= 10):
                raise ConfigError(f"{name} must be in (0, 10], got {v!r}")
        for name in ("contrastive_weight", "prototype_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.learn_prototypes, bool):
            raise ConfigError(f"learn_prototypes must be true or false, got {self.learn_prototypes!r}")
        for name in ("hidden_dim", "latent_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.num_layers not in (1, 2):
            raise ConfigError(f"num_layers must be 1 or 2, got {self.num_layers!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def uses_prototypes(self) -> bool:
        return self.loss in ("prototype", "both")

    @property
    def uses_contrastive(self) -> bool:
        return self.loss in ("contrastive", "both")


class CLIP4CMRModel(nn.Module):
    """Two heads and (for the prototype loss) the class prototypes, (n_classes, latent_dim)
    unit rows drawn from the torch global RNG: a buffer, or a parameter if learned."""

    def __init__(self, image_dim: int, text_dim: int, n_classes: int, cfg: CLIP4CMRConfig) -> None:
        super().__init__()
        kw: dict[str, Any] = {"out_dim": cfg.latent_dim, "hidden_dim": cfg.hidden_dim, "num_layers": cfg.num_layers, "dropout": cfg.dropout}
        self.image_head = ProjectionHead(image_dim, **kw)
        self.text_head = ProjectionHead(text_dim, **kw)
        if not cfg.uses_prototypes:
            self.register_buffer("prototypes", None)
        else:
            if n_classes < 1:
                raise DataError(f"the prototype loss needs at least one label column, got n_classes={n_classes}")
            protos = F.normalize(torch.randn(n_classes, cfg.latent_dim), dim=-1)
            if cfg.learn_prototypes:
                self.prototypes = nn.Parameter(protos)
            else:
                self.register_buffer("prototypes", protos)

    def encode(self, which: str, local: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        head = self.image_head if which == "image" else self.text_head
        return F.normalize(head(masked_mean(local, mask)), dim=-1)


class CLIP4CMRMethod(GlobalInputMixin, TrainableHeadsMethod):
    """CLIP4CMR-style heads behind the common method interface (see module docstring).

    Checkpointable (contract in :mod:`gcrdp.methods.base`): ``init_model(image_dim=, text_dim=,
    n_classes=)``, ``fit(..., checkpoint_dir=, resume=)``, ``save`` / ``CLIP4CMRMethod.load``.
    """

    name = "clip4cmr"
    config_type = CLIP4CMRConfig

    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        model = cast(CLIP4CMRModel, model)
        cfg = self.cfg
        # the global batch's rows (this rank's alone in one process)
        img = cast(torch.Tensor, global_rows(model.encode("image", batch["image_local"], batch["image_mask"])))
        txt = cast(torch.Tensor, global_rows(model.encode("text", batch["text_local"], batch["text_mask"])))
        total = img.new_zeros(())
        parts: dict[str, float] = {}
        if cfg.uses_contrastive:
            con = symmetric_infonce(img, txt, cfg.temperature)
            total = total + (cfg.contrastive_weight if cfg.loss == "both" else 1.0) * con
            parts["infonce"] = float(con.detach())
        if cfg.uses_prototypes:
            labels = cast(torch.Tensor, global_rows(batch["labels"], grad=False))
            pro = prototype_loss(img, model.prototypes, labels, cfg.prototype_temperature) + prototype_loss(
                txt, model.prototypes, labels, cfg.prototype_temperature
            )
            total = total + (cfg.prototype_weight if cfg.loss == "both" else 1.0) * pro
            parts["prototype"] = float(pro.detach())
        return total, parts

    def init_model(self, *, image_dim: int, text_dim: int, n_classes: int) -> CLIP4CMRModel:
        """Build the untrained model (initialised from the torch global RNG) on the device."""
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim), "n_classes": int(n_classes)}
        self.model_ = CLIP4CMRModel(int(image_dim), int(text_dim), int(n_classes), self.cfg).to(self.device)
        return self.model_

    def _model_dims(self, data: FitData) -> dict[str, int]:
        return label_dims(super()._model_dims(data), data)

    def _encode_batch(self, model, which, local, mask):
        return model.encode(which, local, mask)

    def _embed_dim(self) -> int:
        return self.cfg.latent_dim


@METHODS.register("clip4cmr")
def _build(options: dict[str, Any], device: str) -> CLIP4CMRMethod:
    return CLIP4CMRMethod.from_options(options, device)
