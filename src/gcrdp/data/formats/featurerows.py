"""The second half of the feature-array reader (:mod:`gcrdp.data.formats.featurearrays` finds the
files and tells their layout): decoding the labels of every split into rows (class ids or
multi-hot, 0- or 1-based, image and text labels checked against each other), class names from the
files or beside them, and the :class:`~gcrdp.data.features.FeatureSet` and the description that
``gcrdp inspect`` prints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError, format_list
from ..features import FeatureSet, ModalityFeatures
from .arrays import file_form
from .build import read_utf8
from .featurearrays import Arrays, Part, rows_of

CLASS_NAME_KEYS = ("class_names", "classnames", "classes", "categories", "concepts")
CLASS_NAME_FILES = ("classes.txt", "class_names.txt", "classnames.txt", "categories.txt", "categories.list")
VALID_SPLITS = ("train", "test", "drop")
#: the largest class id a label may hold: the classes are numbered 0..max id, so one stray huge
#: value (1e12, a uint64 -1) would otherwise make a trillion classes; a larger one is a problem
#: of its row
MAX_CLASS_ID = (1 << 20) - 1


# =============================================================================== labels
@dataclass
class Rows:
    """All pairs of the file(s), in sample order.

    ``labels[i]``: 0-based class indices of row ``i`` (``()`` for none); ``reasons[i]``: the
    problems of row ``i`` (bad label values, disagreeing image/text labels, empty text);
    ``bad_label[i]``: its label could not be read."""

    ids: list[str]
    splits: list[str]
    where: list[str]
    image: np.ndarray
    text: np.ndarray
    labels: list[tuple[int, ...]]
    reasons: list[list[str]]
    bad_label: np.ndarray
    n_classes: int
    kind: str
    meta: dict


_Decoded = tuple[str, np.ndarray, np.ndarray, np.ndarray]


def _decode(arr: np.ndarray, n: int, key: str, describe: str) -> _Decoded:
    """``("ids", int64 (n,), bad, values)`` or ``("multi", bool (n, C), bad, values)``: ``values``
    as read (the bad ones are shown as they are: ``1e+12``, not the ``-1`` they become)."""
    a = np.asarray(arr)
    if a.dtype.kind not in "fiub":
        raise DataError(f"{describe}: {key} must hold numbers (class ids or 0/1), got dtype {a.dtype}.")
    if a.ndim == 2 and a.shape[0] != n and a.shape[1] == n:
        a = a.T
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 1:
        if a.shape[0] != n:
            raise DataError(f"{describe}: {key} has {a.shape[0]} labels for {n} rows.")
        f = a.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(f) | (f != np.round(f)) | (f < 0) | (f > MAX_CLASS_ID + 1)  # + 1: 1-based ids
        ids = np.where(bad, -1, f).astype(np.int64)
        return "ids", ids, bad, a
    if a.ndim == 2 and a.shape[0] == n:
        bad = ~np.isin(a, (0, 1)).all(axis=1)
        return "multi", np.asarray(a == 1), np.asarray(bad), a
    raise DataError(f"{describe}: {key} must be (n,) class ids or (n, C) 0/1 labels for {n} rows, got shape {a.shape}.")


@dataclass(frozen=True)
class _Scheme:
    """How the labels read: ``kind`` (``ids``/``multi``), the id of the first class and the
    number of classes."""

    kind: str
    base: int
    n_classes: int

    def indices(self, a: _Decoded | None, n: int) -> list[tuple[int, ...] | None] | None:
        """Each row's 0-based class indices (``None``: not a valid label), or ``None`` without
        labels."""
        if a is None:
            return None
        k, vals, bad, _values = a
        out: list[tuple[int, ...] | None] = []
        for r in range(n):
            if bad[r]:
                out.append(None)
            elif k == "ids":
                j = int(vals[r]) - self.base
                out.append((j,) if 0 <= j < self.n_classes else None)
            else:
                out.append(tuple(int(j) for j in np.flatnonzero(vals[r])))
        return out

    def valid(self) -> str:
        return f"a class id in {self.base}..{self.base + self.n_classes - 1}" if self.kind == "ids" else "0/1"


_PartLabels = tuple[Part, _Decoded | None, _Decoded | None]


def decode_rows(
    parts: list[Part],
    *,
    describe: str,
    n_names: int | None = None,
    label_base: int | str = "auto",
    valid_split: str = "train",
    check_empty_text: bool = True,
) -> Rows:
    """Decode every part's labels into class indices and collect per-row problems (see
    :class:`Rows`). ``valid_split``: where a ``valid`` split goes (``train``/``test``/``drop``)."""
    if valid_split not in VALID_SPLITS:
        raise ConfigError(f"valid_split must be one of {', '.join(VALID_SPLITS)}, got {valid_split!r}.")
    if label_base not in ("auto", 0, 1) or isinstance(label_base, bool):
        raise ConfigError(f"label_base must be 'auto', 0 or 1, got {label_base!r}.")
    parts = [p for p in parts if not (p.split == "valid" and valid_split == "drop")]
    decoded = [_decode_part(p, describe) for p in parts]
    scheme, meta = _scheme(decoded, describe, n_names, label_base)
    rows = Rows([], [], [], np.empty(0), np.empty(0), [], [], np.empty(0, dtype=bool), scheme.n_classes, scheme.kind, meta)
    bad_rows: list[bool] = []
    for part in decoded:
        bad_rows += _add_rows(rows, part, scheme, valid_split, check_empty_text)
    rows.image = np.concatenate([np.asarray(p.image) for p, _, _ in decoded])
    rows.text = np.concatenate([np.asarray(p.text) for p, _, _ in decoded])
    rows.bad_label = np.array(bad_rows, dtype=bool)
    if len(set(rows.ids)) != len(rows.ids):
        raise DataError(f"{describe}: duplicate sample ids (internal).")  # pragma: no cover
    meta["splits_in_file"] = [p.split for p, _, _ in decoded]
    if any(p.split == "valid" for p in parts):
        meta["valid_split"] = valid_split
    return rows


def _decode_part(p: Part, describe: str) -> _PartLabels:
    """A part with its decoded image and text labels (the same kind and size when both are there)."""
    n = rows_of(p.image)
    lab = _decode(p.label, n, p.keys["label"], describe) if p.label is not None else None
    tl = _decode(p.text_label, n, p.keys["text_label"], describe) if p.text_label is not None else None
    if lab is not None and tl is not None and (lab[0] != tl[0] or lab[1].shape != tl[1].shape):
        raise DataError(
            f"{describe}: {p.keys['label']} has shape {np.asarray(p.label).shape} but "
            f"{p.keys['text_label']} has {np.asarray(p.text_label).shape}: the image and text "
            "labels must be the same kind and size."
        )
    assert lab is not None or tl is not None  # every layout gives a part image or text labels
    return p, lab, tl


def _scheme(decoded: list[_PartLabels], describe: str, n_names: int | None, label_base: int | str) -> tuple[_Scheme, dict]:
    """The labels' kind, first id and number of classes (the same in every part), and the meta
    entries that say so."""
    kinds: set[tuple[str, int | None]] = set()
    for _, lab, tl in decoded:
        main = lab if lab is not None else tl
        assert main is not None
        kinds.add((main[0], main[1].shape[1] if main[0] == "multi" else None))
    if len({k for k, _ in kinds}) != 1:
        raise DataError(f"{describe}: the labels are class ids in one split and (n, C) 0/1 in another.")
    kind = next(iter(kinds))[0]
    meta: dict = {"label_kind": "class ids" if kind == "ids" else "multi-hot"}
    if kind == "multi":
        cols = {c for _, c in kinds if c is not None}
        if len(cols) != 1:
            raise DataError(f"{describe}: (n, C) labels with {sorted(cols)} columns in different splits.")
        n_classes: int = cols.pop()
        if n_names is not None and n_names != n_classes:
            raise DataError(f"{describe}: {n_names} class names for {n_classes} label columns.")
        return _Scheme(kind, 0, n_classes), meta
    valid_ids = np.concatenate([a[1][~a[2]] for _, lab, tl in decoded for a in (lab, tl) if a is not None])
    if label_base == "auto":
        base = 1 if valid_ids.size and valid_ids.min() == 1 else 0
    else:
        base = int(label_base)
    meta["label_base"] = base
    top = int(valid_ids.max()) - base + 1 if valid_ids.size else 0
    return _Scheme(kind, base, n_names if n_names is not None else max(top, 0)), meta


def _add_rows(rows: Rows, part: _PartLabels, scheme: _Scheme, valid_split: str, check_empty_text: bool) -> list[bool]:
    """Append one part's rows (labels and problems) to ``rows``; whether each row's label is bad."""
    p, lab, tl = part
    n = rows_of(p.image)
    li_all, lt_all = scheme.indices(lab, n), scheme.indices(tl, n)
    text_zero = np.zeros(n, bool)
    if check_empty_text:
        text_zero = np.asarray(~np.asarray(p.text).reshape(n, -1).astype(bool).any(axis=1))
    bad: list[bool] = []
    for r in range(n):
        li = li_all[r] if li_all is not None else None
        lt = lt_all[r] if lt_all is not None else None
        got = li if li_all is not None else lt
        why = []
        if got is None:
            main = lab if lab is not None else tl
            assert main is not None
            main_key = p.keys["label"] if li_all is not None else p.keys["text_label"]
            why.append(f"{main_key} row {r}: {_raw(main[3][r])} is not {scheme.valid()}")
        if li_all is not None and lt_all is not None:
            why += _disagreement(p, tl, r, li, lt, scheme)
        if text_zero[r]:
            why.append(f"the text features ({p.keys['text']} row {r}) are all zero: an empty text")
        rows.ids.append(p.ids[r])
        rows.splits.append(valid_split if p.split == "valid" else p.split)
        rows.where.append(f"{p.split} row {r}")
        rows.labels.append(got if got is not None else ())
        rows.reasons.append(why)
        bad.append(got is None)
    return bad


def _disagreement(
    p: Part, tl: _Decoded | None, r: int, li: tuple[int, ...] | None, lt: tuple[int, ...] | None, scheme: _Scheme
) -> list[str]:
    """The problem of a row whose image and text labels differ, or whose text label is bad."""
    if li is not None and lt is not None and li != lt:
        return [
            f"image label {_show(li, scheme.base, scheme.kind)} ({p.keys['label']}) but text label "
            f"{_show(lt, scheme.base, scheme.kind)} ({p.keys['text_label']})"
        ]
    if li is not None and lt is None:
        assert tl is not None
        return [f"{p.keys['text_label']} row {r}: {_raw(tl[3][r])} is not a valid label"]
    return []


def _raw(v: object) -> str:
    a = np.asarray(v)
    return repr(a.item()) if a.ndim == 0 else repr(a.tolist()[:12])


def _show(labels: tuple[int, ...], base: int, kind: str) -> str:
    if kind == "ids":
        return str(labels[0] + base) if labels else "none"
    return str(list(labels))


def pairing_hint(rows: Rows) -> str:
    """A hint when most rows' image and text labels disagree: the files are not pairs."""
    n = sum(1 for r in rows.reasons if any("but text label" in x for x in r))
    if rows.ids and n > len(rows.ids) // 2:
        return (
            f"The image and text labels disagree on {n} of {len(rows.ids)} rows: the image and "
            "text arrays do not look paired row by row (each media listed on its own). This "
            "loader needs files whose row i of the image and of the text array is one pair."
        )
    return ""


