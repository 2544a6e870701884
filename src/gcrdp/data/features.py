"""Feature containers: per modality a padded set of local features with a mask, plus a
pooled (global) feature; a :class:`FeatureSet` holds both modalities for a dataset."""

from __future__ import annotations

import hashlib
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

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        mask: np.ndarray | None = None,
        pooled: np.ndarray | None = None,
        *,
        name: str = "features",
        dtype: str = "float32",
    ) -> ModalityFeatures:
        """Features from one array: ``(n, d)`` is a set of size one per sample (pooled-only
        features such as SIFT/LDA or VGG fc7: local = pooled); ``(n, L, d)`` is a set of ``L``
        local features with ``mask`` (default all True) whose pooled feature is ``pooled`` or,
        by default, the masked mean. Values are stored as ``dtype`` (float32 by default)."""
        arr = np.asarray(array)
        if arr.dtype.kind not in "fiub":
            raise DataError(f"{name}: expected numbers, got an array of dtype {arr.dtype}.")
        if arr.ndim == 2:
            local = arr[:, None, :]
        elif arr.ndim == 3:
            local = arr
        else:
            raise DataError(f"{name}: expected an (n, d) or (n, L, d) array, got shape {arr.shape}.")
        n, L, d = local.shape
        if n == 0 or d == 0:
            raise DataError(f"{name}: empty array of shape {arr.shape}.")
        if mask is None:
            m = np.ones((n, L), dtype=bool)
        else:
            m = np.asarray(mask)
            if m.shape != (n, L):
                raise DataError(f"{name}: mask shape {m.shape} does not match the features' {(n, L)}.")
            m = m.astype(bool)
        local = np.ascontiguousarray(local, dtype=dtype)
        if pooled is None:
            if L == 1:
                pool = local[:, 0, :].copy()
            else:
                w = m.astype(np.float64)
                denom = np.maximum(w.sum(1, keepdims=True), 1.0)
                pool = (np.einsum("nld,nl->nd", local.astype(np.float64), w) / denom).astype(dtype)
        else:
            pool = np.asarray(pooled)
            if pool.ndim != 2 or pool.shape[0] != n:
                raise DataError(f"{name}: pooled features must be ({n}, d_g), got shape {pool.shape}.")
            pool = np.ascontiguousarray(pool, dtype=dtype)
        if L > 1:
            local = np.where(m[:, :, None], local, 0).astype(dtype, copy=False)
        out = cls(local, m, pool)
        out.validate(name)
        return out


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

    def content_digest(self) -> str:
        """SHA-256 over both modalities' arrays (shape, dtype and bytes) and the sample ids."""
        h = hashlib.sha256(b"gcrdp-features-v1\0")
        for mf in (self.image, self.text):
            for arr in (mf.local, mf.mask, mf.pooled):
                a = np.ascontiguousarray(arr)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(a.tobytes())
        h.update("\0".join(self.sample_ids).encode("utf-8"))
        return h.hexdigest()

    def subset(self, indices: np.ndarray | Sequence[int]) -> FeatureSet:
        idx = np.asarray(indices, dtype=np.int64)
        return FeatureSet(
            self.image.subset(idx),
            self.text.subset(idx),
            tuple(self.sample_ids[i] for i in idx),
            dict(self.meta),
        )
