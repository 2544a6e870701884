"""Building an index in bounded memory: the embeddings go to a spool file on disk in batches
(:class:`EmbeddingSpool`) and are read back in batches — to train an index on a sample, to fill
it, to measure it. Nothing here holds all ``n × d`` embeddings at once.

A *row source* is anything with ``shape`` ``(n, d)`` whose ``source[a:b]`` and
``source[rows]`` (an integer array) give float32-convertible NumPy rows: a NumPy array, a
memory-mapped ``.npy`` file, an :class:`EmbeddingSpool`, a lazy on-disk feature array.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

# Rows read per batch when a source is scanned (exact reference, instance recall, adds): about
# this many bytes of float32 at a time.
SCAN_BYTES = 32 << 20


def scan_rows(dim: int, budget: int = SCAN_BYTES) -> int:
    """Rows of ``dim`` float32 values that fit in ``budget`` bytes (at least 1)."""
    return max(1, int(budget) // (4 * max(1, int(dim))))


def batches(n: int, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """``(a, b)`` row ranges covering ``start..n`` in steps of ``size``."""
    for a in range(int(start), int(n), max(1, int(size))):
        yield a, min(a + int(size), int(n))


def take_rows(source: Any, rows: np.ndarray) -> np.ndarray:
    """``source[rows]`` as a NumPy array; a slice when the rows are one ascending run (lazy
    on-disk arrays read a run at once)."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1 and (len(rows) == 1 or bool(np.all(np.diff(rows) == 1))):
        return np.asarray(source[int(rows[0]) : int(rows[-1]) + 1])
    return np.asarray(source[rows])


class EmbeddingSpool:
    """Float32 rows appended in batches to a raw file, read back by slice or by row indices.

    Reads go through ``pread`` (not a memory map), so scanning a spool much larger than memory
    leaves the process's resident memory at one batch.
    """

    def __init__(self, path: str | Path, dim: int | None = None) -> None:
        self.path = Path(path)
        self.dim: int | None = None if dim is None else int(dim)
        self._n = 0
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    # -------------------------------------------------------------- writing
    def append(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise DataError(f"Embeddings must be (n, d), got shape {x.shape}.")
        if self.dim is None:
            self.dim = int(x.shape[1])
        if x.shape[1] != self.dim:
            raise DataError(f"Embeddings must be (n, {self.dim}), got {x.shape}.")
        view = x.data.cast("B")
        offset, done = self._n * self._row_bytes, 0
        while done < len(view):
            done += os.pwrite(self._fileno(), view[done:], offset + done)
        self._n += len(x)

    # -------------------------------------------------------------- reading
    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, int(self.dim or 0))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return self._n

    @property
    def _row_bytes(self) -> int:
        return 4 * int(self.dim or 0)

    def _fileno(self) -> int:
        if self._fd is None:
            raise DataError(f"Embedding spool {self.path} is closed.")
        return self._fd

    def _read(self, a: int, b: int) -> np.ndarray:
        size, buf = (b - a) * self._row_bytes, bytearray()
        while len(buf) < size:
            chunk = os.pread(self._fileno(), size - len(buf), a * self._row_bytes + len(buf))
            if not chunk:
                raise DataError(f"Embedding spool {self.path} is shorter than its {self._n} rows.")
            buf += chunk
        return np.frombuffer(buf, dtype=np.float32).reshape(b - a, int(self.dim or 0))

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            a, b, step = key.indices(self._n)
            if step != 1:
                raise DataError("An embedding spool reads contiguous slices only.")
            return self._read(a, max(a, b))
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._n if int(key) < 0 else 0)
            if not 0 <= i < self._n:
                raise IndexError(f"row {key} out of range for {self._n} rows")
            return self._read(i, i + 1)[0]
        rows = np.asarray(key, dtype=np.int64)
        if rows.ndim != 1:
            raise DataError("An embedding spool takes a slice, an integer or a 1-D array of rows.")
        if len(rows) and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"rows out of range for {self._n} rows")
        out = np.empty((len(rows), int(self.dim or 0)), np.float32)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        window = scan_rows(int(self.dim or 1), 8 << 20)
        i = 0
        while i < len(srt):  # read runs of nearby rows at once
            a = int(srt[i])
            j = int(np.searchsorted(srt, a + window, side="left"))
            b = int(srt[j - 1]) + 1
            block = self._read(a, b)
            out[order[i:j]] = block[srt[i:j] - a]
            i = j
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def sample_rows(count: int, size: int, seed: int, start: int = 0) -> np.ndarray:
    """``min(size, count)`` distinct rows of ``start..start+count``, drawn with ``seed``, ascending."""
    size = min(int(size), int(count))
    if size >= count:
        return np.arange(start, start + count, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(int(count), size=size, replace=False)).astype(np.int64) + int(start)


