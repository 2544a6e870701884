"""NUS-WIDE: the official release's image lists, concept list and label files, and the subset they give."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ....errors import ConfigError, DataError, format_list
from ...features import FeatureSet
from ...problems import Problems
from ...types import Sample
from ..build import RawDataset
from .common import ALL_LABELS, CONCEPT_FILES, IMAGE_LISTS, TRAIN_TEST_LABELS, Subset, filter_rows, select_concepts


def find_file(root: Path, candidates: Sequence[str], what: str, source: str = "raw") -> Path:
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise DataError(f"NUS-WIDE source {source!r} needs {what}: none of {', '.join(str(root / c) for c in candidates)} exists.")


def read_lines(path: Path, fallback: bool = False) -> tuple[list[str], int]:
    """Lines of a text file (``\\r\\n`` or ``\\n``; trailing empty lines dropped) and how many
    were read as Latin-1 because they are not UTF-8 (``fallback``; else such a file is an
    error)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"NUS-WIDE: cannot read {path}: {exc}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    n_latin1 = 0
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        if not fallback:
            raise DataError(f"NUS-WIDE: {path} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}).") from None
        lines = []
        for b in raw.split(b"\n"):
            try:
                lines.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(b.decode("latin-1"))
                n_latin1 += 1
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines, n_latin1


def _norm(entry: str) -> str:
    parts = [p for p in entry.strip().replace("\\", "/").split("/") if p and p != "."]
    return "/".join(parts[-2:])


def _image_list(path: Path) -> list[str]:
    lines, _ = read_lines(path)
    out = []
    for ln, line in enumerate(lines, start=1):
        e = _norm(line)
        if not e:
            raise DataError(
                f"NUS-WIDE: {path} line {ln} is empty; every line must name one image "
                "(the label and tag files follow the rows of this list)."
            )
        out.append(e)
    return out


def _label_file(path: Path, expected: int, list_path: Path) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``(0/1 int8 column, [(row, bad value), …])`` of one ``Labels_*.txt``."""
    if not path.is_file():
        raise DataError(f"NUS-WIDE: label file not found: {path}")
    lines, _ = read_lines(path)
    if len(lines) != expected:
        raise DataError(
            f"NUS-WIDE: {path} has {len(lines)} lines but {list_path} lists {expected} "
            f"images; line i of {path.name} must be image i of {list_path.name}."
        )
    vals = np.array([ln.strip() for ln in lines], dtype=object)
    one = vals == "1"
    bad = np.flatnonzero(~(one | (vals == "0")))
    return one.astype(np.int8), [(int(i), str(vals[i])) for i in bad]


def _concept_names(root: Path) -> tuple[list[str], str]:
    for rel in CONCEPT_FILES:
        p = root / rel
        if p.is_file():
            names = [ln.strip() for ln in read_lines(p)[0] if ln.strip()]
            dup = sorted({c for c in names if names.count(c) > 1})
            if dup or not names:
                raise DataError(f"NUS-WIDE: {p} lists {format_list(dup)} twice." if dup else f"NUS-WIDE: {p} is empty.")
            return names, str(p)
    for rel, suffix in ((ALL_LABELS, ".txt"), (TRAIN_TEST_LABELS, "_Train.txt")):
        d = root / rel
        if d.is_dir():
            names = sorted(p.name[len("Labels_") : -len(suffix)] for p in d.glob(f"Labels_*{suffix}"))
            if names:
                return names, f"label file names in {d}"
    raise DataError(
        f"NUS-WIDE source 'raw' needs the concept list: none of "
        f"{', '.join(str(root / c) for c in CONCEPT_FILES)} exists (and no label files "
        f"in {root / ALL_LABELS} or {root / TRAIN_TEST_LABELS})."
    )


@dataclass
class Release:
    """The lists and labels of the official release, with the subset chosen."""

    all_path: Path
    entries: list[str]
    split_of: list[str]
    lists: dict[str, tuple[Path, list[int]]]
    names_from: str
    labels_from: str
    counts: dict[str, int]
    chosen_names: list[str]
    how: str
    pos: np.ndarray
    keep: np.ndarray
    bad_vals: dict[tuple[int, int], str]
    chosen: list[int]

    def sample_id(self, r: int) -> str:
        e = self.entries[r]
        return e.rsplit(".", 1)[0] if "." in e.rsplit("/", 1)[-1] else e

    def where(self, r: int) -> str:
        return f"{self.all_path.name} line {r + 1}"

    def row_problems(self, r: int, problems: Problems) -> bool:
        """Add row ``r``'s problems (unreadable label values, in neither split list); whether any."""
        sid, where = self.sample_id(r), self.where(r)
        found = False
        for j in self.chosen:
            if (r, j) in self.bad_vals:
                problems.add(where, self.bad_vals[(r, j)], sid)
                found = True
        if not self.split_of[r]:
            problems.add(where, f"{self.entries[r]!r} is in neither {self.lists['train'][0].name} nor {self.lists['test'][0].name}", sid)
            found = True
        return found

    def labels(self, r: int) -> tuple[str, ...]:
        got = tuple(self.chosen_names[k] for k in np.flatnonzero(self.pos[r]))
        return got or (self.chosen_names[0],)


