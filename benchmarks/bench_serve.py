"""A bounded load test of ``gcrdp serve`` on loopback: N concurrent clients × M text queries
each (every loop limited in count and in time), against a uvicorn server in this process.
Reports errors, throughput and the p50/p95 latency of ``GET /api/search`` (the query embedded by
the index's model, then searched), and the latency of one client alone measured in the same run.

    python benchmarks/bench_serve.py runs/demo-index --clients 8 --queries 200

Prints a Markdown table; copy the figures into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

WORDS = [
    "cat",
    "dog",
    "smiling face",
    "red heart",
    "pizza",
    "car",
    "flag",
    "rocket",
    "tree",
    "music",
    "clock",
    "sun",
    "moon",
    "book",
    "ball",
    "house",
    "train",
    "fish",
    "bird",
    "phone",
]


def run(base: str, clients: int, queries: int, limit_s: float) -> tuple[list[float], list[int], float]:
    import httpx

    def client(i: int) -> tuple[list[float], list[int]]:
        times, codes, t_end = [], [], time.monotonic() + limit_s
        with httpx.Client(base_url=base, timeout=60) as c:
            for j in range(queries):
                if time.monotonic() > t_end:
                    break
                t = time.perf_counter()
                r = c.get("/api/search", params={"text": f"a {WORDS[(i * 7 + j) % len(WORDS)]}", "k": 10})
                times.append(time.perf_counter() - t)
                codes.append(r.status_code)
        return times, codes

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        out = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return [t for ts, _ in out for t in ts], [c for _, cs in out for c in cs], wall


def main() -> None:
    import uvicorn

    from gcrdp.search import Retriever
    from gcrdp.search.server import create_app

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", type=Path)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--limit-s", type=float, default=300.0, help="each client stops after this long")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = Retriever.load(args.index)
    server = uvicorn.Server(uvicorn.Config(create_app(r), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    one, _, _ = run(base, 1, 50, args.limit_s)  # warm-up and the single-client reference
    times, codes, wall = run(base, args.clients, args.queries, args.limit_s)
    server.should_exit = True
    errors = sum(c != 200 for c in codes)
    ms = np.asarray(times) * 1000
    print(f"| {args.clients} clients × {args.queries} queries, `GET /api/search` (k=10), {len(r)} items | value |")
    print("|---|---|")
    print(f"| requests / errors | {len(codes)} / {errors} |")
    print(f"| throughput | {len(codes) / wall:.1f} queries/s |")
    print(f"| latency p50 / p95 | {np.percentile(ms, 50):.1f} / {np.percentile(ms, 95):.1f} ms |")
    print(f"| one client alone, p50 (same run) | {1000 * statistics.median(one):.1f} ms |")
    print(f"\n{os.cpu_count()} CPUs; index {args.index} ({r.info['index_type']}, {r.info['model']['method']})")


if __name__ == "__main__":
    main()
