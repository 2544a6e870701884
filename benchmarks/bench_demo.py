"""Wall time of the demo job (`make demo` after installation) with a cold and a warm feature
cache, measured in the same run.

    python benchmarks/bench_demo.py            # uses a fresh temporary cache folder

Prints a Markdown table; copy the figures into docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO = ["-m", "gcrdp", "run", "--dataset", "twemoji", "--methods", "gap-infonce", "gcrdp",
        "--shots", "0", "1", "3", "5", "--seeds", "0", "1", "2", "-q"]


def timed(cache: Path, out: Path) -> float:
    env = {**os.environ, "GCRDP_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *DEMO, "--output-dir", str(out)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cold = timed(cache, Path(tmp) / "cold")
        warm = timed(cache, Path(tmp) / "warm")
    print(f"| cache | wall time (s) |\n|---|---|\n| cold | {cold:.0f} |\n| warm | {warm:.0f} |\n"
          f"\nwarm/cold = {warm / cold:.2f}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
