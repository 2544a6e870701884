"""Inputs of the methods whose heads act on one vector per sample (DSCMR, CLIP4CMR): every
modality turned into a set of one — the masked mean of its local features or the encoder's
pooled feature — for fitting and embedding alike. Shared by those methods, owned by neither."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..data.features import FeatureSet, ModalityFeatures
from ..errors import ConfigError, DataError
from ..training.fit import FitData, FitReport

INPUTS = ("mean_local", "pooled")


def global_inputs(features: ModalityFeatures, input: str = "mean_local", chunk: int = 1024) -> ModalityFeatures:
    """One float32 vector per sample as a set of one: ``local`` (n, 1, d), mask all True,
    ``pooled`` the same (n, d) values.

    ``input="mean_local"``: the masked mean of the local features (accumulated in float64);
    for L = 1 that is the feature itself. ``input="pooled"``: the encoder's global feature.
    Idempotent: applied to its own output it returns equal values."""
    if input not in INPUTS:
        raise ConfigError(f"input must be one of {INPUTS}, got {input!r}")
    n = len(features)
    if input == "pooled":
        vec = np.ascontiguousarray(features.pooled, dtype=np.float32)
    elif features.local.shape[1] == 1:
        vec = np.ascontiguousarray(features.local[:, 0, :], dtype=np.float32)
    else:
        vec = np.empty((n, features.dim), np.float32)
        for s in range(0, n, chunk):
            loc = features.local[s : s + chunk].astype(np.float64)
            w = features.mask[s : s + chunk].astype(np.float64)
            vec[s : s + chunk] = np.einsum("nld,nl->nd", loc, w) / np.maximum(w.sum(1, keepdims=True), 1.0)
    return ModalityFeatures(vec[:, None, :], np.ones((n, 1), bool), vec)


def global_feature_set(features: FeatureSet, input: str) -> FeatureSet:
    """:func:`global_inputs` of both modalities."""
    return FeatureSet(global_inputs(features.image, input), global_inputs(features.text, input), features.sample_ids, dict(features.meta))


def global_fit_data(data: FitData, input: str) -> FitData:
    """``data`` with both modalities' train/val features replaced by :func:`global_inputs`."""
    return FitData(
        train=global_feature_set(data.train, input),
        train_labels=data.train_labels,
        oversample=data.oversample,
        val=global_feature_set(data.val, input) if data.val is not None else None,
        val_labels=data.val_labels,
        class_names=data.class_names,
        class_name_features=data.class_name_features,
    )


class GlobalInputMixin:
    """For :class:`~gcrdp.methods.trainable.TrainableHeadsMethod` subclasses whose heads act on
    one vector per sample: ``fit`` and embedding first turn every modality into
    :func:`global_inputs` (``self.cfg.input``), so training and retrieval see the same numbers.
    The model's ``image_head``/``text_head`` must have ``in_dim``."""

    # provided by the method class it is mixed into
    cfg: Any
    model_: Any
    name: ClassVar[str]

    def fit(self, data: FitData, *, seed: int, checkpoint_dir: str | Path | None = None, resume: bool = True) -> FitReport:
        return super().fit(  # type: ignore[misc]
            global_fit_data(data, self.cfg.input),
            seed=seed,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )

    def _embed(self, feats: ModalityFeatures, which: str) -> np.ndarray:
        if self.model_ is not None:  # type: ignore[attr-defined]
            head = self.model_.image_head if which == "image" else self.model_.text_head  # type: ignore[attr-defined]
            dim = feats.pooled_dim if self.cfg.input == "pooled" else feats.dim  # type: ignore[attr-defined]
            if dim != head.in_dim:
                what = "pooled" if self.cfg.input == "pooled" else "local"  # type: ignore[attr-defined]
                raise DataError(
                    f"{self.name}: {which} {what} features have dim {dim}, the model "  # type: ignore[attr-defined]
                    f"expects {head.in_dim}"
                )
        return super()._embed(global_inputs(feats, self.cfg.input), which)  # type: ignore[misc]
