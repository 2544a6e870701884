"""Wall time of the demo job (`make demo` after installation): cold and warm feature cache with
two fits at a time (`--jobs 2`, as `make demo` runs it), and warm with one fit at a time (the
reference, every thread on one fit), measured in the same run.

    python benchmarks/bench_demo.py            # uses a fresh temporary cache folder
    python benchmarks/bench_demo.py --keep runs/demo   # also keep the warm run's results.json

Prints a Markdown table; copy the figures into docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = [
    "-m",
    "gcrdp",
    "run",
    "--dataset",
    "twemoji",
    "--methods",
    "gap-infonce",
    "gcrdp",
    "--shots",
    "0",
    "1",
    "3",
    "5",
    "--seeds",
    "0",
    "1",
    "2",
    "-q",
]


def timed(cache: Path, out: Path, jobs: int) -> tuple[float, dict]:
    env = {**os.environ, "GCRDP_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *DEMO, "--jobs", str(jobs), "--output-dir", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, json.loads((out / "results.json").read_text(encoding="utf-8"))


def main() -> None:
    import argparse
    import shutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, default=None, help="copy the warm --jobs 2 run's folder here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cold, rc = timed(cache, Path(tmp) / "cold", 2)
        warm, rw = timed(cache, Path(tmp) / "warm", 2)
        ref, r1 = timed(cache, Path(tmp) / "warm1", 1)
        if args.keep is not None:
            shutil.copytree(Path(tmp) / "warm", args.keep, dirs_exist_ok=True)
    fits = sum(r["fit"]["seconds"] for r in rw["records"])
    print("| run | wall time (s) | feature step (s) |\n|---|---|---|")
    print(f"| cold, --jobs 2 | {cold:.0f} | {rc['timing']['features_seconds']:.0f} |")
    print(f"| warm, --jobs 2 | {warm:.0f} | {rw['timing']['features_seconds']:.0f} |")
    print(f"| warm, --jobs 1 (reference) | {ref:.0f} | {r1['timing']['features_seconds']:.0f} |")
    print(
        f"\nwarm --jobs 2 / --jobs 1 = {warm / ref:.2f}; {len(rw['records'])} fits, "
        f"{fits:.0f} s of fitting in the workers; {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
