"""``gcrdp``: GMM-based comprehensive feature extraction with cross-modal relative distance
preservation (SPEC §3).

Local features → per-modality projection head → GMM module (T unrolled EM iterations,
K learned anchors) → K normalised component views per sample and a global embedding (the
normalised π-weighted mean of the views) → multi-positive InfoNCE over views + α·cross-modal
regulariser + λ·RDP on high-confidence pairs.

Every part is a switch (SPEC §3.7): ``use_gmm=False`` replaces the GMM by global average
pooling (one view); ``use_rdp=False`` / ``alpha=0`` drop RDP / the regulariser. With
``use_gmm=False, use_rdp=False, alpha=0`` the method is exactly ``gap-infonce``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import (
    LossWeights, combine_losses, cross_modal_regularizer, multi_positive_infonce, rdp_loss,
)
from ..losses.rdp import RDP_VARIANTS
from ..model import ProjectionHead, masked_mean
from ..model.gmm import GMMConfig, GMMLayer, gmm_views, mixture_entropy
from ..training.loop import Batch
from .base import METHODS, FitData
from .trainable import TrainableHeadsMethod

SCORES = ("global", "views")


@dataclass
class GCRDPConfig:
    """Architecture and loss settings of GCRDP (training settings live in TrainConfig).

    Attributes:
        latent_dim, hidden_dim, num_layers, dropout: the projection heads.
        temperature: τ of the multi-positive InfoNCE.
        use_gmm: False → global average pooling, one view (ablation "without GMM").
        n_components, n_iter, covariance, var_floor, mass_floor, anchor_mode: the GMM module
            (K, T, ...; see :class:`~gcrdp.model.gmm.GMMConfig`).
        shared_anchors: one set of K anchors for both modalities (component k plays the same
            role in images and texts) instead of one per modality.
        class_positives: views of same-class pairs are positives too.
        intra_modal_negatives: views of other pairs in the anchor's own modality are negatives.
        alpha: weight of the cross-modal regulariser (0 disables it).
        label_weight: weight of the label-space term inside the regulariser.
        use_rdp, lam: RDP switch and weight λ.
        rdp_threshold, rdp_variant, rdp_confidence, rdp_temperature: see ``losses.rdp``.
        score: retrieval score — ``global`` (cosine of global embeddings) or ``views``
            (component-aligned mean cosine over the K views).
    """

    latent_dim: int = 256
    hidden_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.1
    temperature: float = 0.2
    use_gmm: bool = True
    n_components: int = 3
    n_iter: int = 3
    covariance: str = "diag"
    var_floor: float = 1e-3
    mass_floor: float = 1e-6
    anchor_mode: str = "relative"
    shared_anchors: bool = True
    class_positives: bool = False
    intra_modal_negatives: bool = False
    alpha: float = 0.1
    label_weight: float = 1.0
    use_rdp: bool = True
    lam: float = 0.1
    rdp_threshold: float = 0.5
    rdp_variant: str = "distribution"
    rdp_confidence: str = "either"
    rdp_temperature: float = 0.1
    score: str = "global"

    def __post_init__(self) -> None:
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"temperature must be in (0, 10], got {self.temperature}")
        if self.alpha < 0 or self.lam < 0 or self.label_weight < 0:
            raise ConfigError(f"alpha, lam and label_weight must be >= 0, got {self.alpha}, {self.lam}, "
                              f"{self.label_weight}")
        if self.rdp_variant not in RDP_VARIANTS:
            raise ConfigError(f"rdp_variant must be one of {RDP_VARIANTS}, got {self.rdp_variant!r}")
        if self.score not in SCORES:
            raise ConfigError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.score == "views" and not self.use_gmm:
            raise ConfigError("score='views' needs the GMM views (use_gmm=True)")
        self.gmm_config()  # validates the GMM fields

    def gmm_config(self) -> GMMConfig:
        return GMMConfig(n_components=self.n_components, n_iter=self.n_iter, covariance=self.covariance,
                         var_floor=self.var_floor, mass_floor=self.mass_floor,
                         anchor_mode=self.anchor_mode)

    @property
    def n_views(self) -> int:
        return self.n_components if self.use_gmm else 1


class GCRDPModel(nn.Module):
    """Heads + GMM module (+ the regulariser's shared label classifier)."""

    def __init__(self, image_dim: int, text_dim: int, n_classes: int, cfg: GCRDPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kw = dict(out_dim=cfg.latent_dim, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers,
                  dropout=cfg.dropout)
        self.image_head = ProjectionHead(image_dim, **kw)
        self.text_head = ProjectionHead(text_dim, **kw)
        if cfg.use_gmm:
            self.image_gmm = GMMLayer(cfg.latent_dim, cfg.gmm_config())
            self.text_gmm = self.image_gmm if cfg.shared_anchors else GMMLayer(cfg.latent_dim, cfg.gmm_config())
        self.classifier = nn.Linear(cfg.latent_dim, n_classes) if cfg.alpha > 0 and n_classes > 0 else None

    def _encode(self, head: nn.Module, gmm: nn.Module | None, local: torch.Tensor, mask: torch.Tensor):
        x = head(local)  # (B, L, D)
        if gmm is None:
            g = F.normalize(masked_mean(x, mask), dim=-1)  # (B, D)
            return g.unsqueeze(1), g, None  # views (B, 1, D)
        res = gmm(x, mask, final_e_step=False)  # views need only π and μ
        views, g = gmm_views(res)  # (B, K, D), (B, D)
        return views, g, res.weights

    def encode_image(self, local: torch.Tensor, mask: torch.Tensor):
        """-> (views (B, K, D), global (B, D), π (B, K) or None)."""
        return self._encode(self.image_head, getattr(self, "image_gmm", None), local, mask)

    def encode_text(self, local: torch.Tensor, mask: torch.Tensor):
        return self._encode(self.text_head, getattr(self, "text_gmm", None), local, mask)


class GCRDPMethod(TrainableHeadsMethod):
    """GCRDP behind the common method interface (see module docstring); checkpointable."""

    name = "gcrdp"
    config_type = GCRDPConfig

    # ------------------------------------------------------------------ fit
    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        vi, gi, pi_i = model.encode_image(batch["image_local"], batch["image_mask"])
        vt, gt, pi_t = model.encode_text(batch["text_local"], batch["text_mask"])
        labels = batch.get("labels")
        mpc = multi_positive_infonce(vi, vt, cfg.temperature, labels, class_positives=cfg.class_positives,
                                     intra_modal_negatives=cfg.intra_modal_negatives)
        reg = rdp = None
        parts: dict[str, float] = {}
        if cfg.alpha > 0:
            clf = model.classifier
            reg, reg_parts = cross_modal_regularizer(
                gi, gt, clf(gi) if clf is not None else None, clf(gt) if clf is not None else None,
                labels if clf is not None else None, label_weight=cfg.label_weight)
            parts.update({f"reg_{k}": v for k, v in reg_parts.items()})
        if cfg.use_rdp and cfg.lam > 0:
            rdp, rdp_parts = rdp_loss(gi, gt, cfg.rdp_threshold, variant=cfg.rdp_variant,
                                      confidence=cfg.rdp_confidence, temperature=cfg.rdp_temperature)
            parts.update(rdp_parts)
        total, named = combine_losses(mpc, reg, rdp, LossWeights(alpha=cfg.alpha, lam=cfg.lam))
        parts.update(named)
        if pi_i is not None:  # GMM health: mean entropy of π (log K = uniform, 0 = collapse)
            parts["pi_entropy_image"] = float(mixture_entropy(pi_i.detach()).mean())
            parts["pi_entropy_text"] = float(mixture_entropy(pi_t.detach()).mean())
        return total, parts

    def init_model(self, image_dim: int, text_dim: int, n_classes: int) -> GCRDPModel:
        """Build the untrained model (initialised from the torch global RNG) on the device."""
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim),
                            "n_classes": int(n_classes)}
        self.model_ = GCRDPModel(int(image_dim), int(text_dim), int(n_classes), self.cfg).to(self.device)
        return self.model_

    def _model_dims(self, data: FitData) -> tuple[int, ...]:
        return data.train.image.dim, data.train.text.dim, int(data.train_labels.shape[1])

    def _encode_batch(self, model, which, local, mask):
        views, g, _ = (model.encode_image if which == "image" else model.encode_text)(local, mask)
        if self.cfg.score == "views":  # concatenated unit views / √K: cosine = mean aligned view cosine
            return views.flatten(1) / float(np.sqrt(views.shape[1]))
        return g

    def _embed_dim(self) -> int:
        return self.cfg.latent_dim * (self.cfg.n_views if self.cfg.score == "views" else 1)


@METHODS.register("gcrdp")
def _build(options: dict[str, Any], device: str) -> GCRDPMethod:
    return GCRDPMethod.from_options(options, device)
