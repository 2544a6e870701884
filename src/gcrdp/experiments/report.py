"""``gcrdp report``: results files → tables in the paper's layout (Markdown, CSV) and figures (PNG).

Input: any mix of ``results.json`` files of ``gcrdp run``/``train`` and grid run files of
``gcrdp experiment`` (folders are searched). Records are grouped by *dataset label* (the grid's
label, else the dataset name, with `` (standard)``/`` (generalized)`` appended for the other
protocols), method entry and shots; each cell is the mean ± sample std over seeds of mAP@all
in percent. A record that appears twice (the same dataset label, method, shots, seed) is an
error: two runs of one cell must not be averaged together silently.

Outputs (in ``--output`` DIR):

``results.md``
    per dataset label a table: rows = methods, columns = shots × (I2T, T2I, mean); the best
    mean per column in bold (ties: all bold); the number of seeds; the chance level.
``results.csv``
    one row per (dataset label, method, shots): n_seeds, I2T/T2I/mean mean and std (percent),
    validation mAP — the same numbers, for spreadsheets and other plots.
``results_wide.csv``
    the paper's layout in one table: rows = methods, columns = dataset × shots × I2T/T2I/mean.
``map_vs_shots_<dataset>.png``
    mean mAP against shots per method, with ± std bands.
``sensitivity_<param>_<dataset>.png``
    for variants of one method that differ from the plain entry in one option only (e.g.
    ``gcrdp@k5`` with ``n_components`` 5): mean mAP against that option's value, per shots.
``step_time.png`` (with ``--bench FILE`` from ``benchmarks/bench_train_step.py --json``)
    training-step time with and without the EM (GMM) module.
``embedding_map.png`` (with ``--embedding-map CHECKPOINT``)
    a t-SNE map of the test embeddings of a trained model, coloured by class, with the GMM
    views of a few samples (GCRDP models) joined to their global embedding.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, optional_import
from ..utils.io import atomic_write_bytes, atomic_write_text

PARAMS_PLOTTED = ("n_components", "rdp_threshold", "lam", "alpha", "temperature", "n_iter")


def dataset_label(results: dict[str, Any]) -> str:
    grid = results.get("grid") or {}
    if grid.get("dataset_label"):
        return str(grid["dataset_label"])
    cfg = results["config"]
    proto = cfg.get("protocol", "fewshot")
    return cfg["dataset"] + ("" if proto == "fewshot" else f" ({proto})")


def gather(results_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat records with ``dataset`` set to the dataset label; duplicates are an error."""
    out: list[dict[str, Any]] = []
    seen: dict[Any, Any] = {}
    for res in results_list:
        label = dataset_label(res)
        for rec in res["records"]:
            key = (label, rec["method"], rec["shots"], rec["seed"])
            if key in seen:
                raise DataError(
                    f"Two results for {key[0]} / {key[1]} / shots={key[2]} / seed={key[3]}: "
                    f"{seen[key]} and {res.get('_path')}. Report each cell once."
                )
            seen[key] = res.get("_path")
            out.append({**rec, "dataset": label})
    return out


def _ms(values: list[float]) -> tuple[float, float]:
    a = 100 * np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, method, shots): n_seeds and mean/std (percent) of I2T, T2I, mean mAP,
    validation mAP, chance, fit seconds."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"], r["shots"]), []).append(r)
    rows = []
    for (ds, m, s), rs in groups.items():
        row: dict[str, Any] = {
            "dataset": ds,
            "method": m,
            "shots": s,
            "n_seeds": len(rs),
            "seeds": sorted(r["seed"] for r in rs),
            "protocol": rs[0].get("split", {}).get("protocol", "fewshot"),
        }
        for key, get in (
            ("i2t", lambda r: r["test"]["i2t"]["map"]),
            ("t2i", lambda r: r["test"]["t2i"]["map"]),
            ("mean", lambda r: r["test"]["mean_map"]),
        ):
            row[f"{key}_mean"], row[f"{key}_std"] = _ms([get(r) for r in rs])
        vals = [r["fit"]["best_val_map"] for r in rs if r.get("fit", {}).get("best_val_map") is not None]
        row["val_mean"] = _ms(vals)[0] if vals else None
        row["chance"] = _ms([(r["chance"]["i2t"] + r["chance"]["t2i"]) / 2 for r in rs])[0]
        row["fit_seconds"] = float(np.mean([r["fit"]["seconds"] for r in rs]))
        rows.append(row)
    return rows


