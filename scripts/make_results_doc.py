"""Write ``docs/results.md`` and its figures from the runs of ``make reproduce``.

    python scripts/make_results_doc.py runs/reproduce --out docs/results.md --figures docs/figures \
        [--seconds 3600] [--reference gcrdp]

The tables and figures are those of ``gcrdp report``; the text around them is computed from the
same numbers: for every dataset and shot count, the reference method (GCRDP) against the best
other method, as a paired difference over seeds (every (shots, seed) shares its split across
methods, so the difference per seed removes the split-to-split variation), and a count of where
it wins. Nothing in the text is typed by hand except the fixed explanations.

Every ± says what it is: the tables' cells are mean ± SD over seeds (sample standard deviation);
the standing of the reference is a table of paired differences (mean ± SD over seeds) with the
95 % t interval of the mean (mean ± t(n − 1)·SD/√n) and the verdict that interval gives: ahead or
behind only when the interval excludes 0, a tie when it holds 0 (``tests/test_docs_claims.py``
checks every such row of the docs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from gcrdp.experiments.grid import collect_results
from gcrdp.experiments.report import _slug, aggregate, gather, markdown_tables, write_report
from gcrdp.utils.io import atomic_write_text

PUBLISHED = {  # dataset label -> (method, I2T, T2I, source) of a published reference figure
    "wikipedia-standard": (
        "cca",
        25.0,
        20.0,
        "regularised CCA on the SIFT/LDA features (Rasiwasia et al. 2010 and later re-implementations: about 25 / 20)",
    ),
}
NOT_RUN = {
    "zero-shot": "zero-shot similarity needs an aligned encoder pair (CLIP); none loads offline here, "
    "and the default encoders (EfficientNet-Lite0, MiniLM) and the published SIFT/LDA, "
    "VGG/sentence-CNN features are not in one space, so it is not run (`gcrdp run --clip "
    "DIR --methods zero-shot` runs it where CLIP weights exist).",
}


def paired(records, dataset, shots, a, b, key="mean_map"):
    by = {(r["method"], r["seed"]): r for r in records if r["dataset"] == dataset and r["shots"] == shots}
    diffs = [100 * (by[(a, s)]["test"][key] - by[(b, s)]["test"][key]) for (m, s) in by if m == a and (b, s) in by]
    if not diffs:
        return None
    d = np.asarray(diffs)
    return float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else 0.0, d.size


#: What the ± of the tables of ``gcrdp report`` is, said in their captions.
SD_CAPTION = "mean ± SD over seeds (SD: sample standard deviation, not a standard error)"


def t_interval(p, level=0.95):
    """The ``level`` t interval of the mean of a paired figure ``(mean, sd, n)``."""
    if p is None or p[2] < 2:
        return None
    h = float(stats.t.ppf(0.5 + level / 2, p[2] - 1)) * p[1] / np.sqrt(p[2])
    return p[0] - h, p[0] + h


def verdict(ci, digits=1):
    """``ahead`` / ``behind`` when the interval (as printed, rounded to ``digits``) lies above /
    below 0; ``tie`` when it holds 0."""
    if ci is None:
        return "–"
    lo, hi = (round(x, digits) for x in ci)
    return "ahead" if lo > 0 else "behind" if hi < 0 else "tie"


def standing(records, rows, dataset, reference):
    """A table saying, per shots, how the reference compares with the best other method: the
    paired difference (mean ± SD over seeds), its 95 % t interval and the verdict it gives."""
    sub = [r for r in rows if r["dataset"] == dataset]
    lines, wins, total = [], 0, 0
    verdicts: dict[str, int] = {}
    for shots in sorted({r["shots"] for r in sub}):
        here = {r["method"]: r for r in sub if r["shots"] == shots}
        if reference not in here:
            continue
        others = {m: r for m, r in here.items() if m != reference and not m.startswith(reference + "@")}
        if not others:
            continue
        best = max(others, key=lambda m: others[m]["mean_mean"])
        ref = here[reference]
        p = paired(records, dataset, shots, reference, best)
        total += 1
        win = ref["mean_mean"] > others[best]["mean_mean"]
        wins += win
        ci = t_interval(p)
        word = verdict(ci)
        verdicts[word] = verdicts.get(word, 0) + 1
        label = "standard protocol" if ref.get("protocol") == "standard" else f"{shots}-shot"
        lines.append(
            f"| {label} | {ref['mean_mean']:.1f} | `{best}` {others[best]['mean_mean']:.1f} | "
            + (f"{p[0]:+.1f} ± {p[1]:.1f} ({p[2]})" if p else "unpaired")
            + " | "
            + (f"[{ci[0]:+.1f}, {ci[1]:+.1f}] ({p[2] - 1})" if ci else "–")
            + f" | {word} |"
        )
    if lines:
        lines = [
            f"| setting | `{reference}` mean mAP | best other method (mean mAP) | paired Δ, mean ± SD (seeds) "
            "| 95 % t interval of the mean Δ (df) | verdict |",
            "|---|---|---|---|---|---|",
        ] + lines
    head = (
        f"`{reference}` has the best mean mAP in {wins} of {total} settings on this dataset; against the best "
        f"other method, paired over seeds, it is ahead beyond the 95 % t interval in {verdicts.get('ahead', 0)}, "
        f"behind in {verdicts.get('behind', 0)}, a tie (the interval holds 0) in {verdicts.get('tie', 0)}."
        if total
        else f"`{reference}` was not run on this dataset."
    )
    return head, lines


def summary_lines(records, rows, datasets, reference):
    """Per dataset: the method with the best mean mAP in most settings, and where the reference
    stands against the best other method on average (paired over seeds)."""
    lines = []
    for ds in datasets:
        sub = [r for r in rows if r["dataset"] == ds]
        settings = sorted({r["shots"] for r in sub})
        best_counts: dict[str, int] = {}
        gaps = []
        for shots in settings:
            here = [r for r in sub if r["shots"] == shots]
            top = max(here, key=lambda r: r["mean_mean"])
            best_counts[top["method"]] = best_counts.get(top["method"], 0) + 1
            others = [r for r in here if r["method"] != reference and not r["method"].startswith(reference + "@")]
            ref = next((r for r in here if r["method"] == reference), None)
            if ref is not None and others:
                b = max(others, key=lambda r: r["mean_mean"])
                word = verdict(t_interval(paired(records, ds, shots, reference, b["method"])))
                gaps.append((shots, ref["mean_mean"] - b["mean_mean"], b["method"], word))
        leader = max(best_counts, key=best_counts.get)
        where = "the standard protocol" if len(settings) == 1 and sub[0].get("protocol") == "standard" else f"{len(settings)} shot settings"
        text = f"- **{ds}**: best mean mAP — `{leader}` in {best_counts[leader]} of {len(settings)} ({where})"
        if gaps:
            wins = sum(g > 0 for _, g, _, _ in gaps)
            mean_gap = float(np.mean([g for _, g, _, _ in gaps]))
            ahead = sum(w == "ahead" for *_, w in gaps)
            behind = sum(w == "behind" for *_, w in gaps)
            text += (
                f"; `{reference}` is best in {wins} of {len(gaps)}, on average {mean_gap:+.1f} points "
                f"from the best other method (range {min(g for _, g, _, _ in gaps):+.1f} to "
                f"{max(g for _, g, _, _ in gaps):+.1f}); paired over seeds it is ahead of that method "
                f"beyond the 95 % t interval in {ahead}, behind in {behind}, a tie in {len(gaps) - ahead - behind}"
            )
        lines.append(text + ".")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("docs/results.md"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--seconds", type=float, default=None, help="running time of the reproduction")
    ap.add_argument("--time-note", default=None, help="free text on the running time (instead of --seconds)")
    ap.add_argument("--reference", default="gcrdp")
    ap.add_argument("--methods", nargs="+", default=None, help="row order")
    ap.add_argument("--bench", type=Path, default=None, help="bench_train_step.py --json output")
    ap.add_argument(
        "--embedding-map",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="a 'gcrdp train' checkpoint whose test embeddings make figures/embedding_map.png",
    )
    args = ap.parse_args(argv)

    results = collect_results(args.runs)
    bench = json.loads(args.bench.read_text()) if args.bench and args.bench.is_file() else None
    runs_seconds: dict[str, float] = {}
    for res in results:
        label = (res.get("grid") or {}).get("dataset_label") or res["config"]["dataset"]
        runs_seconds[label] = runs_seconds.get(label, 0.0) + res["timing"]["total_seconds"]
    rep = write_report(results, args.figures, methods=args.methods, bench=bench)
    (args.figures / "results.md").unlink(missing_ok=True)  # the tables go into --out; results.csv stays
    if args.embedding_map is not None:
        from gcrdp.cli.main import main as cli

        if (
            cli(
                [
                    "report",
                    str(args.embedding_map / "results.json"),
                    "--output",
                    str(args.figures / ".map"),
                    "--no-plots",
                    "--embedding-map",
                    str(args.embedding_map),
                ]
            )
            != 0
        ):
            return 2
        os.replace(args.figures / ".map" / "embedding_map.png", args.figures / "embedding_map.png")
        for f in (args.figures / ".map").iterdir():
            f.unlink()
        (args.figures / ".map").rmdir()
    records = gather(results)
    all_rows = aggregate(records)
    variant_rows = [r for r in all_rows if args.methods and r["method"] not in args.methods]
    rows = [r for r in all_rows if not args.methods or r["method"] in args.methods]
    records_main = [r for r in records if not args.methods or r["method"] in args.methods]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods_run = sorted({r["method"] for r in rows})
    prov = results[0].get("provenance", {})
    commit = (prov.get("git") or {}).get("commit") if isinstance(prov.get("git"), dict) else None
    rel = os.path.relpath(args.figures, args.out.parent)
    out = [
        "# Results",
        "",
        "Generated by `make reproduce` (`scripts/make_results_doc.py`) on "
        f"{dt.date.today().isoformat()}, {platform.machine()} CPU"
        + (f", {os.cpu_count()} cores" if os.cpu_count() else "")
        + (f", git {str(commit)[:10]}" if commit else "")
        + (f"; running time {args.seconds / 60:.0f} min" if args.seconds else "")
        + (f"; {args.time_note}" if args.time_note else "")
        + ".",
        "",
        "mAP@all in percent (`docs/metrics.md`), " + SD_CAPTION + "; every method sees the "
        "same features, the same protocol split per (shots, seed) and the same evaluation code. "
        "Few-shot protocol: the test set is the unseen classes' test pairs; the N shots per unseen "
        "class join the seen classes' training pairs; validation uses held-out seen classes, which "
        "get the same N shots in training and are evaluated on their other pairs (the mirrored "
        "validation, unless the run files say `val_mode` zero-shot), and every choice (early "
        "stopping, CCA's ridge) is made on it, never on the test split. Bold: best per column.",
        "",
        f"Methods: {', '.join(f'`{m}`' for m in methods_run)}. The GCRDP ablation, sensitivity study and "
        "diagnostics are in [gcrdp-study.md](gcrdp-study.md).",
        "",
    ]
    tw = sum(v for k, v in runs_seconds.items() if k == "twemoji")
    rest = sum(v for k, v in runs_seconds.items() if k != "twemoji")
    out += [
        "Time spent in the runs (fits and evaluation, read from the run files): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in runs_seconds.items())
        + f". `make reproduce` runs Twemoji and the feature datasets side by side (one thread each), "
        f"so from nothing it takes about {max(tw, rest) / 60:.0f} min on this 2-core machine, plus the "
        "one-off Twemoji feature extraction (a few minutes) and the figures; an interrupted run "
        "continues where it stopped.",
        "",
    ]
    out += ["## In short", ""] + summary_lines(records_main, rows, datasets, args.reference) + [""]
    out += [
        "The paper reports GCRDP ahead of CLIP and FLEX-CLIP by 2.5–4.6 points (e.g. Wikipedia "
        "5-shot 57.4 against 52.8 / 53.6) on CLIP features. No CLIP weights load offline here, so "
        "these runs use the default encoders (Twemoji) and the datasets' published features "
        "(Wikipedia SIFT/LDA, Pascal VGG/sentence-CNN); their absolute values are not comparable "
        "with the paper's. What transfers is the comparison on equal footing: the same features, "
        "splits and evaluation for every method.",
        "",
    ]
    for m, why in NOT_RUN.items():
        if m not in methods_run:
            out += [f"Not run: `{m}` — {why}", ""]
    tables = markdown_tables(rows, args.methods, datasets).replace("mean ± std over seeds", SD_CAPTION).split("### ")[1:]
    for block in tables:
        ds = block.splitlines()[0].strip()
        out += [f"## {ds}", "", "\n".join(block.splitlines()[1:]).strip(), ""]
        fig = args.figures / f"map_vs_shots_{_slug(ds)}.png"
        if fig.is_file():
            out += [f"![mAP against shots, {ds}]({rel}/{fig.name})", ""]
        head, lines = standing(records_main, rows, ds, args.reference)
        out += [head, ""] + lines + [""]
        if ds in PUBLISHED:
            m, pi, pt, src = PUBLISHED[ds]
            r = next((r for r in rows if r["dataset"] == ds and r["method"] == m), None)
            if r is not None:
                out += [
                    f"Reference: `{m}` here gives {r['i2t_mean']:.1f} I2T / {r['t2i_mean']:.1f} T2I; "
                    f"published: {pi:.0f} / {pt:.0f} — {src}.",
                    "",
                ]
    if variant_rows:
        base = [
            r
            for r in rows
            if r["method"] == args.reference
            and r["dataset"] in {v["dataset"] for v in variant_rows}
            and r["shots"] in {v["shots"] for v in variant_rows}
        ]
        order = [args.reference] + sorted({r["method"] for r in variant_rows})
        out += [
            "## GCRDP sensitivity (K components, RDP threshold θ)",
            "",
            "Variants of `gcrdp` that change one option (`gcrdp@k1`: K = 1, …; defaults K = 3, "
            "θ = 0.5), same splits and seeds. The test figures are shown for completeness; the "
            "defaults were kept on validation alone ([gcrdp-study.md](gcrdp-study.md)).",
            "",
            markdown_tables(base + variant_rows, order).replace("mean ± std over seeds", SD_CAPTION).strip(),
            "",
        ]
    figs = (
        sorted(args.figures.glob("sensitivity_*.png"))
        + sorted(args.figures.glob("step_time.png"))
        + sorted(args.figures.glob("embedding_map.png"))
    )
    captions = {
        "step_time": "Training-step time with and without the EM (GMM) module (`benchmarks/bench_train_step.py`, batch 128).",
        "embedding_map": "t-SNE of a 5-shot GCRDP model's Twemoji test embeddings (o images, "
        "x texts, coloured by class) with the K = 3 GMM views (▲) of four images.",
    }
    for f in figs:
        cap = captions.get(f.stem, f"Sensitivity: {f.stem.replace('_', ' ')}.")
        out += [cap, "", f"![{f.stem}]({rel}/{f.name})", ""]
    atomic_write_text(args.out, "\n".join(out).rstrip() + "\n")
    print(f"written: {args.out} and {len(rep['files'])} files in {args.figures}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
