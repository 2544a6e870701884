"""Feature containers: per modality a padded set of local features with a mask, plus a
pooled (global) feature; a :class:`FeatureSet` holds both modalities for a dataset.

The local and pooled arrays are numpy arrays (in memory, the fast path) or lazy arrays whose
rows stay on disk until read (:mod:`gcrdp.data.lazy`; a feature store, :mod:`gcrdp.data.store`,
or a user's own ``.npy`` file). Masks are always in memory (n × L booleans). Every operation
here works on both kinds without holding a lazy array whole: ``subset`` of a lazy array is a
view, ``check_finite`` and ``content_digest`` stream it in chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from ..errors import DataError
from .lazy import is_lazy, iter_row_chunks, masked_mean, take_rows


def _checked_mask(mask: Any, local_shape: tuple[int, ...], given_shape: tuple[int, ...], name: str) -> np.ndarray:
    """The (n, L) bool mask of local features of ``local_shape`` (all True when ``mask`` is
    None); :class:`DataError` for an empty array or a mask of another shape."""
    n, L, d = local_shape
    if n == 0 or d == 0:
        raise DataError(f"{name}: empty array of shape {given_shape}.")
    if mask is None:
        return np.ones((n, L), dtype=bool)
    m = np.asarray(mask)
    if m.shape != (n, L):
        raise DataError(f"{name}: mask shape {m.shape} does not match the features' {(n, L)}.")
    return m.astype(bool)


def _mean_of_local(pooled: Any, local: Any) -> bool:
    """True when lazy ``pooled`` is the masked mean of the same file as lazy ``local``."""
    from .lazy import DerivedRows

    if not (isinstance(pooled, DerivedRows) and pooled.kind == "masked-mean" and is_lazy(local)):
        return False
    import json

    def key(arr: Any) -> str:  # what the rows are computed from, whatever the view
        return json.dumps({**arr.signature(), "rows": None}, sort_keys=True)

    bases = {key(local)} | ({key(local.source)} if isinstance(local, DerivedRows) else set())
    return key(pooled.source) in bases and pooled._rows_signature() == local._rows_signature()


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

    @property
    def on_disk(self) -> bool:
        """True when the local or pooled rows are lazy (read from disk on demand)."""
        return is_lazy(self.local) or is_lazy(self.pooled)

    def nonfinite_rows(self) -> np.ndarray:
        """Rows with a NaN or infinite valid local value or pooled value (streamed when lazy)."""
        bad: list[np.ndarray] = []
        for start, loc in iter_row_chunks(self.local):
            m = self.mask[start : start + len(loc)]
            bad.append(start + np.flatnonzero((~np.isfinite(loc).all(axis=2) & m).any(axis=1)))
        if not _mean_of_local(self.pooled, self.local):  # a mean of finite values is finite: not read twice
            for start, pool in iter_row_chunks(self.pooled):
                bad.append(start + np.flatnonzero(~np.isfinite(pool).all(axis=1)))
        return np.unique(np.concatenate(bad)) if bad else np.zeros(0, np.int64)

    def check_finite(self, name: str = "features") -> None:
        """Raise :class:`DataError` if any valid local or pooled value is NaN or infinite."""
        if getattr(self, "_finite_checked", False):
            return
        bad_rows = self.nonfinite_rows()
        if bad_rows.size:
            raise DataError(
                f"{name}: NaN or infinite values in {bad_rows.size} samples (rows "
                f"{bad_rows[:5].tolist()}). Re-extract the features or drop these samples."
            )
        self._finite_checked = self.on_disk  # lazy rows do not change; in-memory ones may

    def subset(self, indices: np.ndarray | Sequence[int]) -> ModalityFeatures:
        """Rows ``indices``: a copy of in-memory arrays, a view of lazy ones."""
        idx = np.asarray(indices, dtype=np.int64)
        return ModalityFeatures(take_rows(self.local, idx), self.mask[idx], take_rows(self.pooled, idx))

    def in_memory(self) -> ModalityFeatures:
        """These features with every lazy array read into memory (a no-op when none is)."""
        if not self.on_disk:
            return self
        return ModalityFeatures(np.asarray(self.local), self.mask, np.asarray(self.pooled))

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
        n, L, _d = local.shape
        m = _checked_mask(mask, tuple(local.shape), tuple(arr.shape), name)
        local = np.ascontiguousarray(local, dtype=dtype)
        if pooled is None:
            if L == 1:
                pool = local[:, 0, :].copy()
            else:
                pool = masked_mean(local, m, dtype)
        else:
            pool = np.asarray(pooled)
            if pool.ndim != 2 or pool.shape[0] != n:
                raise DataError(f"{name}: pooled features must be ({n}, d_g), got shape {pool.shape}.")
            pool = np.ascontiguousarray(pool, dtype=dtype)
        if L > 1:
            local = np.where(m[:, :, None], local, 0).astype(dtype, copy=False)
        # lazy arrays stand in for numpy ones (shape, dtype, row indexing; see gcrdp.data.lazy)
        out = cls(cast(np.ndarray, local), m, cast(np.ndarray, pool))
        out.validate(name)
        return out

    @classmethod
    def from_lazy(
        cls,
        array: Any,
        mask: Any = None,
        pooled: Any = None,
        *,
        name: str = "features",
        dtype: str = "float32",
    ) -> ModalityFeatures:
        """:meth:`from_array` for a lazy ``array`` (rows on disk, :mod:`gcrdp.data.lazy`):
        the same values, computed row by row when read — the dtype conversion, the (n, d) →
        (n, 1, d) view, the zeroed padding and the default pooled feature (the masked mean).
        Only the mask (n × L booleans) is held in memory."""
        from .lazy import as_dtype, as_local, mean_pooled, zeroed

        if array.dtype.kind not in "fiub":
            raise DataError(f"{name}: expected numbers, got an array of dtype {array.dtype}.")
        if array.ndim not in (2, 3):
            raise DataError(f"{name}: expected an (n, d) or (n, L, d) array, got shape {array.shape}.")
        local = as_dtype(array, dtype)
        if array.ndim == 2:
            local = as_local(local)
        n, L, _d = local.shape
        m = _checked_mask(mask, tuple(local.shape), tuple(array.shape), name)
        if pooled is None:
            pool = as_dtype(array, dtype) if L == 1 else mean_pooled(local, m, dtype)
        else:
            if pooled.ndim != 2 or pooled.shape[0] != n:
                raise DataError(f"{name}: pooled features must be ({n}, d_g), got shape {tuple(pooled.shape)}.")
            pool = as_dtype(pooled, dtype) if is_lazy(pooled) else cast(Any, np.ascontiguousarray(pooled, dtype=dtype))
        if L > 1 and mask is not None:
            local = zeroed(local, m, dtype)
        # lazy arrays stand in for numpy ones (shape, dtype, row indexing; see gcrdp.data.lazy)
        out = cls(cast(np.ndarray, local), m, cast(np.ndarray, pool))
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

    @property
    def on_disk(self) -> bool:
        """True when any modality's rows are read from disk on demand."""
        return self.image.on_disk or self.text.on_disk

    @property
    def nbytes(self) -> int:
        """Bytes of the local, mask and pooled arrays of both modalities (as stored)."""
        return sum(int(a.nbytes) for mf in (self.image, self.text) for a in (mf.local, mf.mask, mf.pooled))

    def set_content_digest(self, digest: str) -> None:
        """Record the :meth:`content_digest` computed elsewhere (a feature store writes it once)."""
        self._digest = digest

    def content_digest(self) -> str:
        """SHA-256 over both modalities' arrays (shape, dtype and bytes) and the sample ids;
        lazy arrays are streamed in chunks (the same digest as in memory), and the value is
        kept."""
        cached = getattr(self, "_digest", None)
        if cached is not None:
            return str(cached)
        h = hashlib.sha256(b"gcrdp-features-v1\0")
        for mf in (self.image, self.text):
            for arr in (mf.local, mf.mask, mf.pooled):
                h.update(f"{np.dtype(arr.dtype).str}{tuple(arr.shape)}".encode())
                for _start, rows in iter_row_chunks(arr):
                    h.update(np.ascontiguousarray(rows).reshape(-1).view(np.uint8).data)
        h.update("\0".join(self.sample_ids).encode("utf-8"))
        digest = h.hexdigest()
        if self.on_disk:  # lazy rows do not change; in-memory ones may
            self._digest = digest
        return digest

    def subset(self, indices: np.ndarray | Sequence[int]) -> FeatureSet:
        """Rows ``indices``: copies of in-memory arrays, views of lazy ones."""
        idx = np.asarray(indices, dtype=np.int64)
        return FeatureSet(
            self.image.subset(idx),
            self.text.subset(idx),
            tuple(self.sample_ids[i] for i in idx),
            dict(self.meta),
        )

    def in_memory(self) -> FeatureSet:
        """These features with every lazy array read into memory (itself when none is)."""
        if not self.on_disk:
            return self
        out = FeatureSet(self.image.in_memory(), self.text.in_memory(), self.sample_ids, {**self.meta, "storage": "memory"})
        cached = getattr(self, "_digest", None)
        if cached is not None:
            out.set_content_digest(cached)
        return out
