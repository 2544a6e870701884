"""Plumbing shared by the trainable head methods (every registered method but ``cca`` and
``zero-shot``): options, the one ``fit`` (through :func:`~gcrdp.training.fit_loop` with
checkpoints), persistence and batched embedding. A subclass supplies the model
(``init_model(**dims)``, ``_model_dims``), the loss (``_loss``) and how a batch of local features
becomes embeddings (``_encode_batch``; ``flex-clip`` overrides ``_embed`` instead); the fit's
hooks ``_prepare`` (``flex-clip``'s stage 1) and ``_train`` (``gcrdp``'s warm start) change
what happens around the loop.

Two options for faster fits (issue 25; off by default, and then no code path changes):
``precision`` (:class:`~gcrdp.training.TrainConfig`, every trainable method) and ``pca_dim``
(:class:`TokenReduceConfig`, the methods whose image head acts on local features:
``local_image_input``) — see :meth:`TrainableHeadsMethod.fit`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import torch
from torch import nn

from ..data.features import FeatureSet, ModalityFeatures
from ..data.lazy import iter_slices
from ..errors import ConfigError, DataError
from ..model.reduce import PCABasis, TokenPCA, fit_pca, reduce_local, sample_tokens
from ..training.config import TrainConfig, identity_options, split_options
from ..training.loop import Batch, StepLoss, autocast_for, fit_loop
from ..training.seeding import resolve_device
from .base import FitData, FitReport, MethodTags, check_fitted, normalize_options
from .persistence import load_method, method_info, save_method

M = TypeVar("M", bound=nn.Module)

#: the most training image tokens the ``pca_dim`` basis is fitted on (a seeded sample of them;
#: 50,000 tokens of 1,280 dimensions: about 1.4 s of covariance and eigendecomposition on one core)
PCA_MAX_TOKENS = 50_000
#: ``pca_dim="auto"``: k for image features of more than this many dimensions (the raw features
#: otherwise): 128, the size measured on the 1,280-d EfficientNet-Lite0 grid (issue 25)
AUTO_PCA_DIM = 128


@dataclass
class TokenReduceConfig:
    """The image tokens reduced once per fit (issue 25's ``pca-k``); an option of the methods
    whose image head acts on local features (``TrainableHeadsMethod.local_image_input``).

    Attributes:
        pca_dim: ``None`` (default: the raw features) or k: at the start of a fit a PCA basis of
            the training image tokens (a seeded sample of at most :data:`PCA_MAX_TOKENS`,
            :func:`~gcrdp.model.reduce.fit_pca`) reduces the training and validation image local
            features once to k dimensions (:func:`~gcrdp.model.reduce.reduce_local`), and the
            image head is trained on them. The model holds the basis (``model.image_pca``, a
            :class:`~gcrdp.model.reduce.TokenPCA`, saved with its weights) and embeds raw
            features through it. Texts and the pooled features (RDP's frozen teacher) are
            unchanged. Between 1 and the image features' dimension. ``"auto"``:
            :data:`AUTO_PCA_DIM` for image features of more dimensions than that, the raw
            features otherwise (so it never fails on small features).
    """

    pca_dim: int | str | None = None

    def __post_init__(self) -> None:
        k = self.pca_dim
        if k == "auto":
            return
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f'pca_dim must be null, "auto" or an integer >= 1 (at most the image features\' dimension), got {k!r}')

    def dim_for(self, image_dim: int) -> int | None:
        """The reduced dimension for image features of ``image_dim`` dimensions, ``None`` for
        the raw features; a :class:`ConfigError` when a given k is larger than ``image_dim``."""
        k = self.pca_dim
        if k is None:
            return None
        if k == "auto":
            return AUTO_PCA_DIM if image_dim > AUTO_PCA_DIM else None
        if cast(int, k) > image_dim:
            raise ConfigError(f"pca_dim={k} is larger than the image features' dimension {image_dim}")
        return cast(int, k)


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
    #: the image head acts on local features (a set per sample): the method takes the
    #: :class:`TokenReduceConfig` options (``pca_dim``); its ``init_model`` builds the image head
    #: on :meth:`_image_head_dim` and adds :meth:`_with_image_pca`
    local_image_input: ClassVar[bool] = False

    def __init__(
        self, cfg: Any | None = None, train: TrainConfig | None = None, device: str = "cpu", reduce: TokenReduceConfig | None = None
    ) -> None:
        self.cfg = cfg if cfg is not None else self.config_type()
        self.train = train or TrainConfig()
        self.reduce = reduce or TokenReduceConfig()
        if self.reduce.pca_dim is not None and not self.local_image_input:
            raise ConfigError(f"{self.name}: pca_dim applies only to methods whose image head acts on local features")
        self.device = resolve_device(device)
        self.model_: nn.Module | None = None
        self.input_dims_: dict[str, int] | None = None
        self._tokens_reduced = False  # True while a fit trains on reduced image tokens

    @classmethod
    def from_options(cls, options: dict[str, Any], device: str = "cpu"):
        """The method of a flat options dict; nested options may be given as dotted keys
        (``generator.lr``), renamed ones under their old name (:func:`normalize_options`)."""
        types = (cls.config_type, TrainConfig, TokenReduceConfig) if cls.local_image_input else (cls.config_type, TrainConfig)
        cfg, train, *reduce = split_options(normalize_options(cls.name, options, cls.renamed_options), *types)
        return cls(cfg, train, device, *reduce)

    def config_dict(self) -> dict[str, Any]:
        reduce = asdict(self.reduce) if self.local_image_input else {}
        return {"method": self.name, **asdict(self.cfg), **self.train.to_dict(), **reduce}

    # ----------------------------------------------------------- subclass hooks
    #: ``init_model(*, image_dim, text_dim, ...)``: build the untrained model from keyword input dims
    #: (the checkpoint contract); each subclass names its own dims (those of :meth:`_model_dims`)
    init_model: Callable[..., nn.Module]

    def _image_head_dim(self, image_dim: int) -> int:
        """The image head's input width: the reduced dimension when ``pca_dim`` applies (a
        :class:`ConfigError` when a given k is larger than ``image_dim``; see
        :meth:`TokenReduceConfig.dim_for`), else ``image_dim``. For ``init_model``."""
        k = self.reduce.dim_for(image_dim)
        return image_dim if k is None else k

    def _with_image_pca(self, model: M, image_dim: int) -> M:
        """``model`` with ``model.image_pca`` (a :class:`TokenPCA` from ``image_dim`` to
        ``pca_dim``; its basis is set by :meth:`fit` or loaded with the weights) when ``pca_dim``
        applies; unchanged otherwise. For ``init_model``."""
        if self.reduce.dim_for(image_dim) is not None:
            model.image_pca = TokenPCA(image_dim, self._image_head_dim(image_dim))
        return model

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
        :meth:`_prepare` returns go into ``report.extra``, their ``seconds`` into the report's.

        With ``pca_dim`` (:class:`TokenReduceConfig`), after :meth:`_prepare`: the basis of the
        training image tokens (seeded by ``seed``), the training and validation image local
        features reduced once, the basis set in ``model.image_pca``; the loop trains and
        validates on the reduced features (``report.extra["pca"]``: its dim, tokens, explained
        variance and seconds). Without it none of this runs."""
        with torch.random.fork_rng(devices=[]):
            train_data, stages = self._prepare(data, seed)
            basis = None
            if self.reduce.dim_for(data.train.image.dim) is not None:
                train_data, basis, stages["pca"] = self._reduce_image_tokens(train_data, seed)
            torch.manual_seed(seed)
            model = self.init_model(**self._model_dims(data))  # validation embeds through it
            if basis is not None:
                cast(TokenPCA, model.image_pca).set_basis(basis)
            self._tokens_reduced = basis is not None
            try:
                report = self._train(model, train_data, seed=seed, checkpoint_dir=checkpoint_dir, resume=resume)
            finally:
                self._tokens_reduced = False
        for key, info in stages.items():
            report.extra[key] = info
            report.seconds += info["seconds"]  # a stage before the loop (re-run on resume) + the loop
        return report

    def _reduce_image_tokens(self, data: FitData, seed: int) -> tuple[FitData, PCABasis, dict[str, Any]]:
        """``data`` with its training and validation image local features reduced by the PCA
        basis of the training image tokens (``pca_dim``), the basis, and the report entry."""
        t0 = time.perf_counter()
        image = data.train.image
        k = cast(int, self.reduce.dim_for(image.dim))  # a clear error naming the dimension
        tokens = sample_tokens(image.local, image.mask, max_tokens=PCA_MAX_TOKENS, seed=seed)
        basis = fit_pca(tokens, k)

        def reduced(feats: FeatureSet) -> FeatureSet:
            img = feats.image
            local = ModalityFeatures(reduce_local(img.local, img.mask, basis), img.mask, img.pooled)
            return FeatureSet(local, feats.text, feats.sample_ids, dict(feats.meta))

        out = replace(data, train=reduced(data.train), val=None if data.val is None else reduced(data.val))
        info = {"dim": k, "tokens": len(tokens), "explained": round(float(basis.explained.sum()), 6)}
        return out, basis, {**info, "seconds": round(time.perf_counter() - t0, 3)}

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
        # options added later are left out at their default: older checkpoints of the same fit resume
        info["method_config"] = identity_options(info["method_config"])
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
    def _input_pca(self, model: nn.Module, which: str) -> TokenPCA | None:
        """The :class:`TokenPCA` that raw ``which`` features go through before the head: the
        model's ``image_pca`` for images (``pca_dim``), except while a fit embeds its already
        reduced validation features; ``None`` otherwise."""
        pca = getattr(model, "image_pca", None) if which == "image" and not self._tokens_reduced else None
        return cast(TokenPCA | None, pca)

    @torch.inference_mode()
    def _embed(self, feats: ModalityFeatures, which: str) -> np.ndarray:
        """Embeddings (float32) of raw features, batch by batch at the fit's ``precision``;
        with ``pca_dim`` the image tokens go through ``model.image_pca`` first (padded positions
        0, as :func:`~gcrdp.model.reduce.reduce_local` gives)."""
        model = check_fitted(self)
        model.eval()
        pca = self._input_pca(model, which)
        expect = pca.in_dim if pca is not None else (model.image_head if which == "image" else model.text_head).in_dim
        if feats.dim != expect:
            raise DataError(f"{self.name}: {which} features have dim {feats.dim}, the model expects {expect}")
        out = []
        # batch after batch; rows on disk are read one batch ahead, in a background thread
        for local, mask in iter_slices((feats.local, feats.mask), self.train.eval_batch_size):
            loc = torch.from_numpy(local).to(self.device, torch.float32)
            msk = torch.from_numpy(mask).to(self.device)
            if pca is not None:
                loc = torch.where(msk.unsqueeze(-1), pca(loc), 0.0)
            with autocast_for(self.train.precision, self.device):  # float32: a null context
                emb = self._encode_batch(model, which, loc, msk)
            out.append(emb.float().cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, self._embed_dim()), np.float32)

    def _embed_pair(self, features: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        return self.embed_images(features.image), self.embed_texts(features.text)

    def embed_images(self, features: ModalityFeatures) -> np.ndarray:
        return self._embed(features, "image")

    def embed_texts(self, features: ModalityFeatures) -> np.ndarray:
        return self._embed(features, "text")