# =============================================================================== class names
def read_class_names(
    class_names: Sequence[str] | str | Path | None, *, src: Arrays | None = None, folders: Sequence[Path] = (), dataset: str
) -> tuple[list[str] | None, str]:
    """Class names and where they came from: ``class_names`` (a list, or a text file with one
    name a line), a string array of :data:`CLASS_NAME_KEYS` in ``src``, or a
    :data:`CLASS_NAME_FILES` file in one of ``folders``; ``(None, "label ids")`` otherwise."""
    if class_names is not None:
        if isinstance(class_names, (str, Path)):
            p = Path(class_names).expanduser()
            if not p.is_file() and not p.is_absolute():
                p = next((f / p for f in folders if (f / p).is_file()), p)
            if not p.is_file():
                raise DataError(f"{dataset}: class_names file not found: {p}")
            return _names_file(p, dataset), f"file {p}"
        if not isinstance(class_names, Sequence) or not all(isinstance(c, str) for c in class_names):
            raise ConfigError(f"{dataset}: class_names must be a list of names or a text file, got {class_names!r}.")
        return _unique([c.strip() for c in class_names], dataset, "class_names"), "given"
    if src is not None:
        for key in CLASS_NAME_KEYS:
            got = src.get(key)
            if got is not None and np.asarray(got[1]).dtype.kind in "USO":
                return _unique(_strings(got[1]), dataset, src.where(got[0])), f"array {src.where(got[0])}"
    for f in folders:
        for name in CLASS_NAME_FILES:
            if (f / name).is_file():
                return _names_file(f / name, dataset), f"file {f / name}"
    return None, "label ids"