def read_release(root: Path, subset: Subset, source: str) -> Release:
    """The release's image list, its train/test lists, the labels of the concepts read and the
    subset's concepts and rows."""
    all_path = find_file(root, IMAGE_LISTS["all"], "the image list (ImageList/Imagelist.txt)", source)
    entries = _image_list(all_path)
    index: dict[str, int] = {}
    for r, e in enumerate(entries):
        if e in index:
            raise DataError(f"NUS-WIDE: {all_path} lists {e!r} twice (lines {index[e] + 1} and {r + 1}).")
        index[e] = r
    split_of, lists = _split_lists(root, source, all_path, index)
    names, names_from = _concept_names(root)
    if subset.wanted is not None:
        unknown = [c for c in subset.wanted if c not in names]
        if unknown:
            raise ConfigError(f"NUS-WIDE: unknown concept(s) {format_list(unknown)}; {names_from} lists {format_list(names, limit=81)}.")
    read = subset.wanted if subset.wanted is not None else names
    lab, bad_vals, labels_from = _labels(root, source, read, all_path, lists, len(entries))
    uncertain_all = np.zeros(lab.shape, dtype=bool)
    for r, j in bad_vals:
        uncertain_all[r, j] = True
    counts = (lab == 1).sum(axis=0)
    chosen, how = select_concepts(read, counts, subset.wanted, subset.top, f"{len(entries)} images of {all_path.name}")
    if subset.wanted is not None:
        how = "given (concepts=)"
    pos = lab[:, chosen] == 1
    keep, _ = filter_rows(pos, uncertain_all[:, chosen].sum(axis=1), subset.mode)
    return Release(
        all_path,
        entries,
        split_of,
        lists,
        names_from,
        labels_from,
        {read[j]: int(counts[j]) for j in chosen},
        [read[j] for j in chosen],
        how,
        pos,
        keep,
        bad_vals,
        chosen,
    )


def _split_lists(root: Path, source: str, all_path: Path, index: dict[str, int]) -> tuple[list[str], dict[str, tuple[Path, list[int]]]]:
    """Each image's split (``""``: in neither list) and ``{split: (list file, rows)}``."""
    split_of = [""] * len(index)
    lists: dict[str, tuple[Path, list[int]]] = {}
    for split in ("train", "test"):
        lp = find_file(root, IMAGE_LISTS[split], f"the {split} image list (ImageList/{split.title()}Imagelist.txt)", source)
        rows: list[int] = []
        unknown: list[str] = []
        for ln, e in enumerate(_image_list(lp), start=1):
            row = index.get(e)
            if row is None:
                unknown.append(f"line {ln} {e!r}")
                continue
            if split_of[row]:
                other = lp.name if split_of[row] == split else lists["train"][0].name
                raise DataError(f"NUS-WIDE: {e!r} is listed twice: in {other} and in {lp.name}.")
            split_of[row] = split
            rows.append(row)
        if unknown:
            raise DataError(f"NUS-WIDE: {lp} lists {len(unknown)} image(s) that {all_path.name} does not: {format_list(unknown)}.")
        lists[split] = (lp, rows)
    return split_of, lists


