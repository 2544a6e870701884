"""Input checks of the retrieval metrics: labels, scores, embeddings' neighbours, cut-offs,
chunk sizes — each a clear :class:`~gcrdp.errors.DataError` or ``ConfigError``."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, DataError, format_list

KDenominator = Literal["hits", "min_k_r"]

#: Conventions for the denominator of AP@k (see the module docstring and docs/metrics.md).
K_DENOMINATORS: tuple[str, ...] = ("hits", "min_k_r")

#: Queries per chunk when ``chunk_size=None``: min(CHUNK_ROWS, SCORES_PER_CHUNK // n_gallery),
#: at least 1. A chunk's scores are computed by one matrix product per thread, which is
#: efficient with hundreds of rows (the BLAS re-reads the whole gallery for every product);
#: SCORES_PER_CHUNK bounds their memory: 2**26 float32 scores = 256 MiB for all threads together
#: (2**26 // 100,000 = 671 queries per chunk). Measured in docs/benchmarks.md.
SCORES_PER_CHUNK = 2**26
CHUNK_ROWS = 1024
#: The scores of a chunk are ranked RANK_SCORES at a time (rows of that many scores): the
#: ranking's working memory (up to about 20 bytes per score) stays bounded by it (~20 MiB).
RANK_SCORES = 2**20

#: Threads used for ranking when ``n_threads=None``: min(os.cpu_count(), MAX_AUTO_THREADS).
MAX_AUTO_THREADS = 4
#: Below this many scores in all, ``n_threads=None`` uses one thread (threads would not pay).
MIN_SCORES_FOR_THREADS = 2**19

_LITTLE_ENDIAN = sys.byteorder == "little"


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(n) for n in a.shape) + ")"


def _as_labels(labels: Any, name: str) -> np.ndarray:
    """Return labels as a 1-D int64 array (single-label) or a 2-D bool array (multi-hot)."""
    arr = np.asarray(labels)
    if arr.ndim == 1:
        if arr.dtype.kind in "USO":
            raise DataError(
                f"{name}: a 1-D label array must hold integer class indices, got class names "
                f"(dtype {arr.dtype}). Map the names of queries and gallery to indices together, e.g. "
                "classes, ids = np.unique(np.concatenate([query_labels, gallery_labels]), "
                "return_inverse=True), or pass a 2-D multi-hot array (n, n_classes)."
            )
        if arr.dtype.kind not in "iu":
            raise DataError(
                f"{name}: a 1-D label array must hold integer class indices, got dtype "
                f"{arr.dtype}. Convert whole-number values with .astype(int), or pass a 2-D multi-hot "
                f"array (n, n_classes) for multi-label data."
            )
        return arr.astype(np.int64, copy=False)
    if arr.ndim == 2:
        if arr.dtype == bool:
            return arr
        if arr.dtype.kind not in "iuf":
            raise DataError(f"{name}: a 2-D multi-hot label array must be bool or 0/1 numbers, got dtype {arr.dtype}.")
        if arr.size and not np.isin(arr, (0, 1)).all():
            bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5]
            raise DataError(
                f"{name}: a 2-D multi-hot label array must contain only 0 and 1, found "
                f"{bad.tolist()}. Pass class indices as a 1-D int array for single-label data."
            )
        return arr.astype(bool)
    raise DataError(
        f"{name}: labels must be a 1-D array of class indices (n,) or a 2-D multi-hot array "
        f"(n, n_classes), got an array of shape {_shape(arr)}."
    )


def _check_label_pair(query_labels: Any, gallery_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    ql = _as_labels(query_labels, "query_labels")
    gl = _as_labels(gallery_labels, "gallery_labels")
    if ql.ndim != gl.ndim:
        raise DataError(
            f"query_labels and gallery_labels must be of the same kind, got a {ql.ndim}-D array "
            f"{_shape(ql)} and a {gl.ndim}-D array {_shape(gl)}. Use 1-D class indices for both "
            f"(single-label) or 2-D multi-hot arrays for both (multi-label)."
        )
    if ql.ndim == 2 and ql.shape[1] != gl.shape[1]:
        raise DataError(
            f"query_labels and gallery_labels must have the same number of classes (columns), got {ql.shape[1]} and {gl.shape[1]}."
        )
    if ql.shape[0] == 0:
        raise DataError("query_labels is empty: there must be at least one query.")
    if gl.shape[0] == 0:
        raise DataError("gallery_labels is empty: the gallery must hold at least one item.")
    return ql, gl


def _relevance_rows(ql: np.ndarray, gl_or_gt: np.ndarray) -> np.ndarray:
    """Relevance of a block of queries: ``ql`` (c,) int or (c, C) bool; for multi-label the
    second argument is the gallery's multi-hot matrix transposed as float32 (C, ng)."""
    if ql.ndim == 1:
        return ql[:, None] == gl_or_gt[None, :]  # (c, ng)
    return (ql.astype(np.float32) @ gl_or_gt) > 0.5  # (c, C) @ (C, ng) -> (c, ng)


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 2:
        hint = " For a single query use scores[None, :]." if arr.ndim == 1 else ""
        raise DataError(f"{name} must be a 2-D array (n_queries, n_gallery), got shape {_shape(arr)}.{hint}")
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{name} must be real numbers (float or int), got dtype {arr.dtype}.")
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if 0 in arr.shape:
        raise DataError(f"{name} is empty (shape {_shape(arr)}): need at least one query and one item.")
    _check_finite(arr, name)
    return arr


def _check_finite(arr: np.ndarray, name: str, row_offset: int = 0, hint: str = "") -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1)) + row_offset
        n_nan = int(np.isnan(arr).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise DataError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite values (first rows: "
            f"{bad_rows[:5].tolist()}); every score must be finite.{hint}"
        )


def _as_relevant(relevant: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(relevant)
    if arr.shape != shape:
        raise DataError(
            f"relevant must have the same shape as scores {shape}, got {_shape(arr)}. Build it "
            f"with relevance(query_labels, gallery_labels)."
        )
    if arr.dtype != bool:
        if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
            raise DataError(f"relevant must be a bool (or 0/1) array, got dtype {arr.dtype} with values other than 0 and 1.")
        arr = arr.astype(bool)
    return arr


def _check_k(k: Any, n_gallery: int, name: str = "k") -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"{name} must be a positive integer, got {k!r} ({type(k).__name__}).")
    k = int(k)
    if not 1 <= k <= n_gallery:
        raise ConfigError(f"{name} must be between 1 and the gallery size {n_gallery}, got {k}.")
    return k


def _check_ks(ks: Any, n_gallery: int) -> tuple[int, ...]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, (bool, np.bool_)):
        ks = (ks,)
    if not isinstance(ks, Iterable) or isinstance(ks, (str, bytes)):
        raise ConfigError(f"ks must be a sequence of positive integers, got {ks!r}.")
    out: list[int] = []
    for k in ks:
        k = _check_k(k, n_gallery, name="each of ks")
        if k not in out:
            out.append(k)
    return tuple(out)


def _check_k_denominator(k_denominator: Any) -> str:
    if k_denominator not in K_DENOMINATORS:
        raise ConfigError(f"k_denominator must be one of {format_list(K_DENOMINATORS)}, got {k_denominator!r}.")
    return k_denominator


def _check_chunk_size(chunk_size: Any, n_gallery: int) -> int:
    if chunk_size is None:
        return max(1, min(CHUNK_ROWS, SCORES_PER_CHUNK // n_gallery))
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise ConfigError(f"chunk_size must be a positive integer (queries per chunk) or None (automatic), got {chunk_size!r}.")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}.")
    return int(chunk_size)
