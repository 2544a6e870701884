"""Ranking and per-query statistics of the retrieval metrics: the ranks of each query's relevant
gallery items, AP, P@k and R@k per query, over blocks of queries run on threads
(:func:`_accumulate`).

Two exact ways to rank a block of scores (rank = score descending, ties by gallery index
ascending), chosen per block and per row; both give the same ranks (tested):

* **Sorted scores + counts** (:func:`_relevant_ranks`, float32 scores): each row's scores are
  sorted as float32 (numpy's SIMD sort), and so are its relevant items' scores (few); the rank
  of a relevant item with score ``v`` is the number of scores ``> v`` (a binary search in the
  sorted row) plus the number of items with a score equal to ``v`` and a smaller gallery index
  (counted in the row, only when the sorted row shows another score equal to ``v``).
* **Packed-key sort of the whole row** (:func:`_ranked_relevance`): one int64 key per (query,
  item) — order-preserving bits of ``-score``, gallery index, relevance bit — sorted. Used when
  the relevant items are a large share of the gallery (many binary searches), for rows with many
  tied relevant items, and for float64 scores (``np.argsort(kind="stable")``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError
from .checks import (
    _LITTLE_ENDIAN,
    MAX_AUTO_THREADS,
    MIN_SCORES_FOR_THREADS,
    RANK_SCORES,
    _as_relevant,
    _as_scores,
    _check_chunk_size,
    _check_k,
)

#: The sorted-scores path is used when a block's relevant (query, item) pairs are at most this
#: share of its scores; above it, one binary search per relevant item costs more than the
#: packed-key sort of the whole rows.
MAX_RELEVANT_SHARE = 0.25
#: Rows with more relevant items whose score ties with another item's use the packed-key sort
#: (each tie is resolved by a scan of the row otherwise).
MAX_TIES_PER_ROW = 64

T = TypeVar("T")


class Workspace:
    """Arrays reused from block to block by one thread. A fresh array of tens of MiB costs page
    faults on every first touch (about as much as copying it); a reused one does not."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` (a view of a kept buffer)."""
        size = int(np.prod(shape))
        buf = self._arrays.get(name)
        if buf is None or buf.dtype != np.dtype(dtype) or buf.size < size:
            buf = self._arrays[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


# --------------------------------------------------------------------------------------------
# Relevance of a block of queries
# --------------------------------------------------------------------------------------------


class BlockRelevance:
    """Relevance of a block of ``c`` queries to the whole gallery (``ng`` items): the relevant
    (row, column) pairs in row-major order, and the dense (rows, ng) bool matrix on demand."""

    def __init__(
        self,
        ng: int,
        *,
        dense: np.ndarray | None = None,
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
        make_dense: Callable[[np.ndarray | slice], np.ndarray] | None = None,
    ) -> None:
        self.ng = ng
        self._dense = dense
        self._pairs = pairs
        self._make_dense = make_dense

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) int64 of the relevant items, row-major (columns ascending per row)."""
        if self._pairs is None:
            assert self._dense is not None
            flat = np.flatnonzero(self._dense)
            rows = flat // self.ng
            self._pairs = (rows, flat - rows * self.ng)
        return self._pairs

    def dense(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), ng) bool: the relevance of the given rows of the block (None: all)."""
        if self._dense is not None:
            return self._dense if rows is None else self._dense[rows]
        assert self._make_dense is not None
        return self._make_dense(rows if rows is not None else slice(None))


