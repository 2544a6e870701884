"""How far the same fit moves with the machine's arithmetic (issue 23 item 4).

The same ``gcrdp run`` (same commit, data, seeds) under environments that change only the
float round-off: torch's thread count (``OMP_NUM_THREADS``; the order of the sums in a matrix
product) and its CPU kernels (``ATEN_CPU_CAPABILITY``: ``default`` scalar code against the
vectorised ``avx2``/``avx512`` this CPU picks by itself). Another CPU differs from this one in
both ways, so the spread here is the spread to expect on another machine. Per method and seed,
the largest difference of test mAP (mean of I2T and T2I, points) and of the epoch count over
the environments::

    python benchmarks/bench_determinism.py --dataset twemoji --shots 5 --seeds 0 1 2 \\
        --methods gap-infonce gcrdp gcrdp@study gcrdp@e32 --out runs/determinism

``gcrdp@e32`` is the SPEC reading with a soft E-step (``e_step_temperature`` 32): the one
switch that makes the SPEC ``gcrdp``'s fits as stable as its base's (it is the candidate's
assignment temperature). Each environment's run folder is kept (``--out``), so an interrupted
benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENVS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "1 thread, scalar kernels": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
    "2 threads, scalar kernels": {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "default"},
}
EXTRA = {"gcrdp@e32": {"e_step_temperature": 32.0}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="twemoji")
    p.add_argument("--shots", type=int, nargs="+", default=[5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["gap-infonce", "gcrdp", "gcrdp@study", "gcrdp@e32"])
    p.add_argument("--out", type=Path, default=Path("runs/determinism"))
    args = p.parse_args()
    gcrdp = [sys.executable, "-m", "gcrdp"]
    results: dict[str, dict] = {}
    for name, extra in ENVS.items():
        folder = args.out / name.replace(" ", "-").replace(",", "")
        env = {**os.environ, **extra, "MKL_NUM_THREADS": extra["OMP_NUM_THREADS"]}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        cmd = [*gcrdp, "run", "--dataset", args.dataset, "--methods", *args.methods, "--shots", *map(str, args.shots)]
        cmd += ["--seeds", *map(str, args.seeds), "--output-dir", str(folder), "-q"]
        for m, opts in EXTRA.items():
            if m in args.methods:
                cmd += [arg for k, v in opts.items() for arg in ("--option", f"{m}.{k}={v}")]
        print(f"# {name}: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        results[name] = json.loads((folder / "results.json").read_text())
    print(f"\n# load {os.getloadavg()[0]:.1f}; environments: {', '.join(ENVS)}")
    print("| method | shots | seed | test mAP per environment | largest difference (points) | epochs |")
    print("|---|---|---|---|---|---|")
    spread: dict[str, float] = {}
    for method in args.methods:
        for shots in args.shots:
            for seed in args.seeds:
                recs = [
                    next(r for r in res["records"] if (r["method"], r["shots"], r["seed"]) == (method, shots, seed))
                    for res in results.values()
                ]
                maps = [100 * r["test"]["mean_map"] for r in recs]
                epochs = sorted({r["fit"]["epochs"] for r in recs})
                d = max(maps) - min(maps)
                spread[method] = max(spread.get(method, 0.0), d)
                print(f"| {method} | {shots} | {seed} | {' / '.join(f'{m:.2f}' for m in maps)} | {d:.3f} | {epochs} |")
    print("\nlargest difference per method: " + ", ".join(f"{m} {d:.3f}" for m, d in spread.items()))


if __name__ == "__main__":
    main()
