"""Benchmark of evaluation at scale (issue 19): mAP@all and recall@K of n queries × n gallery
items, both directions, through the Python API and through ``gcrdp evaluate FILE.npz``.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_eval_scale.py                      # 100,000 × 100,000
    PYTHONPATH=src python benchmarks/bench_eval_scale.py --sizes 10000 30000 --multi-label

Data: synthetic paired embeddings, L2-normalised float32 of ``--dim`` (256) dimensions, one
image and one text row per item: the centre of the item's class(es) plus Gaussian noise, one
noise draw per modality. ``--classes`` (50) classes; single-label (each item one class, uniform)
or with ``--multi-label`` a multi-hot matrix (each item its class plus each other class with
probability ``--extra-label-p``). The set is evaluated against itself, as the protocol does.

Two runs per size, each in a fresh child process whose wall time, CPU time (user + system, all
threads) and peak resident memory (``ru_maxrss`` of the process, from ``wait4``: everything,
the interpreter and the arrays included) are reported:

* ``api``: the child loads ``image``, ``text`` and ``labels`` into memory (``np.load`` of
  ``.npy`` files), then calls ``gcrdp.evaluation.cross_modal_metrics(image, text, labels, image,
  text, labels, ks=(1, 5, 10))`` (I2T and T2I: mAP@all, mAP@k, precision@k, recall@k). The
  seconds are those of the call alone (loading excluded);
* ``cli``: ``gcrdp evaluate FILE.npz --k 1 5 10 --output M.json`` (the file written with
  ``np.savez``, uncompressed, so its arrays are memory-mapped); it also reports instance-level
  recall@1/5/10 of each row's own pair and the chance level. The seconds are those of the whole
  command (start-up, imports and reading included).

The two runs' mAPs are checked equal. The load average is printed before and after each run:
other processes on a shared machine lengthen the wall time (the CPU time much less so; on idle
cores the wall time is about the CPU time / the number of cores). Figures and the command in
docs/benchmarks.md § "Evaluation at scale (issue 19)".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KS = (1, 5, 10)

API_CHILD = r"""
import json, sys, time
import numpy as np
from gcrdp.evaluation import cross_modal_metrics
folder, ks = sys.argv[1], tuple(int(k) for k in sys.argv[2].split(","))
image, text, labels = (np.load(f"{folder}/{name}.npy") for name in ("image", "text", "labels"))
t = time.perf_counter()
res = cross_modal_metrics(image, text, labels, image, text, labels, ks=ks)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "i2t": res["i2t"], "t2i": res["t2i"]}))
"""

# The per-query arrays of the first m queries (both directions, cosine), instance recall and the
# chance level, saved for a bit-for-bit comparison between two source trees (--check-src).
CHECK_CHILD = r"""
import sys
import numpy as np
from gcrdp.evaluation import chance_map, instance_recall, retrieval_metrics
folder, m, ks, out = sys.argv[1], int(sys.argv[2]), tuple(int(k) for k in sys.argv[3].split(",")), sys.argv[4]
image, text, labels = (np.load(f"{folder}/{name}.npy") for name in ("image", "text", "labels"))
arrays = {}
for direction, q, g in (("i2t", image, text), ("t2i", text, image)):
    res = retrieval_metrics(q[:m], g, labels[:m], labels, ks=ks, per_query=True)
    arrays.update({f"{direction}/{k}": v for k, v in res.pop("per_query").items()})
    arrays.update({f"{direction}/{k}": np.array(v) for k, v in res.items()})
    inst = instance_recall(q[:m], g, np.arange(m))
    arrays.update({f"{direction}/instance/{k}": np.array(v) for k, v in inst.items()})
