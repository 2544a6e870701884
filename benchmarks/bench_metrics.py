"""Benchmark of gcrdp.evaluation.retrieval_metrics (mAP@all) against per-query loops.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_metrics.py            # 1k, 5k, 10k
    PYTHONPATH=src python benchmarks/bench_metrics.py --sizes 1000 --repeats 1

Data: square problems (n queries = n gallery items), 10 classes, 128-dim float32 embeddings
(class centre + Gaussian noise), cosine scores. Three implementations, measured in the same run:

* ``vectorised``: :func:`gcrdp.evaluation.retrieval_metrics` with 1 thread and with the default
  number of threads (best of ``--repeats`` runs);
* ``numpy loop``: one query at a time: a score row, a stable ``argsort``, a cumulative sum;
* ``python loop``: the DSCMR ``fx_calc_map_label`` shape (a Python loop over the ranked gallery),
  on the scores in float32.

The loops run on the first ``--loop-queries`` / ``--python-queries`` queries only and their time
is scaled linearly to all queries (each query costs the same); the per-query APs of that subset
are checked against the vectorised ones. The loops run with the BLAS held to one thread, as
the vectorised code does: otherwise OpenBLAS's idle threads spin after each matrix-vector
product and slow the sorts down several times on a 2-core machine, which would flatter the
speed-up. The load average is printed after each row: other processes on a shared machine
change the figures. Peak memory is the peak of Python/numpy allocations
traced by ``tracemalloc`` during one run (measured in a separate run from the timings; it does
not count the BLAS's internal buffers), not the process RSS.

A second table times the candidate sorts on one chunk (1024 queries x 10k items, float32 scores
with many ties) and checks that each gives the stable order (ties by gallery index); a third
times ``retrieval_metrics`` at the largest size for chunks of 2**18 to 2**24 scores.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from collections.abc import Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from gcrdp.evaluation import retrieval_metrics
from gcrdp.evaluation.metrics import (
    MAX_AUTO_THREADS,
    _ranked_relevance,  # private: the sort, timed on its own
)

N_CLASSES = 10
DIM = 128


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, n)
    centres = rng.standard_normal((N_CLASSES, DIM))
    query = (centres[labels] + 3.0 * rng.standard_normal((n, DIM))).astype(np.float32)
    gallery = (centres[labels] + 3.0 * rng.standard_normal((n, DIM))).astype(np.float32)
    return query, gallery, labels


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_loop_ap(query, gallery, ql, gl) -> np.ndarray:
    """One query at a time: float32 cosine row, stable argsort, cumulative precision."""
    q, g = _normalise(query), _normalise(gallery)
    out = np.zeros(len(q))
    ranks = np.arange(1, len(g) + 1)
    for i in range(len(q)):
        scores = g @ q[i]  # (ng,) float32
        order = np.argsort(-scores, kind="stable")
        rel = gl[order] == ql[i]
        n_rel = rel.sum()
        if n_rel:
            out[i] = (np.cumsum(rel)[rel] / ranks[rel]).sum() / n_rel
    return out


def python_loop_ap(query, gallery, ql, gl) -> np.ndarray:
    """The DSCMR ``fx_calc_map_label`` loop (stable argsort so that ties break by index)."""
    q, g = _normalise(query), _normalise(gallery)
    out = np.zeros(len(q))
    for i in range(len(q)):
        order = np.argsort(-(g @ q[i]), kind="stable")
        p = r = 0.0
        label = ql[i]
        for j, item in enumerate(order.tolist()):
            if gl[item] == label:
                r += 1
                p += r / (j + 1)
        out[i] = p / r if r > 0 else 0.0
    return out


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def bench_sizes(sizes: Sequence[int], repeats: int, loop_q: int, py_q: int) -> None:
    threads = min(os.cpu_count() or 1, MAX_AUTO_THREADS)
    rows = [
        "| n_queries = n_gallery | vectorised, 1 thread (s) | vectorised, "
        f"{threads} threads (s) | numpy loop (s, scaled) | speed-up vs "
        "numpy loop | python loop (s, scaled) | speed-up vs python loop | peak MiB vectorised "
        "| peak MiB numpy loop | mAP | load avg (1 min) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(rows), flush=True)
    for n in sizes:
        q, g, lab = make_data(n)
        t1, _ = best_time(lambda: retrieval_metrics(q, g, lab, lab, n_threads=1), repeats)
        tn, res = best_time(lambda: retrieval_metrics(q, g, lab, lab, per_query=True), repeats)
        m, mp = min(loop_q, n), min(py_q, n)
        with threadpool_limits(limits=1, user_api="blas"):  # see the module docstring
            t_loop, ap_loop = best_time(lambda: numpy_loop_ap(q[:m], g, lab[:m], lab), 1)
            t_py, ap_py = best_time(lambda: python_loop_ap(q[:mp], g, lab[:mp], lab), 1)
        t_loop *= n / m
        t_py *= n / mp
        ap = res["per_query"]["ap"]
        # Same APs up to near-ties: a matrix-vector product may round a score differently from
        # the chunked matrix product by one float32 ulp, which can swap two items.
        np.testing.assert_allclose(ap_loop, ap[:m], atol=1e-4)
        np.testing.assert_allclose(ap_py, ap[:mp], atol=1e-4)
        mem_vec = peak_mib(lambda: retrieval_metrics(q, g, lab, lab))
        mem_loop = peak_mib(lambda: numpy_loop_ap(q[:m], g, lab[:m], lab))
        print(
            f"| {n:,} | {t1:.3f} | {tn:.3f} | {t_loop:.2f} (from {m:,} queries) | "
            f"{t_loop / tn:.1f}x | {t_py:.1f} (from {mp:,} queries) | {t_py / tn:.0f}x | "
            f"{mem_vec:.1f} | {mem_loop:.1f} | {res['map']:.4f} | {os.getloadavg()[0]:.2f} |",
            flush=True,
        )


def bench_chunks(n: int, repeats: int) -> list[str]:
    """Time retrieval_metrics at n x n for chunks of 2**18 .. 2**24 scores."""
    q, g, lab = make_data(n)
    threads = min(os.cpu_count() or 1, MAX_AUTO_THREADS)
    rows = [
        f"| scores per chunk (n = {n:,}) | chunk_size | 1 thread (s) | {threads} threads (s) | peak MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for power in range(18, 25):
        chunk = max(1, 2**power // n)
        t1, _ = best_time(lambda: retrieval_metrics(q, g, lab, lab, chunk_size=chunk, n_threads=1), repeats)
        tn, _ = best_time(lambda: retrieval_metrics(q, g, lab, lab, chunk_size=chunk), repeats)
        mem = peak_mib(lambda: retrieval_metrics(q, g, lab, lab, chunk_size=chunk))
        rows.append(f"| 2^{power} | {chunk} | {t1:.3f} | {tn:.3f} | {mem:.1f} |")
    return rows


def bench_sorts(repeats: int) -> list[str]:
    rng = np.random.default_rng(1)
    c, ng = 1024, 10_000
    scores = np.round(rng.standard_normal((c, ng)), 2).astype(np.float32)  # many exact ties
    rel = rng.random((c, ng)) < 0.1

    def argsort_stable():
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(rel, order, axis=1)

    candidates: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("np.argsort(-s, kind='stable') + gather", argsort_stable),
        ("packed int64 key + np.sort (used)", lambda: _ranked_relevance(scores, rel)),
    ]
    try:
        import torch

        ts, trel = torch.from_numpy(scores), torch.from_numpy(rel)

        def torch_stable():
            order = torch.sort(ts, dim=1, descending=True, stable=True).indices
            return torch.gather(trel, 1, order).numpy()

        candidates.append((f"torch.sort(stable=True, descending=True) + gather (torch {torch.__version__})", torch_stable))
    except ImportError:  # pragma: no cover
        pass
    reference = argsort_stable()
    rows = [
        f"| sort of one chunk ({c} x {ng:,} float32, ties) | time (s) | same order as stable |",
        "|---|---:|:---:|",
    ]
    for name, fn in candidates:
        t, out = best_time(fn, repeats)
        rows.append(f"| {name} | {t:.3f} | {'yes' if np.array_equal(out, reference) else 'NO'} |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--loop-queries", type=int, default=1000, help="queries timed for the numpy loop (scaled to all)")
    parser.add_argument("--python-queries", type=int, default=100, help="queries timed for the python loop (scaled to all)")
    parser.add_argument("--no-chunk-sweep", action="store_true", help="skip the table of chunk sizes (run at the largest size)")
    args = parser.parse_args(argv)
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}\n"
    )
    bench_sizes(args.sizes, args.repeats, args.loop_queries, args.python_queries)
    print()
    print("\n".join(bench_sorts(args.repeats)))
    if not args.no_chunk_sweep:
        print()
        print("\n".join(bench_chunks(max(args.sizes), args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
