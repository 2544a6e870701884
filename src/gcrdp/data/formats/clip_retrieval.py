"""Embeddings in the layout of the ``clip-retrieval`` tool: dataset ``clip-retrieval``
(import) and :func:`export_clip_retrieval` (export; a fitted method's embeddings of a dataset:
:func:`export_embeddings`).

``clip-retrieval inference`` (github.com/rom1504/clip-retrieval) writes an output folder of
aligned parts, which ``clip-retrieval index`` / autofaiss / embedding-reader read back::

    root/img_emb/img_emb_0.npy          (rows, d) image embeddings (float16, L2-normalised)
    root/text_emb/text_emb_0.npy        (rows, d) text embeddings of the captions
    root/metadata/metadata_0.parquet    one row per embedding row: image_path, caption, and
                                        the keys of the input's .json sidecars (e.g. url, key)
    …_1.npy / metadata_1.parquet …      part 1, and so on

Part ``i`` of the three folders holds the same rows, in the same order; the rows of the whole
folder are part 0, then part 1, … The writer zero-pads the part number to the number of digits
of the part count (``img_emb_00.npy`` … ``img_emb_11.npy`` for 12 parts; older versions wrote
``img_emb_0.npy`` … ``img_emb_11.npy``), and embedding-reader takes the files in sorted-name
order. ``image_path`` is ``str(path)`` of the image for a folder input and the sample key
(``__key__``) for a webdataset input, so it is not always a file (sources:
``clip_retrieval/clip_inference/writer.py`` ``OutputSink``, ``reader.py`` and the README
"Output folder will contain" section of rom1504/clip-retrieval; ``embedding_reader/
get_file_list.py`` of rom1504/embedding-reader).

Import (``load_dataset("clip-retrieval", root=...)``)
-----------------------------------------------------
* **Parts** are found by name (``img_emb_<n>.npy``, ``text_emb_<n>.npy``,
  ``metadata_<n>.parquet``; hidden and other files are ignored) and read in *numeric* order
  of ``<n>``, padded or not (``img_emb_10`` comes after ``img_emb_2``). The three folders must
  hold the same part numbers, each part's three files the same number of rows, and every
  part the same image and the same text dimension; otherwise a :class:`DataError` names the
  part and the counts. Both image and text embeddings are needed (``clip-retrieval
  inference --enable_text True``).
* **Features**: the embeddings become a pre-extracted, pooled-only :class:`FeatureSet` (a set
  of one feature per sample; nothing is encoded again). float16 parts stay float16, others
  become float32.
* **Metadata columns**: ``label_column`` (default ``label``, required) — a string (``"a|b"``
  is split on ``label_sep`` into several labels), a list of strings, or a number; several
  labels make the dataset multi-label. ``split_column`` (default ``split``) — ``train`` or
  ``test`` (case-insensitive), in every part or in none; when it is absent (and was not
  named explicitly), or ``split_column=None``, the split is generated per class as in the
  ``folder`` dataset (:func:`gcrdp.data.formats.folder.per_class_test_split`: per class — a sample's
  first label —
  sample ids ordered by ``sha256(f"{split_seed}\\0{class}\\0{id}")``, the first
  ``floor(test_fraction * n + 0.5)``, at least 1 when ``n >= 2`` and at most ``n - 1``, to
  test). ``id_column`` — the sample ids (default: the ``id`` column when there is one, else
  the row number in the whole folder, ``"0"``, ``"1"``, …, which is also the row id of a FAISS
  index built on the folder). ``caption`` — the text of each sample when present (an empty
  caption is no text). ``image_path`` — becomes ``Sample.image`` only when it names an
  existing file (absolute, or relative to ``root``); a webdataset key or a path on another
  machine leaves ``image=None`` (the embeddings are all the pipeline needs);
  ``meta["images_found"]`` counts the files found. A missing required column is a
  :class:`DataError` that lists the columns the part has.
* **Per-sample problems** (skippable with ``skip_bad=True``, see :mod:`gcrdp.data.problems`),
  each naming ``metadata_<n>.parquet row <r>``: a missing or empty label, a split that is not
  train/test, a missing id, NaN or infinite embedding values. Duplicate ids cannot be skipped.
* Classes are the sorted label names; the seen/unseen class split comes from
  ``class_split=`` or is generated (``seed=split_seed``).

Export
------
:func:`export_clip_retrieval` writes embeddings and metadata columns in this layout (part
names padded like clip-retrieval's, so that name order is row order for every reader), into
a hidden temporary sibling folder that is renamed into place at the end: ``out_dir`` is
either absent or complete. :func:`export_embeddings` embeds a dataset with a fitted method
and exports it with the columns ``id, caption, image_path, label, split``, which the import
reads back to the same ids, labels, split and embeddings.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, format_list, optional_import
from ...utils.io import fsync_dir
from ..features import FeatureSet, ModalityFeatures
from ..problems import Problems
from ..registry import load_dataset, register_reader
from ..types import SPLITS, Dataset, Sample
from .build import RawDataset, SeededSplit, check_test_fraction

FORMATS_EXTRA = "formats"
#: (folder, file prefix, extension) of the three aligned files of a part.
PART_FILES = (("img_emb", "img_emb", ".npy"), ("text_emb", "text_emb", ".npy"), ("metadata", "metadata", ".parquet"))
EXPORT_COLUMNS = ("id", "caption", "image_path", "label", "split")


def _pq():
    return optional_import("pyarrow.parquet", FORMATS_EXTRA, "Reading/writing clip-retrieval metadata (parquet)")


def _pa():
    return optional_import("pyarrow", FORMATS_EXTRA, "Reading/writing clip-retrieval metadata (parquet)")


# --------------------------------------------------------------------------- import
def find_parts(root: Path) -> list[tuple[int, Path, Path, Path]]:
    """``[(part number, img_emb file, text_emb file, metadata file)]`` in numeric order.

    Raises:
        DataError: a folder is missing or empty, two files have the same part number, or the
            folders hold different part numbers.
    """
    found: list[dict[int, Path]] = []
    for folder, prefix, ext in PART_FILES:
        d = root / folder
        if not d.is_dir():
            hint = (
                " Both image and text embeddings are needed: run clip-retrieval inference with --enable_text True."
                if folder == "text_emb"
                else ""
            )
            raise DataError(
                f"clip-retrieval folder {root}: no {folder}/ folder (expected {folder}/{prefix}_0{ext}, {prefix}_1{ext}, …).{hint}"
            )
        pattern = re.compile(rf"{re.escape(prefix)}_(\d+){re.escape(ext)}")
        parts: dict[int, Path] = {}
        for p in sorted(d.iterdir()):
            m = pattern.fullmatch(p.name)
            if m is None or not p.is_file():
                continue
            n = int(m.group(1))
            if n in parts:
                raise DataError(f"clip-retrieval folder {root}: {parts[n].name} and {p.name} are both part {n} of {folder}/; keep one.")
            parts[n] = p
        if not parts:
            raise DataError(f"clip-retrieval folder {root}: {folder}/ holds no {prefix}_<n>{ext} file.")
        found.append(parts)
    numbers = set(found[0]) | set(found[1]) | set(found[2])
    gaps = []
    for (folder, _prefix, _ext), parts in zip(PART_FILES, found):
        missing = sorted(numbers - set(parts))
        if missing:
            gaps.append(f"{folder}/ lacks part(s) {', '.join(map(str, missing[:10]))}")
    if gaps:
        raise DataError(f"clip-retrieval folder {root}: the three folders must hold the same parts: " + "; ".join(gaps) + ".")
    return [(n, found[0][n], found[1][n], found[2][n]) for n in sorted(numbers)]


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"Cannot read {path} as a .npy array ({exc}); pickled object arrays are not loaded.") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"Cannot read {path} as a .npy array: {exc}") from None
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: expected a (rows, d) array of numbers, got shape {arr.shape} dtype {arr.dtype}.")
    return arr


def _parquet_rows_and_columns(path: Path) -> tuple[int, list[str]]:
    pq = _pq()
    try:
        f = pq.ParquetFile(path)
        return int(f.metadata.num_rows), list(f.schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, …
        raise DataError(f"Cannot read {path} as a parquet file: {exc}") from None


def _read_columns(path: Path, columns: list[str]) -> dict[str, list]:
    pq = _pq()
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:
        raise DataError(f"Cannot read {path} as a parquet file: {exc}") from None
    return {c: table.column(c).to_pylist() for c in columns}


def _labels_of(value: Any, sep: str | None) -> tuple[str, ...]:
    """The label names in one metadata cell (empty tuple: none)."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple, np.ndarray)):
        out = [str(v).strip() for v in value if v is not None]
    elif isinstance(value, float):
        if not math.isfinite(value):
            return ()
        out = [str(int(value)) if value.is_integer() else str(value)]
    elif isinstance(value, bytes):
        out = [value.decode("utf-8", "replace").strip()]
    else:
        text = str(value).strip()
        out = [t.strip() for t in text.split(sep)] if sep else [text]
    return tuple(dict.fromkeys(v for v in out if v))


