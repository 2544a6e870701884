"""Ranking and per-query statistics of the retrieval metrics: the stable sort of each query's
scores, AP, P@k and R@k per query, chunked and threaded (:func:`_accumulate`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ConfigError
from .checks import _LITTLE_ENDIAN, MAX_AUTO_THREADS, MIN_SCORES_FOR_THREADS, _as_relevant, _as_scores, _check_chunk_size, _check_k

# --------------------------------------------------------------------------------------------
# Ranking and per-query statistics
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


def _rank_stats(ranked: np.ndarray, ks: tuple[int, ...], k_denominator: str) -> dict[str, np.ndarray]:
    """Per-query metrics from the ranked relevance ``ranked`` (c, ng) bool."""
    c = ranked.shape[0]
    rows, cols = np.nonzero(ranked)  # row-major: per row, relevant ranks in increasing order
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


def _accumulate(
    n_queries: int,
    chunk_size: int,
    block: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    ks: tuple[int, ...],
    k_denominator: str,
    n_threads: int = 1,
) -> dict[str, np.ndarray]:
    """Run ``block(start, stop) -> (scores, relevant)`` and the ranking over query chunks.

    Each chunk of ``chunk_size`` queries is split row-wise over ``n_threads`` threads, each
    scoring and ranking its rows (numpy's matmul, sort and element-wise loops release the GIL),
    so at most ``chunk_size × ng`` scores exist at a time. Meanwhile the BLAS is held to one
    thread: between the small matrix products its idle threads spin and steal the cores from the
    sorts (docs/benchmarks.md). The result does not depend on ``chunk_size`` or ``n_threads``.
    """

    def run(bounds: tuple[int, int]) -> dict[str, np.ndarray]:
        scores, rel = block(*bounds)  # (c, ng) float, (c, ng) bool
        return _rank_stats(_ranked_relevance(scores, rel), ks, k_denominator)

    chunks = [(a, min(a + chunk_size, n_queries)) for a in range(0, n_queries, chunk_size)]
    results: list[dict[str, np.ndarray]] = []
    with _single_threaded_blas():
        if n_threads <= 1:
            results = [run(bounds) for bounds in chunks]
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                for start, stop in chunks:
                    cuts = np.linspace(start, stop, min(n_threads, stop - start) + 1).astype(int)
                    results.extend(pool.map(run, zip(cuts[:-1].tolist(), cuts[1:].tolist())))
    return {name: np.concatenate([r[name] for r in results]) for name in results[0]}


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
    checked = tuple(_check_k(k, s.shape[1]) for k in ks)
    chunk = _check_chunk_size(None, s.shape[1])
    return _accumulate(
        s.shape[0],
        chunk,
        lambda a, b: (s[a:b], rel[a:b]),
        checked,
        k_denominator,
        _check_n_threads(None, s.size),
    )
