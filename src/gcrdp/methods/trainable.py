"""Plumbing shared by the five trainable head methods — ``gap-infonce``, ``gcrdp``, ``clip4cmr``,
``dscmr`` and ``flex-clip`` (``gcrdp`` and ``flex-clip`` override :meth:`fit`): options, fitting
through :func:`~gcrdp.training.fit_loop` with checkpoints, persistence and batched embedding. A
subclass supplies the model (``init_model``), the loss (``_loss``) and how a batch of local
features becomes embeddings (``_encode_batch``; ``flex-clip`` overrides ``_embed`` instead)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data.features import FeatureSet, ModalityFeatures
from ..data.lazy import iter_slices
from ..errors import DataError
from ..training.config import TrainConfig, split_options
from ..training.loop import Batch, fit_loop
from ..training.seeding import resolve_device
from .base import FitData, FitReport, check_fitted
from .persistence import load_method, method_info, save_method


class TrainableHeadsMethod:
    """Base class; ``config_type`` is the subclass's architecture/loss dataclass."""

    name: ClassVar[str]
    config_type: ClassVar[type]

    def __init__(self, cfg: Any | None = None, train: TrainConfig | None = None, device: str = "cpu") -> None:
        self.cfg = cfg if cfg is not None else self.config_type()
        self.train = train or TrainConfig()
        self.device = resolve_device(device)
        self.model_: nn.Module | None = None
        self.input_dims_: dict[str, int] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], device: str = "cpu"):
        cfg, train = split_options(options, cls.config_type, TrainConfig)
        return cls(cfg, train, device)

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.name, **asdict(self.cfg), **self.train.to_dict()}

    # ----------------------------------------------------------- subclass hooks
    def init_model(self, *dims: Any) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _model_dims(self, data: FitData) -> tuple[int, ...]:
        return data.train.image.dim, data.train.text.dim

    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError

    def _encode_batch(
        self, model: nn.Module, which: str, local: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _embed_dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ fit
    def fit(self, data: FitData, *, seed: int, checkpoint_dir: str | Path | None = None, resume: bool = True) -> FitReport:
        """Train on ``data``; with ``checkpoint_dir``, checkpoint every epoch and (``resume``)
        continue an interrupted fit there (see :func:`~gcrdp.training.fit_loop`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.init_model(*self._model_dims(data))  # validation embeds through it
            return fit_loop(
                model,
                self._loss,
                self._embed_pair,
                data,
                self.train,
                seed=seed,
                device=self.device,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
                method_info=method_info(self),
                global_batch=True,
                metric=self.score_metric,
            )

    def refit_options(self, report: FitReport) -> dict[str, Any]:
        """Options that refit this method without validation pairs: as many epochs as the
        early-stopped fit's best epoch (``RunConfig.refit``)."""
        return {"max_epochs": max(1, int(report.best_epoch))}

    @property
    def score_metric(self) -> str:
        """How two embeddings are scored (:func:`gcrdp.evaluation.retrieval_metrics`'s metric)."""
        return "cosine"

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, **kw: Any) -> Path:
        """Write the fitted method as a final checkpoint folder (see
        :func:`gcrdp.methods.persistence.save_method`)."""
        return save_method(self, path, **kw)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu"):
        """Rebuild a method saved with :meth:`save` (weights on ``device``)."""
        return load_method(path, device, expect=cls)

    # ---------------------------------------------------------------- embed
    @torch.inference_mode()
    def _embed(self, feats: ModalityFeatures, which: str) -> np.ndarray:
        model = check_fitted(self)
        model.eval()
        expect = (model.image_head if which == "image" else model.text_head).in_dim
        if feats.dim != expect:
            raise DataError(f"{self.name}: {which} features have dim {feats.dim}, the model expects {expect}")
        out = []
        # batch after batch; rows on disk are read one batch ahead, in a background thread
        for local, mask in iter_slices((feats.local, feats.mask), self.train.eval_batch_size):
            loc = torch.from_numpy(local).to(self.device, torch.float32)
            msk = torch.from_numpy(mask).to(self.device)
            out.append(self._encode_batch(model, which, loc, msk).float().cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, self._embed_dim()), np.float32)

    def _embed_pair(self, features: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        return self.embed_images(features.image), self.embed_texts(features.text)

    def embed_images(self, features: ModalityFeatures) -> np.ndarray:
        return self._embed(features, "image")

    def embed_texts(self, features: ModalityFeatures) -> np.ndarray:
        return self._embed(features, "text")
