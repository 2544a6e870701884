"""Indexing at scale (issue 19): build, memory, size, recall and latency of a search index over
synthetic embeddings much larger than a test collection, built the way ``gcrdp index`` builds
one — embeddings streamed in batches into a spool file, then the index filled from it:

* ``Flat``: exact search, every vector in memory (the default index type);
* ``IVF-PQ``: ``IVF<nlist>,PQ<dim/4>`` sized to the collection (``--index-type IVF-PQ``), trained
  on a seeded random sample, in memory;
* ``IVF-PQ on disk`` and ``IVF-Flat on disk`` (``--on-disk``): the same training, the inverted
  lists built shard by shard and merged into a file that is memory-mapped when searched.

The embeddings are clustered synthetic unit vectors (1000 centres plus Gaussian noise of the
same norm, so that neighbours are meaningful but not trivial), written once to a ``.npy`` file
and read from it in batches with ``pread`` (as a lazy on-disk array is), never whole.

Each configuration runs in a fresh child process, which reports:

* build seconds: spooling the embeddings + training + filling + writing the index files;
* peak RSS while building and while searching: the extra resident memory over the process after
  its imports (``VmHWM`` − ``VmRSS`` before, the high-water mark reset with ``clear_refs``; it
  counts the pages of memory-mapped files that were touched) and the peak of anonymous memory
  alone (``RssAnon``, sampled every 10 ms: the memory the kernel cannot drop);
* the size of the index files on disk;
* recall@10 against exact search, as ``gcrdp index`` reports it: up to 1000 of the collection's
  vectors as queries, the exact reference computed in batches over the spool (Flat: 1 by
  definition), and the seconds that measurement took;
* query latency, one query at a time (k=10, the index loaded again from disk): median and p90
  over ``--latency-queries`` queries; for on-disk indexes also "cold", with the list file's
  pages first dropped from the page cache (``posix_fadvise(DONTNEED)`` on that file only).

    python benchmarks/bench_index_scale.py                               # 100k and 1M vectors, dim 256
    python benchmarks/bench_index_scale.py --n 100000 --configs Flat IVF-PQ

Prints a Markdown table; copy the figures into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = ("Flat", "IVF-PQ", "IVF-PQ on disk", "IVF-Flat on disk")

CHILD = r"""
import gc, json, os, statistics, sys, threading, time
from pathlib import Path
import numpy as np
sys.path.insert(0, {bench!r})
from _proc import proc_status_kib
import faiss
from gcrdp.search.backends import FaissBackend, resolve_index_type
from gcrdp.search.streaming import EmbeddingSpool, batches, recall_against_exact, sample_rows, scan_rows

npy, config, folder, n_latency = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])


class NpyRows:
    # rows of a .npy file read with pread: a lazy on-disk array
    def __init__(self, path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, _, self.dtype = read(f)
            self.offset = f.tell()
        self.fd = os.open(path, os.O_RDONLY)
        self.row = int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, _ = key.indices(self.shape[0])
            buf = os.pread(self.fd, (b - a) * self.row, self.offset + a * self.row)
            return np.frombuffer(buf, self.dtype).reshape(b - a, *self.shape[1:])
        return np.stack([self[int(i) : int(i) + 1][0] for i in key])


class AnonPeak(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = proc_status_kib("RssAnon"), threading.Event()

    def run(self):
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, proc_status_kib("RssAnon"))


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    gc.collect()
    return proc_status_kib("VmRSS"), proc_status_kib("RssAnon")


src = NpyRows(npy)
n, dim = src.shape
kind = {{"Flat": "Flat", "IVF-PQ": "IVF-PQ", "IVF-PQ on disk": "IVF-PQ", "IVF-Flat on disk": "IVF-Flat"}}[config]
kind = resolve_index_type(kind, n, dim)
on_disk = config.endswith("on disk")
work = folder / "work"
work.mkdir(parents=True)
out = {{"config": config, "index_type": kind, "n": n, "dim": dim, "threads": faiss.omp_get_max_threads()}}

# ---- build, as gcrdp index does after embedding: spool, train on a sample, fill, write
rss0, anon0 = reset_peak()
sampler = AnonPeak(); sampler.start()
t = time.perf_counter()
spool = EmbeddingSpool(work / "spool.f32", dim)
for a, b in batches(n, scan_rows(dim)):
    spool.append(src[a:b])
t_spool = time.perf_counter() - t
if on_disk:
    index, trained = FaissBackend.build_on_disk(spool, folder, "image", kind, work_dir=work, seed=0)
else:
    index = FaissBackend(dim, kind)
    trained = index.add_from(spool, seed=0)
    index.save(folder / "image.faiss")
out["build_s"] = time.perf_counter() - t
out["spool_s"] = t_spool
out["trained_on"] = trained
out["build_peak_mib"] = (proc_status_kib("VmHWM") - rss0) / 1024
sampler.stop.set(); sampler.join()
out["build_anon_peak_mib"] = (sampler.peak - anon0) / 1024
out["nprobe"] = index.nprobe
# ---- recall@10 against exact search, as gcrdp index reports it
t = time.perf_counter()
if kind == "Flat":
    out["recall_at_10"], out["recall_queries"] = 1.0, 0
else:
    out["recall_at_10"], out["recall_queries"] = recall_against_exact(index.search, spool, k=10, n_queries=1000)
out["recall_s"] = time.perf_counter() - t
spool.remove()
import shutil
shutil.rmtree(work)
out["index_mib"] = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
del index
gc.collect()

# ---- search: the index loaded from disk, one query at a time
queries = np.ascontiguousarray(src[sample_rows(n, n_latency, 1)], dtype=np.float32)
rss0, anon0 = reset_peak()
sampler = AnonPeak(); sampler.start()
t = time.perf_counter()
index = FaissBackend.load(folder / "image.faiss", kind)
out["load_s"] = time.perf_counter() - t


def timed():
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None], 10)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times), 1000 * float(np.percentile(times, 90))


