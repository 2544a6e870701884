"""The printed results table (percentages, mean ± std over seeds)."""

from __future__ import annotations

from typing import Any


def _pm(mean: float, std: float | None) -> str:
    """``" 31.2 ±  1.4"``; the mean alone when there is no spread (one seed)."""
    return f"{100 * mean:5.1f}" if std is None else f"{100 * mean:5.1f} ± {100 * std:4.1f}"


def format_table(summary: list[dict[str, Any]], title: str | None = None) -> str:
    """A Markdown table: one row per (method, shots) with I2T, T2I and mean mAP@all in percent
    (mean ± sample std over seeds) and the chance level (class prior) beside them."""
    head = ["method", "shots", "seeds", "I2T mAP", "T2I mAP", "mean mAP", "chance"]
    rows = []
    for r in sorted(summary, key=lambda r: (r["shots"], r["method"])):
        rows.append(
            [
                r["method"],
                str(r["shots"]),
                str(r["n_seeds"]),
                _pm(r["i2t_map_mean"], r["i2t_map_std"]),
                _pm(r["t2i_map_mean"], r["t2i_map_std"]),
                _pm(r["mean_map_mean"], r["mean_map_std"]),
                f"{100 * (r['chance_i2t_mean'] + r['chance_t2i_mean']) / 2:5.1f}",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [] if title is None else [title, ""]
    lines += [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


def format_instance_table(summary: list[dict[str, Any]], title: str | None = None) -> str | None:
    """A Markdown table of instance-level recall@1/5/10 in percent (each query's own pair; mean
    over seeds), one row per (method, shots); ``None`` when the summary has none."""
    rows = []
    for r in sorted(summary, key=lambda r: (r["shots"], r["method"])):
        cells = [r["method"], str(r["shots"])]
        for d in ("i2t", "t2i"):
            got = [r.get(f"instance_{d}_recall@{k}_mean") for k in (1, 5, 10)]
            vals = [float(v) for v in got if v is not None]
            if len(vals) != len(got):
                return None
            cells.append(" / ".join(f"{100 * v:.1f}" for v in vals))
        rows.append(cells)
    if not rows:
        return None
    head = ["method", "shots", "I2T R@1 / 5 / 10", "T2I R@1 / 5 / 10"]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [] if title is None else [title, ""]
    lines += [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + [fmt(row) for row in rows])


def format_study_table(summary: list[dict[str, Any]], methods: list[str] | None = None, key: str = "mean_map") -> str:
    """A Markdown table with one row per method and one column per shot value: ``key`` (e.g.
    ``mean_map``, ``i2t_map``) in percent as mean ± std over seeds, plus the validation mAP
    (mean over shots and seeds) used for choices."""
    shots = sorted({r["shots"] for r in summary})
    order = methods or list(dict.fromkeys(r["method"] for r in summary))
    by = {(r["method"], r["shots"]): r for r in summary}
    head = ["method"] + [f"{s}-shot" for s in shots] + ["val mAP"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in order:
        cells = [f"`{m}`"]
        vals = []
        for s in shots:
            r = by.get((m, s))
            cells.append(_pm(r[f"{key}_mean"], r[f"{key}_std"]).strip() if r else "–")
            if r and "val_map_mean" in r:
                vals.append(r["val_map_mean"])
        cells.append(f"{100 * sum(vals) / len(vals):.1f}" if vals else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
