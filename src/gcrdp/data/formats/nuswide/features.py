"""NUS-WIDE ``source="features"``: feature files of public code (DCMH, Hu et al., DSCMR, one-file
subsets), read with :mod:`gcrdp.data.formats.featurearrays`."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ....errors import DataError, format_list
from ...problems import Problems
from ...types import Sample
from ..build import RawDataset
from ..featurearrays import NoFeatureFiles, collect_arrays, find_feature_files, read_parts
from ..featurerows import Rows, decode_rows, describe_form, feature_set, pairing_hint, read_class_names
from .common import CONCEPT_FILES, KNOWN_FILES, TC_FILE_TAG, TC_FILES, Subset, filter_rows, select_concepts
from .release import read_lines


def _concept_list(folders: Sequence[Path], n_classes: int) -> tuple[list[str] | None, str]:
    """Names from a concept list beside the files with one name per label column
    (``Concepts81.txt`` …, any ``*concept*.txt``), and where from (or why none)."""
    candidates: list[Path] = []
    for d in folders:
        candidates += [d / c for c in CONCEPT_FILES if (d / c).is_file()]
        if d.is_dir():
            candidates += sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".txt" and "concept" in p.name.lower())
    checked = []
    for p in dict.fromkeys(candidates):
        listed = [ln.strip() for ln in read_lines(p)[0] if ln.strip()]
        if len(listed) == n_classes and len(set(listed)) == len(listed):
            return listed, f"file {p}"
        checked.append(f"{p.name} lists {len(listed)}")
    why = f" ({'; '.join(checked)}, not {n_classes})" if checked else ""
    return None, f"label column numbers: the files carry no class names{why}; pass class_names= in the files' column order"


@dataclass(frozen=True)
class FeatureFiles:
    """The options of ``source="features"`` (see :func:`gcrdp.data.formats.nuswide.read_nuswide`)."""

    features_file: str | Path | Sequence[str | Path] | None = None
    keys: Mapping[str, str] | None = None
    class_names: Sequence[str] | str | Path | None = None
    test_size: int | None = None
    label_base: int | str = "auto"
    valid_split: str = "train"


def _refuse_dat(features_file: str | Path | Sequence[str | Path] | None) -> None:
    """The release's low-level ``.dat`` files are read by ``source='lowlevel'``."""
    given = list(features_file) if isinstance(features_file, (list, tuple)) else [features_file] if features_file is not None else []
    dat = [str(p) for p in given if str(p).lower().endswith(".dat")]
    if dat:
        raise DataError(
            f"NUS-WIDE: {format_list(dat)} are the release's low-level features (text .dat files): read them with "
            "source='lowlevel' (with the image lists and labels under root; low_level= picks the features), not features_file=."
        )


def _one_tc_subset(root: Path) -> None:
    """Without a subset nor files named: ``root`` must not hold the files of several TC subsets."""
    present: dict[str, list[str]] = {}  # TC subset → its files (one-file versions and DCMH sets)
    for d in (root, root / "features"):
        if d.is_dir():
            for p in sorted(d.iterdir()):
                m = TC_FILE_TAG.search(p.name)
                if m and p.is_file() and (p.name in TC_FILES.values() or re.search(r"[xyl]all", p.name, re.I)):
                    present.setdefault(m.group(1), []).append(p.name)
    if len(present) > 1:
        raise DataError(
            f"NUS-WIDE: {root} holds the files of {len(present)} subsets ("
            + "; ".join(f"TC-{t}: {', '.join(v)}" for t, v in sorted(present.items(), key=lambda kv: int(kv[0])))
            + f"); say which to read with subset={' or '.join(repr(f'tc{t}') for t in sorted(present, key=int))} "
            "(or name the files with features_file=)."
        )


def _find_files(root: Path, features_file: str | Path | Sequence[str | Path] | None, tag: str | None) -> tuple[list[Path], str]:
    """The feature files of the subset ``tag`` (or any), and how they were found."""
    others = [n for t, n in TC_FILES.items() if t != tag] if tag is not None else []
    known = ([TC_FILES[tag]] if tag in TC_FILES else list(TC_FILES.values()) if tag is None else []) + list(KNOWN_FILES)
    try:
        return find_feature_files(root, features_file, known=known, dataset="NUS-WIDE", tag=tag)
    except NoFeatureFiles:  # the other subset's one-file version, when nothing else is there
        if not others or features_file is not None:
            raise
        return find_feature_files(root, None, known=others, dataset="NUS-WIDE")


def _resolve_subset(subset: Subset, tags: list[str], files: list[Path], notes: list[str]) -> Subset:
    """The subset read from these files: unset → what they are (a TC benchmark, else multi);
    a TC subset asked of another benchmark's files is warned about (and noted)."""
    benchmark = f"NUS-WIDE-TC-{tags[0]}" if len(tags) == 1 else None
    tag = str(subset.top) if subset.top is not None else None
    if subset.key == "auto":
        key = f"tc{tags[0]}" if benchmark and subset.wanted is None else "multi"
        return Subset("multi", None, key, subset.wanted)
    if benchmark and subset.key in ("tc10", "tc21", "21") and tags != [tag] and subset.wanted is None:
        msg = (
            f"NUS-WIDE: subset={subset.key!r} asked for, but the files found are {benchmark} ({', '.join(p.name for p in files)}): "
            f"the {subset.top} of their concepts with the most pairs are used, with their pairs and split — not the published "
            f"NUS-WIDE-TC-{tag} files."
        )
        warnings.warn(msg, UserWarning, stacklevel=4)
        notes.append(msg)
    return subset


