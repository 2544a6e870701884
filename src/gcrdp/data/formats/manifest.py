"""Your own data as a CSV/TSV or JSONL manifest (dataset name ``manifest``, option ``path``).

One row per image–text pair, with these columns (CSV header / JSONL keys; names are
case-insensitive and stripped):

=========  ==============================================================================
``image``  path of the image file, relative to the manifest's folder or absolute (``~`` ok)
``text``   the text (non-empty after stripping)
``label``  one class name, or
``labels`` several: in JSONL a JSON list (``["cat", "dog"]``); in CSV one string split on
           ``label_sep`` (default ``"|"``: ``cat|dog``). Use exactly one of the two columns.
``split``  optional: ``train`` or ``test`` (case-insensitive). The validation set is carved
           out of ``train`` by the protocol (:func:`gcrdp.data.protocol.make_split`). Without
           the column a seeded split is generated (below).
``id``     optional unique id; default the row number (1 = first data row)
=========  ==============================================================================

Other columns are ignored. Blank JSONL lines are skipped. Numbers given as labels or ids in
JSONL are turned into strings. The format comes from the extension (``.csv``, ``.tsv``,
``.jsonl``, ``.ndjson``) or from ``format=``.

Every row is validated and all problems are reported in one :class:`DataError`, each with
its line number (physical line in the file; the CSV header is line 1): a missing column, bad
JSON, an empty text or label, an unknown split, a duplicate id, and missing image files
(the first few and a count).

**Limits** (the same for CSV, TSV and JSONL): one field — a text, path, label or id — holds at
most :data:`MAX_FIELD_CHARS` characters (1 MiB), one row at most :data:`MAX_LINE_CHARS` (4 MiB),
an image path at most :data:`MAX_PATH_CHARS` (4096), a JSON number at most
:data:`MAX_NUMBER_DIGITS` digits, and JSON values nest at most :data:`MAX_JSON_DEPTH` deep. A row
over a limit is a problem of its line like any other (left out with ``skip_bad``); a CSV field
longer than a whole row (most often an unclosed quote, which runs to the end of the file) stops
the reading with the line where it starts.

**Train/test split.** With a ``split`` column (CSV) or ``split`` key (JSONL, then on every
row) it is the user's. Without one, the same seeded, stable rule as for feature files is used
(:func:`gcrdp.data.formats.build.per_class_test_split`): per class (a row's first label), the
rows are ordered by ``sha256("<split_seed>\\0<class>\\0<key>")`` — the key is the ``id`` when
given, else the image path and text — and the first ``test_fraction`` of them (default 0.2,
rounded; at least one of a class of two or more, never all) are test. A row keeps its side
when other rows are added or removed. ``meta["split"]`` says which rule was used, and a run
writes the test ids beside its results (``test_split.json``).

Classes are the sorted label names. The seen/unseen class split comes from ``class_split=``
(a JSON file as in :mod:`gcrdp.data.splits`) or, by default, is generated with
:func:`gcrdp.data.splits.generate_class_split` (``seed=split_seed``, default 0): each class is
unseen when a seeded hash of its name falls below one half, so adding or removing a class moves
no other. A draw that the few-shot protocols cannot use (fewer than two seen classes, or an
unseen share far from a half) is named by ``gcrdp inspect`` with a ``split_seed`` that works,
and stops ``gcrdp run`` before any work. ``meta["class_split_source"]`` records which split was
used, and ``meta["class_split_generated"]`` is True for a generated one.

Example::

    image,text,labels,split
    img/0001.jpg,"A dog on the beach",dog|beach,train

or, with a generated train/test split::

    image,text,label
    img/0001.jpg,"A dog on the beach",dog
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError
from ..problems import Problems
from ..registry import load_dataset, register_reader
from ..types import SPLITS, Dataset, Sample
from .build import RawDataset, SeededSplit, check_test_fraction

FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_FORMAT_ALIASES = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "ndjson": "jsonl", "jsonlines": "jsonl"}
REQUIRED = ("image", "text")
MAX_SHOWN = 10
#: the most characters of one field (text, image path, label, id) of a manifest row, CSV or JSONL
MAX_FIELD_CHARS = 1 << 20
#: the most characters of one row (a JSONL line; a CSV record, all its fields)
MAX_LINE_CHARS = 4 << 20
#: the most characters of an image path (longer ones no file system takes)
MAX_PATH_CHARS = 4096
#: the most digits of a JSON number (Python refuses to convert longer ones to int)
MAX_NUMBER_DIGITS = 1000
#: the deepest nesting of JSON arrays/objects in a JSONL line (a row needs 2: a list of labels)
MAX_JSON_DEPTH = 64


@dataclass
class _Row:
    line: int
    row: int
    id: str
    image: str
    text: str
    labels: tuple[str, ...]
    split: str | None  # None: no split given (generated after reading)
    has_id: bool = False


def _detect_format(path: Path, format: str | None) -> str:
    if format is not None:
        key = str(format).lower().lstrip(".")
        if key not in _FORMAT_ALIASES:
            raise ConfigError(f"Unknown manifest format {format!r}. Known formats: {', '.join(FORMATS)}.")
        return _FORMAT_ALIASES[key]
    ext = path.suffix.lower()
    if ext not in _EXTENSIONS:
        raise ConfigError(
            f"Cannot tell the manifest format of {path} from its extension {ext or '(none)'!r}: "
            f"use a {', '.join(sorted(_EXTENSIONS))} file or pass format= one of "
            f"{', '.join(FORMATS)}."
        )
    return _EXTENSIONS[ext]


def _dedupe(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _check_split(value: str, line: int, problems: list[str]) -> str:
    split = value.strip().lower()
    if split not in SPLITS:
        problems.append(
            f"line {line}: unknown split {_short(value)}; expected 'train' or 'test' (the "
            "validation set is carved out of 'train' by the protocol)"
        )
    return split


def _decode_lines(path: Path, problems: list[str]) -> tuple[str, set[int]]:
    """The file as text and the numbers of its lines that are not valid UTF-8: each becomes a
    problem ("line N: …") and is decoded with replacement characters, so that it still counts
    as a row (the default ids of the other rows do not shift) but can be left out."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8"), set()
    except UnicodeDecodeError:
        pass
    out, bad = [], set()
    for ln, line in enumerate(raw.split(b"\n"), start=1):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problems.append(
                f"line {ln}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}); re-save the manifest as UTF-8"
            )
            out.append(line.decode("utf-8", errors="replace"))
            bad.add(ln)
    return "\n".join(out), bad