def _labels(
    root: Path, source: str, read: list[str], all_path: Path, lists: dict[str, tuple[Path, list[int]]], n: int
) -> tuple[np.ndarray, dict[tuple[int, int], str], str]:
    """``(n, concepts) labels, {(row, concept): unreadable value}, where from`` — from the
    ``AllLabels`` files, else the ``TrainTestLabels`` ones."""
    lab = np.zeros((n, len(read)), dtype=np.int8)
    bad_vals: dict[tuple[int, int], str] = {}
    if (root / ALL_LABELS).is_dir():
        for j, c in enumerate(read):
            p = root / ALL_LABELS / f"Labels_{c}.txt"
            col, bad = _label_file(p, n, all_path)
            lab[:, j] = col
            for r, v in bad:
                bad_vals[(r, j)] = f"{p.name} line {r + 1}: {v!r} is not 0 or 1"
        return lab, bad_vals, ALL_LABELS
    if (root / TRAIN_TEST_LABELS).is_dir():
        for j, c in enumerate(read):
            for split in ("train", "test"):
                lp, rows = lists[split]
                p = root / TRAIN_TEST_LABELS / f"Labels_{c}_{split.title()}.txt"
                col, bad = _label_file(p, len(rows), lp)
                lab[rows, j] = col
                for i, v in bad:
                    bad_vals[(rows[i], j)] = f"{p.name} line {i + 1}: {v!r} is not 0 or 1"
        return lab, bad_vals, TRAIN_TEST_LABELS
    raise DataError(f"NUS-WIDE source {source!r} needs the labels: neither {root / ALL_LABELS} nor {root / TRAIN_TEST_LABELS} exists.")


@dataclass
class ReleaseRead:
    """What a source of the release (``raw``/``lowlevel``) read: the samples and their problems,
    the images of the subset left out for having no text (``untagged`` says how that showed),
    the source's own metadata and features."""

    samples: list[Sample]
    problems: Problems
    without_tags: list[str]
    untagged: str
    meta: dict[str, Any]
    features: FeatureSet | None = None


def release_dataset(root: Path, rel: Release, subset: Subset, source: str, read: ReleaseRead) -> RawDataset:
    """The dataset of the release's ``source``: the subset's metadata, then the source's."""
    used = {x for s in read.samples for x in s.labels}
    notes = [f"{len(read.without_tags)} images of the subset {read.untagged} (no text): left out, as the cross-modal benchmarks do"]
    meta = {
        "source": str(root.resolve()),
        "format": source,
        "subset": subset.key,
        "label_mode": "single-label" if subset.mode == "single" else "multi-label",
        "concepts": rel.chosen_names,
        "concept_selection": rel.how,
        "concept_counts": rel.counts,
        "concepts_without_images": [c for c in rel.chosen_names if c not in used],
        "concept_names": rel.names_from,
        "labels_from": rel.labels_from,
        "n_listed_images": len(rel.entries),
        "n_in_subset": int(rel.keep.sum()),
        "n_without_tags": len(read.without_tags),
        "without_tags": read.without_tags[:20],
        "notes": notes if read.without_tags else [],
        **read.meta,
    }
    classes = [c for c in rel.chosen_names if c in used]
    return RawDataset("nus-wide", read.samples, classes, read.problems, features=read.features, shipped_split="nus-wide", meta=meta)
