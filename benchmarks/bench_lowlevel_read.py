"""Benchmark of reading NUS-WIDE's low-level feature files (``Low_Level_Features/*.dat``: one
image a line, numbers separated by spaces) with :func:`gcrdp.data.formats.nuswide.lowlevel._read_matrix`
(which parses with ``numpy.loadtxt`` and checks the rows) against ``numpy.loadtxt`` alone and
against the first version of the reader (every number a Python string:
``np.array(" ".join(lines).split(), float32)``), on a synthetic file of the real width.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_lowlevel_read.py                     # 40,000 × 225 (CM55)
    PYTHONPATH=src python benchmarks/bench_lowlevel_read.py --rows 269648 --cols 500 --int

Each reader runs in a fresh subprocess (the same file, written once), which reports its wall
time and its peak extra resident memory (``VmHWM`` − ``VmRSS`` before the call, Linux). The
three results are compared for equality first. Figures and the command in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

READERS = ("ours", "loadtxt", "strings")

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, {bench!r})
from _proc import proc_status_kib
from gcrdp.data.formats.nuswide.lowlevel import _read_matrix  # imported before the measurement, in every child
path, rows, which = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
before = proc_status_kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t = time.perf_counter()
if which == "ours":
    m = _read_matrix(path, rows, path)
elif which == "loadtxt":
    m = np.loadtxt(path, dtype=np.float32, ndmin=2)
else:
    lines = path.read_text().split("\n")
    lines = [ln for ln in lines if ln.strip()]
    m = np.array(" ".join(lines).split(), dtype=np.float32).reshape(len(lines), -1)
seconds = time.perf_counter() - t
peak = proc_status_kib("VmHWM") - before
np.save(sys.argv[4], m)
print(json.dumps({{"seconds": seconds, "peak_mib": peak / 1024}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--cols", type=int, default=225)
    ap.add_argument("--int", action="store_true", help="integer counts (BoW_int.dat) instead of 6-decimal floats")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    bench = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Normalized_X.dat"
        t = time.perf_counter()
        with open(path, "w") as f:
            for start in range(0, args.rows, 10_000):
                block = (
                    rng.integers(0, 9, (min(10_000, args.rows - start), args.cols))
                    if args.int
                    else rng.random((min(10_000, args.rows - start), args.cols))
                )
                fmt = "%d" if args.int else "%.6f"
                np.savetxt(f, block, fmt=fmt, delimiter=" ", newline=" \n")
        size = path.stat().st_size / 2**20
        kind = "ints" if args.int else "floats"
        print(f"file: {args.rows} × {args.cols} {kind}, {size:.0f} MiB (written in {time.perf_counter() - t:.1f} s)")
        results = {}
        for which in READERS:
            out = Path(tmp) / f"{which}.npy"
            proc = subprocess.run(
                [sys.executable, "-c", CHILD.format(bench=bench), str(path), str(args.rows), which, str(out)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[which] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[which]["array"] = np.load(out)
        ref = results["loadtxt"]["array"]
        for which in READERS:
            np.testing.assert_array_equal(results[which]["array"], ref)
        print(f"{'reader':<10} {'seconds':>9} {'peak MiB':>9} {'time / ours':>12} {'memory / ours':>14}")
        for which in READERS:
            r = results[which]
            print(
                f"{which:<10} {r['seconds']:>9.2f} {r['peak_mib']:>9.0f} {r['seconds'] / results['ours']['seconds']:>12.1f}"
                f" {r['peak_mib'] / max(results['ours']['peak_mib'], 1e-9):>14.1f}"
            )
        print(f"(result array: {ref.nbytes / 2**20:.0f} MiB float32; all three equal)")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "rows": args.rows,
                        "cols": args.cols,
                        "file_mib": size,
                        **{k: {"seconds": v["seconds"], "peak_mib": v["peak_mib"]} for k, v in results.items()},
                    },
                    indent=2,
                )
            )


if __name__ == "__main__":
    main()
