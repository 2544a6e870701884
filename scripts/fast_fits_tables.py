"""Tables of issue 25's choice of a faster ``gcrdp`` fit, by the rules of the pre-registered
decision file ``docs/study/fast-fits-decision.md``.

    python scripts/fast_fits_tables.py runs/fast-fits-select [--grid configs/fast-fits-select.json]
                                       [--partial] [--json OUT]

Reads every run of the grid and refuses (exit 1, naming them) runs that the decision file as
committed did not judge (:func:`gcrdp.experiments.prereg.check_preregistered`). Then, for every
candidate (each method of the grid other than ``gcrdp`` and ``gap-infonce``), per dataset and
shots, the paired difference candidate − its reference over seeds of the held-out validation figure
(``report_val_map``, rule 1's figure), of test mAP and of ``best_val_map``: mean, SE, the 95 % t
interval (n − 1 degrees of freedom) and a bootstrap interval beside it. **Non-inferior** (rule 1)
when the lower bound of the held-out validation's t interval is above −1.0 at 5 shots on every
dataset present (``--confirm``, the confirmation's rule 3: the held-out validation's and test
mAP's lower bounds both); the fits' median epochs and seconds are shown beside (the grid's clock, under
whatever load it ran: speed is judged by ``benchmarks/bench_fit_speed.py``, not here).
Differences within 1e-6 of 0 are left out of sign counts and counted.

A candidate's reference is the method it is a variant of (the name before ``@``): ``gcrdp``
for the first decision's ``gcrdp@…`` candidates, ``gap-infonce`` for the second decision's
(``docs/study/fast-fits-decision-base.md``, ``--decision`` that file) ``gap-infonce@…``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from confirm_tables import ZERO_TOL, fmt, interval, split_label  # noqa: E402

from gcrdp.errors import DataError  # noqa: E402
from gcrdp.experiments.grid import Grid, collect_results  # noqa: E402
from gcrdp.experiments.prereg import check_preregistered  # noqa: E402

REFERENCE = "gcrdp"
BASE = "gap-infonce"
MARGIN = -1.0
PRIMARY_SHOTS = 5


def load(root: Path, decision: Path, grid_file: Path, partial: bool) -> dict[tuple[str, str, int], dict[int, dict[str, float]]]:
    """(dataset, method, shots) -> seed -> {"test", "report", "best", "epochs", "seconds"}."""
    runs = collect_results([root])
    check_preregistered(runs, decision)
    out: dict[tuple[str, str, int], dict[int, dict[str, float]]] = defaultdict(dict)
    for run in runs:
        g = run["grid"]
        dataset, _ = split_label(g["dataset_label"])
        rec = run["records"][0]
        fit = rec["fit"]
        out[(dataset, g["method"], g["shots"])][g["seed"]] = {
            "test": 100 * rec["test"]["mean_map"],
            "report": 100 * fit["report_val_map"] if fit.get("report_val_map") is not None else float("nan"),
            "best": 100 * fit["best_val_map"] if fit.get("best_val_map") is not None else float("nan"),
            "epochs": float(fit.get("epochs") or 0),
            "seconds": float(fit.get("seconds") or 0.0),
        }
    grid = Grid.from_file(grid_file)
    missing = [c for c in grid.cells() if grid.available(c.dataset) and not (root / c.relpath()).is_file()]
    if missing and not partial:
        raise DataError(f"{len(missing)} of {len(grid.cells())} runs are missing (e.g. {missing[0]}); pass --partial to see what is in.")
    return out


def write_csv(cells: dict, path: Path) -> None:
    """One row per run: dataset, method, shots, seed, test / held-out / best validation mAP, epochs, fit seconds."""
    import csv

    keys = ("test", "report", "best", "epochs", "seconds")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "method", "shots", "seed", "test_map", "report_val_map", "best_val_map", "epochs", "fit_seconds"])
        for (dataset, method, shots), seeds in sorted(cells.items()):
            for seed, r in sorted(seeds.items()):
                w.writerow([dataset, method, shots, seed, *(f"{r[k]:.4f}" for k in keys)])


def reference_of(candidate: str) -> str:
    """The method a candidate is a variant of: ``gcrdp@pca128`` -> ``gcrdp``,
    ``gap-infonce@pca128`` -> ``gap-infonce``."""
    return candidate.split("@", 1)[0]


def paired(cells: dict, a: str, b: str, dataset: str, shots: int, what: str) -> np.ndarray:
    ra, rb = cells.get((dataset, a, shots), {}), cells.get((dataset, b, shots), {})
    return np.array([ra[s][what] - rb[s][what] for s in sorted(set(ra) & set(rb))], dtype=float)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--decision", type=Path, default=ROOT / "docs" / "study" / "fast-fits-decision.md")
    ap.add_argument("--grid", type=Path, default=ROOT / "configs" / "fast-fits-select.json")
    ap.add_argument("--partial", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--csv", type=Path, help="also write every run's figures (mAP in points, epochs, fit seconds)")
    ap.add_argument("--boot", type=int, default=10_000)
    ap.add_argument(
        "--confirm",
        action="store_true",
        help="the confirmation's rule (rule 3): the lower bounds of the held-out validation AND of test mAP above the margin",
    )
    args = ap.parse_args(argv)
    try:
        cells = load(args.root, args.decision, args.grid, args.partial)
    except DataError as exc:
        print(f"fast_fits_tables: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        write_csv(cells, args.csv)
    datasets = sorted({k[0] for k in cells})
    shots_all = sorted({k[2] for k in cells}, reverse=True)
    methods = sorted({k[1] for k in cells})
    candidates = [m for m in methods if m not in (REFERENCE, BASE)]
    refs = {cand: reference_of(cand) for cand in candidates}
    doc: dict[str, Any] = {"candidates": {}, "fits": {}}
    print("## Fits (median over seeds; the grid's clock)\n\n| dataset | shots | method | seeds | epochs | fit seconds | test mAP |")
    print("|---|---|---|---|---|---|---|")
    for dataset in datasets:
        for shots in shots_all:
            for m in methods:
                runs = cells.get((dataset, m, shots), {})
                if not runs:
                    continue
                med = {w: statistics.median(r[w] for r in runs.values()) for w in ("epochs", "seconds", "test")}
                doc["fits"][f"{dataset}/{shots}/{m}"] = {"seeds": len(runs), **med}
                print(f"| {dataset} | {shots} | {m} | {len(runs)} | {med['epochs']:g} | {med['seconds']:.1f} | {med['test']:.2f} |")
    print("\n## Candidate − its reference: paired differences over seeds (points; ± is SE)\n")
    print("| candidate − reference | dataset | shots | held-out validation | test | best_val_map | zero differences left out |")
    print("|---|---|---|---|---|---|---|")
    for cand in candidates:
        verdicts = []
        for dataset in datasets:
            for shots in shots_all:
                d = {w: paired(cells, cand, refs[cand], dataset, shots, w) for w in ("report", "test", "best")}
                res = {w: interval(d[w], args.boot) for w in d}
                zeros = int(np.sum(np.abs(d["report"]) <= ZERO_TOL))
                doc["candidates"][f"{cand}/{dataset}/{shots}"] = {**res, "zeros": zeros}
                figures = " | ".join(fmt(res[w]) for w in ("report", "test", "best"))
                print(f"| {cand} − {refs[cand]} | {dataset} | {shots} | {figures} | {zeros} |")
                if shots == PRIMARY_SHOTS:
                    for what in ("report", "test") if args.confirm else ("report",):
                        r = res[what]
                        verdicts.append(r is not None and r["t95"][0] > MARGIN)
        passed = bool(verdicts) and all(verdicts)
        doc["candidates"][cand] = {"non_inferior": passed, "reference": refs[cand]}
        figure = "held-out validation and test" if args.confirm else "held-out validation"
        rule = f"{'rule 3' if args.confirm else 'rule 1'} ({figure}: lower bound > {MARGIN:+.1f} at {PRIMARY_SHOTS} shots, every dataset)"
        print(f"| **{cand}** | {rule} | | **{'passes' if passed else 'fails'}** | | | |")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