def _text_of(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@dataclass(frozen=True)
class _Columns:
    """The metadata columns asked for (see :func:`read_clip_retrieval`)."""

    label: str
    split: str | None
    id: str | None
    sep: str

    def wanted(self) -> list[str]:
        """The columns every part must have."""
        split_explicit = self.split is not None and self.split != "split"
        return [self.label] + ([self.id] if self.id is not None else []) + ([self.split] if split_explicit and self.split else [])


@dataclass
class _Part:
    """One part: its number, metadata file, rows, columns and embeddings."""

    n: int
    path: Path
    rows: int
    columns: list[str]
    image: np.ndarray
    text: np.ndarray


@dataclass
class _Reading:
    """What the metadata of the parts gave so far."""

    root: Path
    problems: Problems
    samples: list[Sample] = field(default_factory=list)
    split_in: dict[bool, list[int]] = field(default_factory=dict)  # has the split column? -> part numbers
    seen_ids: dict[str, str] = field(default_factory=dict)
    images_found: int = 0
    offset: int = 0


@register_reader("clip-retrieval")
def read_clip_retrieval(
    root: str | Path,
    *,
    label_column: str = "label",
    split_column: str | None = "split",
    id_column: str | None = None,
    label_sep: str = "|",
    test_fraction: float = 0.2,
) -> RawDataset:
    """Read a clip-retrieval embeddings folder (layout and rules in the module docstring).

    Args:
        root: the folder holding ``img_emb/``, ``text_emb/`` and ``metadata/``.
        label_column: metadata column of the class label(s).
        split_column: metadata column of the ``train``/``test`` split; ``None`` (or the
            default ``split`` column absent): generated per class.
        id_column: metadata column of the sample ids (default ``id`` when present, else the
            row number).
        label_sep: separator of several labels in one string (``""``: never split).
        test_fraction: share of each class that goes to test when the split is generated.

    ``load_dataset`` adds ``split_seed`` (seed of a generated train/test split and of a
    generated class split), ``class_split`` and ``skip_bad`` (leave bad rows out, listed in
    ``meta["skipped"]``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"clip-retrieval folder not found: {root}")
    test_fraction = check_test_fraction(test_fraction)
    if not isinstance(label_column, str) or not label_column:
        raise ConfigError(f"label_column must be a column name, got {label_column!r}.")
    if label_sep is not None and not isinstance(label_sep, str):
        raise ConfigError(f"label_sep must be a string, got {label_sep!r}.")
    columns = _Columns(label_column, split_column, id_column, label_sep)
    parts, dims = _read_parts(root)
    reading = _Reading(root, Problems(f"clip-retrieval folder {root}"))
    for part in parts:
        _read_part(part, columns, reading)
    if len(reading.split_in) == 2:
        raise DataError(
            f"clip-retrieval folder {root}: the {split_column!r} column is in part(s) "
            f"{format_list(reading.split_in[True])} but not in part(s) "
            f"{format_list(reading.split_in[False])}; give it in every part or in none."
        )
    samples = reading.samples
    generated = split_column is None or False in reading.split_in
    seeded = None
    split_source = f"column {split_column!r}"
    if generated:
        bad = reading.problems.bad_samples
        keys = [None if s.id in bad else (s.labels[0], s.id) for s in samples]
        seeded = SeededSplit(keys, test_fraction=test_fraction, notes=("split_source",))
        split_source = (
            f"generated (seed {{seed}}, test_fraction {test_fraction}): per class, "
            "sha256-ordered ids, the first floor(f*n+0.5) (at least 1, at most n-1) to test"
        ) + (f" (no {split_column!r} column)" if split_column is not None else "")
    meta = {
        "source": str(root.resolve()),
        "format": "clip-retrieval",
        "n_parts": len(parts),
        "parts": [p.n for p in parts],
        "split_source": split_source,
        "split_generated": generated,
        "image_dim": dims["image"][0],
        "text_dim": dims["text"][0],
        "texts": "caption column" if any(s.text is not None for s in samples) else "absent",
        "images_found": reading.images_found,
    }
    classes = sorted({lab for s in samples for lab in s.labels})
    feats = _features(root, parts, samples)
    return RawDataset("clip-retrieval", samples, classes, reading.problems, features=feats, meta=meta, seeded_split=seeded)


def load_clip_retrieval(root: str | Path, **options: Any) -> Dataset:
    """``load_dataset("clip-retrieval", root=root, **options)``: :func:`read_clip_retrieval`, finished."""
    return load_dataset("clip-retrieval", root=root, **options)


def _read_parts(root: Path) -> tuple[list[_Part], dict[str, tuple[int, str]]]:
    """The parts with their embeddings, and ``{modality: (dimension, first file)}``; the three
    files of a part must hold the same rows, every part the same dimensions."""
    out: list[_Part] = []
    dims: dict[str, tuple[int, str]] = {}
    for n, ip, tp, mp in find_parts(root):
        img, txt = _load_npy(ip), _load_npy(tp)
        rows, columns = _parquet_rows_and_columns(mp)
        if not img.shape[0] == txt.shape[0] == rows:
            raise DataError(
                f"clip-retrieval folder {root}: part {n} is not aligned: {ip.name} has "
                f"{img.shape[0]} rows, {tp.name} {txt.shape[0]} rows, {mp.name} {rows} rows; the "
                "three files of a part must hold the same rows."
            )
        for what, arr, path in (("image", img, ip), ("text", txt, tp)):
            d = int(arr.shape[1])
            if what in dims and dims[what][0] != d:
                raise DataError(
                    f"clip-retrieval folder {root}: {path.name} has {what} dimension "
                    f"{d} but {dims[what][1]} has {dims[what][0]}; every part must "
                    "have the same dimension."
                )
            dims.setdefault(what, (d, path.name))
        out.append(_Part(n, mp, rows, columns, img, txt))
    if sum(p.rows for p in out) == 0:
        raise DataError(f"clip-retrieval folder {root}: every part is empty (0 rows).")
    return out, dims


def _read_part(part: _Part, columns: _Columns, reading: _Reading) -> None:
    """The samples of one part's metadata rows (their problems too)."""
    absent = [c for c in columns.wanted() if c not in part.columns]
    if absent:
        raise DataError(
            f"{part.path}: no column {format_list(absent)}; the columns are "
            f"{format_list(part.columns, limit=30) or '(none)'}. Pass label_column=/"
            "split_column=/id_column= naming the right ones."
        )
    idc = columns.id if columns.id is not None else ("id" if "id" in part.columns else None)
    sc = columns.split if columns.split is not None and columns.split in part.columns else None
    if columns.split is not None:
        reading.split_in.setdefault(sc is not None, []).append(part.n)
    label = columns.label
    cols = [label] + [c for c in (idc, sc, "caption", "image_path") if c is not None and c in part.columns and c != label]
    data = _read_columns(part.path, list(dict.fromkeys(cols)))
    bad_img = ~np.isfinite(part.image).all(axis=1)
    bad_txt = ~np.isfinite(part.text).all(axis=1)
    for r in range(part.rows):
        where = f"{part.path.name} row {r}"
        sid = _row_id(data, idc, r, where, reading)
        labels = _labels_of(data[label][r], columns.sep)
        if not labels:
            reading.problems.add(where, f"no label in column {label!r}", sid)
        split = _row_split(data, sc, r, where, sid, reading.problems)
        if bad_img[r] or bad_txt[r]:
            which = " and ".join(w for w, b in (("image", bad_img[r]), ("text", bad_txt[r])) if b)
            reading.problems.add(where, f"NaN or infinite values in its {which} embedding", sid)
        image = _row_image(data, r, reading)
        text = _text_of(data["caption"][r]) if "caption" in data else None
        reading.samples.append(Sample(id=sid, text=text, labels=labels, split=split, image=image))
    reading.offset += part.rows


def _row_id(data: dict[str, list], idc: str | None, r: int, where: str, reading: _Reading) -> str:
    """The row's sample id (the row number in the folder without an id column)."""
    if idc is not None:
        sid = _text_of(data[idc][r])
        if sid is None:
            sid = f"row {reading.offset + r}"
            reading.problems.add(where, f"no id in column {idc!r}", sid)
    else:
        sid = str(reading.offset + r)
    if sid in reading.seen_ids:
        reading.problems.add(where, f"id {sid!r} also at {reading.seen_ids[sid]}", None)
    reading.seen_ids.setdefault(sid, where)
    return sid


def _row_split(data: dict[str, list], sc: str | None, r: int, where: str, sid: str, problems: Problems) -> str:
    if sc is None:
        return "train"
    raw = data[sc][r]
    split = str(raw).strip().lower() if raw is not None else ""
    if split not in SPLITS:
        problems.add(where, f"split {raw!r} in column {sc!r} is not 'train' or 'test'", sid)
    return split


def _row_image(data: dict[str, list], r: int, reading: _Reading) -> Path | None:
    """The row's ``image_path`` when it names an existing file (relative: to the root)."""
    ipath = _text_of(data["image_path"][r]) if "image_path" in data else None
    if ipath is None:
        return None
    p = Path(ipath).expanduser()
    p = p if p.is_absolute() else reading.root / p
    with contextlib.suppress(OSError):
        if p.is_file():
            reading.images_found += 1
            return p
    return None


def _features(root: Path, parts: list[_Part], samples: list[Sample]) -> FeatureSet:
    """The embeddings of every part, as pooled-only features (float16 stays float16)."""
    dtype = "float16" if all(a.dtype == np.float16 for p in parts for a in (p.image, p.text)) else "float32"
    image_feats = ModalityFeatures.from_array(
        np.concatenate([np.asarray(p.image) for p in parts]), name="clip-retrieval image embeddings", dtype=dtype
    )
    text_feats = ModalityFeatures.from_array(
        np.concatenate([np.asarray(p.text) for p in parts]), name="clip-retrieval text embeddings", dtype=dtype
    )
    return FeatureSet(image_feats, text_feats, tuple(s.id for s in samples), {"source": str(root.resolve()), "format": "clip-retrieval"})


# --------------------------------------------------------------------------- export
def part_name(prefix: str, index: int, n_parts: int, ext: str) -> str:
    """``img_emb_3.npy``-style name, the number zero-padded to the digits of ``n_parts`` as
    clip-retrieval's writer does (``img_emb_03.npy`` of 12 parts)."""
    width = len(str(max(int(n_parts), 1)))
    return f"{prefix}_{str(index).zfill(width)}{ext}"


def _check_emb(arr: Any, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise DataError(f"{what} must be a non-empty (n, d) array, got shape {a.shape}.")
    if a.dtype.kind not in "fiu":
        raise DataError(f"{what} must hold numbers, got dtype {a.dtype}.")
    if a.dtype not in (np.float16, np.float32):
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def _metadata_table(metadata: Mapping[str, Sequence] | Sequence[Mapping[str, Any]], n: int):
    pa = _pa()
    try:
        if isinstance(metadata, Mapping):
            cols = {str(k): list(v) for k, v in metadata.items()}
            bad = {k: len(v) for k, v in cols.items() if len(v) != n}
            if bad:
                raise DataError(
                    f"Metadata columns must have one value per embedding row ({n}); got {', '.join(f'{k}: {v}' for k, v in bad.items())}."
                )
            table = pa.Table.from_pydict(cols)
        else:
            rows = list(metadata)
            if len(rows) != n:
                raise DataError(f"Metadata has {len(rows)} rows for {n} embedding rows.")
            if not all(isinstance(r, Mapping) for r in rows):
                raise DataError("Metadata must be a dict of columns or a list of dicts (rows).")
            table = pa.Table.from_pylist([dict(r) for r in rows])
            if table.num_columns == 0:
                table = None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"Metadata cannot be stored as parquet columns: {exc}") from None
    if table is None or table.num_columns == 0:
        raise DataError("Metadata has no column; give at least one (e.g. id or caption).")
    return table


def export_clip_retrieval(
    out_dir: str | Path,
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    metadata: Mapping[str, Sequence] | Sequence[Mapping[str, Any]],
    *,
    part_size: int | None = None,
) -> Path:
    """Write embeddings and metadata in the clip-retrieval layout (see the module docstring).

    Args:
        out_dir: the folder to create; it must not exist, or be an empty folder.
        image_emb: (n, d) image embeddings; float16 and float32 are written as given, other
            numbers as float32.
        text_emb: (n, d') text embeddings, rows paired with ``image_emb``.
        metadata: the metadata columns, as ``{column: [n values]}`` or ``[n row dicts]``
            (e.g. ``id``, ``caption``, ``image_path``, ``label``, ``split``).
        part_size: rows per part (default: everything in part 0).

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: ``out_dir`` exists and is a file or a non-empty folder, or a bad ``part_size``.
        DataError: the arrays or the metadata do not fit together.

    The files are written into a hidden temporary sibling folder that is renamed to
    ``out_dir`` at the end; on any error it is removed, so nothing half-written remains.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"Export folder {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"Export folder {out} exists and is not empty; refusing to overwrite it. Choose a new folder or remove it first.")
    img = _check_emb(image_emb, "image_emb")
    txt = _check_emb(text_emb, "text_emb")
    n = img.shape[0]
    if txt.shape[0] != n:
        raise DataError(f"image_emb has {n} rows but text_emb {txt.shape[0]}; they must be paired.")
    if part_size is None:
        part_size = n
    if isinstance(part_size, bool) or not isinstance(part_size, (int, np.integer)) or part_size < 1:
        raise ConfigError(f"part_size must be a whole number >= 1, got {part_size!r}.")
    table = _metadata_table(metadata, n)
    pq = _pq()
    n_parts = max(1, math.ceil(n / int(part_size)))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for folder, _, _ in PART_FILES:
            (tmp / folder).mkdir()
        for i in range(n_parts):
            lo, hi = i * int(part_size), min(n, (i + 1) * int(part_size))
            for (folder, prefix, ext), arr in zip(PART_FILES[:2], (img, txt)):
                with open(tmp / folder / part_name(prefix, i, n_parts, ext), "wb") as f:
                    np.save(f, np.ascontiguousarray(arr[lo:hi]), allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
            folder, prefix, ext = PART_FILES[2]
            pq.write_table(table.slice(lo, hi - lo), str(tmp / folder / part_name(prefix, i, n_parts, ext)))
        for folder, _, _ in PART_FILES:
            fsync_dir(tmp / folder)
        fsync_dir(tmp)
        if out.is_dir():
            out.rmdir()  # empty (checked above): rename needs the name free on every platform
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_embeddings(method: Any, dataset: Dataset, features: FeatureSet | None, out_dir: str | Path, **kw: Any) -> Path:
    """Embed every sample of ``dataset`` with a fitted ``method`` (anything with
    ``embed_images``/``embed_texts``) and export the embeddings with
    :func:`export_clip_retrieval` (``kw``: e.g. ``part_size``).

    ``features`` are the dataset's features, rows in sample order (default
    ``dataset.features``). The metadata columns are ``id``, ``caption`` (the text or ``""``),
    ``image_path`` (the image file or ``""``), ``label`` (the labels joined with ``"|"``) and
    ``split``; ``load_dataset("clip-retrieval", root=out_dir)`` gives back the same ids,
    labels, split and embeddings.
    """
    feats = features if features is not None else dataset.features
    if feats is None:
        raise ConfigError(
            f"Dataset {dataset.name!r} has no pre-extracted features; pass the "
            "features the method was fitted on (e.g. from the run's extraction)."
        )
    if tuple(feats.sample_ids) != tuple(s.id for s in dataset.samples):
        raise DataError(
            f"The features' sample ids differ from dataset {dataset.name!r}'s samples "
            f"({len(feats)} rows for {len(dataset)} samples); pass the features of "
            "this dataset, in sample order."
        )
    joined = [s for s in dataset.samples if any("|" in lab for lab in s.labels)]
    if joined:
        raise DataError(
            f"Labels containing '|' cannot be exported (the label column joins "
            f"labels with '|'): samples {format_list([s.id for s in joined])}."
        )
    img = np.asarray(method.embed_images(feats.image), dtype=np.float32)
    txt = np.asarray(method.embed_texts(feats.text), dtype=np.float32)
    metadata = {
        "id": [s.id for s in dataset.samples],
        "caption": [s.text or "" for s in dataset.samples],
        "image_path": [str(s.image) if s.image is not None else "" for s in dataset.samples],
        "label": ["|".join(s.labels) for s in dataset.samples],
        "split": [s.split for s in dataset.samples],
    }
    return export_clip_retrieval(out_dir, img, txt, metadata, **kw)


load = load_clip_retrieval
