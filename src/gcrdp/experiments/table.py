"""The printed results table (percentages, mean ± std over seeds)."""

from __future__ import annotations

from typing import Any


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:5.1f} ± {100 * std:4.1f}"


def format_table(summary: list[dict[str, Any]], title: str | None = None) -> str:
    """A Markdown table: one row per (method, shots) with I2T, T2I and mean mAP@all in percent
    (mean ± sample std over seeds) and the chance level (class prior) beside them."""
    head = ["method", "shots", "seeds", "I2T mAP", "T2I mAP", "mean mAP", "chance"]
    rows = []
    for r in sorted(summary, key=lambda r: (r["shots"], r["method"])):
        rows.append([
            r["method"], str(r["shots"]), str(r["n_seeds"]),
            _pm(r["i2t_map_mean"], r["i2t_map_std"]), _pm(r["t2i_map_mean"], r["t2i_map_std"]),
            _pm(r["mean_map_mean"], r["mean_map_std"]),
            f"{100 * (r['chance_i2t_mean'] + r['chance_t2i_mean']) / 2:5.1f}",
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [] if title is None else [title, ""]
    lines += [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)
