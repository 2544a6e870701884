"""Plumbing shared by the trainable head methods (every registered method but ``cca`` and
``zero-shot``): options, the one ``fit`` (through :func:`~gcrdp.training.fit_loop` with
checkpoints), persistence and batched embedding. A subclass supplies the model
(``init_model(**dims)``, ``_model_dims``), the loss (``_loss``) and how a batch of local features
becomes embeddings (``_encode_batch``; ``flex-clip`` overrides ``_embed`` instead); the fit's
hooks ``_prepare`` (``flex-clip``'s stage 1) and ``_train`` (``gcrdp``'s warm start) change
what happens around the loop."""

from __future__ import annotations

from collections.abc import Callable
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
from ..training.loop import Batch, StepLoss, fit_loop
from ..training.seeding import resolve_device
from .base import FitData, FitReport, MethodTags, check_fitted, normalize_options
from .persistence import load_method, method_info, save_method


def label_dims(dims: dict[str, int], data: FitData) -> dict[str, int]:
    """``dims`` with ``n_classes``, the label columns of ``data`` (models with a classifier)."""
    return {**dims, "n_classes": int(data.train_labels.shape[1])}


class TrainableHeadsMethod:
    """Base class; ``config_type`` is the subclass's architecture/loss dataclass."""

    name: ClassVar[str]
    config_type: ClassVar[type]
    #: fit needs ``FitData.class_name_features`` (:class:`~gcrdp.methods.base.MethodTags`)
    needs_class_name_features: ClassVar[bool] = False
    #: option names accepted under an old name → the new (dotted) key (a warning says so)
    renamed_options: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: Any | None = None, train: TrainConfig | None = None, device: str = "cpu") -> None:
        self.cfg = cfg if cfg is not None else self.config_type()
        self.train = train or TrainConfig()
        self.device = resolve_device(device)
        self.model_: nn.Module | None = None
        self.input_dims_: dict[str, int] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], device: str = "cpu"):
        """The method of a flat options dict; nested options may be given as dotted keys
        (``generator.lr``), renamed ones under their old name (:func:`normalize_options`)."""
        cfg, train = split_options(normalize_options(cls.name, options, cls.renamed_options), cls.config_type, TrainConfig)
        return cls(cfg, train, device)

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.name, **asdict(self.cfg), **self.train.to_dict()}

    # ----------------------------------------------------------- subclass hooks
    #: ``init_model(*, image_dim, text_dim, ...)``: build the untrained model from keyword input dims
    #: (the checkpoint contract); each subclass names its own dims (those of :meth:`_model_dims`)
    init_model: Callable[..., nn.Module]

    def _model_dims(self, data: FitData) -> dict[str, int]:
        """The keyword arguments of :meth:`init_model` for ``data``: the feature dims (a model
        with a label-space term adds ``n_classes``, see :func:`label_dims`)."""
        return {"image_dim": data.train.image.dim, "text_dim": data.train.text.dim}

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
        continue an interrupted fit there (see :func:`~gcrdp.training.fit_loop`).

        The one fit of every subclass (the checkpoint contract of :mod:`gcrdp.methods.base`):
        inside ``torch.random.fork_rng``, :meth:`_prepare` (e.g. FLEX-CLIP's stage 1, seeded by
        itself), ``torch.manual_seed(seed)``, ``init_model(**self._model_dims(data))``, then
        :meth:`_train` (one :meth:`_fit_loop`; GCRDP's warm start runs two). The entries
        :meth:`_prepare` returns go into ``report.extra``, their ``seconds`` into the report's."""
        with torch.random.fork_rng(devices=[]):
            train_data, stages = self._prepare(data, seed)
            torch.manual_seed(seed)
            model = self.init_model(**self._model_dims(data))  # validation embeds through it
            report = self._train(model, train_data, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume)
        for key, info in stages.items():
            report.extra[key] = info
            report.seconds += info["seconds"]  # a stage before the loop (re-run on resume) + the loop
        return report

    def _prepare(self, data: FitData, seed: int) -> tuple[FitData, dict[str, dict[str, Any]]]:
        """Hook: the data the loop trains on, and report entries (each with ``seconds``) of what
        was done before it. Runs inside the RNG fork, before the seed is set; default: ``data``."""
        return data, {}

    def _train(self, model: nn.Module, data: FitData, *, seed: int, checkpoint_dir: str | Path | None, resume: bool) -> FitReport:
        """Hook: train the freshly initialised ``model`` on ``data``; default: one :meth:`_fit_loop`."""
        return self._fit_loop(model, data, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume)

    def _fit_loop(
        self,
        model: nn.Module,
        data: FitData,
        *,
        seed: int,
        checkpoint_dir: str | Path | None,
        resume: bool,
        loss: StepLoss | None = None,
        train: TrainConfig | None = None,
        stage: str | None = None,
    ) -> FitReport:
        """:func:`~gcrdp.training.fit_loop` with this method's loss (or ``loss``), embedding,
        training settings (or ``train``), device and ``method_info`` (with ``stage`` when given),
        on the global batch, validated with :attr:`score_metric` (that of the embeddings now)."""
        info = method_info(self) if stage is None else {**method_info(self), "stage": stage}
        return fit_loop(
            model,
            loss or self._loss,
            self._embed_pair,
            data,
            train or self.train,
            seed=seed,
            device=self.device,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            method_info=info,
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

    def tags(self) -> MethodTags:
        """Trainable heads: checkpointable, resumable epoch by epoch, refittable (:meth:`refit_options`)."""
        return MethodTags(
            needs_class_name_features=self.needs_class_name_features,
            refit=True,
            checkpointable=True,
            resumable=True,
            score_metric=self.score_metric,
            renamed_options=self.renamed_options,
        )

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