def _faiss() -> Any:
    from .backends import _faiss as get

    return get()


def exact_top_k(source: Any, queries: np.ndarray, k: int, *, batch_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``queries`` over every row of ``source``, scanned in
    batches: ``(scores, rows)``, each (nq, min(k, n)), best first."""
    faiss = _faiss()
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n, dim = int(source.shape[0]), int(source.shape[1])
    k = min(int(k), n)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for a, b in batches(n, batch_rows or scan_rows(dim)):
        x = np.ascontiguousarray(source[a:b], dtype=np.float32)
        d, i = faiss.knn(q, x, min(k, b - a), faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, np.where(i >= 0, i + a, -1))
    heap.finalize()
    return heap.D, heap.I


def recall_against_exact(search: Any, source: Any, k: int = 10, n_queries: int = 1000, seed: int = 0) -> tuple[float, int]:
    """Recall@k of an approximate ``search(queries, k) -> (scores, rows)`` against exact search
    over ``source`` (the same vectors, same rows): the share of the exact top-k that the
    approximate top-k finds, over up to ``n_queries`` rows of ``source`` drawn with ``seed`` as
    queries. The exact reference is computed in batches. Returns ``(recall, queries used)``."""
    n = int(source.shape[0])
    rows = sample_rows(n, n_queries, seed)
    q = np.ascontiguousarray(take_rows(source, rows), dtype=np.float32)
    _, truth = exact_top_k(source, q, k)
    _, got = search(q, k)
    hits = sum(len(set(t[t >= 0].tolist()) & set(g.tolist())) for t, g in zip(truth, got))
    return hits / float(max(1, int((truth >= 0).sum()))), len(rows)


def own_pair_recall(
    queries: Any, gallery: Any, query_rows: np.ndarray, pair_rows: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Instance-level recall@k of ``queries[query_rows]`` whose own pair is ``gallery[pair_rows]``,
    with the gallery scanned in batches (the same measure as
    :func:`gcrdp.evaluation.instance_recall` with ``metric="dot"``: the pair's rank is 1 + the
    number of gallery items scored strictly higher, ties in the query's favour)."""
    q = np.ascontiguousarray(take_rows(queries, np.asarray(query_rows)), dtype=np.float32)
    g_own = np.ascontiguousarray(take_rows(gallery, np.asarray(pair_rows)), dtype=np.float32)
    own = np.einsum("ij,ij->i", q, g_own)
    n = int(gallery.shape[0])
    top = min(max(ks) + 1, n)
    d_top, i_top = exact_top_k(gallery, q, top)
    # ties, and the rounding between two ways of computing one dot product, count in the query's favour
    tol = 1e-6 * np.maximum(1.0, np.abs(own))[:, None]
    higher = ((d_top > own[:, None] + tol) & (i_top != np.asarray(pair_rows)[:, None]) & (i_top >= 0)).sum(axis=1)
    return {f"recall@{k}": float(np.mean(higher < k)) for k in ks}
