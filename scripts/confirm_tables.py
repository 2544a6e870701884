"""Tables of the study's confirmation on fresh seeds (issue 23), by the rules of the
pre-registered decision file ``docs/study/confirm-decision.md``.

    python scripts/confirm_tables.py runs/gcrdp-confirm [--decision docs/study/confirm-decision.md]
                                     [--partial] [--json OUT]

Reads every run of the grid ``configs/gcrdp-confirm.json`` and refuses (exit 1, naming them)
runs that the decision file as committed did not judge (:func:`gcrdp.experiments.prereg.
check_preregistered`). Then, as the decision says:

* **C1–C6**, on the ``mirror`` labels: paired differences A − B over seeds of test mAP, of the
  held-out validation figure (``report_val_map``) and of ``best_val_map``: mean, SE, the 95 %
  t interval (n − 1 degrees of freedom) and its verdict (ahead / behind / tie), a bootstrap
  percentile interval over seeds beside it; each claim confirmed, contradicted or not settled.
* **C7**: per dataset and shots, for each validation protocol, the (variant, seed) points of
  the five differences against ``gap-infonce``: Spearman ρ between the validation and test
  differences and the share of agreeing signs (points within 1e-6 of 0 left out and counted);
  the protocols compared by a bootstrap over seeds of ρ differences.

``--kept docs/study/confirm-runs.csv`` takes the runs the folder lacks from a CSV that ``--csv``
wrote (their pre-registration was checked when it was written): the tables can be recomputed
from the repository alone (an empty folder) or from a folder that holds part of the grid; for
the runs in both it prints the largest difference of test mAP per method.

``--partial`` prints what the runs done so far give (the grid runs for hours), saying how many
of each cell's seeds are in; without it, a missing run is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gcrdp.errors import DataError  # noqa: E402
from gcrdp.experiments.grid import Grid, collect_results  # noqa: E402
from gcrdp.experiments.prereg import check_preregistered  # noqa: E402

ZERO_TOL = 1e-6
BOOT = 10_000
BASE = "gap-infonce"
#: claim -> (A, B, the verdicts that confirm it per dataset; None = any dataset: tie, or inside [-1, +1])
CLAIMS: dict[str, tuple[str, str, dict[str, set[str]] | None]] = {
    "C1": ("gcrdp", "gap-infonce", {"twemoji": {"tie", "behind"}, "wikipedia": {"tie", "behind"}}),
    "C2": ("gcrdp@study", "gap-infonce", {"twemoji": {"tie"}, "wikipedia": {"behind"}}),
    "C3": ("gcrdp@study", "gcrdp", {"twemoji": {"ahead"}}),
    "C4": ("gap-infonce@cp", "gap-infonce", {"twemoji": {"ahead"}, "wikipedia": {"behind"}}),
    "C5": ("gcrdp@study", "gcrdp@study-no-gmm", None),
    "C6": ("gcrdp@study", "gcrdp@study-no-rdp", None),
}
PROTOCOLS = {"mirror": "mirror", "zero-shot": "zero-shot", "matched": "zero-shot-matched"}


def read_kept(path: Path) -> dict[tuple[str, str, str, int], dict[int, dict[str, float]]]:
    """The runs of a CSV that ``--csv`` wrote (its runs' pre-registration checked when it was
    written): the same mapping as :func:`load`, figures in points."""
    import csv

    out: dict[tuple[str, str, str, int], dict[int, dict[str, float]]] = defaultdict(dict)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                key = (row["dataset"], row["protocol"], row["method"], int(row["shots"]))
                out[key][int(row["seed"])] = {
                    w: float(row[c]) for w, c in (("test", "test_map"), ("report", "report_val_map"), ("best", "best_val_map"))
                }
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a CSV written by --csv ({exc})") from exc
    return out


def merge_kept(cells: dict, kept: dict) -> tuple[int, dict[str, float]]:
    """Adds to ``cells`` the kept runs it lacks; returns how many, and for the runs in both the
    largest |difference| of test mAP per method (the folder's figures are kept)."""
    added, diffs = 0, {}
    for key, seeds in kept.items():
        for seed, r in seeds.items():
            if seed in cells.get(key, {}):
                d = abs(cells[key][seed]["test"] - r["test"])
                diffs[key[2]] = max(diffs.get(key[2], 0.0), d)
            else:
                cells.setdefault(key, {})[seed] = r
                added += 1
    return added, diffs


def load(
    root: Path, decision: Path, partial: bool, grid_file: Path, kept: list[Path] | None = None
) -> dict[tuple[str, str, str, int], dict[int, dict[str, float]]]:
    """(dataset, protocol, method, shots) -> seed -> {"test", "report", "best"} in points.
    ``kept``: CSVs of earlier runs (``--kept``) that fill in the runs the folder lacks."""
    # a folder without any run is read only when kept runs are given (the tables from the CSV alone)
    runs = [] if kept and not any((root / "runs").glob("*/*/*.json")) else collect_results([root])
    check_preregistered(runs, decision)
    out: dict[tuple[str, str, str, int], dict[int, dict[str, float]]] = defaultdict(dict)
    for run in runs:
        g = run["grid"]
        dataset, protocol = split_label(g["dataset_label"])
        rec = run["records"][0]
        fit = rec["fit"]
        out[(dataset, protocol, g["method"], g["shots"])][g["seed"]] = {
            "test": 100 * rec["test"]["mean_map"],
            "report": 100 * fit["report_val_map"] if fit.get("report_val_map") is not None else float("nan"),
            "best": 100 * fit["best_val_map"] if fit.get("best_val_map") is not None else float("nan"),
        }
    for path in kept or []:
        added, diffs = merge_kept(out, read_kept(path))
        both = ", ".join(f"{m} {d:.4f}" for m, d in sorted(diffs.items())) or "none"
        print(f"{path}: {added} kept runs the folder lacks taken from it; runs in both, largest |test difference| (points): {both}\n")
    grid = Grid.from_file(grid_file)

    def present(c: Any) -> bool:
        dataset, protocol = split_label(c.dataset)
        return c.seed in out.get((dataset, protocol, c.method, c.shots), {})

    missing = [c for c in grid.cells() if grid.available(c.dataset) and not present(c)]
    if missing and not partial:
        raise DataError(f"{len(missing)} of {len(grid.cells())} runs are missing (e.g. {missing[0]}); pass --partial to see what is in.")
    return out


def paired(cells: dict, a: str, b: str, key: tuple[str, str, int], what: str) -> np.ndarray:
    dataset, protocol, shots = key
    ra, rb = cells.get((dataset, protocol, a, shots), {}), cells.get((dataset, protocol, b, shots), {})
    seeds = sorted(set(ra) & set(rb))
    return np.array([ra[s][what] - rb[s][what] for s in seeds], dtype=float)


def interval(d: np.ndarray, boot_n: int = BOOT) -> dict[str, Any] | None:
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return None
    m, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    h = float(stats.t.ppf(0.975, len(d) - 1)) * se
    rng = np.random.default_rng(0)
    boot = d[rng.integers(0, len(d), size=(boot_n, len(d)))].mean(axis=1)
    lo, hi = m - h, m + h
    return {
        "n": len(d),
        "mean": m,
        "se": se,
        "t95": (lo, hi),
        "df": len(d) - 1,
        "boot95": (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
        "verdict": "ahead" if lo > 0 else "behind" if hi < 0 else "tie",
    }


def claim_status(claim: str, dataset: str, res: dict[str, Any] | None) -> str:
    """Rule 2 of the decision: confirmed when the test verdict has the claim's direction,
    contradicted when the interval excludes it, not settled otherwise."""
    if res is None:
        return "no data"
    rule = CLAIMS[claim][2]
    if rule is None:  # C5/C6: worth little — a tie, or the interval inside [-1, +1]
        lo, hi = res["t95"]
        return "confirmed" if res["verdict"] == "tie" or (-1 <= lo and hi <= 1) else "contradicted"
    want = rule.get(dataset)
    if want is None:
        return "not claimed"
    if res["verdict"] in want:
        return "confirmed"
    return "not settled" if res["verdict"] == "tie" else "contradicted"


def split_label(label: str) -> tuple[str, str]:
    """``twemoji-zero-shot`` -> (``twemoji``, ``zero-shot``); ``wikipedia-mirror`` -> (..., ``mirror``)."""
    for p in sorted(PROTOCOLS, key=len, reverse=True):
        if label.endswith("-" + p):
            return label[: -len(p) - 1], p
    raise DataError(f"Dataset label {label!r} names no validation protocol ({', '.join(PROTOCOLS)}).")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def protocol_points(cells: dict, dataset: str, protocol: str, shots: int, what: str) -> dict[int, list[tuple[float, float]]]:
    """seed -> [(validation difference, test difference)] of the five variants against the base."""
    base = cells.get((dataset, protocol, BASE, shots), {})
    out: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for (d, p, method, s), seeds in cells.items():
        if (d, p, s) != (dataset, protocol, shots) or method == BASE:
            continue
        for seed, r in seeds.items():
            if seed in base:
                out[seed].append((r[what] - base[seed][what], r["test"] - base[seed]["test"]))
    return out


def agreement(points: dict[int, list[tuple[float, float]]], seeds: list[int]) -> tuple[float, float, int, int]:
    """(ρ, share of agreeing signs, points with a sign, points left out)."""
    pts = np.array([p for s in seeds for p in points.get(s, [])], dtype=float).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    signed = pts[(np.abs(pts[:, 0]) > 100 * ZERO_TOL) & (np.abs(pts[:, 1]) > 100 * ZERO_TOL)]
    share = float(np.mean(np.sign(signed[:, 0]) == np.sign(signed[:, 1]))) if len(signed) else float("nan")
    return spearman(pts[:, 0], pts[:, 1]), share, len(signed), len(pts) - len(signed)


def write_csv(cells: dict, path: Path) -> None:
    """One row per run: dataset, protocol, method, shots, seed, test / held-out / best validation mAP (points)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "protocol", "method", "shots", "seed", "test_map", "report_val_map", "best_val_map"])
        for (dataset, protocol, method, shots), seeds in sorted(cells.items()):
            for seed, r in sorted(seeds.items()):
                w.writerow([dataset, protocol, method, shots, seed, *(f"{r[k]:.4f}" for k in ("test", "report", "best"))])


def fmt(res: dict[str, Any] | None) -> str:
    if res is None:
        return "–"
    (lo, hi), (blo, bhi) = res["t95"], res["boot95"]
    t95 = f"t95 [{lo:+.2f}, {hi:+.2f}] ({res['df']} df)"
    return f"{res['mean']:+.2f} ± {res['se']:.2f} SE, {t95} {res['verdict']}; boot [{blo:+.2f}, {bhi:+.2f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--decision", type=Path, default=ROOT / "docs" / "study" / "confirm-decision.md")
    ap.add_argument("--grid", type=Path, default=ROOT / "configs" / "gcrdp-confirm.json")
    ap.add_argument("--partial", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--csv", type=Path, help="also write every run's figures (test, held-out and best validation mAP, points)")
    ap.add_argument("--boot", type=int, default=BOOT, help="bootstrap resamples (the decision: 10,000)")
    ap.add_argument(
        "--kept",
        type=Path,
        action="append",
        help="a CSV that --csv wrote (e.g. docs/study/confirm-runs.csv): its runs fill in those the folder lacks (repeatable)",
    )
    args = ap.parse_args(argv)
    try:
        cells = load(args.root, args.decision, args.partial, args.grid, args.kept)
    except DataError as exc:
        print(f"confirm_tables: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        write_csv(cells, args.csv)
    datasets = sorted({k[0] for k in cells})
    shots_all = sorted({k[3] for k in cells}, reverse=True)
    doc: dict[str, Any] = {"claims": {}, "protocols": {}}
    print("## C1–C6: paired differences over seeds, mirrored validation (points; ± is SE)\n")
    print("| claim | A − B | dataset | shots | test | held-out validation | best_val_map | claim |")
    print("|---|---|---|---|---|---|---|---|")
    for claim, (a, b, _) in CLAIMS.items():
        for dataset in datasets:
            for shots in shots_all:
                key = (dataset, "mirror", shots)
                res = {w: interval(paired(cells, a, b, key, w), args.boot) for w in ("test", "report", "best")}
                status = claim_status(claim, dataset, res["test"]) if shots == 5 else "(secondary)"
                doc["claims"][f"{claim}/{dataset}/{shots}"] = {**res, "status": status}
                figures = " | ".join(fmt(res[w]) for w in ("test", "report", "best"))
                print(f"| {claim} | {a} − {b} | {dataset} | {shots} | {figures} | {status} |")
    print("\n## C7: does the validation predict the test? (five variants against gap-infonce × seeds)\n")
    print("| dataset | shots | protocol | ρ (held-out val) | signs agree | left out | ρ (best_val_map) |")
    print("|---|---|---|---|---|---|---|")
    for dataset in datasets:
        for shots in shots_all:
            pts = {p: protocol_points(cells, dataset, p, shots, "report") for p in PROTOCOLS}
            best = {p: protocol_points(cells, dataset, p, shots, "best") for p in PROTOCOLS}
            seeds = sorted(set.intersection(*(set(v) for v in pts.values()))) if all(pts.values()) else []
            for p in PROTOCOLS:
                rho, share, n, left = agreement(pts[p], sorted(pts[p]))
                rho_b = agreement(best[p], sorted(best[p]))[0]
                doc["protocols"][f"{dataset}/{shots}/{p}"] = {"rho": rho, "share": share, "n": n, "left_out": left, "rho_best": rho_b}
                print(f"| {dataset} | {shots} | {PROTOCOLS[p]} | {rho:+.2f} | {share:.0%} of {n} | {left} | {rho_b:+.2f} |")
            if len(seeds) >= 3:
                rng = np.random.default_rng(0)
                diffs: dict[str, list[float]] = {"mirror − zero-shot": [], "mirror − matched": [], "matched − zero-shot": []}
                for _ in range(args.boot):
                    draw = list(rng.choice(seeds, size=len(seeds), replace=True))
                    r = {p: agreement(pts[p], draw)[0] for p in PROTOCOLS}
                    diffs["mirror − zero-shot"].append(r["mirror"] - r["zero-shot"])
                    diffs["mirror − matched"].append(r["mirror"] - r["matched"])
                    diffs["matched − zero-shot"].append(r["matched"] - r["zero-shot"])
                for name, vals in diffs.items():
                    v = np.array(vals)
                    v = v[np.isfinite(v)]
                    lo, hi = (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) else (float("nan"),) * 2
                    doc["protocols"][f"{dataset}/{shots}/{name}"] = [lo, hi]
                    print(f"| {dataset} | {shots} | ρ {name}: bootstrap 95 % [{lo:+.2f}, {hi:+.2f}] over {len(seeds)} seeds | | | |")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
