"""Feature containers: per modality a padded set of local features with a mask, plus a
pooled (global) feature; a :class:`FeatureSet` holds both modalities for a dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError


@dataclass
class ModalityFeatures:
    """Features of one modality for ``n`` samples.

    Attributes:
        local: (n, L, d) float16 or float32 — local features (image grid cells, text tokens),
            zero-padded to the longest set.
        mask: (n, L) bool — True where ``local`` holds a real feature. Every row has at least one.
        pooled: (n, d_g) float16 or float32 — the encoder's global feature.
    """

    local: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.local.shape[0])

    @property
    def dim(self) -> int:
        return int(self.local.shape[2])

    @property
    def pooled_dim(self) -> int:
        return int(self.pooled.shape[1])

    def validate(self, name: str = "features") -> None:
        if self.local.ndim != 3:
            raise DataError(f"{name}: local features must be (n, L, d), got shape {self.local.shape}")
        n, L, _ = self.local.shape
        if self.mask.shape != (n, L):
            raise DataError(f"{name}: mask shape {self.mask.shape} does not match local {(n, L)}")
        if self.pooled.ndim != 2 or self.pooled.shape[0] != n:
            raise DataError(f"{name}: pooled features must be ({n}, d_g), got {self.pooled.shape}")
        if self.mask.dtype != np.bool_:
            self.mask = self.mask.astype(bool)
        if n and not self.mask.any(axis=1).all():
            bad = np.flatnonzero(~self.mask.any(axis=1))
            raise DataError(f"{name}: {len(bad)} samples have no valid local feature (rows {bad[:5].tolist()})")

    def check_finite(self, name: str = "features") -> None:
        """Raise :class:`DataError` if any valid local or pooled value is NaN or infinite."""
        bad_local = ~np.isfinite(self.local).all(axis=2) & self.mask
        bad_rows = np.flatnonzero(bad_local.any(axis=1) | ~np.isfinite(self.pooled).all(axis=1))
        if bad_rows.size:
            raise DataError(
                f"{name}: NaN or infinite values in {bad_rows.size} samples (rows "
                f"{bad_rows[:5].tolist()}). Re-extract the features or drop these samples."
            )

    def subset(self, indices: np.ndarray | Sequence[int]) -> ModalityFeatures:
        idx = np.asarray(indices, dtype=np.int64)
        return ModalityFeatures(self.local[idx], self.mask[idx], self.pooled[idx])


@dataclass
class FeatureSet:
    """Both modalities' features for the samples ``sample_ids`` (same order as the dataset)."""

    image: ModalityFeatures
    text: ModalityFeatures
    sample_ids: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.sample_ids)
        if len(self.image) != n or len(self.text) != n:
            raise DataError(
                f"Feature set lengths differ: {len(self.image)} image rows, {len(self.text)} text "
                f"rows, {n} sample ids. They must be paired one to one."
            )

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, indices: np.ndarray | Sequence[int]) -> FeatureSet:
        idx = np.asarray(indices, dtype=np.int64)
        return FeatureSet(
            self.image.subset(idx), self.text.subset(idx),
            tuple(self.sample_ids[i] for i in idx), dict(self.meta),
        )