class GalleryRelevance:
    """The gallery's labels prepared for relevance blocks: the gallery items of each class (sorted
    indices), so that a query's relevant items are looked up instead of compared with every item
    (multi-label: the union of its classes' items); for multi-label queries whose classes hold
    much of the gallery, the multi-hot rows packed into 64-bit words instead (a query and an item
    share a class when a word of theirs has a common bit)."""

    def __init__(self, gallery_labels: np.ndarray) -> None:
        self.gl = gallery_labels
        self.ng = int(gallery_labels.shape[0])
        if gallery_labels.ndim == 1:
            order = np.argsort(gallery_labels, kind="stable")  # indices ascending within a class
            self.classes, starts, self.counts = np.unique(gallery_labels[order], return_index=True, return_counts=True)
            self.members = np.split(order.astype(np.int64, copy=False), starts[1:])
        else:
            self.words = pack_labels(gallery_labels).T.copy()  # (W, ng) uint64
            self.members = [np.flatnonzero(column).astype(np.int64, copy=False) for column in gallery_labels.T]
            self.counts = np.array([m.size for m in self.members], np.int64)

    def block(self, query_labels: np.ndarray) -> BlockRelevance:
        """Relevance of the queries with labels ``query_labels`` ((c,) or (c, C))."""
        if self.gl.ndim == 2:
            return self._multi_label_block(query_labels)
        pos = np.minimum(np.searchsorted(self.classes, query_labels), self.classes.size - 1)
        found = self.classes[pos] == query_labels
        sizes = np.where(found, self.counts[pos], 0)
        parts = [self.members[p] for p in pos[found].tolist()]
        cols = np.concatenate(parts) if parts else np.empty(0, np.int64)
        rows = np.repeat(np.arange(query_labels.shape[0], dtype=np.int64), sizes)
        gl = self.gl
        return BlockRelevance(self.ng, pairs=(rows, cols), make_dense=lambda r: query_labels[r][:, None] == gl[None, :])

    def _multi_label_block(self, query_labels: np.ndarray) -> BlockRelevance:
        c = query_labels.shape[0]

        def dense(rows: np.ndarray | slice) -> np.ndarray:
            return shares_class(pack_labels(query_labels[rows]), self.words)

        q_rows, q_classes = np.nonzero(query_labels)
        sizes = self.counts[q_classes]
        if int(sizes.sum()) > MAX_RELEVANT_SHARE * c * self.ng:  # the union would be large: compare all
            return BlockRelevance(self.ng, dense=dense(slice(None)))
        parts = [self.members[k] for k in q_classes.tolist()]
        cols = np.concatenate(parts) if parts else np.empty(0, np.int64)
        flat = np.repeat(q_rows.astype(np.int64), sizes) * self.ng + cols
        flat.sort()
        if flat.size > 1:  # the union per row: drop the items of several of the query's classes
            flat = flat[np.concatenate(([True], flat[1:] != flat[:-1]))]
        rows = flat // self.ng
        return BlockRelevance(self.ng, pairs=(rows, flat - rows * self.ng), make_dense=dense)