def _strings(arr: np.ndarray) -> list[str]:
    out = []
    for x in np.asarray(arr, dtype=object).reshape(-1).tolist():
        while isinstance(x, np.ndarray):
            x = x.reshape(-1)[0] if x.size else ""
        out.append((x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)).strip())
    return out


def _names_file(path: Path, dataset: str) -> list[str]:
    raw, why = read_utf8(path)
    if raw is None:
        raise DataError(f"{dataset}: {why}")
    return _unique([ln.strip() for ln in raw.split("\n") if ln.strip()], dataset, str(path))


def _unique(names: list[str], dataset: str, where: str) -> list[str]:
    if not names or any(not n for n in names):
        raise DataError(f"{dataset}: {where}: class names must be non-empty.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{dataset}: {where} lists class name(s) twice: {format_list(dup)}.")
    return names


def describe_form(src: Arrays, layout: str, found_as: str, parts: Sequence[Part]) -> str:
    """The form ``gcrdp inspect`` reports: the layout, how the files were found, each file's
    storage (v5 / v7.3 ``.mat``, HDF5, …) and the arrays read per split."""
    files = ", ".join(f"{p.name} ({file_form(p)})" for p in src.files)
    arrays = "; ".join(f"{p.split}: " + ", ".join(f"{r} {k}" for r, k in p.keys.items()) for p in parts)
    return f"{layout} layout ({found_as}): {files}; arrays {arrays}"


def feature_set(rows: Rows, keep: np.ndarray, dataset: str, source: str) -> FeatureSet:
    idx = np.flatnonzero(keep)
    return FeatureSet(
        ModalityFeatures.from_array(rows.image[idx], name=f"{dataset} image features"),
        ModalityFeatures.from_array(rows.text[idx], name=f"{dataset} text features"),
        tuple(rows.ids[i] for i in idx),
        {"source": source},
    )
