"""Search throughput and latency.

1. Queries per second of ``Retriever.search_vectors`` (ranking, metadata, result objects) on a
   10,000-item exact index, one query at a time in a warm process, against raw FAISS search on
   the same vectors measured in the same run (the query's embedding excluded on both sides):
   the ratio is what gcrdp's layer costs.
2. With ``--checkpoint DIR`` (a ``gcrdp train`` folder trained on Twemoji): the end-to-end latency
   of ``Retriever.search(text=...)`` — embedding the query with the index's model included — on
   an index of the Twemoji images.

    python benchmarks/bench_search.py
    python benchmarks/bench_search.py --checkpoint runs/reproduce/model

Prints a Markdown table; copy the figures into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def throughput(n: int, dim: int, n_queries: int, k: int, repeats: int) -> dict:
    from gcrdp.search import FaissBackend, Retriever

    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng.normal(size=(n, dim))), _unit(rng.normal(size=(n_queries, dim)))
    backend = FaissBackend(dim)
    backend.add(vectors)
    rows = [("image", i, f"item-{i}", f"/data/img/{i}.jpg", None, f"class-{i % 50}", f"{i:064x}") for i in range(n)]
    r = Retriever(Path("."), {"index_type": "Flat"}, None, {"image": backend}, rows)
    raw = backend.index
    one = [q[None] for q in queries]

    def run_raw() -> float:
        t = time.perf_counter()
        for q in one:
            raw.search(q, k)
        return time.perf_counter() - t

    def run_gcrdp() -> float:
        t = time.perf_counter()
        for q in one:
            r.search_vectors("image", q, k)
        return time.perf_counter() - t

    run_raw(), run_gcrdp()  # warm up
    t_raw, t_g = [], []
    for _ in range(repeats):  # interleaved, so that drift hits both
        t_raw.append(run_raw())
        t_g.append(run_gcrdp())
    qps_raw, qps_g = n_queries / statistics.median(t_raw), n_queries / statistics.median(t_g)
    same = all(r.search_vectors("image", q, k)[0][0].id == f"item-{int(raw.search(q, k)[1][0, 0])}" for q in one[:50])
    return {"qps_faiss": qps_raw, "qps_gcrdp": qps_g, "ratio": qps_g / qps_raw, "same_top1": same}


def latency(checkpoint: Path, n_queries: int, k: int) -> dict:
    from gcrdp.data.registry import load_dataset
    from gcrdp.search import Item, Retriever

    ds = load_dataset("twemoji")
    items = [Item("image", s.id, path=str(s.image), label=s.labels[0]) for s in ds.samples]
    texts = [s.text for s in ds.samples][:n_queries]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        Retriever.build(Path(tmp) / "idx", checkpoint=checkpoint, items=items, progress=False)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = Retriever.load(Path(tmp) / "idx")
        load = time.perf_counter() - t0
        r.search(text=texts[0], k=k)  # warm up (encoder loaded)
        times = []
        for t in texts:
            t1 = time.perf_counter()
            r.search(text=t, k=k)
            times.append(time.perf_counter() - t1)
    return {
        "n_items": len(items),
        "build_s": build,
        "load_s": load,
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * float(np.percentile(times, 90)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoint", type=Path, default=None)
    args = ap.parse_args()
    t = throughput(args.n, args.dim, args.queries, args.k, args.repeats)
    print(f"| search, {args.n} items × {args.dim} dims, exact, k={args.k}, one query at a time | queries/s |\n|---|---|")
    print(f"| raw FAISS (`index.search`) | {t['qps_faiss']:.0f} |")
    print(f"| gcrdp `Retriever.search_vectors` (ranked hits with metadata) | {t['qps_gcrdp']:.0f} |")
    print(f"\nratio gcrdp / FAISS = {t['ratio']:.2f} (same top-1: {t['same_top1']}); {os.cpu_count()} CPUs")
    if args.checkpoint is not None:
        lat = latency(args.checkpoint, 100, args.k)
        print(
            f"\nend to end on the Twemoji images ({lat['n_items']} items), the text query embedded by the "
            f"index's model: median {lat['median_ms']:.1f} ms, p90 {lat['p90_ms']:.1f} ms per query "
            f"(build {lat['build_s']:.1f} s, load {lat['load_s']:.1f} s)"
        )


if __name__ == "__main__":
    main()
