"""A method's fit time against its base's, side by side in one run (issue 25).

Each (seed, method) is one ``gcrdp run`` in its own process (same data, shots, seed and thread
count), interleaved — for every seed all methods in turn — so that a change of the machine's
load hits every method alike. The figure is the fit's own clock (``fit.seconds`` of the run's
record: training and per-epoch validation, not start-up or feature loading). Per method: the
median fit seconds and epochs over the seeds and the median over seeds of the per-seed ratio
to the base::

    python benchmarks/bench_fit_speed.py --dataset twemoji --shots 5 --seeds 0 1 2 \\
        --methods gap-infonce gcrdp gcrdp@soft-e-step --option gcrdp@soft-e-step.e_step_temperature=32

The first method is the base. ``--option ENTRY.KEY=VALUE`` sets a variant's options, as
``gcrdp run --option`` does. The load average before and after is printed with the table; the
issue 25 rule repeats a ratio measured at a load above 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fit(args: argparse.Namespace, method: str, seed: int, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "gcrdp", "run", "--dataset", args.dataset, "--methods", method]
    cmd += ["--shots", str(args.shots), "--seeds", str(seed), "--output-dir", str(out), "--no-resume", "-q"]
    cmd += [a for kv in args.option if kv.split(".", 1)[0] == method for a in ("--option", kv)]
    cmd += [a for kv in args.dataset_option for a in ("--dataset-option", kv)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=3600)
    rec = json.loads((out / "results.json").read_text())["records"][0]
    return {"seconds": float(rec["fit"]["seconds"]), "epochs": int(rec["fit"]["epochs"]), "test": 100 * rec["test"]["mean_map"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="twemoji")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["gap-infonce", "gcrdp"], help="the first one is the base")
    p.add_argument("--option", action="append", default=[], metavar="ENTRY.KEY=VALUE")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of every fit")
    args = p.parse_args()
    base = args.methods[0]
    load0 = os.getloadavg()[0]
    res: dict[str, list[dict]] = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for m in args.methods:
                r = _fit(args, m, seed, Path(tmp) / f"{m}-{seed}")
                res[m].append(r)
                print(f"# seed {seed} {m}: {r['seconds']:.1f} s, {r['epochs']} epochs", file=sys.stderr, flush=True)
    load1 = os.getloadavg()[0]
    opts = f"; options {' '.join(args.option)}" if args.option else ""
    print(
        f"# {args.dataset}, {args.shots} shots, seeds {' '.join(map(str, args.seeds))}, {args.threads} thread(s){opts}; "
        f"load {load0:.1f} → {load1:.1f}"
    )
    print(f"| method | fit seconds (median) | epochs (median) | per-seed ratio to {base} (median) | per-seed fit seconds |")
    print("|---|---|---|---|---|")
    for m in args.methods:
        secs = [r["seconds"] for r in res[m]]
        ratios = [r["seconds"] / b["seconds"] for r, b in zip(res[m], res[base])]
        print(
            f"| `{m}` | {statistics.median(secs):.1f} | {statistics.median(r['epochs'] for r in res[m]):g} | "
            f"{statistics.median(ratios):.2f}× | {' / '.join(f'{s:.1f}' for s in secs)} |"
        )


if __name__ == "__main__":
    main()
