"""Print Markdown study tables (rows = method entries, columns = shots) from results files.

    python scripts/results_tables.py runs/ablation/results.json [more results.json ...]
    python scripts/results_tables.py --merge runs/study/ablation-*/results.json

For each study: the mean of I2T and T2I mAP@all (%, mean ± SD over seeds), then I2T and T2I
separately, with the validation mAP (held-out seen classes) that choices are made on; then the
paired differences against a reference entry (``--reference``, default: the first method of the
study): for every (shots, seed) the two fits share the split, so the difference per seed removes
the split-to-split variation, and its mean ± SD over seeds says how much a change moves mAP
(the validation column: mean over every (shots, seed) pair ± its standard error (SE), the figure
choices are made on; the (shots, seed) pairs of one seed share a split, so that SE treats them
as more independent than they are); finally epochs, fit seconds and the GMM's π entropy at the best epoch.

``--merge`` treats all the files as one study (their records are concatenated and the summary
recomputed): a study run one shot value at a time (``gcrdp run --config C --shots 5 ...``) gives
the same records as one run over all shots, because every (shots, seed) fit is independent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gcrdp.experiments.runner import summarize
from gcrdp.experiments.table import format_study_table


def _paired_table(records: list[dict], methods: list[str], reference: str, key: str = "mean_map") -> str:
    by = {(r["method"], r["shots"], r["seed"]): r for r in records}
    shots = sorted({r["shots"] for r in records})
    head = ["method"] + [f"{s}-shot Δ test (mean ± SD)" for s in shots] + ["Δ val mAP (mean ± SE)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        if m == reference:
            continue
        cells, dval = [f"`{m}`"], []  # dval: paired Δ of val mAP over every (shots, seed)
        for s in shots:
            diffs = []
            for (mm, ss, seed), r in by.items():
                ref = by.get((reference, ss, seed))
                if mm != m or ss != s or ref is None:
                    continue
                diffs.append(r["test"][key] - ref["test"][key])
                if r["fit"].get("best_val_map") is not None and ref["fit"].get("best_val_map") is not None:
                    dval.append(r["fit"]["best_val_map"] - ref["fit"]["best_val_map"])
            if diffs:
                d = 100 * np.asarray(diffs)
                std = d.std(ddof=1) if d.size > 1 else 0.0
                cells.append(f"{d.mean():+.1f} ± {std:.1f}")
            else:
                cells.append("–")
        if dval:
            dv = 100 * np.asarray(dval)
            se = dv.std(ddof=1) / np.sqrt(dv.size) if dv.size > 1 else 0.0
            cells.append(f"{dv.mean():+.1f} ± {se:.1f}")
        else:
            cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _effort_table(records: list[dict]) -> str:
    extra: dict[str, dict[str, list[float]]] = {}
    for r in records:
        h = r["fit"]["history"][max(r["fit"]["best_epoch"], 1) - 1]
        e = extra.setdefault(r["method"], {"epochs": [], "seconds": [], "entropy": []})
        e["epochs"].append(r["fit"]["epochs"])
        e["seconds"].append(r["fit"]["seconds"])
        if "pi_entropy_image" in h:
            e["entropy"].append((h["pi_entropy_image"] + h["pi_entropy_text"]) / 2)
    lines = ["| method | mean epochs | mean fit seconds | mean π entropy at best epoch |", "|---|---|---|---|"]
    for m, e in extra.items():
        ent = f"{np.mean(e['entropy']):.3f}" if e["entropy"] else "–"
        lines.append(f"| `{m}` | {np.mean(e['epochs']):.1f} | {np.mean(e['seconds']):.1f} | {ent} |")
    return "\n".join(lines)


def print_study(name: str, results: list[dict], reference: str | None) -> None:
    records = [r for res in results for r in res["records"]]
    cfg = results[0]["config"]
    methods = list(dict.fromkeys(m for res in results for m in res["config"]["methods"]))
    summary = summarize(records)
    seeds = sorted({r["seed"] for r in records})
    print(f"### {name}: {cfg['dataset']}, {len(seeds)} seeds\n")
    for key, title in (("mean_map", "mean of I2T and T2I"), ("i2t_map", "I2T"), ("t2i_map", "T2I")):
        print(f"{title} mAP@all (%; mean ± SD over seeds)\n")
        print(format_study_table(summary, methods, key=key))
        print()
    ref = reference or methods[0]
    print(
        f"Paired difference from `{ref}` (mean of I2T and T2I, points): test columns mean ± SD over seeds; "
        "the validation column mean ± SE over every paired (shots, seed) fit\n"
    )
    print(_paired_table(records, methods, ref))
    print()
    print(_effort_table(records))
    print()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json files")
    p.add_argument("--merge", action="store_true", help="treat all files as one study")
    p.add_argument("--name", default=None, help="study name (default: the folder name)")
    p.add_argument("--reference", default=None, help="entry the paired differences are taken against")
    args = p.parse_args(argv)
    loaded = [(path, json.loads(path.read_text())) for path in args.results]
    if args.merge:
        print_study(args.name or loaded[0][0].parent.name, [res for _, res in loaded], args.reference)
    else:
        for path, res in loaded:
            print_study(args.name or path.parent.name, [res], args.reference)


if __name__ == "__main__":
    main()