arrays["chance"] = np.array(chance_map(labels[:m], labels))
np.savez(out, **arrays)
"""


def make_data(n: int, dim: int, n_classes: int, multi_label: bool, extra_p: float, seed: int) -> dict[str, np.ndarray]:
    """Paired unit embeddings (n, dim) float32 of each modality and the labels, made in blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim)).astype(np.float32)
    primary = rng.integers(0, n_classes, n)
    if multi_label:
        labels = rng.random((n, n_classes)) < extra_p
        labels[np.arange(n), primary] = True
    else:
        labels = primary
    out = {"image": np.empty((n, dim), np.float32), "text": np.empty((n, dim), np.float32), "labels": labels}
    for a in range(0, n, 10_000):
        b = min(a + 10_000, n)
        if multi_label:
            centre = (labels[a:b].astype(np.float32) @ centres) / labels[a:b].sum(axis=1, keepdims=True)
        else:
            centre = centres[labels[a:b]]
        for modality in ("image", "text"):
            x = centre + 3.0 * rng.standard_normal((b - a, dim), dtype=np.float32)
            out[modality][a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Run ``cmd``; returns (wall seconds, CPU seconds (user + system, all threads), peak RSS
    MiB of the process, stdout)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout


def check_identical(folder: Path, m: int, src: Path, other: Path) -> str:
    """Per-query results of the first ``m`` queries from both source trees, compared bit for bit."""
    results = []
    for tree in (src, other):
        env = dict(os.environ, PYTHONPATH=str(tree))
        out = folder / f"check_{len(results)}.npz"
        run_child([sys.executable, "-c", CHECK_CHILD, str(folder), str(m), ",".join(map(str, KS)), str(out)], env)
        with np.load(out) as z:
            results.append({k: z[k] for k in z.files})
    a, b = results
    same = {k for k in a.keys() & b.keys() if a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])}
    differ = sorted((a.keys() | b.keys()) - same)
    if differ:
        raise SystemExit(f"results differ from {other}: {differ}")
    return f"(first {m:,} queries: {len(a)} per-query arrays and values bit-for-bit equal to those of {other})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="n queries = n gallery items")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--multi-label", action="store_true", help="multi-hot labels instead of one class per item")
    parser.add_argument("--extra-label-p", type=float, default=0.02, help="with --multi-label: probability of each extra class")
    parser.add_argument("--runs", nargs="+", choices=("api", "cli"), default=["api", "cli"])
    parser.add_argument("--workdir", type=Path, default=None, help="where the data files go (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--src",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "src",
        help="the gcrdp source tree the children import (default: this checkout's src/; e.g. an earlier "
        "commit's, from 'git archive COMMIT src | tar -x -C DIR', to compare)",
    )
    parser.add_argument(
        "--check-src",
        type=Path,
        default=None,
        help="another gcrdp source tree (e.g. the commit before issue 19): also compare its per-query results for "
        "the first --check-queries queries with this tree's, bit for bit",
    )
    parser.add_argument("--check-queries", type=int, default=1000)
    args = parser.parse_args(argv)

    src = args.src.resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p))
    gcrdp_cli = [sys.executable, "-m", "gcrdp"]
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}; dim {args.dim}, {args.classes} classes, "
        f"{'multi-label' if args.multi_label else 'single-label'}, ks {KS}; gcrdp from {src}\n"
    )
    print("| n queries = n gallery | run | seconds | CPU seconds | peak RSS (MiB) | I2T mAP | T2I mAP | load avg before → after (1 min) |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    workdir = Path(tempfile.mkdtemp(prefix="bench_eval_scale_")) if args.workdir is None else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for n in args.sizes:
            data = make_data(n, args.dim, args.classes, args.multi_label, args.extra_label_p, args.seed)
            folder = workdir / f"n{n}"
            folder.mkdir(exist_ok=True)
            for name, array in data.items():
                np.save(folder / f"{name}.npy", array)
            np.savez(folder / "embeddings.npz", **data)
            del data
            maps: dict[str, tuple[float, float]] = {}
            for run in args.runs:
                load_before = os.getloadavg()[0]
                if run == "api":
                    _, cpu, rss, stdout = run_child([sys.executable, "-c", API_CHILD, str(folder), ",".join(map(str, KS))], env)
                    res = json.loads(stdout.strip().splitlines()[-1])
                    seconds = res["seconds"]
                else:
                    out = folder / "metrics.json"
                    cmd = [*gcrdp_cli, "evaluate", str(folder / "embeddings.npz"), "--k", *map(str, KS), "--output", str(out)]
                    seconds, cpu, rss, _ = run_child(cmd, env)
                    res = json.loads(out.read_text())["metrics"]
                maps[run] = (res["i2t"]["map"], res["t2i"]["map"])
                print(
                    f"| {n:,} | {run} | {seconds:.1f} | {cpu:.1f} | {rss:,.0f} | {res['i2t']['map']:.4f} | {res['t2i']['map']:.4f} | "
                    f"{load_before:.2f} → {os.getloadavg()[0]:.2f} |",
                    flush=True,
                )
            if len(set(maps.values())) > 1:
                raise SystemExit(f"the runs disagree: {maps}")
            if args.check_src is not None:
                print(check_identical(folder, min(n, args.check_queries), src, args.check_src.resolve()), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