def _order(values, preferred=None):
    seen = list(dict.fromkeys(values))
    if preferred:
        return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]
    return seen


def markdown_tables(rows: list[dict[str, Any]], methods: list[str] | None = None, datasets: list[str] | None = None) -> str:
    """One Markdown table per dataset (see the module docstring)."""
    parts = []
    for ds in _order([r["dataset"] for r in rows], datasets):
        sub = [r for r in rows if r["dataset"] == ds]
        shots = sorted({r["shots"] for r in sub})
        ms = _order([r["method"] for r in sub], methods)
        by = {(r["method"], r["shots"]): r for r in sub}
        best: dict[tuple[int, str], float] = {}
        for s in shots:
            for k in ("i2t", "t2i", "mean"):
                vals = [by[(m, s)][f"{k}_mean"] for m in ms if (m, s) in by]
                best[(s, k)] = max(vals) if vals else math.nan
        standard = all(r.get("protocol") == "standard" for r in sub)
        head = ["method"] + [(f"{k}" if standard else f"{s}-shot {k}") for s in shots for k in ("I2T", "T2I", "mean")] + ["seeds"]
        lines = [f"### {ds}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in ms:
            cells = [f"`{m}`"]
            n = set()
            for s in shots:
                r = by.get((m, s))
                for k in ("i2t", "t2i", "mean"):
                    if r is None:
                        cells.append("–")
                        continue
                    text = f"{r[f'{k}_mean']:.1f} ± {r[f'{k}_std']:.1f}"
                    if round(r[f"{k}_mean"], 1) == round(best[(s, k)], 1):
                        text = f"**{text}**"
                    cells.append(text)
                if r is not None:
                    n.add(r["n_seeds"])
            cells.append("/".join(map(str, sorted(n))))
            lines.append("| " + " | ".join(cells) + " |")
        chance = {s: next((by[(m, s)]["chance"] for m in ms if (m, s) in by), math.nan) for s in shots}
        lines.append("")
        lines.append(
            "Chance (class prior): "
            + ", ".join((f"{chance[s]:.1f}" if standard else f"{s}-shot {chance[s]:.1f}") for s in shots)
            + ". mAP@all in %, mean ± std over seeds; bold: best per column."
        )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    cols = [
        "dataset",
        "method",
        "shots",
        "n_seeds",
        "i2t_mean",
        "i2t_std",
        "t2i_mean",
        "t2i_std",
        "mean_mean",
        "mean_std",
        "val_mean",
        "chance",
        "fit_seconds",
    ]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in sorted(rows, key=lambda r: (r["dataset"], r["method"], r["shots"])):
        w.writerow([r[c] if not isinstance(r[c], float) else f"{r[c]:.4f}" for c in cols])
    return buf.getvalue()


def wide_csv_text(rows: list[dict[str, Any]], methods: list[str] | None = None) -> str:
    """The paper's layout as one table: a row per method, a column per dataset × shots ×
    (I2T, T2I, mean), cells ``mean ± std`` (percent); ``–`` where a method was not run."""
    datasets = _order([r["dataset"] for r in rows])
    cols = [(d, s) for d in datasets for s in sorted({r["shots"] for r in rows if r["dataset"] == d})]
    by = {(r["dataset"], r["method"], r["shots"]): r for r in rows}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method"] + [f"{d} {s}-shot {k}" for d, s in cols for k in ("I2T", "T2I", "mean")])
    for m in _order([r["method"] for r in rows], methods):
        cells = [m]
        for d, s in cols:
            r = by.get((d, m, s))
            cells += [f"{r[f'{k}_mean']:.1f} ± {r[f'{k}_std']:.1f}" if r else "–" for k in ("i2t", "t2i", "mean")]
        w.writerow(cells)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ figures
def _plt():
    mpl = optional_import("matplotlib", "plots", "Figures of gcrdp report")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "dataset"


def plot_map_vs_shots(rows: list[dict[str, Any]], out_dir: Path, methods: list[str] | None = None) -> list[Path]:
    plt = _plt()
    paths = []
    for ds in _order([r["dataset"] for r in rows]):
        sub = [r for r in rows if r["dataset"] == ds]
        shots = sorted({r["shots"] for r in sub})
        if len(shots) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in _order([r["method"] for r in sub], methods):
            pts = sorted((r["shots"], r["mean_mean"], r["mean_std"]) for r in sub if r["method"] == m)
            x, y, e = (np.array(v) for v in zip(*pts))
            ax.plot(x, y, marker="o", label=m)
            ax.fill_between(x, y - e, y + e, alpha=0.15)
        ax.set_xticks(shots)
        ax.set_xlabel("shots per unseen class")
        ax.set_ylabel("mean of I2T and T2I mAP@all (%)")
        ax.set_title(ds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / f"map_vs_shots_{_slug(ds)}.png"))
    return paths


