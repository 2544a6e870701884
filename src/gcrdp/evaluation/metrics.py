"""Retrieval metrics: relevance, AP / mAP@all, mAP@k, precision@k, recall@k, chance level.

Pure functions on numpy arrays. The exact definitions are in ``docs/metrics.md``; in short:

* A gallery item is **relevant** to a query when they share at least one class (single-label:
  same label; multi-label: the multi-hot rows intersect).
* The gallery is ranked by **score, descending; ties are broken by gallery index, ascending**
  (deterministic, the order a stable sort gives).
* **AP** of a query = mean, over *all* its relevant gallery items, of the precision at each one's
  rank; **mAP** (= mAP@all) is the mean of AP over queries. A query with no relevant item gets
  AP 0, stays in the mean, and is counted (``n_queries_without_relevant``).
* **AP@k** (default ``k_denominator="hits"``, the DSCMR/ACMR ``fx_calc_map_label`` convention):
  sum of the precisions at the relevant ranks within the top k, divided by the number of relevant
  items in the top k (0 when there is none). ``k_denominator="min_k_r"`` divides by
  ``min(k, R)`` instead, R being the query's number of relevant gallery items.
* **precision@k** = relevant items in the top k / k; **recall@k** = relevant items in the top k /
  R (0 when R = 0).

Scores computed from embeddings (:func:`retrieval_metrics`) are float32 whatever the input dtype
(float16 features are upcast before the matrix product), processed ``chunk_size`` queries at a
time so that at most ``chunk_size × n_gallery`` scores exist at once; the embeddings are cast and
normalised block by block (never copied whole; memory maps are read block by block).

Speed: AP, P@k and R@k need only the ranks of the relevant items: the j-th relevant item at
0-based rank r contributes precision ``j / (r + 1)``. Each query's scores are sorted as float32
(numpy's SIMD sort) and the rank of a relevant item is found by a binary search, ties resolved
by gallery index exactly (``ranking.py`` describes the paths; ``docs/metrics.md`` the measured
speed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, DataError, format_list
from .checks import (  # noqa: F401  (constants re-exported)
    CHUNK_ROWS,
    K_DENOMINATORS,
    MAX_AUTO_THREADS,
    MIN_SCORES_FOR_THREADS,
    RANK_SCORES,
    SCORES_PER_CHUNK,
    _check_chunk_size,
    _check_finite,
    _check_k_denominator,
    _check_ks,
    _check_label_pair,
    _relevance_rows,
    _shape,
)
from .ranking import (  # noqa: F401  (_ranked_relevance re-exported for the benchmarks)
    BlockRelevance,
    GalleryRelevance,
    Workspace,
    _accumulate,
    _blocks,
    _check_n_threads,
    _from_matrices,
    _map_blocks,
    _pair_ranks,
    _ranked_relevance,
    pack_labels,
    shares_class,
)

__all__ = [
    "relevance",
    "average_precision",
    "precision_at_k",
    "recall_at_k",
    "chance_map",
    "retrieval_metrics",
    "cross_modal_metrics",
    "instance_recall",
    "K_DENOMINATORS",
    "SCORE_METRICS",
    "SCORES_PER_CHUNK",
]

KDenominator = Literal["hits", "min_k_r"]

# --------------------------------------------------------------------------------------------
# Public functions on score matrices
# --------------------------------------------------------------------------------------------


def relevance(query_labels: Any, gallery_labels: Any) -> np.ndarray:
    """Relevance matrix: ``out[q, g]`` is True when query q and gallery item g share a class.

    Args:
        query_labels: (nq,) int class indices, or (nq, C) multi-hot (bool or 0/1).
        gallery_labels: same kind as ``query_labels``: (ng,) or (ng, C).

    Returns:
        (nq, ng) bool. Multi-label rows with no class are relevant to nothing.

    Raises:
        DataError: wrong ndim or dtype, non-0/1 multi-hot values, different kinds or numbers of
            classes for queries and gallery, or an empty side.
    """
    ql, gl = _check_label_pair(query_labels, gallery_labels)
    other = gl if gl.ndim == 1 else gl.T.astype(np.float32)
    return _relevance_rows(ql, other)


def average_precision(scores: Any, relevant: Any, k: int | None = None, *, k_denominator: KDenominator = "hits") -> np.ndarray:
    """Average precision of each query (mAP is its mean).

    Args:
        scores: (nq, ng) real, higher = better; float64 is ranked in float64, float16 is upcast
            to float32, ints to float64. Ties are broken by gallery index, ascending.
        relevant: (nq, ng) bool (or 0/1), e.g. from :func:`relevance`.
        k: None for AP over the full ranking (mAP@all); an int in [1, ng] for AP@k.
        k_denominator: for AP@k only. ``"hits"`` (default, DSCMR/ACMR ``fx_calc_map_label``):
            divide by the number of relevant items in the top k; ``"min_k_r"``: divide by
            min(k, R), R = number of relevant items of the query.

    Returns:
        (nq,) float64 in [0, 1]; 0 for a query without relevant items (or, for AP@k, without one
        in its top k).

    Raises:
        DataError: shapes, dtypes, empty input, NaN/inf scores. ConfigError: bad ``k``.
    """
    _check_k_denominator(k_denominator)
    if k is None:
        return _from_matrices(scores, relevant, ())["ap"]
    stats = _from_matrices(scores, relevant, (k,), k_denominator)
    return stats[f"ap@{int(k)}"]


def precision_at_k(scores: Any, relevant: Any, k: int) -> np.ndarray:
    """(nq,) float64: relevant items among the top k / k.

    Ranking (score descending, ties by gallery index) and arguments as in
    :func:`average_precision`; ``k`` in [1, ng].
    """
    return _from_matrices(scores, relevant, (k,))[f"precision@{int(k)}"]


def recall_at_k(scores: Any, relevant: Any, k: int) -> np.ndarray:
    """(nq,) float64: relevant items among the top k / all relevant items (0 when none).

    Ranking and arguments as in :func:`average_precision`; ``k`` in [1, ng].
    """
    return _from_matrices(scores, relevant, (k,))[f"recall@{int(k)}"]


def chance_map(query_labels: Any, gallery_labels: Any) -> float:
    """Chance level of mAP: mean over queries of (#relevant gallery items / #gallery items).

    For single-label data this is the gallery frequency of the query's class, averaged over
    queries. It is the "chance" column of tables (the usual convention). The exact expected AP
    of a uniformly random ranking is slightly higher: for R relevant items among N it is
    (H_N + (R - 1) / (N - 1) * (N - H_N)) / N (H_N: the N-th harmonic number), R/N + O(log N / N);
    see docs/metrics.md.

    Returns:
        float in [0, 1].
    """
    ql, gl = _check_label_pair(query_labels, gallery_labels)
    if ql.ndim == 1:
        classes, counts = np.unique(gl, return_counts=True)
        pos = np.searchsorted(classes, ql)
        pos = np.minimum(pos, classes.size - 1)
        n_rel = np.where(classes[pos] == ql, counts[pos], 0)
        return _chance_from_counts(n_rel, gl.shape[0], False)
    # Multi-label: count the relevant pairs between distinct label rows, times their numbers of
    # occurrences (exact integers; equal rows are frequent in multi-label data).
    uq, q_counts = np.unique(ql, axis=0, return_counts=True)
    ug, g_counts = np.unique(gl, axis=0, return_counts=True)
    g_words = pack_labels(ug).T.copy()  # (W, distinct gallery rows)
    g_weights = None if (g_counts == 1).all() else g_counts.astype(np.float64)  # exact: sums of integers below 2**53
    q_words = pack_labels(uq)
    rows = max(1, RANK_SCORES // ug.shape[0])
    total = 0
    for start in range(0, uq.shape[0], rows):
        rel = shares_class(q_words[start : start + rows], g_words)  # (c, distinct gallery rows)
        hits = np.count_nonzero(rel, axis=1) if g_weights is None else (rel @ g_weights).astype(np.int64)
        total += int(q_counts[start : start + rows] @ hits)
    return float(total / (ql.shape[0] * gl.shape[0]))


def _chance_from_counts(n_rel: np.ndarray, ng: int, multi_label: bool) -> float:
    """:func:`chance_map` from the number of relevant gallery items of each query (int64)."""
    if multi_label:
        return float(int(n_rel.sum()) / (n_rel.shape[0] * ng))
    return float(n_rel.mean() / ng)


# --------------------------------------------------------------------------------------------
# Metrics from embeddings
# --------------------------------------------------------------------------------------------


def _row_norms(emb: np.ndarray, name: str) -> np.ndarray:
    """(n, 1) float32 L2 norms of the rows of ``emb`` in float32, computed block by block (no
    float32 copy of the whole array); a zero norm is a DataError naming the rows."""
    n = emb.shape[0]
    norms = np.empty((n, 1), np.float32)
    for a, b in _row_blocks(emb):
        norms[a:b] = np.linalg.norm(_rows_float32(emb, a, b), axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise DataError(
            f"{name}: {zero.size} rows have zero norm (first: {zero[:5].tolist()}), so their "
            f"cosine similarity is undefined. Check the features, or use metric='dot'."
        )
    return norms


def _row_blocks(emb: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges of about EMBEDDING_BLOCK_VALUES values each, for passes over an embedding
    array that must not copy it whole."""
    n = emb.shape[0]
    rows = max(1, EMBEDDING_BLOCK_VALUES // max(1, emb.shape[1]))
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


def _rows_float32(emb: np.ndarray, a: int, b: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # beyond the float32 range: rejected by _as_embeddings
        return emb[a:b].astype(np.float32, copy=False)


def _cosine_prepare(emb: np.ndarray, name: str) -> np.ndarray:
    emb = _as_embeddings(emb, name)
    return _rows_float32(emb, 0, emb.shape[0]) / _row_norms(emb, name)


def _dot_prepare(emb: np.ndarray, name: str) -> np.ndarray:
    emb = _as_embeddings(emb, name)
    return _rows_float32(emb, 0, emb.shape[0])


#: Score functions by name: each prepares a float32 (n, d) embedding matrix; score = dot product.
#: (The metrics prepare the rows block by block, with the same values.)
SCORE_METRICS: Mapping[str, Callable[[np.ndarray, str], np.ndarray]] = {
    "cosine": _cosine_prepare,
    "dot": _dot_prepare,
}

#: Values per block of the passes over embeddings (validation, norms, normalised copies): 4 Mi
#: (16 MiB of float32).
EMBEDDING_BLOCK_VALUES = 2**22


def _set_max_views(metric: str) -> int | None:
    """K of a ``"set-max:K"`` metric (None for any other name)."""
    if not isinstance(metric, str) or not metric.startswith("set-max:"):
        return None
    try:
        k = int(metric.split(":", 1)[1])
    except ValueError:
        k = 0
    if k < 1:
        raise ConfigError(f"metric 'set-max:K' needs an integer K >= 1, got {metric!r}.")
    return k


def _unit_views(emb: np.ndarray, k: int, name: str) -> np.ndarray:
    """(n, K·d) rows of K concatenated views -> (n, K, d) L2-normalised views."""
    if emb.shape[1] % k:
        raise DataError(f"{name}: dimension {emb.shape[1]} is not a multiple of the {k} views of metric 'set-max'.")
    v = _rows_float32(emb, 0, emb.shape[0]).reshape(emb.shape[0], k, -1)
    norms = np.linalg.norm(v, axis=2, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"{name}: some views have zero norm, so their cosine is undefined.")
    return (v / norms).astype(np.float32)


def _as_embeddings(emb: Any, name: str) -> np.ndarray:
    """Check an (n, d) embedding array: real numbers, finite in float32. Returns it as an array
    in its own dtype (a memory map stays one): it is cast to float32 block by block when scored,
    never whole."""
    arr = np.asarray(emb) if not isinstance(emb, np.ndarray) else emb
    if arr.ndim != 2:
        raise DataError(f"{name} must be a 2-D array (n, dim), got shape {_shape(arr)}.")
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{name} must hold real numbers (float16/32/64), got dtype {arr.dtype}.")
    if arr.dtype.kind == "f":
        bad: list[np.ndarray] = []
        for a, b in _row_blocks(arr):
            finite = np.isfinite(_rows_float32(arr, a, b)).all(axis=1)  # values beyond float32 become inf
            if not finite.all():
                bad.append(np.flatnonzero(~finite) + a)
        if bad:
            rows = np.concatenate(bad)
            raise DataError(
                f"{name} contains NaN or infinite values in {rows.size} rows (first: "
                f"{rows[:5].tolist()}) (values beyond the float32 range count as infinite)."
            )
    return arr


def retrieval_metrics(
    query_emb: Any,
    gallery_emb: Any,
    query_labels: Any,
    gallery_labels: Any,
    ks: Iterable[int] | int = (),
    *,
    metric: str = "cosine",
    chunk_size: int | None = None,
    k_denominator: KDenominator = "hits",
    per_query: bool = False,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Retrieval metrics of queries against a gallery, computed chunk by chunk.

    Args:
        query_emb: (nq, d) float16/32/64 query embeddings.
        gallery_emb: (ng, d) gallery embeddings (same d).
        query_labels: (nq,) int or (nq, C) multi-hot; gallery_labels: (ng,) or (ng, C).
        ks: cut-offs for mAP@k, precision@k and recall@k (each in [1, ng]); an int is one cut-off.
        metric: ``"cosine"`` (rows L2-normalised; zero rows are an error), ``"dot"``, or
            ``"set-max:K"``: each row is K concatenated views (a set), and the score of a query
            and a gallery item is the best cosine over their K×K view pairs.
        chunk_size: queries scored at once (at most ``chunk_size × ng`` scores exist at a time);
            None chooses ``max(1, min(CHUNK_ROWS, SCORES_PER_CHUNK // ng))`` (671 queries for
            100,000 gallery items: 256 MiB of scores). The result does not depend on it.
        k_denominator: AP@k convention, see :func:`average_precision`.
        n_threads: threads that score and rank a chunk's rows in parallel (the BLAS is held to
            one thread meanwhile); None = min(os.cpu_count(), MAX_AUTO_THREADS), or 1 when
            there are fewer than MIN_SCORES_FOR_THREADS scores. The result does not depend on
            it.
        per_query: also return ``"per_query"``: a dict of (nq,) arrays ``"ap"``, ``"ap@k"``,
            ``"precision@k"``, ``"recall@k"`` (float64) and ``"n_relevant"`` (int64).

    Returns:
        A flat dict of python floats (fractions in [0, 1]) and ints::

            {"map", "map@k", "precision@k", "recall@k" (for each k), "chance_map",
             "n_queries", "n_gallery", "n_queries_without_relevant"}

        Scores are float32 dot products of the (normalised) embeddings, ranked descending with
        ties broken by gallery index. Queries without relevant items count with AP 0.
    """
    scoring = _Scoring(metric=metric, chunk_size=chunk_size, k_denominator=k_denominator, n_threads=n_threads)
    return _with_per_query(_retrieval_stats(query_emb, gallery_emb, query_labels, gallery_labels, ks, scoring), per_query)


@dataclass(frozen=True)
class _Scoring:
    """How :func:`retrieval_metrics` scores and ranks (its keyword options of those names,
    except ``per_query``; checked by :func:`_retrieval_stats`)."""

    metric: str = "cosine"
    chunk_size: int | None = None
    k_denominator: KDenominator = "hits"
    n_threads: int | None = None


def _with_per_query(result: tuple[dict[str, Any], dict[str, np.ndarray]], per_query: bool) -> dict[str, Any]:
    """The result dict of :func:`_retrieval_stats`, holding its per-query arrays as ``"per_query"`` when asked."""
    out, stats = result
    if per_query:
        out["per_query"] = stats
    return out


def _retrieval_stats(
    query_emb: Any,
    gallery_emb: Any,
    query_labels: Any,
    gallery_labels: Any,
    ks: Iterable[int] | int = (),
    scoring: _Scoring = _Scoring(),
    *,
    names: tuple[str, str] = ("query_emb", "gallery_emb"),
    pair_index: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The result dict of :func:`retrieval_metrics` (without ``per_query``) and the per-query
    arrays; with ``pair_index`` ((nq,) gallery row of each query's own pair, or -1) the arrays
    also hold ``"pair_rank"`` (see :func:`instance_recall`), from the same scores."""
    qn, gn = names
    metric, k_denominator = scoring.metric, scoring.k_denominator
    n_views = _set_max_views(metric)
    if metric not in SCORE_METRICS and n_views is None:
        raise ConfigError(f"metric must be one of {format_list(SCORE_METRICS)} or 'set-max:K', got {metric!r}.")
    _check_k_denominator(k_denominator)
    q = _as_embeddings(query_emb, qn)
    g = _as_embeddings(gallery_emb, gn)
    if q.shape[1] != g.shape[1]:
        raise DataError(
            f"{qn} and {gn} must have the same dimension, got {q.shape[1]} and "
            f"{g.shape[1]}. Project both modalities into the shared space first."
        )
    ql, gl = _check_label_pair(query_labels, gallery_labels)
    if ql.shape[0] != q.shape[0]:
        raise DataError(f"{qn} has {q.shape[0]} rows but query_labels has {ql.shape[0]}: there must be one label entry per query.")
    if gl.shape[0] != g.shape[0]:
        raise DataError(f"{gn} has {g.shape[0]} rows but gallery_labels has {gl.shape[0]}: there must be one label entry per gallery item.")
    ng = g.shape[0]
    checked_ks = _check_ks(ks, ng)
    chunk = _check_chunk_size(scoring.chunk_size, ng)
    threads = _check_n_threads(scoring.n_threads, q.shape[0] * ng)
    score = _scorer(q, g, metric, n_views, names)
    gallery = GalleryRelevance(gl)

    def relevance(start: int, stop: int) -> BlockRelevance:
        return gallery.block(ql[start:stop])

    stats = _accumulate(q.shape[0], chunk, score, relevance, checked_ks, k_denominator, threads, pair_index)
    n_rel = stats["n_relevant"]
    out: dict[str, Any] = {"map": float(stats["ap"].mean())}
    for k in checked_ks:
        for name in ("map", "precision", "recall"):
            key = "ap" if name == "map" else name
            out[f"{name}@{k}"] = float(stats[f"{key}@{k}"].mean())
    out["chance_map"] = float(n_rel.mean() / ng)
    out["n_queries"] = int(q.shape[0])
    out["n_gallery"] = int(ng)
    out["n_queries_without_relevant"] = int((n_rel == 0).sum())
    return out, stats


def _scorer(
    q: np.ndarray, g: np.ndarray, metric: str, n_views: int | None, names: tuple[str, str]
) -> Callable[[int, int, Workspace | None], np.ndarray]:
    """``score(start, stop, workspace) -> (stop - start, ng)`` float32 scores of query rows
    ``start:stop`` against the whole gallery under ``metric`` (checked embeddings in), written
    into the workspace's ``"scores"`` array when one is given (valid until the next call).

    The gallery is prepared once, into one (d, ng) float32 array filled block by block; the
    query rows are cast and normalised per call (the same values as a whole-array preparation:
    every step is row by row)."""
    qn, gn = names
    ng = g.shape[0]
    if n_views is not None:
        qv, gv = _unit_views(q, n_views, qn), _unit_views(g, n_views, gn)  # (n, K, D/K)
        gvt = np.ascontiguousarray(gv.reshape(ng * n_views, -1).T)  # (D/K, ng·K)

        def score(start: int, stop: int, workspace: Workspace | None = None) -> np.ndarray:  # best of the K×K view pairs
            c = stop - start
            pair = qv[start:stop].reshape(c * n_views, -1) @ gvt  # (c·K, ng·K)
            return pair.reshape(c, n_views, ng, n_views).max(axis=(1, 3))  # (c, ng)

        return score
    cosine = metric == "cosine"
    q_norms = _row_norms(q, qn) if cosine else None
    g_norms = _row_norms(g, gn) if cosine else None
    gt = np.empty((g.shape[1], ng), np.float32)  # (d, ng)
    for a, b in _row_blocks(g):
        rows = _rows_float32(g, a, b)
        gt[:, a:b] = (rows / g_norms[a:b] if g_norms is not None else rows).T

    def score_dot(start: int, stop: int, workspace: Workspace | None = None) -> np.ndarray:
        rows = _rows_float32(q, start, stop)
        if q_norms is not None:
            rows = rows / q_norms[start:stop]
        out = workspace.get("scores", (stop - start, ng), np.float32) if workspace is not None else None
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            scores = np.matmul(rows, gt, out=out)  # (c, d) @ (d, ng) -> (c, ng) float32
        if not cosine:  # cosines of unit rows are finite
            _check_finite(scores, "scores", start, " Use metric='cosine' or scale the embeddings down.")
        return scores

    return score_dot


INSTANCE_KS = (1, 5, 10)


def instance_recall(
    query_emb: Any,
    gallery_emb: Any,
    pair_index: Any,
    ks: Iterable[int] = INSTANCE_KS,
    *,
    metric: str = "cosine",
    chunk_size: int | None = None,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Instance-level retrieval: how high each query's *own* pair ranks, the measure CLIP-style
    retrieval is judged by (class-level mAP counts every same-class item as a hit; this counts
    only the one paired item).

    Args:
        query_emb, gallery_emb: (nq, d) and (ng, d) embeddings (other modality).
        pair_index: (nq,) the gallery row of each query's pair; queries with ``-1`` (no pair in
            the gallery) are left out.
        ks: cut-offs of recall@k (the share of queries whose pair ranks in the top k).
        chunk_size, n_threads: as in :func:`retrieval_metrics`; the result does not depend on
            them.

    The rank of a pair is 1 + the number of gallery items scored strictly higher (ties count
    in the query's favour). Returns ``{"recall@k": ..., "median_rank", "mean_rank", "mrr",
    "n_queries"}``.
    """
    n_views = _set_max_views(metric)
    if metric not in SCORE_METRICS and n_views is None:
        raise ConfigError(f"metric must be one of {format_list(SCORE_METRICS)} or 'set-max:K', got {metric!r}.")
    q = _as_embeddings(query_emb, "query_emb")
    g = _as_embeddings(gallery_emb, "gallery_emb")
    if q.shape[1] != g.shape[1]:
        raise DataError(f"query_emb and gallery_emb must have the same dimension, got {q.shape[1]} and {g.shape[1]}.")
    ng = g.shape[0]
    pair = _check_pair_index(pair_index, q.shape[0], ng)
    checked = _check_instance_ks(ks)
    keep = np.flatnonzero(pair >= 0)
    own_pair = pair[keep]
    queries = q if keep.size == q.shape[0] else q[keep]  # only the queries with a pair
    score = _scorer(queries, g, metric, n_views, ("query_emb", "gallery_emb"))
    chunk = _check_chunk_size(chunk_size, ng)
    threads = _check_n_threads(n_threads, keep.size * ng)

    local = threading.local()

    def run(bounds: tuple[int, int]) -> np.ndarray:
        a, b = bounds
        scores = score(a, b, local.__dict__.setdefault("workspace", Workspace()))
        step = max(1, RANK_SCORES // ng)
        return np.concatenate([_pair_ranks(scores[i : i + step], own_pair[a + i : min(a + i + step, b)]) for i in range(0, b - a, step)])

    ranks = np.concatenate(_map_blocks(_blocks(keep.size, chunk, threads), run, threads)) if keep.size else np.empty(0, np.int64)
    return _instance_summary(ranks, checked, ng)


def _check_pair_index(pair_index: Any, n_queries: int, ng: int) -> np.ndarray:
    pair = np.asarray(pair_index)
    if pair.shape != (n_queries,) or pair.dtype.kind not in "iu":
        raise DataError(f"pair_index must be (n_queries,) integers, got shape {_shape(pair)} {pair.dtype}.")
    if ((pair < -1) | (pair >= ng)).any():
        raise DataError(f"pair_index must be -1 or a gallery row in [0, {ng}).")
    return pair.astype(np.int64, copy=False)


def _check_instance_ks(ks: Iterable[int]) -> tuple[int, ...]:
    checked = tuple(sorted({int(k) for k in ks}))
    if not checked or checked[0] < 1:
        raise ConfigError(f"ks must be integers >= 1, got {ks!r}.")
    return checked


def _instance_summary(ranks: np.ndarray, ks: tuple[int, ...], ng: int) -> dict[str, Any]:
    """The result of :func:`instance_recall` from the pair ranks (1-based) of the queries with a pair."""
    out: dict[str, Any] = {f"recall@{k}": float((ranks <= k).mean()) if ranks.size else float("nan") for k in ks}
    out.update(
        {
            "median_rank": float(np.median(ranks)) if ranks.size else float("nan"),
            "mean_rank": float(ranks.mean()) if ranks.size else float("nan"),
            "mrr": float((1.0 / ranks).mean()) if ranks.size else float("nan"),
            "n_queries": int(ranks.size),
            "n_gallery": int(ng),
        }
    )
    return out


_RETRIEVAL_OPTIONS = frozenset({f.name for f in fields(_Scoring)} | {"per_query"})


def cross_modal_metrics(
    query_image: Any,
    query_text: Any,
    query_labels: Any,
    gallery_image: Any,
    gallery_text: Any,
    gallery_labels: Any,
    ks: Iterable[int] | int = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """Image→text and text→image retrieval metrics.

    I2T: image queries (``query_image``) against the gallery texts (``gallery_text``); T2I: text
    queries (``query_text``) against the gallery images (``gallery_image``). The query side's
    image and text rows are paired and share ``query_labels``; likewise for the gallery. With the
    test set as both sides (the protocol), each query's own paired item stays in the gallery.

    Returns:
        ``{"i2t": retrieval_metrics(...), "t2i": retrieval_metrics(...), "mean_map": float}``,
        mean_map = (i2t map + t2i map) / 2. ``kwargs`` go to :func:`retrieval_metrics`.
    """
    unknown = set(kwargs) - _RETRIEVAL_OPTIONS
    if unknown:
        raise ConfigError(
            f"cross_modal_metrics got unknown options {format_list(sorted(unknown))}; known: {format_list(sorted(_RETRIEVAL_OPTIONS))}."
        )
    per_query = kwargs.pop("per_query", False)
    scoring = _Scoring(**kwargs)
    i2t = _with_per_query(
        _retrieval_stats(query_image, gallery_text, query_labels, gallery_labels, ks, scoring, names=("query_image", "gallery_text")),
        per_query,
    )
    t2i = _with_per_query(
        _retrieval_stats(query_text, gallery_image, query_labels, gallery_labels, ks, scoring, names=("query_text", "gallery_image")),
        per_query,
    )
    return {"i2t": i2t, "t2i": t2i, "mean_map": (i2t["map"] + t2i["map"]) / 2.0}


def _self_paired_metrics(
    image: Any,
    text: Any,
    labels: Any,
    ks: Iterable[int] | int = (),
    *,
    metric: str = "cosine",
    chunk_size: int | None = None,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """What ``gcrdp evaluate FILE`` reports for a set evaluated against itself, each direction
    scored once: ``cross_modal_metrics(image, text, labels, image, text, labels, ks)``, plus
    ``"instance"``: ``instance_recall`` of row i's pair (row i) in both directions, from the same
    scores, and ``"chance"``: ``chance_map(labels, labels)``, from the same relevance counts.
    Equal to those functions' results (tested)."""
    pair = np.arange(len(image), dtype=np.int64)
    res: dict[str, Any] = {}
    ranks: dict[str, np.ndarray] = {}
    n_rel = np.empty(0, np.int64)
    for direction, queries, gallery, names in (
        ("i2t", image, text, ("query_image", "gallery_text")),
        ("t2i", text, image, ("query_text", "gallery_image")),
    ):
        scoring = _Scoring(metric=metric, chunk_size=chunk_size, n_threads=n_threads)
        res[direction], stats = _retrieval_stats(queries, gallery, labels, labels, ks, scoring, names=names, pair_index=pair)
        ranks[direction], n_rel = stats["pair_rank"], stats["n_relevant"]
    res["mean_map"] = (res["i2t"]["map"] + res["t2i"]["map"]) / 2.0
    ng = res["i2t"]["n_gallery"]
    res["instance"] = {d: _instance_summary(r, INSTANCE_KS, ng) for d, r in ranks.items()}
    res["chance"] = _chance_from_counts(n_rel, ng, np.ndim(labels) == 2)
    return res