if on_disk:
    fd = os.open(folder / "image.ivfdata", os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    out["cold_median_ms"], out["cold_p90_ms"] = timed()
out["median_ms"], out["p90_ms"] = timed()
out["search_peak_mib"] = (proc_status_kib("VmHWM") - rss0) / 1024
sampler.stop.set(); sampler.join()
out["search_anon_peak_mib"] = (sampler.peak - anon0) / 1024
print(json.dumps(out))
"""


def write_embeddings(path: Path, n: int, dim: int, seed: int = 0, centres: int = 1000) -> float:
    """Clustered unit vectors into a .npy file, written in batches; returns the seconds taken."""
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        r = np.random.default_rng([seed, a])
        x = c[r.integers(0, centres, b - a)] + r.normal(size=(b - a, dim)).astype(np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000], help="collection sizes (default 100000 1000000)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=None, help="where the .npy and the indexes go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    bench = str(Path(__file__).resolve().parent)
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in args.n:
            npy = Path(tmp) / f"emb-{n}.npy"
            took = write_embeddings(npy, n, args.dim)
            print(f"{n} × {args.dim} float32 embeddings, {npy.stat().st_size / 2**20:.0f} MiB (written in {took:.1f} s)", file=sys.stderr)
            for config in args.configs:
                folder = Path(tmp) / f"idx-{n}-{config.replace(' ', '-')}"
                load = os.getloadavg()
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD.format(bench=bench), str(npy), config, str(folder), str(args.latency_queries)],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    sys.exit(f"{config} at {n}: the child failed\n{proc.stderr[-4000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["load_before"], r["load_after"] = load, os.getloadavg()
                results.append(r)
                print(json.dumps(r), file=sys.stderr)
                for p in sorted(folder.rglob("*"), reverse=True):
                    p.unlink() if p.is_file() else p.rmdir()
            npy.unlink()
    print(
        "| vectors | index | build s | peak RSS build (anon) MiB | index MiB | recall@10 vs exact | "
        "search: peak RSS (anon) MiB | latency median / p90 ms | cold median / p90 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        kind = r["index_type"] + (f", nprobe {r['nprobe']}" if r.get("nprobe") else "") + (" on disk" if "disk" in r["config"] else "")
        rec = "1 (exact)" if r["index_type"] == "Flat" else f"{r['recall_at_10']:.3f} ({r['recall_s']:.0f} s)"
        cold = f"{r['cold_median_ms']:.2f} / {r['cold_p90_ms']:.2f}" if "cold_median_ms" in r else "–"
        print(
            f"| {r['n']:,} | {kind} | {r['build_s']:.1f} | {r['build_peak_mib']:.0f} ({r['build_anon_peak_mib']:.0f}) | "
            f"{r['index_mib']:.0f} | {rec} | {r['search_peak_mib']:.0f} ({r['search_anon_peak_mib']:.0f}) | "
            f"{r['median_ms']:.2f} / {r['p90_ms']:.2f} | {cold} |"
        )
    loads = [x for r in results for x in (r["load_before"][0], r["load_after"][0])]
    print(
        f"\n{os.cpu_count()} CPUs, FAISS threads {results[0]['threads'] if results else '?'}; "
        f"1-min load average {min(loads):.1f}–{max(loads):.1f} during the runs"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
