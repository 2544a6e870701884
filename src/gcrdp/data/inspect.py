"""What ``gcrdp inspect`` reports about a dataset: samples per split and class, the class split,
feature dimensions, text lengths and the problems found.

:func:`summarize_dataset` returns a JSON-ready dict; :func:`format_summary` renders it as text.
Beyond what the loader already refuses, the summary warns about what makes the few-shot
protocol weak or impossible or looks like a mistake (:mod:`gcrdp.data.checks`): classes with
fewer items than the protocol needs at ``shots`` shots (``gcrdp run`` stops on these), labels
that look like typos of others, seen classes without train pairs, duplicate texts, images with
identical bytes, tiny or huge images, identical feature rows, missing image files.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .checks import class_split_problems, duplicate_images, image_size_problems, near_duplicate_labels, small_classes
from .types import Dataset, Sample, split_label

SHOTS_CHECKED = 5


def _stats(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"min": int(a.min()), "median": float(np.median(a)), "mean": round(float(a.mean()), 1), "max": int(a.max())}


def _modality(mf) -> dict[str, Any]:
    lengths = mf.mask.sum(axis=1)
    return {
        "local": list(mf.local.shape),
        "pooled_dim": mf.pooled_dim,
        "dtype": str(mf.local.dtype),
        "local_per_sample": _stats(lengths.tolist()),
        "pooled_only": bool(mf.local.shape[1] == 1),
    }


#: Groups of byte-identical images named in the warning (every group is in the JSON summary).
MAX_DUPLICATE_GROUPS = 20


def summarize_dataset(
    dataset: Dataset, *, check_files: bool = True, shots: int = SHOTS_CHECKED, protocol: str = "fewshot"
) -> dict[str, Any]:
    """The summary of ``dataset`` (see the module docstring); the class sizes are checked for
    ``shots`` shots under ``protocol`` (:func:`gcrdp.data.checks.small_classes`)."""
    samples = dataset.samples
    per_class = {c: {"train": 0, "test": 0} for c in dataset.classes}
    for s in samples:
        for lab in s.labels:
            per_class[lab][s.split] += 1
    out = _overview(dataset, per_class)
    warnings: list[str] = []
    images = [s.image for s in samples if s.image is not None]
    if images and check_files:
        missing = [str(p) for p in images if not p.is_file()]
        out["images"]["missing"] = len(missing)
        if missing:
            warnings.append(f"{len(missing)} image files do not exist (first: {missing[0]})")
    _check_classes(dataset, per_class, shots, protocol, out, warnings)
    texts = [s.text for s in samples if s.text is not None]
    if texts:
        dup = sum(c - 1 for c in Counter(texts).values() if c > 1)
        out["texts"]["duplicates"] = dup
        if dup:
            warnings.append(f"{dup} texts repeat an earlier one exactly")
    if images and check_files:
        _check_images(samples, out["images"], warnings)
    if dataset.features is not None:
        for name, mf in (("image", dataset.features.image), ("text", dataset.features.text)):
            rows = np.ascontiguousarray(mf.pooled).view(np.dtype((np.void, mf.pooled.dtype.itemsize * mf.pooled.shape[1])))
            dup = len(rows) - len(np.unique(rows))
            if dup:
                warnings.append(f"{dup} {name} feature rows repeat an earlier one exactly")
    out["warnings"] = warnings
    return out


def _overview(dataset: Dataset, per_class: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The counts, classes, class split, meta, texts, images and features of the summary."""
    samples = dataset.samples
    split = dataset.class_split
    out: dict[str, Any] = {
        "dataset": dataset.name,
        "n_samples": len(samples),
        "splits": dict(Counter(s.split for s in samples)),
        "n_classes": len(dataset.classes),
        "multilabel": dataset.is_multilabel,
        "labels_per_sample": _stats([len(s.labels) for s in samples]),
        "classes": per_class,
        "class_split": None
        if split is None
        else {
            "version": split.version,
            "n_seen": len(split.seen),
            "n_unseen": len(split.unseen),
            "seen": list(split.seen),
            "unseen": list(split.unseen),
            "source": dataset.meta.get("class_split_source"),
        },
        "meta": {k: v for k, v in dataset.meta.items() if k != "skipped"},
        "n_skipped": len(dataset.meta.get("skipped") or []),
    }
    texts = [s.text for s in samples if s.text is not None]
    out["texts"] = (
        None
        if not texts
        else {"n": len(texts), "words": _stats([len(t.split()) for t in texts]), "characters": _stats([len(t) for t in texts])}
    )
    images = [s.image for s in samples if s.image is not None]
    out["images"] = None if not images else {"n": len(images)}
    if dataset.features is not None:
        out["features"] = {"image": _modality(dataset.features.image), "text": _modality(dataset.features.text)}
    else:
        out["features"] = None
    return out