def _short(value: object, limit: int = 120) -> str:
    """``repr(value)``, cut to about ``limit`` characters for a message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}… ({len(text):,} characters)"


def _field_problem(line: int, values: dict[str, object]) -> str | None:
    """The problem of a row with a field over :data:`MAX_FIELD_CHARS` (or an image path over
    :data:`MAX_PATH_CHARS`), or None."""
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and len(item) > MAX_FIELD_CHARS:
                return f"line {line}: {key!r} has {len(item):,} characters, over the limit of {MAX_FIELD_CHARS:,} (1 MiB) per field"
    image = values.get("image")
    if isinstance(image, str) and len(image.strip()) > MAX_PATH_CHARS:
        return f"line {line}: the image path has {len(image.strip()):,} characters, over the limit of {MAX_PATH_CHARS:,}"
    return None


def _json_depth_over(raw: str, limit: int) -> bool:
    """Whether the brackets of a JSON text (outside strings) nest deeper than ``limit`` — checked
    before :func:`json.loads`, which recurses once a level (a 100,000-deep value overflows it)."""
    if raw.count("[") + raw.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number with {len(digits.lstrip('-')):,} digits, over the limit of {MAX_NUMBER_DIGITS:,}")
    return int(digits)


def _read_csv(text: str, path: Path, delimiter: str, label_sep: str, problems: list[str]) -> tuple[list[_Row], int]:
    rows: list[_Row] = []
    # csv's own limit (process-wide, 128 KiB by default) is raised to a whole row while reading;
    # fields are held to MAX_FIELD_CHARS below, with their line
    done = [0]  # the last physical line of the last record read
    old_limit = csv.field_size_limit(MAX_LINE_CHARS)
    try:
        return _read_csv_records(text, path, delimiter, label_sep, problems, rows, done)
    except csv.Error as exc:
        if "field larger than field limit" not in str(exc):
            raise
        raise DataError(
            f"Manifest {path}, line {done[0] + 1}: a field longer than {MAX_LINE_CHARS:,} characters (the limit of a whole row; "
            f'{MAX_FIELD_CHARS:,} per field) starts here or before; most often a quote (") that is never closed, so that '
            "the field runs on to the end of the file."
        ) from None
    finally:
        csv.field_size_limit(old_limit)


@dataclass(frozen=True)
class _CsvLayout:
    """The columns of a CSV manifest's header: each one's position, which holds the labels,
    whether there is a split column, and the separator of several labels."""

    cols: list[str]
    pos: dict[str, int]
    label_col: str
    has_split: bool
    label_sep: str


def _csv_layout(header: list[str], path: Path, label_sep: str) -> _CsvLayout:
    """The header's layout; a missing, doubled or duplicate column is an error (not skippable)."""
    cols = [h.strip().lower() for h in header]
    dups = sorted({c for c in cols if cols.count(c) > 1 and c})
    has_label, has_labels = "label" in cols, "labels" in cols
    missing = [c for c in REQUIRED if c not in cols]
    if not (has_label or has_labels):
        missing.append("label (or labels)")
    header_problems = []
    if missing:
        header_problems.append(f"missing column(s) {', '.join(map(repr, missing))}")
    if has_label and has_labels:
        header_problems.append("both 'label' and 'labels' columns; keep one")
    if dups:
        header_problems.append(f"duplicate column(s) {', '.join(map(repr, dups))}")
    if header_problems:
        raise DataError(
            f"Manifest {path}, line 1 (header): "
            + "; ".join(header_problems)
            + f". Found columns: {', '.join(map(repr, header))}. Expected columns: image, "
            "text, label (one class) or labels (several, separated by "
            f"{label_sep!r}), optionally split (train/test) and id."
        )
    pos = {c: i for i, c in enumerate(cols)}
    return _CsvLayout(cols, pos, "labels" if has_labels else "label", "split" in cols, label_sep)


