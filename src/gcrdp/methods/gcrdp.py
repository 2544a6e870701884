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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import (
    LossWeights,
    combine_losses,
    cross_modal_regularizer,
    multi_positive_infonce,
    rdp_loss,
    rdp_teacher_loss,
)
from ..losses.multi_positive import VIEW_POSITIVES
from ..losses.rdp import RDP_TEACHERS, RDP_VARIANTS
from ..model import ProjectionHead, masked_mean
from ..model.gmm import GMMConfig, GMMLayer, gmm_views, mixture_entropy
from ..training.distributed import global_rows
from ..training.loop import Batch
from .base import METHODS, FitData, FitReport
from .trainable import TrainableHeadsMethod, label_dims

SCORES = ("global", "views", "sets")


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
        score: retrieval score — ``global`` (cosine of global embeddings), ``views``
            (component-aligned mean cosine over the K views) or ``sets`` (set to set: the best
            cosine over all K×K view pairs; embeddings are the K concatenated views).

    Switches studied in ``docs/gcrdp-study.md`` (defaults = SPEC's reading, except
    ``e_step_temperature``: issue 25's pre-registered decision, see below):
        view_positives: ``all`` (the other views of a sample in both modalities are positives)
            or ``cross`` (only the other modality's views are).
        views_weight: weight β of the multi-positive loss over the views.
        global_weight: weight of an InfoNCE on the global (retrieval) embeddings, class-aware
            with ``class_positives``; with it the views become an auxiliary loss.
        pi_weighted: weight view anchors and positives by their mixture weight π (detached).
        normalize_local: L2-normalise the projected local features before the GMM.
        gmm_on: ``both`` modalities, or only ``image`` / ``text`` (the other one pools its local
            features by GAP and repeats that view K times) — e.g. for texts of a few tokens.
        e_step_temperature, init_var, init_var_mode: the GMM's E-step temperature and initial
            variances (see :class:`~gcrdp.model.gmm.GMMConfig`). ``e_step_temperature``
            defaults to 32 (soft assignments), not SPEC's 1: a fit is then as accurate on
            validation and test (issue 25's decision, ``docs/study/fast-fits-decision-soft.md``,
            confirmed on fresh seeds), stops after about 9 epochs instead of about 30 and is
            repeatable across CPUs; ``gcrdp@spec`` keeps SPEC's reading.
        rdp_teacher: ``none`` (SPEC: RDP between the two learned spaces, confident pairs by θ)
            or a mode of :func:`~gcrdp.losses.rdp_teacher_loss` (``own``, ``cross``,
            ``cross-modal``, ``all``): preserve the frozen pretrained spaces' relative
            distances on each row's ``rdp_topk`` teacher neighbours.
        warm_start: first train the base (GAP + InfoNCE, early-stopped), then fine-tune the
            full method from it at ``lr × warm_lr_factor``; ``warm_epochs`` > 0 trains the base
            that many epochs instead (a refit without validation pairs uses it).
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
    view_positives: str = "all"
    views_weight: float = 1.0
    global_weight: float = 0.0
    pi_weighted: bool = False
    normalize_local: bool = False
    e_step_temperature: float = 32.0
    init_var: float = 1.0
    init_var_mode: str = "fixed"
    rdp_teacher: str = "none"
    rdp_topk: int = 10
    warm_start: bool = False
    warm_lr_factor: float = 0.1
    warm_epochs: int = 0
    gmm_on: str = "both"

    def __post_init__(self) -> None:
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"temperature must be in (0, 10], got {self.temperature}")
        if self.alpha < 0 or self.lam < 0 or self.label_weight < 0:
            raise ConfigError(f"alpha, lam and label_weight must be >= 0, got {self.alpha}, {self.lam}, {self.label_weight}")
        if self.rdp_variant not in RDP_VARIANTS:
            raise ConfigError(f"rdp_variant must be one of {RDP_VARIANTS}, got {self.rdp_variant!r}")
        if self.score not in SCORES:
            raise ConfigError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.score in ("views", "sets") and not self.use_gmm:
            raise ConfigError(f"score={self.score!r} needs the GMM views (use_gmm=True)")
        if self.view_positives not in VIEW_POSITIVES:
            raise ConfigError(f"view_positives must be one of {VIEW_POSITIVES}, got {self.view_positives!r}")
        if self.views_weight < 0 or self.global_weight < 0 or self.views_weight + self.global_weight <= 0:
            raise ConfigError(
                f"views_weight and global_weight must be >= 0 and not both 0, got {self.views_weight} and {self.global_weight}"
            )
        if self.rdp_teacher not in RDP_TEACHERS:
            raise ConfigError(f"rdp_teacher must be one of {RDP_TEACHERS}, got {self.rdp_teacher!r}")
        if isinstance(self.rdp_topk, bool) or not isinstance(self.rdp_topk, int) or self.rdp_topk < 1:
            raise ConfigError(f"rdp_topk must be an integer >= 1, got {self.rdp_topk!r}")
        if self.gmm_on not in ("both", "image", "text"):
            raise ConfigError(f"gmm_on must be 'both', 'image' or 'text', got {self.gmm_on!r}")
        if isinstance(self.warm_epochs, bool) or not isinstance(self.warm_epochs, int) or self.warm_epochs < 0:
            raise ConfigError(f"warm_epochs must be an integer >= 0, got {self.warm_epochs!r}")
        if not 0 < self.warm_lr_factor <= 10:
            raise ConfigError(f"warm_lr_factor must be in (0, 10], got {self.warm_lr_factor}")
        self.gmm_config()  # validates the GMM fields

    def gmm_config(self) -> GMMConfig:
        return GMMConfig(
            n_components=self.n_components,
            n_iter=self.n_iter,
            covariance=self.covariance,
            var_floor=self.var_floor,
            mass_floor=self.mass_floor,
            anchor_mode=self.anchor_mode,
            temperature=self.e_step_temperature,
            init_var=self.init_var,
            init_var_mode=self.init_var_mode,
        )

    @property
    def n_views(self) -> int:
        return self.n_components if self.use_gmm else 1


class GCRDPModel(nn.Module):
    """Heads + GMM module (+ the regulariser's shared label classifier)."""

    def __init__(self, image_dim: int, text_dim: int, n_classes: int, cfg: GCRDPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kw: dict[str, Any] = dict(out_dim=cfg.latent_dim, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers, dropout=cfg.dropout)
        self.image_head = ProjectionHead(image_dim, **kw)
        self.text_head = ProjectionHead(text_dim, **kw)
        if cfg.use_gmm:
            first = GMMLayer(cfg.latent_dim, cfg.gmm_config())
            if cfg.gmm_on in ("both", "image"):
                self.image_gmm = first
            if cfg.gmm_on == "text":
                self.text_gmm = first
            elif cfg.gmm_on == "both":
                self.text_gmm = first if cfg.shared_anchors else GMMLayer(cfg.latent_dim, cfg.gmm_config())
        self.classifier = nn.Linear(cfg.latent_dim, n_classes) if cfg.alpha > 0 and n_classes > 0 else None
        self.pool_only = False  # True while warm-starting (not state: never saved)

    def _encode(self, head: nn.Module, gmm: nn.Module | None, local: torch.Tensor, mask: torch.Tensor):
        x = head(local)  # (B, L, D)
        if self.pool_only:  # warm-start stage: the base's global average pooling
            g = F.normalize(masked_mean(x, mask), dim=-1)
            return g.unsqueeze(1), g, None
        if self.cfg.normalize_local:
            x = F.normalize(x, dim=-1)
        if gmm is None:
            g = F.normalize(masked_mean(x, mask), dim=-1)  # (B, D)
            if self.cfg.use_gmm:  # GMM on the other modality only: K copies of the GAP view
                k = self.cfg.n_components
                return g.unsqueeze(1).expand(-1, k, -1), g, g.new_full((g.shape[0], k), 1.0 / k)
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
    local_image_input = True  # takes pca_dim (TokenReduceConfig); the pooled features (RDP's teacher) stay raw

    # ------------------------------------------------------------------ fit
    def _train(self, model: nn.Module, data: FitData, *, seed: int, checkpoint_dir: str | Path | None, resume: bool) -> FitReport:
        """One loop; with ``warm_start`` the base (GAP + InfoNCE) is trained first (early-stopped
        on validation, checkpointed to ``<checkpoint_dir>-warm``), then the full method is
        fine-tuned from it at ``lr × warm_lr_factor``."""
        if not self.cfg.warm_start:
            return super()._train(model, data, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume)
        model = cast(GCRDPModel, model)
        warm_dir = None if checkpoint_dir is None else Path(f"{checkpoint_dir}-warm")
        model.pool_only = True
        try:
            warm_cfg = replace(self.train, max_epochs=self.cfg.warm_epochs) if self.cfg.warm_epochs else self.train
            warm = self._fit_loop(
                model,
                data,
                seed=seed,
                checkpoint_dir=warm_dir,
                resume=resume,
                loss=self._base_loss,
                train=warm_cfg,
                stage="warm",
            )
        finally:
            model.pool_only = False
        fine_cfg = replace(self.train, lr=self.train.lr * self.cfg.warm_lr_factor)
        report = self._fit_loop(model, data, seed=seed + 7919, checkpoint_dir=checkpoint_dir, resume=resume, train=fine_cfg)
        report.extra["warm_start"] = {
            "epochs": warm.epochs,
            "best_epoch": warm.best_epoch,
            "best_val_map": warm.best_val_map,
            "seconds": round(warm.seconds, 3),
        }
        report.seconds += warm.seconds
        return report

    def refit_options(self, report: FitReport) -> dict[str, Any]:
        opts = super().refit_options(report)
        if self.cfg.warm_start:
            opts["warm_epochs"] = max(1, int(report.extra["warm_start"]["best_epoch"]))
        return opts

    def _base_loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The warm-start loss: InfoNCE on the GAP embeddings (class-aware if configured)."""
        model = cast(GCRDPModel, model)
        _, gi, _ = model.encode_image(batch["image_local"], batch["image_mask"])
        _, gt, _ = model.encode_text(batch["text_local"], batch["text_mask"])
        gi, gt = cast(torch.Tensor, global_rows(gi)), cast(torch.Tensor, global_rows(gt))  # the global batch's rows
        loss = multi_positive_infonce(
            gi.unsqueeze(1),
            gt.unsqueeze(1),
            self.cfg.temperature,
            global_rows(batch.get("labels"), grad=False),
            class_positives=self.cfg.class_positives,
        )
        return loss, {"warm_infonce": float(loss.detach())}

    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        model = cast(GCRDPModel, model)
        cfg = self.cfg
        vi, gi, pi_i = model.encode_image(batch["image_local"], batch["image_mask"])
        vt, gt, pi_t = model.encode_text(batch["text_local"], batch["text_mask"])
        # Every term is defined on the global batch: its rows, gathered from every rank (this
        # rank's alone in one process); the GMM is fitted per item, so its views gather too.
        vi, gi, vt, gt = (cast(torch.Tensor, global_rows(x)) for x in (vi, gi, vt, gt))
        pi_i, pi_t = global_rows(pi_i, grad=False), global_rows(pi_t, grad=False)  # used detached
        labels = global_rows(batch.get("labels"), grad=False)
        image_pooled = cast(torch.Tensor, global_rows(batch["image_pooled"], grad=False))
        text_pooled = cast(torch.Tensor, global_rows(batch["text_pooled"], grad=False))
        parts: dict[str, float] = {}
        mpc = None
        if cfg.views_weight > 0:
            weights = {}
            if cfg.pi_weighted and pi_i is not None and pi_t is not None:
                weights = {"image_weights": pi_i.detach(), "text_weights": pi_t.detach()}
            views = multi_positive_infonce(
                vi,
                vt,
                cfg.temperature,
                labels,
                class_positives=cfg.class_positives,
                intra_modal_negatives=cfg.intra_modal_negatives,
                view_positives=cfg.view_positives,
                **weights,
            )
            parts["views"] = float(views.detach())
            mpc = cfg.views_weight * views
        if cfg.global_weight > 0:
            glob = multi_positive_infonce(gi.unsqueeze(1), gt.unsqueeze(1), cfg.temperature, labels, class_positives=cfg.class_positives)
            parts["global"] = float(glob.detach())
            mpc = cfg.global_weight * glob if mpc is None else mpc + cfg.global_weight * glob
        reg = rdp = None
        if cfg.alpha > 0:
            clf = model.classifier
            reg, reg_parts = cross_modal_regularizer(
                gi,
                gt,
                clf(gi) if clf is not None else None,
                clf(gt) if clf is not None else None,
                labels if clf is not None else None,
                label_weight=cfg.label_weight,
            )
            parts.update({f"reg_{k}": v for k, v in reg_parts.items()})
        if cfg.use_rdp and cfg.lam > 0 and cfg.rdp_teacher != "none":
            rdp, rdp_parts = rdp_teacher_loss(
                gi,
                gt,
                image_pooled,
                text_pooled,
                mode=cfg.rdp_teacher,
                topk=cfg.rdp_topk,
                temperature=cfg.rdp_temperature,
            )
            parts.update(rdp_parts)
        elif cfg.use_rdp and cfg.lam > 0:
            rdp, rdp_parts = rdp_loss(
                gi, gt, cfg.rdp_threshold, variant=cfg.rdp_variant, confidence=cfg.rdp_confidence, temperature=cfg.rdp_temperature
            )
            parts.update(rdp_parts)
        # views_weight + global_weight > 0 (GCRDPConfig), so mpc is set
        total, named = combine_losses(cast(torch.Tensor, mpc), reg, rdp, LossWeights(alpha=cfg.alpha, lam=cfg.lam))
        parts.update(named)
        if pi_i is not None and pi_t is not None:  # GMM health: mean entropy of π (log K = uniform, 0 = collapse)
            parts["pi_entropy_image"] = float(mixture_entropy(pi_i.detach()).mean())
            parts["pi_entropy_text"] = float(mixture_entropy(pi_t.detach()).mean())
        return total, parts

    def init_model(self, *, image_dim: int, text_dim: int, n_classes: int) -> GCRDPModel:
        """Build the untrained model (initialised from the torch global RNG) on the device; with
        ``pca_dim`` the image head acts on k dimensions behind ``image_pca`` (raw ``image_dim``)."""
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim), "n_classes": int(n_classes)}
        model = GCRDPModel(self._image_head_dim(int(image_dim)), int(text_dim), int(n_classes), self.cfg)
        self.model_ = self._with_image_pca(model, int(image_dim)).to(self.device)
        return self.model_

    def _model_dims(self, data: FitData) -> dict[str, int]:
        return label_dims(super()._model_dims(data), data)

    def _encode_batch(self, model, which, local, mask):
        views, g, _ = (model.encode_image if which == "image" else model.encode_text)(local, mask)
        if model.pool_only:  # warm-start stage: the base's embedding
            return g
        if self.cfg.score == "views":  # concatenated unit views / √K: cosine = mean aligned view cosine
            return views.flatten(1) / float(np.sqrt(views.shape[1]))
        if self.cfg.score == "sets":  # the K unit views, scored by their best pair (score_metric)
            return views.flatten(1)
        return g

    @property
    def score_metric(self) -> str:
        """``set-max:K`` for ``score="sets"``, else cosine — and cosine while warm-starting, when
        the embedding is the base's pooled one (:meth:`_encode_batch`)."""
        warming = self.model_ is not None and cast(GCRDPModel, self.model_).pool_only
        return f"set-max:{self.cfg.n_views}" if self.cfg.score == "sets" and not warming else "cosine"

    def _embed_dim(self) -> int:
        return self.cfg.latent_dim * (self.cfg.n_views if self.cfg.score in ("views", "sets") else 1)


@METHODS.register("gcrdp")
def _build(options: dict[str, Any], device: str) -> GCRDPMethod:
    return GCRDPMethod.from_options(options, device)
