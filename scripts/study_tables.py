"""Tables of a GCRDP study grid (``gcrdp experiment``): validation beside test, paired over
seeds, and how well each validation predicts the test.

    python scripts/study_tables.py runs/gcrdp-study [--reference gcrdp] [--base gap-infonce]

For every dataset label of the grid (``runs/<label>/<method>/shots<N>-seed<S>.json``):

1. per method: mean validation mAP (the figure choices are made on) and mean test mAP (mean of
   I2T and T2I) per shot count, over seeds;
2. paired differences against ``--reference``: for each seed, the difference of the two
   methods' best validation mAP (and test mAP) averaged over the shot counts both have, then
   the mean over seeds ± its standard error (SE); ``*`` marks a validation difference beyond two
   standard errors (the study's pre-registered rule: with 5 seeds a two-sided test at about 88 %,
   t with 4 degrees of freedom), ``†`` a difference whose 95 % t interval (n − 1 degrees of
   freedom) excludes 0;
3. how well the validation predicts the test over all methods of the label: the share of the
   paired validation differences whose sign matches the test difference's, and the Spearman
   rank correlation of the two (with the number of methods). A method whose paired validation
   or test difference is zero within ``ZERO_TOL`` (1e-6 of mAP, i.e. 1e-4 points: the CSV's
   rounding and float noise; e.g. GMM switches on sets of one point) has no sign: it is left out
   of both figures, and the line says how many and which.

``--verdicts A:B ...`` prints a table of the paired differences A − B per label with their
95 % t intervals and the verdict each interval gives (win / loss / tie).

The input is the grid's output folder, or the CSV that ``--csv`` writes (one row per run:
``docs/study/*.csv`` are such files, so every table of ``docs/gcrdp-study.md`` regenerates from
the repository). ``--json OUT`` also writes every figure as JSON, ``--csv OUT`` one row per run.
Only the grid's files are read; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

#: A paired difference (in mAP, a fraction) at most this far from 0 has no sign.
ZERO_TOL = 1e-6
#: With 5 seeds, |mean| > 2 SE is a two-sided test at this level (t, 4 degrees of freedom).
TWO_SE_LEVEL_5 = 2 * stats.t.cdf(2.0, 4) - 1

_NAME = re.compile(r"shots(\d+)-seed(\d+)\.json$")


def load_grid(root: Path) -> dict[str, dict[tuple[str, int, int], dict]]:
    """label -> {(method, shots, seed): {"val": float|None, "test": float}} (fractions)."""
    out: dict[str, dict[tuple[str, int, int], dict]] = defaultdict(dict)
    runs = root / "runs" if (root / "runs").is_dir() else root
    for f in sorted(runs.glob("*/*/shots*-seed*.json")):
        m = _NAME.search(f.name)
        if not m:
            continue
        data = json.loads(f.read_text(encoding="utf-8"))
        rec = data["records"][0]
        label, method = f.parent.parent.name, f.parent.name
        out[label][(method, int(m.group(1)), int(m.group(2)))] = {
            "val": rec["fit"].get("best_val_map"),
            "test": rec["test"]["mean_map"],
            "epochs": rec["fit"].get("epochs"),
            "seconds": rec["fit"].get("seconds"),
        }
    return dict(out)


def load_csv(path: Path) -> dict[str, dict[tuple[str, int, int], dict]]:
    """The same mapping as :func:`load_grid`, from the one-row-per-run CSV that ``--csv`` writes."""
    import csv

    out: dict[str, dict[tuple[str, int, int], dict]] = defaultdict(dict)
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out[row["label"]][(row["method"], int(row["shots"]), int(row["seed"]))] = {
                "val": float(row["val_map"]) if row["val_map"] else None,
                "test": float(row["test_mean_map"]),
                "epochs": int(row["epochs"]) if row["epochs"] not in ("", "None") else None,
                "seconds": float(row["fit_seconds"]) if row["fit_seconds"] not in ("", "None") else None,
            }
    return dict(out)


def t_interval(p: tuple[float, float, int] | None, level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` t interval of a paired figure ``(mean, se, n)``: mean ± t(n − 1)·SE."""
    if p is None or p[2] < 2 or math.isnan(p[1]):
        return None
    h = float(stats.t.ppf(0.5 + level / 2, p[2] - 1)) * p[1]
    return p[0] - h, p[0] + h


def verdict(interval: tuple[float, float] | None, digits: int = 1) -> str:
    """``win`` when the interval is above 0, ``loss`` below, ``tie`` when it holds 0 — judged on
    the bounds as printed (rounded to ``digits``), so a bound printed as 0.0 makes a tie."""
    if interval is None:
        return "–"
    lo, hi = (round(x, digits) for x in interval)
    return "win" if lo > 0 else "loss" if hi < 0 else "tie"