def sensitivity_series(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[Any, dict[int, list[float]]]]:
    """``{(dataset, base method, param): {value: {shots: [mean mAP per seed]}}}`` over the
    variants of a method that differ from its plain entry (the entry named like the method,
    e.g. ``gcrdp``) in one option of :data:`PARAMS_PLOTTED` only; the plain entry adds its own
    value of that option."""
    from ..training.config import identity_options

    base_cfg: dict[tuple[str, str], dict] = {}
    for r in records:
        if "@" not in r["method"]:
            base_cfg[(r["dataset"], r["method"])] = r["method_config"]
    out: dict = {}
    for r in records:
        base = r["method"].split("@", 1)[0]
        ref = base_cfg.get((r["dataset"], base))
        if "@" not in r["method"] or ref is None:
            continue
        a, b = identity_options(ref), identity_options(r["method_config"])  # options added later, at their default: absent
        diff = [k for k in set(a) | set(b) if a.get(k) != b.get(k)]
        if len(diff) == 1 and diff[0] in PARAMS_PLOTTED:
            p = diff[0]
            out.setdefault((r["dataset"], base, p), {}).setdefault(r["method_config"][p], {}).setdefault(r["shots"], []).append(
                r["test"]["mean_map"]
            )
    for (ds, base, p), series in out.items():
        for r in records:
            if r["dataset"] == ds and r["method"] == base:
                series.setdefault(base_cfg[(ds, base)][p], {}).setdefault(r["shots"], []).append(r["test"]["mean_map"])
    return out


def plot_sensitivity(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    plt = _plt()
    paths = []
    for (ds, base, p), series in sorted(sensitivity_series(records).items()):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        values = sorted(series)
        for s in sorted({s for v in series.values() for s in v}):
            pts = [(v, *_ms(series[v][s])) for v in values if s in series[v]]
            if len(pts) < 2:  # e.g. shots only the plain entry was run at: no curve
                continue
            x, y, e = (np.array(t, dtype=float) for t in zip(*pts))
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=f"{s}-shot")
        ax.set_xlabel(p)
        ax.set_ylabel("mean mAP@all (%)")
        ax.set_title(f"{ds}: {base}, sensitivity to {p}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out_dir / f"sensitivity_{_slug(base)}_{p}_{_slug(ds)}.png"))
    return paths


def plot_step_time(bench: dict[str, Any], out_dir: Path) -> Path:
    """Box plot of the per-step times (ms) of ``benchmarks/bench_train_step.py --json``."""
    plt = _plt()
    try:
        gap, gmm = bench["times_ms"]["gap"], bench["times_ms"]["gmm"]
    except (KeyError, TypeError):
        raise DataError(
            "The --bench file must be the JSON of benchmarks/bench_train_step.py --json (keys times_ms.gap, times_ms.gmm)."
        ) from None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.boxplot([gap, gmm], showfliers=True)
    ax.set_xticks([1, 2], ["without EM\n(GAP)", f"with EM\n(GMM, K={bench.get('n_components', 3)})"])
    ax.set_ylabel("training step (ms)")
    ratio = float(np.median(gmm) / np.median(gap))
    ax.set_title(f"batch {bench.get('batch')}, {bench.get('threads')} threads: ratio {ratio:.2f}")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out_dir / "step_time.png")