def _single_label_note(subset: Subset, n_kept: int, n: int, n_multi: int, tags: list[str]) -> str:
    """The warning of a single-label subset of files whose pairs carry several labels."""
    benchmark = f"NUS-WIDE-TC-{tags[0]}" if len(tags) == 1 else None
    return (
        f"NUS-WIDE: subset={subset.key!r} keeps the {n_kept} of {n} pairs that carry exactly one of the chosen "
        f"concepts (single-label); {n_multi} pairs of these files carry several labels. The published {benchmark or 'multi-label'} "
        f"benchmark (DCMH, DJSRH, UCCH) uses every pair, multi-label: leave subset unset"
        + (f" or pass subset='tc{tags[0]}'." if benchmark else " or pass subset='multi'.")
    )


def _subset_samples(rows: Rows, keep: np.ndarray, pos: np.ndarray, chosen_names: list[str], problems: Problems) -> list[Sample]:
    """The pairs of the subset, labelled with its concepts (their problems too)."""
    samples = []
    for i in np.flatnonzero(keep).tolist():
        for why in rows.reasons[i]:
            problems.add(rows.where[i], why, rows.ids[i])
        labels = tuple(chosen_names[k] for k in np.flatnonzero(pos[i]))
        samples.append(Sample(id=rows.ids[i], text=None, labels=labels or (chosen_names[0],), split=rows.splits[i]))
    return samples


def read_features(root: Path, opts: FeatureFiles, subset: Subset) -> RawDataset:
    """Source ``features``: feature files of public code, read with
    :mod:`gcrdp.data.formats.featurearrays`; the subset's concepts and pairs."""
    _refuse_dat(opts.features_file)
    tag = str(subset.top) if subset.top is not None else None
    if tag is None and opts.features_file is None:
        _one_tc_subset(root)
    files, found_as = _find_files(root, opts.features_file, tag)
    tags = sorted({m.group(1) for p in files if (m := TC_FILE_TAG.search(p.name))})
    src = collect_arrays(files)
    parts, layout = read_parts(src, keys=opts.keys, test_size=opts.test_size, dataset="NUS-WIDE")
    folders = list(dict.fromkeys([root, files[0].parent]))
    names, names_from = read_class_names(opts.class_names, src=src, folders=folders, dataset="NUS-WIDE")
    describe = f"NUS-WIDE {src.describe()}"
    rows = decode_rows(
        parts, describe=describe, n_names=len(names) if names else None, label_base=opts.label_base, valid_split=opts.valid_split
    )
    if rows.n_classes == 0:
        raise DataError(f"{describe}: no row has a valid class label.")
    if names is None:
        names, names_from = _concept_list(folders, rows.n_classes)
    names_all = names if names is not None else [str(j) for j in range(rows.n_classes)]
    n = len(rows.ids)
    matrix = np.zeros((n, rows.n_classes), dtype=bool)
    for i, labs in enumerate(rows.labels):
        matrix[i, list(labs)] = True
    counts = matrix.sum(axis=0)
    benchmark = f"NUS-WIDE-TC-{tags[0]}" if len(tags) == 1 else None
    notes: list[str] = []
    subset = _resolve_subset(subset, tags, files, notes)
    chosen, how = select_concepts(names_all, counts, subset.wanted, subset.top, f"{n} pairs of the feature files")
    if subset.wanted is None and subset.top is None:
        kind = "label columns" if rows.kind == "multi" else "classes"
        how = f"all {len(names_all)} {kind} of the files" + (
            f" (the published {benchmark} benchmark: every pair, multi-label)" if benchmark else ""
        )
    pos = matrix[:, chosen]
    keep, _ = filter_rows(pos, rows.bad_label.astype(int), subset.mode)
    n_multi = int((matrix.sum(axis=1) > 1).sum())
    if subset.mode == "single" and n_multi:
        msg = _single_label_note(subset, int(keep.sum()), n, n_multi, tags)
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(msg)
    chosen_names = [names_all[j] for j in chosen]
    problems = Problems(describe)
    samples = _subset_samples(rows, keep, pos, chosen_names, problems)
    if not samples:
        raise DataError(f"{describe}: no pair is in the subset ({how}: {format_list(chosen_names)}).")
    used = {x for s in samples for x in s.labels}
    recognised = describe_form(src, layout, found_as, parts)
    if benchmark:
        dcmh = any(re.search(r"[xyl]all", p.name, re.I) for p in files)
        recognised = f"{'DCMH ' if dcmh else ''}{benchmark} files; " + recognised
    meta = {
        "source": str(root.resolve()),
        "format": "features",
        "layout": layout,
        "recognised": recognised,
        "features_files": [str(p.resolve()) for p in files],
        "found_as": found_as,
        "arrays": {p.split: p.keys for p in parts},
        "subset": subset.key,
        "label_mode": "single-label" if subset.mode == "single" else "multi-label",
        "concepts": chosen_names,
        "concept_selection": how,
        "concept_counts": {names_all[j]: int(counts[j]) for j in chosen},
        "concepts_without_pairs": [c for c in chosen_names if c not in used],
        "class_names": names_from,
        "n_pairs_in_files": n,
        "n_pairs_with_several_labels": n_multi,
        "n_in_subset": int(keep.sum()),
        "notes": notes,
        **rows.meta,
    }
    return RawDataset(
        "nus-wide",
        samples,
        [c for c in chosen_names if c in used],
        problems,
        features=feature_set(rows, keep, "NUS-WIDE", src.describe()),
        shipped_split="nus-wide",
        meta=meta,
        hint=pairing_hint(rows),
    )