def has_sign(x: float) -> bool:
    """Whether a paired difference in points is further from 0 than ``ZERO_TOL`` (a fraction)."""
    return abs(x) > 100 * ZERO_TOL * (1 + 1e-9)


def paired(cells: dict, method: str, reference: str, key: str) -> tuple[float, float, int] | None:
    """Mean over seeds ± standard error of (method − reference), each seed's difference
    averaged over the shot counts both have. -> (mean, se, n_seeds) in percent, or None."""
    per_seed: dict[int, list[float]] = defaultdict(list)
    for (m, shots, seed), r in cells.items():
        ref = cells.get((reference, shots, seed))
        if m != method or ref is None or r[key] is None or ref[key] is None:
            continue
        per_seed[seed].append(100.0 * (r[key] - ref[key]))
    if not per_seed:
        return None
    d = np.array([np.mean(v) for v in per_seed.values()])
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
    return float(d.mean()), se, int(d.size)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(x: list[float]) -> np.ndarray:
        x_arr = np.asarray(x, dtype=float)
        order = x_arr.argsort(kind="stable")
        r = np.empty(len(x_arr))
        r[order] = np.arange(len(x_arr), dtype=float)
        for v in np.unique(x_arr):  # ties: the mean rank
            idx = x_arr == v
            r[idx] = r[idx].mean()
        return r

    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _fmt(p: tuple[float, float, int] | None, star: bool = False) -> str:
    if p is None:
        return "–"
    mean, se, _ = p
    mark = "*" if star and not math.isnan(se) and abs(mean) > 2 * se else ""
    if verdict(t_interval(p)) in ("win", "loss"):  # as the verdict table prints it
        mark += "†"
    return f"{mean:+.1f} ± {se:.1f}{mark}"


def prediction(cells: dict, methods: list[str], reference: str) -> dict:
    """Sign agreement and Spearman ρ of the paired validation and test differences against
    ``reference``, over the methods whose two differences both have a sign (:func:`has_sign`)."""
    dv, dt, used, excluded = [], [], [], []
    for m in methods:
        if m == reference:
            continue
        pv, pt = paired(cells, m, reference, "val"), paired(cells, m, reference, "test")
        if pv is None or pt is None:
            continue
        if not (has_sign(pv[0]) and has_sign(pt[0])):
            excluded.append(m)
            continue
        used.append(m)
        dv.append(pv[0])
        dt.append(pt[0])
    agree = sum(1 for a, b in zip(dv, dt, strict=True) if np.sign(a) == np.sign(b))
    return {"n_methods": len(dv), "sign_agreement": agree, "spearman": spearman(dv, dt), "excluded": excluded}


def prediction_text(pred: dict, reference: str) -> str:
    rho = pred["spearman"]
    ex = pred["excluded"]
    return (
        f"Validation predicts test (paired differences against `{reference}`, {pred['n_methods']} methods"
        + (
            f"; {len(ex)} left out, their differences zero within {ZERO_TOL:g} of mAP: " + ", ".join(f"`{m}`" for m in ex)
            if ex
            else "; none left out as zero"
        )
        + f"): signs agree for {pred['sign_agreement']} of {pred['n_methods']}; Spearman ρ = "
        + ("–" if math.isnan(rho) else f"{rho:+.2f}")
        + "."
    )


def label_tables(label: str, cells: dict, reference: str, base: str) -> tuple[str, dict]:
    methods = sorted({m for m, _, _ in cells}, key=lambda m: (m != base, m != reference, m))
    shots = sorted({s for _, s, _ in cells})
    lines = [
        f"#### {label}",
        "",
        "| method | val mAP (mean) | "
        + " | ".join(f"{s}-shot test (mean ± SD, seeds)" for s in shots)
        + f" | Δ val vs `{reference}` (± SE) | Δ test vs `{reference}` (± SE) | Δ val vs `{base}` (± SE) | Δ test vs `{base}` (± SE) |",
        "|---|---|" + "---|" * (len(shots) + 4),
    ]
    figures: dict = {"methods": {}}
    for m in methods:
        vals = [r["val"] for (mm, _, _), r in cells.items() if mm == m and r["val"] is not None]
        row = [f"`{m}`", f"{100 * np.mean(vals):.1f}" if vals else "–"]
        fig: dict = {"val": float(np.mean(vals)) if vals else None, "test": {}}
        for s in shots:
            t = [r["test"] for (mm, ss, _), r in cells.items() if mm == m and ss == s]
            row.append(
                f"{100 * np.mean(t):.1f} ± {100 * np.std(t, ddof=1):.1f} ({len(t)})"
                if len(t) > 1
                else (f"{100 * t[0]:.1f} (1)" if t else "–")
            )
            fig["test"][s] = float(np.mean(t)) if t else None
        for ref in (reference, base):
            pv = paired(cells, m, ref, "val") if m != ref else None
            pt = paired(cells, m, ref, "test") if m != ref else None
            row += [_fmt(pv, star=True), _fmt(pt)]
            fig[f"vs_{ref}"] = {"val": pv, "test": pt}
        lines.append("| " + " | ".join(row) + " |")
        figures["methods"][m] = fig
    pred = prediction(cells, methods, reference)
    figures["prediction"] = pred
    n_seeds = max((p[2] for f in figures["methods"].values() for p in (f[f"vs_{reference}"]["val"],) if p), default=0)
    lines += [
        "",
        "± in the test columns: SD over seeds; in the Δ columns: SE of the paired difference over seeds "
        f"(each seed's difference averaged over the shot counts; {n_seeds} seeds). `*`: a validation "
        "difference beyond two SE (the study's rule"
        + (f"; with {n_seeds} seeds a two-sided test at about {100 * (2 * stats.t.cdf(2.0, n_seeds - 1) - 1):.0f} %" if n_seeds > 1 else "")
        + f"); `†`: the 95 % t interval ({max(n_seeds - 1, 0)} degrees of freedom) excludes 0.",
        "",
        prediction_text(pred, reference),
        "",
    ]
    return "\n".join(lines), figures


