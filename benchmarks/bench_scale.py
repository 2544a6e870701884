"""Training, evaluation and indexing at benchmark size: peak memory and time per epoch (issue 19).

Writes synthetic pre-extracted features of the default encoders' shapes — ``image.npy``
(n, 49, 1280) float16 (EfficientNet-Lite0's grid), ``text.npy`` (n, 16, 384) float16 with
``text_mask.npy`` (MiniLM's tokens), ``labels.npy`` (50 classes) — at each size, then runs, as a
user would, in a child process each (peak RSS = the child's ``ru_maxrss``, what
``/usr/bin/time -v`` reports)::

    gcrdp train --features DIR --method gap-infonce --option max_epochs=1 --shots 5 --seed 0 \\
        --checkpoint-dir CK --feature-storage disk|memory --cache-dir CACHE

twice on disk — the first run writes the feature store (``build``), the second reuses it
(``warm``) — and once in memory where it fits (``--memory-sizes``, default 20,000: the
in-memory path needed 12.9 GB there before issue 19). Per run it reports the peak RSS, the wall
time, the epoch's seconds (the fit's training + validation time, from the run record), the test
evaluation's seconds and the store build's. Then ``gcrdp export`` + ``gcrdp index`` of the
trained model over the same features (``--index``).

    python benchmarks/bench_scale.py --sizes 20000 50000 200000 --work /tmp/gcrdp-scale

Disk: about 130 KB per pair for the features plus as much for the store (200,000 pairs: 26 GB
each). ``--keep`` keeps the folders for a rerun (the features are rewritten only when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (49, 1280)
TEXT_SHAPE = (16, 384)
N_CLASSES = 50


def write_features(folder: Path, n: int, seed: int = 0, chunk: int = 2000) -> None:
    """Class-clustered float16 features (a class centre plus noise per row), written in chunks."""
    from numpy.lib import format as npformat

    if (folder / "done").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % N_CLASSES
    rng.shuffle(labels)
    centres = {k: rng.standard_normal((N_CLASSES, s[1])).astype(np.float32) for k, s in (("image", IMAGE_SHAPE), ("text", TEXT_SHAPE))}
    lengths = rng.integers(4, TEXT_SHAPE[0] + 1, size=n)
    mask = np.arange(TEXT_SHAPE[0])[None, :] < lengths[:, None]
    for name, shape in (("image", IMAGE_SHAPE), ("text", TEXT_SHAPE)):
        with open(folder / f"{name}.npy", "wb") as f:
            npformat.write_array_header_2_0(f, {"descr": "<f2", "fortran_order": False, "shape": (n, *shape)})
            for s in range(0, n, chunk):
                lab = labels[s : s + chunk]
                block = centres[name][lab][:, None, :] + 2.5 * rng.standard_normal((len(lab), *shape), dtype=np.float32)
                if name == "text":
                    block *= mask[s : s + chunk, :, None]
                f.write(block.astype(np.float16).tobytes())
    np.save(folder / "text_mask.npy", mask)
    np.save(folder / "labels.npy", labels.astype(np.int64))
    (folder / "done").write_text("ok")


def run_child(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; its wall seconds, peak RSS (GiB) and exit code. Dirty pages are written back
    first (``sync``): the gigabytes just written would otherwise be flushed during the run and
    stall its page faults and reads."""
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    res = {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3), "rc": proc.returncode}
    if proc.returncode != 0:
        res["output_tail"] = out[-3000:]
    return res