def _check_classes(
    dataset: Dataset, per_class: dict[str, dict[str, int]], shots: int, protocol: str, out: dict[str, Any], warnings: list[str]
) -> None:
    """Classes too small for ``shots``, labels written two ways, a class split that cannot serve
    ``protocol``, seen classes without train pairs, no train pairs at all."""
    small = small_classes(dataset, shots, protocol)
    out["small_classes"] = [sc.to_dict() for sc in small]
    out["shots_checked"] = shots
    for sc in small:
        warnings.append(f"{sc.describe()} ('gcrdp run' stops on this; --allow-small-classes runs anyway)")
    counts = {c: n["train"] + n["test"] for c, n in per_class.items()}
    near = near_duplicate_labels(dataset.classes, counts)
    out["near_duplicate_labels"] = [{"a": a, "n_a": na, "b": b, "n_b": nb, "why": why} for a, na, b, nb, why in near]
    for a, na, b, nb, why in near:
        warnings.append(f"labels {a!r} ({na} items) and {b!r} ({nb} items) differ only by {why}: one label written two ways?")
    split_problems = class_split_problems(dataset, protocol)
    out["class_split_problems"] = split_problems
    if split_problems:
        hint = (
            "another split_seed (the class split line names one that works)"
            if dataset.meta.get("class_split_generated")
            else "another class split file"
        )
        warnings.append(
            f"the class split cannot serve the {protocol} protocol: {'; '.join(split_problems)} ('gcrdp run' stops on this; {hint})"
        )
    split = dataset.class_split
    if split is not None:
        no_train_seen = [c for c in split.seen if per_class.get(c, {}).get("train", 0) == 0]
        if no_train_seen:
            warnings.append(f"{len(no_train_seen)} seen classes have no train pair: {', '.join(no_train_seen[:5])}")
    if not any(s.split == "train" for s in dataset.samples):
        warnings.append("no train pairs: this dataset can be evaluated but not trained on")


def _check_images(samples: list[Sample], out: dict[str, Any], warnings: list[str]) -> None:
    """Byte-identical images and tiny or huge ones (``out``: the summary's ``images`` entry)."""
    paths = [s.image for s in samples]
    groups = duplicate_images(paths)
    n_dup = sum(len(g) - 1 for g in groups)
    out["duplicates"] = n_dup
    out["duplicate_groups"] = [[samples[i].id for i in g] for g in groups]
    if n_dup:
        shown = "; ".join(" = ".join(repr(samples[i].id) for i in g) for g in groups[:MAX_DUPLICATE_GROUPS])
        more = f"; and {len(groups) - MAX_DUPLICATE_GROUPS} more groups (all in --json)" if len(groups) > MAX_DUPLICATE_GROUPS else ""
        warnings.append(f"{n_dup} images have the same bytes as an earlier one, in {len(groups)} group(s) of samples: {shown}{more}")
    sizes = image_size_problems(paths)
    out["size_problems"] = [{"sample": samples[i].id, "path": str(paths[i]), "reason": r} for i, r in sizes]
    for kind in ("tiny", "huge"):
        hit = [(i, r) for i, r in sizes if r.startswith(kind)]
        if hit:
            warnings.append(f"{len(hit)} images are {kind} (first: {samples[hit[0][0]].id!r}, {hit[0][1]})")


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text: a header, a per-class table, features/texts, warnings."""
    s = summary
    lines = [
        f"dataset {s['dataset']}: {s['n_samples']} samples "
        f"({', '.join(f'{k} {v}' for k, v in sorted(s['splits'].items()))}), {s['n_classes']} classes"
        + (", multi-label" if s["multilabel"] else "")
    ]
    meta = s["meta"]
    for key in ("source", "format", "features_file", "recognised"):
        if meta.get(key):
            lines.append(f"  {key}: {meta[key]}")
    if meta.get("concept_selection"):
        lines.append(f"  subset: {meta.get('subset')} ({meta.get('label_mode')}), {meta['concept_selection']}")
    for note in meta.get("notes") or []:
        lines.append(f"  note: {note}")
    if s["multilabel"] and s["labels_per_sample"]:
        st = s["labels_per_sample"]
        lines.append(f"  labels per sample: min {st['min']}, mean {st['mean']}, max {st['max']}")
    cs = s["class_split"]
    if cs:
        lines.append(f"  class split {split_label(cs['version'])}: {cs['n_seen']} seen, {cs['n_unseen']} unseen ({cs['source']})")
    unseen = set(cs["unseen"]) if cs else set()
    width = max([len(c) for c in s["classes"]] + [5])
    lines.append("")
    lines.append(f"  {'class':<{width}}  {'train':>6}  {'test':>6}  side")
    for c, n in s["classes"].items():
        side = "unseen" if c in unseen else ("seen" if cs else "")
        lines.append(f"  {c:<{width}}  {n['train']:>6}  {n['test']:>6}  {side}")
    lines.append("")
    f = s["features"]
    if f:
        for m in ("image", "text"):
            d = f[m]
            kind = "pooled-only (a set of one)" if d["pooled_only"] else f"{d['local'][1]} local max"
            lines.append(f"  {m} features: local {tuple(d['local'])} {d['dtype']}, pooled dim {d['pooled_dim']}, {kind}")
    else:
        lines.append("  features: extracted by the run's encoders (not pre-extracted)")
    t = s["texts"]
    if t:
        w = t["words"]
        lines.append(f"  texts: {t['n']}, words per text min {w['min']}, median {w['median']:g}, max {w['max']}")
    else:
        lines.append("  texts: none (pre-extracted text features only)")
    if s["images"]:
        miss = s["images"].get("missing")
        lines.append(f"  images: {s['images']['n']} files" + (f", {miss} missing" if miss else ""))
    if s["n_skipped"]:
        lines.append(f"  skipped bad samples: {s['n_skipped']} (--skip-bad)")
    if s["warnings"]:
        lines.append("")
        lines.append("problems found:")
        lines.extend(f"  - {w}" for w in s["warnings"])
    else:
        lines.append("")
        lines.append("problems found: none")
    return "\n".join(lines)