def _read_csv_records(
    text: str, path: Path, delimiter: str, label_sep: str, problems: list[str], rows: list[_Row], done: list[int]
) -> tuple[list[_Row], int]:
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(
                f"Manifest {path} is empty: expected a header line 'image{delimiter}text{delimiter}label{delimiter}split'."
            ) from None
        layout = _csv_layout(header, path, label_sep)
        n_row = 0
        done[0] = reader.line_num
        for record in reader:
            line = reader.line_num
            done[0] = line
            if not record or all(not v.strip() for v in record):
                continue  # blank line
            n_row += 1
            row = _csv_row(record, line, n_row, layout, problems)
            if row is not None:
                rows.append(row)
    return rows, n_row


def _csv_row(record: list[str], line: int, n_row: int, layout: _CsvLayout, problems: list[str]) -> _Row | None:
    """The row of one CSV record, or ``None`` when it has problems (added to ``problems``)."""
    cols, pos = layout.cols, layout.pos
    if len(record) != len(cols):
        problems.append(
            f"line {line}: {len(record)} fields but the header has {len(cols)}"
            + (" (a value with the delimiter must be quoted)" if len(record) > len(cols) else "")
        )
        return None
    size = sum(len(v) for v in record)
    if size > MAX_LINE_CHARS:
        problems.append(f"line {line}: the row has {size:,} characters, over the limit of {MAX_LINE_CHARS:,} (4 MiB) per row")
        return None
    too_long = _field_problem(line, {c: record[i] for c, i in pos.items() if c})
    if too_long:
        problems.append(too_long)
        return None
    rid = record[pos["id"]].strip() if "id" in pos else ""
    image = record[pos["image"]].strip()
    text = record[pos["text"]].strip()
    raw = record[pos[layout.label_col]]
    if layout.label_col == "labels":
        labels = _dedupe([p.strip() for p in raw.split(layout.label_sep) if p.strip()])
    else:
        labels = (raw.strip(),) if raw.strip() else ()
    before = len(problems)
    if not image:
        problems.append(f"line {line}: empty image path")
    if not text:
        problems.append(f"line {line}: empty text")
    if not labels:
        problems.append(f"line {line}: empty {layout.label_col}")
    split = _check_split(record[pos["split"]], line, problems) if layout.has_split else None
    if len(problems) != before:
        return None
    return _Row(line, n_row, rid or str(n_row), image, text, labels, split, bool(rid))


