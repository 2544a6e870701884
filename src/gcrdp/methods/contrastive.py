"""``gap-infonce``: projection heads over local features, global average pooling and the
symmetric cross-modal InfoNCE loss — GCRDP with its GMM and RDP parts switched off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import multi_positive_infonce, symmetric_infonce
from ..model import ProjectionHead, masked_mean
from ..training.distributed import global_rows
from ..training.loop import Batch
from .base import METHODS
from .trainable import TrainableHeadsMethod


@dataclass
class HeadsConfig:
    """Architecture and loss settings of the contrastive heads.

    Attributes:
        latent_dim: D, the shared space.
        hidden_dim: width of the heads' hidden layer.
        num_layers: 1 (linear) or 2 (MLP) layers per head.
        dropout: dropout inside the heads.
        temperature: InfoNCE temperature τ.
        class_positives: pairs of the same class are positives too (SupCon-style, cross-modal:
            an image's positives are the texts of its class in the batch), so same-class pairs
            are not pushed apart as negatives. False = instance-level CLIP loss.
    """

    latent_dim: int = 256
    hidden_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.1
    temperature: float = 0.2
    class_positives: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"temperature must be in (0, 10], got {self.temperature}")


class DualHeads(nn.Module):
    """One projection head per modality; a sample's embedding is the L2-normalised masked
    mean of its projected local features."""

    def __init__(self, image_dim: int, text_dim: int, cfg: HeadsConfig) -> None:
        super().__init__()
        kw: dict[str, Any] = dict(out_dim=cfg.latent_dim, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers, dropout=cfg.dropout)
        self.image_head = ProjectionHead(image_dim, **kw)
        self.text_head = ProjectionHead(text_dim, **kw)

    def encode_image(self, local: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(masked_mean(self.image_head(local), mask), dim=-1)  # (B, D)

    def encode_text(self, local: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(masked_mean(self.text_head(local), mask), dim=-1)  # (B, D)


class ContrastiveHeadsMethod(TrainableHeadsMethod):
    """GAP + symmetric InfoNCE over projected local features (see module docstring).

    Checkpointable (contract in :mod:`gcrdp.methods.base`): ``init_model(image_dim=, text_dim=)``,
    ``fit(..., checkpoint_dir=, resume=)``, ``save(path)`` / ``ContrastiveHeadsMethod.load(path)``.
    """

    name = "gap-infonce"
    config_type = HeadsConfig
    local_image_input = True  # takes pca_dim (TokenReduceConfig)

    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        model = cast(DualHeads, model)
        # the global batch's rows (this rank's alone in one process)
        img = cast(torch.Tensor, global_rows(model.encode_image(batch["image_local"], batch["image_mask"])))
        txt = cast(torch.Tensor, global_rows(model.encode_text(batch["text_local"], batch["text_mask"])))
        if self.cfg.class_positives:
            labels = global_rows(batch["labels"], grad=False)
            loss = multi_positive_infonce(img.unsqueeze(1), txt.unsqueeze(1), self.cfg.temperature, labels, class_positives=True)
        else:
            loss = symmetric_infonce(img, txt, self.cfg.temperature)
        return loss, {"infonce": float(loss.detach())}

    def init_model(self, *, image_dim: int, text_dim: int) -> DualHeads:
        """Build the untrained heads (initialised from the torch global RNG) on the device; with
        ``pca_dim`` the image head acts on k dimensions behind ``image_pca`` (raw ``image_dim``)."""
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim)}
        heads = DualHeads(self._image_head_dim(int(image_dim)), int(text_dim), self.cfg)
        self.model_ = self._with_image_pca(heads, int(image_dim)).to(self.device)
        return self.model_

    def _encode_batch(self, model, which, local, mask):
        return (model.encode_image if which == "image" else model.encode_text)(local, mask)

    def _embed_dim(self) -> int:
        return self.cfg.latent_dim


@METHODS.register("gap-infonce")
def _build(options: dict[str, Any], device: str) -> ContrastiveHeadsMethod:
    return ContrastiveHeadsMethod.from_options(options, device)