def pack_labels(multi_hot: np.ndarray) -> np.ndarray:
    """(n, C) bool -> (n, ceil(C / 64)) uint64: the classes of each row as bits."""
    n, n_classes = multi_hot.shape
    n_words = max(1, -(-n_classes // 64))
    padded = np.zeros((n, n_words * 64), bool)
    padded[:, :n_classes] = multi_hot
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64, copy=False)


def shares_class(query_words: np.ndarray, gallery_words_t: np.ndarray) -> np.ndarray:
    """(c, W) and (W, ng) packed labels -> (c, ng) bool: the query and the item share a class."""
    common = query_words[:, :1] & gallery_words_t[:1]
    for w in range(1, query_words.shape[1]):
        common |= query_words[:, w : w + 1] & gallery_words_t[w : w + 1]
    return common != 0


# --------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------


def _ranked_relevance(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Relevance in rank order: ``out[q, r]`` is True when the item ranked r-th for query q is
    relevant. Rank = score descending, ties by gallery index ascending.

    scores: (c, ng) float32 or float64, finite; relevant: (c, ng) bool -> (c, ng) bool.
    """
    ng = scores.shape[1]
    if scores.dtype == np.float32 and ng < 2**31:
        # One int64 key per entry: [sortable(-score) : 32 bits][index : 31 bits][relevant : 1 bit].
        # 0 - s negates and maps -0.0 to +0.0, so that 0.0 and -0.0 tie as they compare equal.
        bits = np.subtract(np.float32(0), scores).view(np.int32)  # (c, ng)
        flip = bits >> 31  # -1 where negative, 0 elsewhere
        flip &= 0x7FFFFFFF
        bits ^= flip  # now int32 order == float order (of -score)
        key = bits.astype(np.int64)
        del bits, flip
        key <<= 32
        key |= np.arange(0, 2 * ng, 2, dtype=np.int64)
        key |= relevant
        key.sort(axis=1)  # keys are unique: unstable sort == stable order
        if _LITTLE_ENDIAN:  # the relevance bit is bit 0 of the first byte of each key
            return (key.view(np.uint8)[:, ::8] & 1).view(bool)
        return (key & 1).astype(bool)  # pragma: no cover - big-endian machines
    order = np.argsort(np.subtract(0, scores), axis=1, kind="stable")  # (c, ng)
    return np.take_along_axis(relevant, order, axis=1)


def _relevant_ranks(
    scores: np.ndarray, rel: BlockRelevance, workspace: Workspace | None = None, pair: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """0-based ranks of the relevant items of each row of ``scores`` (c, ng).

    Returns ``(rows, ranks, pair_rank)``: the relevant items row by row (rows ascending), ranks
    ascending within a row; with ``pair`` ((c,) column of each row's own pair, or -1),
    :func:`_pair_ranks` of the rows, else None.
    """
    c, ng = scores.shape
    rows, cols = rel.pairs()
    m = rows.size
    if scores.dtype != np.float32 or m > MAX_RELEVANT_SHARE * c * ng:
        full_rows, full_ranks = np.nonzero(_ranked_relevance(scores, rel.dense()))
        return full_rows, full_ranks, None if pair is None else _pair_ranks(scores, pair)
    ranks = np.empty(m, np.int64)
    pair_rank = np.zeros(c, np.int64)
    row_sorted = (workspace or Workspace()).get("sorted_row", (ng,), np.float32)
    bounds = np.searchsorted(rows, np.arange(c + 1)).tolist()
    owns = [-1] * c if pair is None else pair.tolist()
    for r in range(c):  # row by row: the row and its sorted copy stay in the core's cache
        a, b, own = bounds[r], bounds[r + 1], owns[r]
        if a == b and own < 0:
            continue
        np.copyto(row_sorted, scores[r])
        row_cols = cols[a:b]
        v = row_sorted[row_cols]  # the relevant items' scores, by gallery index
        own_score = row_sorted[own] if own >= 0 else None
        row_sorted.sort()
        if a < b:
            needles = np.sort(v)
            found = np.searchsorted(row_sorted, needles, side="right")  # scores <= v, v itself included
            row_ranks = ng - found[::-1]  # scores > v: the ranks in rank order, up to ties
            # Another item scores the same as v when one sits just below v's last copy (a false
            # alarm, e.g. at index -1, only costs an exact count that finds nothing).
            tied = needles[row_sorted[found - 2] == needles]
            if tied.size > MAX_TIES_PER_ROW:
                row_ranks = np.nonzero(_ranked_relevance(scores[r : r + 1], rel.dense(np.array([r]))))[1]
            elif tied.size:
                for value in set(tied.tolist()):  # 0.0 and -0.0 are one value, as they tie
                    base = ng - int(np.searchsorted(row_sorted, np.float32(value), side="right"))  # items scored higher
                    same = row_ranks == base  # the items scoring `value`, contiguous in rank order
                    row_ranks[same] = [base + int(np.count_nonzero(scores[r, :i] == value)) for i in row_cols[v == value].tolist()]
            ranks[a:b] = row_ranks
        if own_score is not None:
            pair_rank[r] = 1 + ng - int(np.searchsorted(row_sorted, own_score, side="right"))
    return rows, ranks, None if pair is None else pair_rank


def _pair_ranks(scores: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """1 + the number of gallery items scored strictly higher than each row's own pair
    (``pair[i]`` its column; -1: no pair, rank 0)."""
    out = np.zeros(scores.shape[0], np.int64)
    have = np.flatnonzero(pair >= 0)
    if have.size:
        own = scores[have, pair[have]]
        rows = scores if have.size == scores.shape[0] else scores[have]
        out[have] = 1 + np.count_nonzero(rows > own[:, None], axis=1)
    return out


def _rank_stats(rows: np.ndarray, cols: np.ndarray, c: int, ks: tuple[int, ...], k_denominator: str) -> dict[str, np.ndarray]:
    """Per-query metrics of ``c`` queries from the 0-based ranks ``cols`` of their relevant
    items (``rows``: query of each; row-major, ranks ascending within a row)."""
    n_rel = np.bincount(rows, minlength=c)  # (c,)
    starts = np.cumsum(n_rel) - n_rel
    hit_no = np.arange(1, rows.size + 1, dtype=np.float64) - starts[rows]  # j = 1..R per row
    prec = hit_no / (cols + 1.0)  # precision at the rank of each relevant item
    out: dict[str, np.ndarray] = {"n_relevant": n_rel}
    ap_sum = np.bincount(rows, weights=prec, minlength=c)
    out["ap"] = _safe_div(ap_sum, n_rel)
    for k in ks:
        top = cols < k
        rows_k = rows[top]
        hits = np.bincount(rows_k, minlength=c)
        sum_k = np.bincount(rows_k, weights=prec[top], minlength=c)
        denom = hits if k_denominator == "hits" else np.minimum(n_rel, k)
        out[f"ap@{k}"] = _safe_div(sum_k, denom)
        out[f"precision@{k}"] = hits / float(k)
        out[f"recall@{k}"] = _safe_div(hits.astype(np.float64), n_rel)
    return out


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, np.float64), where=den > 0)


# --------------------------------------------------------------------------------------------
# Blocks of queries over threads
# --------------------------------------------------------------------------------------------


def _blocks(n_queries: int, chunk_size: int, n_threads: int) -> list[tuple[int, int]]:
    """Query blocks ``(start, stop)``: ``n_threads`` of them run at once and hold at most
    ``chunk_size`` rows together. A block has at least two rows (unless ``chunk_size`` is 1 or
    there is one query): the BLAS computes a one-row product (matrix-vector) with another
    rounding than the rows of a matrix product, which would make scores depend on the blocks."""
    rows = max(1, chunk_size // max(1, n_threads))
    if chunk_size >= 2:
        rows = max(2, rows)
    count = -(-n_queries // rows)
    if rows >= 2 and n_queries >= 2 and n_queries // count < 2:
        count = n_queries // 2
    base, extra = divmod(n_queries, count)
    stops = np.cumsum([base + (i < extra) for i in range(count)]).tolist()
    return list(zip([0, *stops[:-1]], stops))


def _map_blocks(blocks: Sequence[tuple[int, int]], fn: Callable[[tuple[int, int]], T], n_threads: int) -> list[T]:
    """``[fn(block) for block in blocks]``, ``n_threads`` at a time (numpy's matmul, sort and
    element-wise loops release the GIL), with the BLAS held to one thread meanwhile: between the
    block products its idle threads spin and steal the cores from the sorts. The first error in
    block order is raised and the blocks not started are cancelled."""
    with _single_threaded_blas():
        if n_threads <= 1 or len(blocks) <= 1:
            return [fn(b) for b in blocks]
        with ThreadPoolExecutor(min(n_threads, len(blocks))) as pool:
            futures: list[Future[T]] = [pool.submit(fn, b) for b in blocks]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def _accumulate(
    n_queries: int,
    chunk_size: int,
    score: Callable[[int, int, Workspace], np.ndarray],
    relevance: Callable[[int, int], BlockRelevance],
    ks: tuple[int, ...],
    k_denominator: str,
    n_threads: int = 1,
    pair: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Score query blocks with ``score(start, stop, workspace) -> (stop - start, ng)`` (one
    matrix product per block; ``workspace``: the calling thread's reusable arrays) and rank them
    RANK_SCORES at a time, with ``relevance(start, stop)`` of those queries.

    ``n_threads`` blocks of about ``chunk_size / n_threads`` queries run at a time, so at most
    about ``chunk_size × ng`` scores exist at once, plus the ranking's working memory (bounded by
    RANK_SCORES). With ``pair`` ((n_queries,) gallery column of each query's own pair, or -1),
    also ``"pair_rank"``: 1 + the number of items scored strictly higher than the pair (0
    without pair). The result does not depend on ``chunk_size`` or ``n_threads``.
    """
    local = threading.local()

    def run(bounds: tuple[int, int]) -> dict[str, np.ndarray]:
        start, stop = bounds
        workspace = local.__dict__.setdefault("workspace", Workspace())
        scores = score(start, stop, workspace)  # (c, ng)
        step = max(1, RANK_SCORES // scores.shape[1])
        parts = []
        for a in range(0, stop - start, step):
            b = min(a + step, stop - start)
            own = None if pair is None else pair[start + a : start + b]
            rows, ranks, pair_rank = _relevant_ranks(scores[a:b], relevance(start + a, start + b), workspace, own)
            stats = _rank_stats(rows, ranks, b - a, ks, k_denominator)
            if pair_rank is not None:
                stats["pair_rank"] = pair_rank
            parts.append(stats)
        return _concat(parts)

    return _concat(_map_blocks(_blocks(n_queries, chunk_size, n_threads), run, n_threads))


def _concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _check_n_threads(n_threads: Any, n_scores: int) -> int:
    if n_threads is None:
        if n_scores < MIN_SCORES_FOR_THREADS:
            return 1
        return max(1, min(os.cpu_count() or 1, MAX_AUTO_THREADS))
    if isinstance(n_threads, (bool, np.bool_)) or not isinstance(n_threads, (int, np.integer)):
        raise ConfigError(f"n_threads must be a positive integer or None, got {n_threads!r}.")
    if n_threads < 1:
        raise ConfigError(f"n_threads must be at least 1, got {n_threads}.")
    return int(n_threads)


def _from_matrices(scores: Any, relevant: Any, ks: tuple[Any, ...], k_denominator: str = "hits") -> dict[str, np.ndarray]:
    s = _as_scores(scores)
    rel = _as_relevant(relevant, s.shape)
    ng = s.shape[1]
    checked = tuple(_check_k(k, ng) for k in ks)
    chunk = _check_chunk_size(None, ng)
    return _accumulate(
        s.shape[0],
        chunk,
        lambda a, b, _: s[a:b],
        lambda a, b: BlockRelevance(ng, dense=rel[a:b]),
        checked,
        k_denominator,
        _check_n_threads(None, s.size),
    )