def verdict_table(grid: dict, pairs: list[tuple[str, str]], labels: list[str] | None = None) -> str:
    """Rows ``A − B`` per label and split: the paired difference (mean ± SE over seeds), the
    interval mean ± 2 SE of the study's rule with its verdict, and the 95 % t interval (n − 1
    degrees of freedom) with its verdict. A verdict is ``win`` / ``loss`` when its interval lies
    above / below 0, ``tie`` when it holds 0."""
    lines = [
        "| comparison | dataset | split | Δ ± SE (seeds) | mean ± 2 SE (the rule) | verdict by the rule "
        "| 95 % t interval (df) | verdict at 95 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a, b in pairs:
        for label in sorted(grid):
            if labels and label not in labels:
                continue
            for key in ("val", "test"):
                p = paired(grid[label], a, b, key)
                if p is None:
                    continue
                two = (p[0] - 2 * p[1], p[0] + 2 * p[1]) if p[2] > 1 else None
                ci = t_interval(p)
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            f"`{a}` − `{b}`",
                            label,
                            "validation" if key == "val" else "test",
                            f"{p[0]:+.1f} ± {p[1]:.1f} ({p[2]})",
                            "–" if two is None else f"[{two[0]:+.1f}, {two[1]:+.1f}]",
                            verdict(two),
                            "–" if ci is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}] ({p[2] - 1})",
                            verdict(ci),
                        ]
                    )
                    + " |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", type=Path, help="the grid's output folder (or its runs/ folder), or a CSV written by --csv")
    ap.add_argument("--reference", default="gcrdp")
    ap.add_argument("--base", default="gap-infonce")
    ap.add_argument("--labels", nargs="+", default=None, help="only these dataset labels")
    ap.add_argument("--shots", type=int, nargs="+", default=None, help="only these shot counts")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="also write one row per run (label, method, shots, seed, val and test mAP, "
        "epochs, seconds): the figures every table here is computed from",
    )
    ap.add_argument(
        "--verdicts",
        nargs="+",
        default=None,
        metavar="A:B",
        help="also print the paired differences A − B per label with 95 %% t intervals and their verdicts",
    )
    args = ap.parse_args(argv)
    grid = load_csv(args.grid) if args.grid.suffix == ".csv" else load_grid(args.grid)
    if not grid:
        raise SystemExit(f"no run files under {args.grid}")
    if args.csv:
        import csv

        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["label", "method", "shots", "seed", "val_map", "test_mean_map", "epochs", "fit_seconds"])
            for label in sorted(grid):
                for (m, shots, seed), r in sorted(grid[label].items()):
                    w.writerow(
                        [
                            label,
                            m,
                            shots,
                            seed,
                            "" if r["val"] is None else f"{r['val']:.6f}",
                            f"{r['test']:.6f}",
                            r["epochs"],
                            r["seconds"],
                        ]
                    )
    out = {}
    for label in sorted(grid):
        if args.labels and label not in args.labels:
            continue
        cells = grid[label]
        if args.shots:
            cells = {k: v for k, v in cells.items() if k[1] in args.shots}
        text, figures = label_tables(label, cells, args.reference, args.base)
        print(text)
        out[label] = figures
    if args.verdicts:
        pairs = [tuple(v.split(":", 1)) for v in args.verdicts]
        chosen = grid if not args.shots else {k: {c: r for c, r in v.items() if c[1] in args.shots} for k, v in grid.items()}
        print(verdict_table(chosen, pairs, args.labels))
        print()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