def train_run(gcrdp: str, feats: Path, work: Path, storage: str | None, tag: str, env: dict[str, str], threads: int) -> dict:
    ck = work / f"ck-{tag}"
    shutil.rmtree(ck, ignore_errors=True)
    cmd = [
        gcrdp,
        "train",
        "--features",
        str(feats),
        "--method",
        "gap-infonce",
        "--option",
        "max_epochs=1",
        "--shots",
        "5",
        "--seed",
        "0",
        "--checkpoint-dir",
        str(ck),
        *(["--feature-storage", storage] if storage else []),
        "--cache-dir",
        str(work / "cache"),
        "--device",
        "cpu",
        "-q",
    ]
    res = run_child(cmd, {**env, "OMP_NUM_THREADS": str(threads)})
    rec_file = ck / "results.json"
    if res["rc"] == 0 and rec_file.is_file():
        doc = json.loads(rec_file.read_text())
        rec = doc["records"][0]
        res.update(
            {
                "epoch_seconds": rec["fit"]["seconds"],
                "eval_seconds": rec.get("eval_seconds"),
                "n_train": rec["split"].get("n_train"),
                "test_mean_map": round(rec["test"]["mean_map"], 4),
                "features_seconds": doc.get("timing", {}).get("features_seconds"),
                "storage": doc["resolved"]["features"].get("storage"),
            }
        )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000, 200000])
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[20000], help="sizes also run with --feature-storage memory")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gcrdp-bench-scale"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", action="store_true", help="keep the features and stores for a rerun")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also run the memory sizes with the gcrdp source at this folder (e.g. a worktree of the commit before issue 19)",
    )
    ap.add_argument("--write-only", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only:
        write_features(Path(args.write_only[0]), int(args.write_only[1]))
        return
    gcrdp = str(Path(sys.executable).with_name("gcrdp"))
    env = {k: v for k, v in os.environ.items()}
    results = {"machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}, "threads": args.threads, "sizes": {}}
    for n in args.sizes:
        work = args.work / f"n{n}"
        feats = work / "features"
        t0 = time.perf_counter()
        # in a child, so that this process stays small: a child forked from a large parent
        # would count the parent's pages in its peak RSS until it execs
        subprocess.run([sys.executable, __file__, "--write-only", str(feats), str(n)], check=True)
        row: dict = {
            "write_seconds": round(time.perf_counter() - t0, 1),
            "features_gib": round(sum(f.stat().st_size for f in feats.glob("*.npy")) / 2**30, 3),
        }
        shutil.rmtree(work / "cache", ignore_errors=True)
        row["disk_build"] = train_run(gcrdp, feats, work, "disk", "disk-build", env, args.threads)
        row["disk_warm"] = train_run(gcrdp, feats, work, "disk", "disk-warm", env, args.threads)
        if n in args.memory_sizes:
            row["memory"] = train_run(gcrdp, feats, work, "memory", "memory", env, args.threads)
            a, b = row["disk_warm"].get("epoch_seconds"), row["memory"].get("epoch_seconds")
            if a and b:
                row["disk_over_memory_epoch"] = round(a / b, 3)
            if args.baseline_src is not None:
                base_env = {**env, "PYTHONPATH": str(args.baseline_src.resolve())}
                row["baseline"] = train_run(gcrdp, feats, work, None, "baseline", base_env, args.threads)
                c = row["baseline"].get("epoch_seconds")
                if a and c:
                    row["disk_over_baseline_epoch"] = round(a / c, 3)
        row["load_after"] = os.getloadavg()
        results["sizes"][str(n)] = row
        print(json.dumps({str(n): row}, indent=1), flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\nsize     features  store-build RSS  warm RSS  memory RSS  epoch s (warm)  epoch s (memory)")
    for n, row in results["sizes"].items():
        mem = row.get("memory", {})
        build, warm = row["disk_build"], row["disk_warm"]
        nan = float("nan")
        print(
            f"{n:>7}  {row['features_gib']:6.2f} GiB  {build['peak_rss_gib']:6.2f} GiB  {warm['peak_rss_gib']:6.2f} GiB"
            f"  {mem.get('peak_rss_gib', nan):6.2f} GiB  {warm.get('epoch_seconds', nan):10.1f}  {mem.get('epoch_seconds', nan):10.1f}"
        )


if __name__ == "__main__":
    main()