def _as_name(value: object) -> str | None:
    """A label/id value as a string, or None when it is not a string or an int."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int):
        return str(value)
    return None


def _read_jsonl(text: str, problems: list[str]) -> tuple[list[_Row], int]:
    rows: list[_Row] = []
    n_row = 0
    with io.StringIO(text) as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            n_row += 1
            obj = _json_object(raw, line, problems)
            row = _json_row(obj, line, n_row, problems) if obj is not None else None
            if row is not None:
                rows.append(row)
    return rows, n_row


def _json_object(raw: str, line: int, problems: list[str]) -> dict | None:
    """The JSON object of one line, its keys lower-cased, with the keys a row needs; or ``None``
    (the problem added to ``problems``)."""
    if len(raw) > MAX_LINE_CHARS:
        problems.append(f"line {line}: the line has {len(raw):,} characters, over the limit of {MAX_LINE_CHARS:,} (4 MiB) per row")
        return None
    if _json_depth_over(raw, MAX_JSON_DEPTH):
        problems.append(f"line {line}: JSON nested more than {MAX_JSON_DEPTH} levels deep (a row needs 2)")
        return None
    try:
        obj = json.loads(raw, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        problems.append(f"line {line}: bad JSON ({exc.msg} at column {exc.colno})")
        return None
    except (ValueError, RecursionError) as exc:  # _parse_int's limit; a depth the check above missed
        problems.append(f"line {line}: JSON not read ({exc})")
        return None
    if not isinstance(obj, dict):
        problems.append(f"line {line}: expected a JSON object, got {type(obj).__name__}")
        return None
    obj = {str(k).strip().lower(): v for k, v in obj.items()}
    missing = [k for k in REQUIRED if k not in obj]
    if "label" not in obj and "labels" not in obj:
        missing.append("label (or labels)")
    why = None
    if missing:
        why = f"line {line}: missing key(s) {', '.join(map(repr, missing))}"
    elif "label" in obj and "labels" in obj:
        why = f"line {line}: both 'label' and 'labels'; keep one"
    else:
        why = _field_problem(line, {k: obj[k] for k in ("image", "text", "label", "labels", "split", "id") if k in obj})
    if why:
        problems.append(why)
        return None
    return obj


def _json_row(obj: dict, line: int, n_row: int, problems: list[str]) -> _Row | None:
    """The row of one JSON object, or ``None`` when it has problems (added to ``problems``)."""
    before = len(problems)
    image, text = obj["image"], obj["text"]
    if not isinstance(image, str) or not image.strip():
        problems.append(f"line {line}: 'image' must be a non-empty path string, got {_short(image)}")
    if not isinstance(text, str):
        problems.append(f"line {line}: 'text' must be a string, got {type(text).__name__}")
    elif not text.strip():
        problems.append(f"line {line}: empty text")
    labels = _json_labels(obj, line, problems)
    split = _json_split(obj, line, problems)
    rid = ""
    if obj.get("id") is not None:
        rid = _as_name(obj["id"]) or ""
        if not rid:
            problems.append(f"line {line}: 'id' must be a non-empty string or integer, got {_short(obj['id'])}")
    if len(problems) != before:
        return None
    return _Row(line, n_row, rid or str(n_row), image.strip(), text.strip(), labels, split, bool(rid))


def _json_labels(obj: dict, line: int, problems: list[str]) -> tuple[str, ...]:
    """The labels of ``label`` (a string or an integer) or ``labels`` (a list of them)."""
    if "labels" not in obj:
        name = _as_name(obj["label"])
        if name is None:
            problems.append(f"line {line}: 'label' must be a string or an integer, got {_short(obj['label'])}")
        elif not name:
            problems.append(f"line {line}: empty label")
        return (name,) if name else ()
    value = obj["labels"]
    if not isinstance(value, list):
        problems.append(f"line {line}: 'labels' must be a JSON list of class names, got {type(value).__name__} {_short(value)}")
        return ()
    names = [_as_name(v) for v in value]
    if any(n is None for n in names):
        problems.append(f"line {line}: 'labels' must hold strings or integers, got {_short(value)}")
    labels = _dedupe([n for n in names if n])
    if not labels and all(n is not None for n in names):
        problems.append(f"line {line}: empty labels")
    return labels


def _json_split(obj: dict, line: int, problems: list[str]) -> str | None:
    """The row's split; ``None`` without one (generated, unless other rows have one: checked
    after reading)."""
    if "split" not in obj:
        return None
    if not isinstance(obj["split"], str):
        problems.append(f"line {line}: unknown split {_short(obj['split'])}; expected 'train' or 'test'")
        return ""
    return _check_split(obj["split"], line, problems)


def _raise_problems(path: Path, problems: list[str], n_rows: int) -> None:
    shown = "\n  ".join(problems[:MAX_SHOWN])
    more = f"\n  (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
    raise DataError(
        f"Manifest {path} has {len(problems)} problem(s) in {n_rows} rows:\n  {shown}{more}\n"
        "Expected columns: image, text, label or labels, optionally split (train/test) and id.\n"
        "Fix them, or pass --skip-bad (skip_bad=True) to leave the bad rows out and list them in a "
        "report file."
    )


class _LineProblems(Problems):
    """A manifest's problems: text lines (``line N: why``), the bad rows already left out of the
    samples. :meth:`resolve` raises them, or (``skip_bad``) leaves nothing more to drop; the
    report lists them by line."""

    def __init__(self, path: Path, lines: list[str], n_rows: int, skipped: list[dict]) -> None:
        super().__init__(f"Manifest {path}")
        self.path, self.lines, self.n_rows, self.skipped = path, lines, n_rows, skipped

    def __len__(self) -> int:
        return len(self.lines)

    def __bool__(self) -> bool:
        return bool(self.lines)

    def resolve(self, skip_bad: bool, n_total: int | None = None, hint: str = "") -> set[str]:
        if self.lines and not skip_bad:
            _raise_problems(self.path, self.lines, self.n_rows)
        return set()

    def skip_report(self, bad: set[str]) -> list[dict]:
        return self.skipped

    def n_skipped(self, bad: set[str]) -> int:
        return len({item["where"] for item in self.skipped})


#: The finished meta of a manifest, in order.
_META_KEYS = (
    "source",
    "format",
    "label_sep",
    "n_samples",
    "n_classes",
    "n_train",
    "n_test",
    "multilabel",
    "images_checked",
    "split",
    "split_generated",
    "class_split_source",
    "class_split_generated",
    "class_split_seed",
    "n_skipped",
    "skipped",
)


@register_reader("manifest")
def read_manifest(
    path: str | Path,
    *,
    format: str | None = None,
    label_sep: str = "|",
    test_fraction: float | None = None,
    check_images: bool = True,
    name: str | None = None,
) -> RawDataset:
    """Read a CSV/TSV/JSONL manifest (conventions in the module docstring).

    Args:
        path: the manifest file.
        format: ``"csv"``, ``"tsv"`` or ``"jsonl"``; default from the extension.
        label_sep: separator of several labels in a CSV ``labels`` column.
        test_fraction: share of each class's rows that are test pairs when the manifest has no
            ``split`` column (default 0.2); an error when it has one.
        check_images: check that every image file exists (default True).
        name: dataset name; default the manifest's file stem.

    ``load_dataset`` adds ``class_split`` (default generated), ``split_seed`` (seed of the
    generated class split, and of the generated train/test split of a manifest without a
    ``split`` column) and ``skip_bad`` (leave bad rows out, listed in ``meta["skipped"]`` with
    their line and reason, instead of failing; problems with the header are still errors).

    Raises:
        DataError: the file is missing or any row is invalid (every problem with its line).
        ConfigError: unknown format or bad option.
    """
    path = Path(path).expanduser()
    _check_path(path)
    fmt = _detect_format(path, format)
    if not isinstance(label_sep, str) or not label_sep:
        raise ConfigError(f"label_sep must be a non-empty string, got {label_sep!r}.")
    problems: list[str] = []
    rows, n_rows, bad_lines = _read_rows(path, fmt, label_sep, problems)
    generate_split = not any(r.split is not None for r in rows)
    if not generate_split:  # JSONL: some rows without a split while others have one
        for r in rows:
            if r.split is None:
                problems.append(
                    f"line {r.line}: no 'split' while other rows have one; give every row a split "
                    "(train/test), or none for a seeded train/test split"
                )
                bad_lines.add(r.line)
    if test_fraction is not None and not generate_split:
        raise ConfigError(
            f"test_fraction={test_fraction!r}: manifest {path} has its own train/test split (a 'split' "
            "column); test_fraction only applies to a manifest without one. Leave it out."
        )
    fraction = check_test_fraction(0.2 if test_fraction is None else test_fraction)
    _duplicate_ids(rows, problems, bad_lines)
    images = _image_paths(rows, path.parent.resolve(), problems, bad_lines)
    missing_report = _check_images(rows, images, path.parent.resolve(), problems, bad_lines) if check_images else []
    skipped = _skipped(problems, rows, missing_report)
    kept = [(r, img) for r, img in zip(rows, images) if r.line not in bad_lines]
    samples = [Sample(id=r.id, text=r.text, labels=r.labels, split=r.split or "train", image=img) for r, img in kept]
    meta = {
        "source": str(path.resolve()),
        "format": fmt,
        "label_sep": label_sep if fmt != "jsonl" else None,
        "images_checked": bool(check_images),
        "split": "from the 'split' column",
        "split_generated": generate_split,
    }
    raw = RawDataset(
        name or path.stem,
        samples,
        sorted({lab for s in samples for lab in s.labels}),
        _LineProblems(path, problems, n_rows, skipped),
        meta=meta,
        meta_keys=_META_KEYS,
    )
    if not samples:
        raw.unusable = f"Manifest {path} has no data rows" + (" left after skipping the bad ones." if skipped else ".")
    if generate_split:
        keys = [(r.labels[0], r.id if r.has_id else f"{r.image}\0{r.text}") for r, _ in kept]
        raw.seeded_split = SeededSplit(keys, test_fraction=fraction, notes=("split",))
        meta["split"] = (
            f"generated (seed {{seed}}, test_fraction {fraction:g}): per class, rows ordered by "
            "sha256('<seed>\\0<class>\\0<id, or image and text>'), the first test_fraction to test"
        )
    return raw


def load_manifest(path: str | Path, **options: Any) -> Dataset:
    """``load_dataset("manifest", path=path, **options)``: :func:`read_manifest`, finished."""
    return load_dataset("manifest", path=path, **options)


def _check_path(path: Path) -> None:
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"))
        found = f" (it holds {', '.join(inside[:3])})" if inside else ""
        raise DataError(
            f"Manifest {path} is a folder, not a file{found}: pass the manifest file itself, or "
            "use --dataset folder --root DIR for a folder of class subfolders."
        )
    if not path.is_file():
        raise DataError(f"Manifest file not found: {path}")


def _read_rows(path: Path, fmt: str, label_sep: str, problems: list[str]) -> tuple[list[_Row], int, set[int]]:
    """The rows read, the number of data rows and the lines that are not valid UTF-8."""
    try:
        text, bad_utf8 = _decode_lines(path, problems)
        if fmt == "jsonl":
            rows, n_rows = _read_jsonl(text, problems)
        else:
            rows, n_rows = _read_csv(text, path, "\t" if fmt == "tsv" else ",", label_sep, problems)
    except OSError as exc:
        raise DataError(f"Cannot read manifest {path}: {exc}") from None
    except csv.Error as exc:
        raise DataError(f"Manifest {path} is not valid CSV ({exc}).") from None
    return rows, n_rows, set(bad_utf8)


def _duplicate_ids(rows: list[_Row], problems: list[str], bad_lines: set[int]) -> None:
    first_line: dict[str, int] = {}
    for r in rows:
        if r.id in first_line:
            problems.append(f"line {r.line}: duplicate id {_short(r.id)} (first on line {first_line[r.id]})")
            bad_lines.add(r.line)
        else:
            first_line[r.id] = r.line


def _image_paths(rows: list[_Row], base: Path, problems: list[str], bad_lines: set[int]) -> list[Path]:
    """Each row's image path (relative ones from the manifest's folder ``base``)."""
    images: list[Path] = []
    for r in rows:
        try:
            p = Path(r.image).expanduser()
        except RuntimeError as exc:  # "~user/…" of a user this system does not have
            problems.append(f"line {r.line}: image path {_short(r.image)} cannot be expanded ({exc})")
            bad_lines.add(r.line)
            p = Path(r.image)
        images.append(p if p.is_absolute() else base / p)
    return images


def _check_images(rows: list[_Row], images: list[Path], base: Path, problems: list[str], bad_lines: set[int]) -> list[dict]:
    """Check that the image files exist: one problem lists the missing ones; their report entries."""
    missing = []
    for r, p in zip(rows, images):
        if r.line in bad_lines:
            continue
        try:
            exists = p.is_file()
        except (OSError, ValueError) as exc:  # a name too long for the file system, …
            problems.append(f"line {r.line}: image path {_short(r.image)} cannot be used ({getattr(exc, 'strerror', None) or exc})")
            bad_lines.add(r.line)
            continue
        if not exists:
            missing.append((r.line, r.image))
    if not missing:
        return []
    listed = ", ".join(f"line {ln}: {_short(img)}" for ln, img in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    problems.append(
        f"{len(missing)} of {len(rows)} image files do not exist (relative paths are taken from the manifest folder {base}): {listed}{more}"
    )
    bad_lines.update(ln for ln, _ in missing)
    return [{"where": f"line {ln}", "sample": None, "reason": f"image {_short(img)} does not exist"} for ln, img in missing]


def _skipped(problems: list[str], rows: list[_Row], missing_report: list[dict]) -> list[dict]:
    """The report of the rows ``skip_bad`` leaves out: one entry a problem of a line."""
    ids_by_line = {r.line: r.id for r in rows}
    skipped: list[dict] = []
    for problem in problems:
        m = re.match(r"line (\d+): (.*)", problem, re.S)
        if m is not None:
            ln = int(m.group(1))
            skipped.append({"where": f"line {ln}", "sample": ids_by_line.get(ln), "reason": m.group(2)})
    for item in missing_report:
        skipped.append({**item, "sample": ids_by_line.get(int(item["where"].split()[1]))})
    return skipped