def plot_embedding_map(
    method: Any,
    features: Any,
    labels: np.ndarray,
    class_names: list[str],
    out_path: Path,
    *,
    n_view_samples: int = 4,
    seed: int = 0,
    max_points: int = 1500,
) -> Path:
    """t-SNE of the image and text embeddings of ``features`` (rows = test pairs), coloured by
    each pair's first class; for a GCRDP model, the K views of ``n_view_samples`` images are
    placed in the same map and joined to their global embedding."""
    plt = _plt()
    from sklearn.manifold import TSNE

    n = len(features)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, max_points // 2), replace=False))
    sub = features.subset(idx)
    img = method.embed_images(sub.image)
    txt = method.embed_texts(sub.text)
    views = None
    model = getattr(method, "model_", None)
    if model is not None and hasattr(model, "encode_image") and getattr(getattr(method, "cfg", None), "use_gmm", False):
        import torch

        pick = np.arange(min(n_view_samples, len(idx)))
        with torch.inference_mode():
            loc = torch.from_numpy(np.asarray(sub.image.local[pick], np.float32))
            msk = torch.from_numpy(sub.image.mask[pick])
            v, _, _ = model.encode_image(loc.to(method.device), msk.to(method.device))
            views = v.float().cpu().numpy()  # (S, K, D)
    pts = [img, txt] + ([views.reshape(-1, views.shape[-1])] if views is not None else [])
    allp = np.concatenate(pts).astype(np.float64)
    allp /= np.linalg.norm(allp, axis=1, keepdims=True) + 1e-12
    perplexity = float(min(30, max(5, (len(allp) - 1) / 4)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine").fit_transform(allp)
    k = len(idx)
    lab = labels[idx].argmax(axis=1) if labels.ndim == 2 else labels[idx]
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(7, 6))
    classes = sorted(set(lab.tolist()))
    for j, c in enumerate(classes):
        m = lab == c
        color = cmap(j % 20)
        ax.scatter(xy[:k][m, 0], xy[:k][m, 1], s=10, color=color, marker="o", label=class_names[c] if c < len(class_names) else str(c))
        ax.scatter(xy[k : 2 * k][m, 0], xy[k : 2 * k][m, 1], s=12, color=color, marker="x")
    if views is not None:
        K = views.shape[1]
        vxy = xy[2 * k :].reshape(-1, K, 2)
        for s in range(vxy.shape[0]):
            for q in range(K):
                ax.plot([xy[s, 0], vxy[s, q, 0]], [xy[s, 1], vxy[s, q, 1]], color="black", lw=0.6, alpha=0.6)
            ax.scatter(vxy[s, :, 0], vxy[s, :, 1], s=40, color="black", marker="^")
    ax.set_title("test embeddings (t-SNE): o image, x text" + (", ▲ GMM views of 4 images" if views is not None else ""))
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= 20:
        ax.legend(fontsize=6, markerscale=1.5, loc="best", ncol=2)
    return _save(fig, out_path)


def write_report(
    results_list: list[dict[str, Any]],
    out_dir: str | Path,
    *,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    plots: bool = True,
    bench: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``results.md``, ``results.csv`` and the figures into ``out_dir``; return the paths
    and the aggregated rows."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--output {out_dir} exists and is not a folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = gather(results_list)
    rows = aggregate(records)
    if methods:  # the methods shown in the tables and the mAP curves (sensitivity uses every run)
        missing = sorted(set(methods) - {r["method"] for r in rows})
        if missing:
            raise ConfigError(f"--methods {missing} have no results; the results have {sorted({r['method'] for r in rows})}.")
        rows = [r for r in rows if r["method"] in methods]
    md = markdown_tables(rows, methods, datasets)
    atomic_write_text(out_dir / "results.md", md)
    atomic_write_text(out_dir / "results.csv", csv_text(rows))
    atomic_write_text(out_dir / "results_wide.csv", wide_csv_text(rows, methods))
    written: list[Path] = [out_dir / "results.md", out_dir / "results.csv", out_dir / "results_wide.csv"]
    if plots:
        written += plot_map_vs_shots(rows, out_dir, methods)
        written += plot_sensitivity(records, out_dir)
        if bench is not None:
            written.append(plot_step_time(bench, out_dir))
    return {"files": [str(p) for p in written], "rows": rows, "markdown": md}
