"""NUS-WIDE ``source="lowlevel"``: the release's ``Low_Level_Features/*.dat`` and 1000-d tag vectors."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ....errors import ConfigError, DataError, format_list
from ...features import FeatureSet, ModalityFeatures
from ...problems import Problems
from ...types import Sample
from ..build import RawDataset
from .common import LOW_LEVEL, TAG_VECTORS, TAG_VECTORS_SPLIT, Subset
from .release import Release, ReleaseRead, read_release, release_dataset

_DAT_SPLIT = (
    re.compile(r"^(train|test)_(.+)$", re.I),  # Train_Normalized_CH
    re.compile(r"^(.+)_(train|test)$", re.I),  # Normalized_CH_Train
    re.compile(r"^(.+)_(train|test)_(.+)$", re.I),  # BoW_Train_int
)


def _feature_name(stem: str) -> str:
    """The low-level feature a file stem or a ``low_level=`` entry names: ``Normalized_CH`` and
    ``ch`` → ``CH``; an unknown name as given (without ``Normalized_``)."""
    stem = re.sub(r"^normalized_", "", stem.strip(), flags=re.I)
    canonical = {k.lower(): k for k in LOW_LEVEL}
    return canonical.get(stem.lower(), stem)


def _dat_name(path: Path) -> tuple[str, str | None]:
    """``(feature name, split or None)`` of a low-level ``.dat`` file: ``Normalized_CH.dat`` →
    ``("CH", None)``, ``Train_Normalized_EDH.dat`` → ``("EDH", "train")``, ``BoW_Train_int.dat``
    → ``("BoW_int", "train")``."""
    stem, split = path.stem, None
    if m := _DAT_SPLIT[0].match(stem):
        split, stem = m.group(1).lower(), m.group(2)
    elif m := _DAT_SPLIT[1].match(stem):
        stem, split = m.group(1), m.group(2).lower()
    elif m := _DAT_SPLIT[2].match(stem):
        stem, split = f"{m.group(1)}_{m.group(3)}", m.group(2).lower()
    return _feature_name(stem), split


def _read_matrix(path: Path, expected: int, list_path: Path) -> np.ndarray:
    """A text matrix of ``expected`` rows (one row a line, numbers separated by white space,
    ``\n`` or ``\r\n``; blank lines are not rows) as float32, parsed by numpy's C reader
    (``numpy.loadtxt``): a 1 GB file costs about its float32 result in memory
    (benchmarks/bench_lowlevel_read.py). A malformed line is named by its number."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the row count says it
            m = np.loadtxt(path, dtype=np.float32, ndmin=2, comments=None, max_rows=expected + 1, encoding="utf-8-sig")
    except ValueError as exc:
        _bad_line(path)
        raise DataError(f"NUS-WIDE: {path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"NUS-WIDE: cannot read {path}: {exc}") from None
    if m.shape[0] != expected:
        has = f"more than {expected}" if m.shape[0] > expected else str(m.shape[0])
        raise DataError(
            f"NUS-WIDE: {path} has {has} lines but {list_path} lists {expected} "
            f"images; line i of {path.name} must be image i of {list_path.name}."
        )
    return m


def _bad_line(path: Path) -> None:
    """Raise a :class:`DataError` naming the first line of ``path`` whose numbers cannot be read
    or whose count differs from the first line's (the slow path, after the fast reader failed)."""
    width = None
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for ln, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens:
                continue
            width = len(tokens) if width is None else width
            if len(tokens) != width:
                raise DataError(
                    f"NUS-WIDE: {path} line {ln} has {len(tokens)} numbers but the first line has {width}; "
                    "every line must hold one image's vector."
                )
            for tok in tokens:
                try:
                    float(tok)
                except ValueError:
                    raise DataError(f"NUS-WIDE: {path} line {ln}: {tok[:20]!r} is not a number.") from None


def _release_matrix(whole: Path | None, parts: dict[str, Path], rel: Release, what: str) -> tuple[np.ndarray, str]:
    """One matrix in Imagelist row order, from a whole-list file or from its train/test files."""
    n = len(rel.entries)
    if whole is not None:
        return _read_matrix(whole, n, rel.all_path), whole.name
    if set(parts) != {"train", "test"}:
        have = ", ".join(p.name for p in parts.values())
        raise DataError(f"NUS-WIDE: {what}: found {have} but not its {'test' if 'train' in parts else 'train'} part.")
    out: np.ndarray | None = None
    for split in ("train", "test"):
        lp, rows = rel.lists[split]
        m = _read_matrix(parts[split], len(rows), lp)
        if out is None:
            out = np.zeros((n, m.shape[1]), dtype=np.float32)
        elif m.shape[1] != out.shape[1]:
            raise DataError(f"NUS-WIDE: {parts['train'].name} has {out.shape[1]} columns but {parts['test'].name} has {m.shape[1]}.")
        out[rows] = m
    assert out is not None
    return out, f"{parts['train'].name} + {parts['test'].name}"


def _feature_files(low_dir: Path, wanted_low: list[str] | None) -> tuple[dict[str, dict[str | None, Path]], list[str]]:
    """The ``.dat`` files of each low-level feature (whole, or by split) and the features to
    read, in the release's order (or as ``low_level=`` names them)."""
    found: dict[str, dict[str | None, Path]] = {}
    for p in sorted(low_dir.iterdir()):
        if p.is_file() and p.suffix.lower() == ".dat":
            name, split = _dat_name(p)
            found.setdefault(name, {})[split] = p
    if not found:
        raise DataError(f"NUS-WIDE source 'lowlevel': {low_dir} holds no .dat feature file (e.g. Normalized_CH.dat, BoW_int.dat).")
    order = [k for k in LOW_LEVEL if k in found] + sorted(k for k in found if k not in LOW_LEVEL)
    if wanted_low is None:
        return found, order
    lower = {k.lower(): k for k in found}
    unknown = [w for w in wanted_low if _feature_name(w).lower() not in lower]
    if unknown:
        raise ConfigError(f"NUS-WIDE low_level: {format_list(unknown)} not in {low_dir} (it has {', '.join(order)}).")
    return found, [lower[_feature_name(w).lower()] for w in wanted_low]


def _tag_vectors(root: Path, rel: Release) -> tuple[np.ndarray, str]:
    """The tag vectors (the text features) of the image list, and where from."""
    whole = next((root / c for c in TAG_VECTORS if (root / c).is_file()), None)
    split_files = {s: next((root / c for c in cands if (root / c).is_file()), None) for s, cands in TAG_VECTORS_SPLIT.items()}
    split_tags = {s: p for s, p in split_files.items() if p is not None}
    if whole is None and not split_tags:
        raise DataError(
            f"NUS-WIDE source 'lowlevel' needs the tag vectors (the text features): none of "
            f"{', '.join(str(root / c) for c in TAG_VECTORS[:2])} or {root / TAG_VECTORS_SPLIT['train'][0]} + "
            f"{root / TAG_VECTORS_SPLIT['test'][0]} exists."
        )
    return _release_matrix(whole, split_tags, rel, "the tag vectors")


def read_lowlevel(root: Path, low_dir: Path, wanted_low: list[str] | None, subset: Subset) -> RawDataset:
    """Source ``lowlevel``: the release's lists and labels with its low-level image features
    (joined) and tag vectors."""
    rel = read_release(root, subset, "lowlevel")
    found, order = _feature_files(low_dir, wanted_low)
    blocks, read_from = [], []
    for name in order:
        files = found[name]
        m, how = _release_matrix(files.get(None), {s: p for s, p in files.items() if s is not None}, rel, f"low-level feature {name}")
        blocks.append(m)
        read_from.append(how)
    text, text_from = _tag_vectors(root, rel)
    read = ReleaseRead([], Problems(f"NUS-WIDE ({low_dir})"), [], "have an all-zero tag vector", {})
    rows: list[int] = []
    has_tags = np.asarray(text.any(axis=1))
    for r in np.flatnonzero(rel.keep).tolist():
        sid = rel.sample_id(r)
        bad = rel.row_problems(r, read.problems)
        if not has_tags[r]:
            if not bad:  # e.g. an image in neither split list has no row in the Train_/Test_ files: reported, not counted
                read.without_tags.append(sid)
            continue
        read.samples.append(Sample(id=sid, text=None, labels=rel.labels(r), split=rel.split_of[r] or "train"))
        rows.append(r)
    if not read.samples:
        raise DataError(f"NUS-WIDE: no image of {rel.all_path} is in the subset ({rel.how}: {format_list(rel.chosen_names)}) with tags.")
    idx = np.asarray(rows)
    widths = [b.shape[1] for b in blocks]
    image = np.empty((len(idx), sum(widths)), dtype=np.float32)  # the kept rows only: no full-size copy
    for k, b in enumerate(blocks):
        image[:, sum(widths[:k]) : sum(widths[: k + 1])] = b[idx]
    blocks.clear()
    read.features = FeatureSet(
        ModalityFeatures.from_array(image, name="NUS-WIDE low-level image features"),
        ModalityFeatures.from_array(text[idx], name="NUS-WIDE tag vectors"),
        tuple(s.id for s in read.samples),
        {"source": str(low_dir)},
    )
    read.meta = {
        "recognised": (
            f"the official release with its low-level features: {rel.all_path.name} + {rel.labels_from}; image features "
            + " + ".join(f"{n} ({h}, {w}-d)" for n, h, w in zip(order, read_from, widths))
            + f"; text features {text_from} ({text.shape[1]}-d)"
        ),
        "low_level": order,
        "low_level_files": read_from,
        "tag_vectors": text_from,
    }
    return release_dataset(root, rel, subset, "lowlevel", read)
