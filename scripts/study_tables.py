"""Tables of a GCRDP study grid (``gcrdp experiment``): validation beside test, paired over
seeds, and how well each validation predicts the test.

    python scripts/study_tables.py runs/gcrdp-study [--reference gcrdp] [--base gap-infonce]

For every dataset label of the grid (``runs/<label>/<method>/shots<N>-seed<S>.json``):

1. per method: mean validation mAP (the figure choices are made on) and mean test mAP (mean of
   I2T and T2I) per shot count, over seeds;
2. paired differences against ``--reference``: for each seed, the difference of the two
   methods' best validation mAP (and test mAP) averaged over the shot counts both have, then
   the mean over seeds ± its standard error; ``*`` marks a validation difference beyond two
   standard errors;
3. how well the validation predicts the test over all methods of the label: the share of the
   paired validation differences whose sign matches the test difference's, and the Spearman
   rank correlation of the two (with the number of methods).

``--json OUT`` also writes every figure as JSON, ``--csv OUT`` one row per run. Only the grid's
files are read; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

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
    return f"{mean:+.1f} ± {se:.1f}{mark}"


def label_tables(label: str, cells: dict, reference: str, base: str) -> tuple[str, dict]:
    methods = sorted({m for m, _, _ in cells}, key=lambda m: (m != base, m != reference, m))
    shots = sorted({s for _, s, _ in cells})
    lines = [
        f"#### {label}",
        "",
        "| method | val mAP | "
        + " | ".join(f"{s}-shot test" for s in shots)
        + f" | Δ val vs `{reference}` | Δ test vs `{reference}` | Δ val vs `{base}` | Δ test vs `{base}` |",
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
    # how well validation predicts test, over every method against the reference
    dv, dt = [], []
    for m in methods:
        if m == reference:
            continue
        pv, pt = paired(cells, m, reference, "val"), paired(cells, m, reference, "test")
        if pv is not None and pt is not None:
            dv.append(pv[0])
            dt.append(pt[0])
    agree = sum(1 for a, b in zip(dv, dt, strict=True) if np.sign(a) == np.sign(b))
    rho = spearman(dv, dt)
    figures["prediction"] = {"n_methods": len(dv), "sign_agreement": agree, "spearman": rho}
    lines += [
        "",
        f"Validation predicts test (paired differences against `{reference}`, "
        f"{len(dv)} methods): signs agree for {agree} of {len(dv)}; Spearman ρ = " + ("–" if math.isnan(rho) else f"{rho:+.2f}") + ".",
        "",
    ]
    return "\n".join(lines), figures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", type=Path, help="the grid's output folder (or its runs/ folder)")
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
    args = ap.parse_args(argv)
    grid = load_grid(args.grid)
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
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
