"""The feature-array reader shared by the loaders of pre-extracted cross-modal features
(XMediaNet, NUS-WIDE and any DSCMR/DCMH-style file): finding the feature files of a folder,
reading their arrays (``.mat`` v5 and v7.3, ``.h5``/``.h5py``, ``.npz``), telling their layout
(per-split keys, one array with split marks, DSCMR's one-file-per-array, DCMH's ``XAll``/``YAll``
/``LAll``, five-view cells) and cutting them into splits; :mod:`gcrdp.data.formats.featurerows`
decodes their labels and class names into rows. The datasets' own modules
(:mod:`gcrdp.data.formats.xmedianet`, :mod:`gcrdp.data.formats.nuswide`) hold only what is theirs.
Layouts are described in :mod:`gcrdp.data.formats.xmedianet`'s docstring and docs/datasets.md."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from ...errors import ConfigError, DataError, GcrdpError, format_list
from .arrays import read_arrays

FEATURE_EXTENSIONS = (".mat", ".h5", ".hdf5", ".h5py", ".npz", ".npy")
FILE_SPLITS = ("train", "valid", "test")
ROLES = ("image", "text", "label", "text_label")
_LONG = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}
_SHORT = {"train": ("tr",), "valid": ("val", "va"), "test": ("te",)}

#: Key conventions of the split layouts ({L}: train/valid/val/test, {S}: tr/val/te), in order.
SPLIT_KEYS = {
    "image": (
        "{L}_img",
        "{L}_imgs_deep",
        "{L}_img_deep",
        "{L}_imgs",
        "img_{L}",
        "image_{L}",
        "{L}_image",
        "{L}_images",
        "I_{S}",
        "{S}_img",
        "img_{S}",
    ),
    "text": (
        "{L}_txt",
        "{L}_text",
        "{L}_texts",
        "{L}_txt_deep",
        "text_{L}",
        "txt_{L}",
        "{L}_texts_deep",
        "{L}_texts_doc",
        "{L}_text_doc",
        "{L}_txt_doc",
        "T_{S}",
        "{S}_txt",
        "txt_{S}",
    ),
    "label": (
        "{L}_img_lab",
        "{L}_imgs_labels",
        "{L}_img_labels",
        "{L}_img_label",
        "label_{L}",
        "labels_{L}",
        "lab_{L}",
        "{L}_label",
        "{L}_labels",
        "{L}_lab",
        "{L}_labs",
        "L_{S}",
        "{S}_img_lab",
        "{S}_lab",
    ),
    "text_label": (
        "{L}_txt_lab",
        "{L}_texts_labels",
        "{L}_text_labels",
        "{L}_txt_labels",
        "{L}_txt_label",
        "text_label_{L}",
        "label_text_{L}",
        "{S}_txt_lab",
    ),
}
#: Labels of every split in one array, rows in split order (train, valid, test), beside per-split
#: features (``XMediaNetFeatures.mat``: ``I_tr``/``I_te``/``T_tr``/``T_te`` with ``I_labs``/``T_labs``).
JOINT_LABEL_KEYS = {
    "label": ("I_labs", "I_labels", "img_labs", "image_labs"),
    "text_label": ("T_labs", "T_labels", "txt_labs", "text_labs"),
}
#: Key conventions of one set of all pairs plus a split (DCMH ``XAll``/``YAll``/``LAll`` …).
SINGLE_KEYS = {
    "image": ("XAll", "I_all", "img_all", "image_all", "image", "img", "images", "image_features", "img_feats"),
    "text": ("YAll", "TAll", "T_all", "txt_all", "text_all", "text", "txt", "texts", "tags", "text_features", "txt_feats"),
    "label": ("LAll", "L_all", "label_all", "labels", "label", "lab", "y"),
    "text_label": ("text_labels", "text_label", "txt_lab"),
}
SPLIT_MARKS = {
    "split": ("split", "splits"),
    "is_test": ("is_test", "test_mask"),
    "is_train": ("is_train", "train_mask"),
    "train_index": ("train_idx", "idx_train", "train_index", "train_ind", "train_indices"),
    "test_index": ("test_idx", "idx_test", "test_index", "test_ind", "test_indices"),
}
_DSCMR_FILE = re.compile(r"^(train|valid|val|test)_(img|txt|img_lab|txt_lab)$", re.I)
_DCMH_FILE = re.compile(r"(xall|yall|lall)", re.I)
_TC_TAG = re.compile(r"tc-?(\d+)", re.I)


# =============================================================================== reading files
def read_feature_arrays(path: Path, *, lazy: bool = False) -> dict[str, np.ndarray]:
    """:func:`~gcrdp.data.formats.arrays.read_arrays` (which also reads ``.h5py``, the HDF5 extension
    of the Hu et al. Doc2Vec files), with any failure of the third-party readers on a damaged file
    (scipy's ``MatReadError``, an ``IndexError`` deep in a truncated ``.mat``, …) a
    :class:`DataError` naming the file instead of a traceback."""
    try:
        return read_arrays(path, lazy=lazy)
    except (GcrdpError, MemoryError):
        raise
    except Exception as exc:  # damaged files make scipy/h5py/numpy raise nearly anything
        kind = path.suffix or "feature"
        raise DataError(f"Cannot read {path}: it is damaged or not a {kind} file ({type(exc).__name__}: {exc}).") from None


def _feature_files_in(folder: Path, tag: str | None = None) -> list[Path]:
    """Feature files directly in ``folder``, leaving out raw-image arrays (``*iall*``) and,
    when ``tag`` is given and some names carry that ``tcNN`` tag, the files of other subsets."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FEATURE_EXTENSIONS and "iall" not in p.name.lower())
    if tag is not None:
        tags = {p: m.group(1) for p in files if (m := _TC_TAG.search(p.name))}
        if tag in tags.values():
            files = [p for p in files if tags.get(p, tag) == tag]
    return files


def _dscmr_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FEATURE_EXTENSIONS and _DSCMR_FILE.match(p.stem))


def _dcmh_files(folder: Path, tag: str | None, root: Path, dataset: str) -> tuple[list[Path], str]:
    """The ``.mat`` files of ``folder`` (of the ``tcNN`` tag) when they hold a DCMH set: an
    ``*xall*``, a ``*yall*`` and a ``*lall*`` file (other ``.mat`` files, e.g. a split, join),
    and which set (``""``, or ``"-clean"`` for the ``*-clean.mat`` files that some copies ship
    beside or instead of the plain ones). Both sets complete in one folder: an error that names
    the ``features_file=`` list of each."""
    files = [p for p in _feature_files_in(folder, tag) if p.suffix.lower() == ".mat"]
    kind = {p: m.group(1).lower() for p in files if (m := _DCMH_FILE.search(p.stem))}
    tags = sorted({m.group(1) for p in kind if (m := _TC_TAG.search(p.name))}, key=int)
    if tag is None and len(tags) > 1:
        raise DataError(
            f"{dataset}: {folder} holds the DCMH files of {len(tags)} subsets ({', '.join(f'TC-{t}' for t in tags)}); "
            f"say which to read with subset={', '.join(repr(f'tc{t}') for t in tags)} (or name the files with features_file=)."
        )
    others = [p for p in files if p not in kind]
    sets = {
        "": [p for p in kind if "clean" not in p.stem.lower()],
        "-clean": [p for p in kind if "clean" in p.stem.lower()],
    }
    complete = {name: got for name, got in sets.items() if {"xall", "yall", "lall"} <= {kind[p] for p in got}}
    if not complete:
        return [], ""
    if len(complete) == 2:

        def rel(p: Path) -> str:
            return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

        options = "; or ".join(
            f"features_file={json.dumps([rel(p) for p in sorted(got + others)])} ({'the ' + name[1:] if name else 'the plain'} files)"
            for name, got in complete.items()
        )
        raise DataError(
            f"{dataset}: {folder} holds two DCMH feature sets: the plain files and the '-clean' ones "
            "(another version of the same benchmark with other rows). Name the set to read "
            f"(on the command line: --dataset-option 'features_file=[…]'): {options}."
        )
    name, got = next(iter(complete.items()))
    return sorted(got + others), name


class NoFeatureFiles(DataError):
    """:func:`find_feature_files` found none of the forms it knows (a loader may then try another
    source before reporting it)."""


def find_feature_files(
    root: Path,
    features_file: str | Path | Sequence[str | Path] | None,
    *,
    known: Sequence[str],
    dataset: str,
    tag: str | None = None,
    name_hint: str | None = None,
) -> tuple[list[Path], str]:
    """The feature files to read and how they were found.

    ``features_file`` (a file, a folder or a list of them; relative paths are tried as given,
    then under ``root``) wins; else, in ``root`` then ``root/features``: the first of ``known``
    file names, a DSCMR folder (``{split}_img.mat`` …), DCMH files (``*xall*``, ``*yall*``,
    ``*lall*`` ``.mat`` and the other ``.mat`` files beside them, filtered by the ``tcNN``
    ``tag``; the plain or the ``-clean`` set), the one feature file whose name contains
    ``name_hint`` (case-insensitive; several: an error listing them)."""
    if features_file is not None:
        return _given_files(root, features_file, dataset, tag), "features_file"
    found = _known_files(root, known, dataset, tag)
    if found is None and name_hint is not None:
        found = _hinted_files(root, name_hint, dataset)
    if found is not None:
        return found
    raise NoFeatureFiles(
        f"{dataset}: no feature files under {root} (or {root / 'features'}): looked for "
        f"{', '.join(known)}, a DSCMR folder (train_img.mat, train_txt.mat, train_img_lab.mat, "
        "test_…) and DCMH files (*-xall*.mat, *-yall*.mat, *-lall*.mat). Pass features_file= "
        "(a file, a folder or a list of files)."
    )


def _given_files(root: Path, features_file: str | Path | Sequence[str | Path], dataset: str, tag: str | None) -> list[Path]:
    """The files ``features_file`` names (folders: their feature files)."""
    entries: list[str | Path] = list(features_file) if isinstance(features_file, (list, tuple)) else [cast("str | Path", features_file)]
    if not entries:
        raise ConfigError(f"{dataset}: features_file is an empty list.")
    paths: list[Path] = []
    for e in entries:
        p = Path(e).expanduser()
        if not p.is_absolute() and not p.exists():
            p = root / p
        if not p.exists():
            raise DataError(f"{dataset}: features file not found: {p}")
        if not p.is_dir():
            paths.append(p)
            continue
        got = _feature_files_in(p, tag)
        if not got:
            raise DataError(f"{dataset}: feature folder {p} holds no feature file ({', '.join(FEATURE_EXTENSIONS)}).")
        paths.extend(got)
    return paths


def _known_files(root: Path, known: Sequence[str], dataset: str, tag: str | None) -> tuple[list[Path], str] | None:
    """In ``root`` then ``root/features``: a known file, a DSCMR folder or DCMH files."""
    for d in (root, root / "features"):
        if not d.is_dir():
            continue
        for name in known:
            if (d / name).is_file():
                return [d / name], name
        got = _dscmr_files(d)
        if got:
            return got, f"DSCMR folder {d}"
        got, variant = _dcmh_files(d, tag, root, dataset)
        if got:
            return got, f"DCMH{' ' + variant[1:] if variant else ''} files in {d}"
    return None


def _hinted_files(root: Path, name_hint: str, dataset: str) -> tuple[list[Path], str] | None:
    """The one feature file whose name contains ``name_hint`` (several: an error)."""
    for d in (root, root / "features"):
        if not d.is_dir():
            continue
        hinted = [p for p in _feature_files_in(d) if name_hint.lower() in p.name.lower()]
        if len(hinted) == 1:
            return hinted, f"the one *{name_hint}* file in {d}"
        if len(hinted) > 1:
            raise DataError(
                f"{dataset}: {d} holds {len(hinted)} feature files named *{name_hint}*: "
                f"{', '.join(p.name for p in hinted)}. Name the one to read with features_file= "
                "(a file, or a list of files read together)."
            )
    return None


@dataclass
class Arrays:
    """The arrays of one or more feature files: ``arrays`` by key, ``origin`` key → file;
    ``ambiguous`` keys found in several files (left out; name the files to use)."""

    arrays: dict[str, np.ndarray]
    origin: dict[str, Path]
    files: list[Path]
    ambiguous: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> str:
        if len(self.files) == 1:
            return str(self.files[0])
        return f"{self.files[0].parent} ({', '.join(p.name for p in self.files)})"

    def where(self, key: str) -> str:
        f = self.origin.get(key)
        return f"{f.name}:{key}" if f is not None and len(self.files) > 1 else key

    def listing(self) -> str:
        have = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in sorted(self.arrays.items())) or "(none)"
        if self.ambiguous:
            have += "; in several files (left out): " + ", ".join(f"{k} ({', '.join(v)})" for k, v in sorted(self.ambiguous.items()))
        return have

    def get(self, key: str) -> tuple[str, np.ndarray] | None:
        lower = {k.lower(): k for k in self.arrays}
        real = lower.get(key.lower())
        return (real, self.arrays[real]) if real is not None else None

    def first(self, candidates: Sequence[str], numeric: bool = True) -> tuple[str, np.ndarray] | None:
        for key in candidates:
            got = self.get(key)
            if got is not None and (not numeric or np.asarray(got[1]).dtype.kind in "fiub"):
                return got
        return None

    def require(self, key: str, what: str) -> tuple[str, np.ndarray]:
        got = self.get(key)
        if got is None:
            raise DataError(f"{self.describe()} has no array {key!r} ({what}); it has {self.listing()}.")
        return got


def collect_arrays(files: Sequence[Path]) -> Arrays:
    """Read ``files`` into one :class:`Arrays`. A file holding a single array is also reachable
    under its file stem (the DSCMR convention, e.g. ``train_img.mat``). A key found in two
    files is left out (``ambiguous``) rather than silently taken from one of them."""
    arrays: dict[str, np.ndarray] = {}
    origin: dict[str, Path] = {}
    lower: dict[str, str] = {}
    ambiguous: dict[str, list[str]] = {}
    amb_lower: dict[str, str] = {}
    for f in files:
        got = read_feature_arrays(f)
        named = dict(got)
        if len(got) == 1 and f.stem.lower() not in {k.lower() for k in got}:
            named[f.stem] = next(iter(got.values()))
        for k, v in named.items():
            low = k.lower()
            if low in amb_lower:
                ambiguous[amb_lower[low]].append(f.name)
                continue
            if low in lower:
                real = lower.pop(low)
                ambiguous[real] = [origin[real].name, f.name]
                amb_lower[low] = real
                del arrays[real], origin[real]
                continue
            lower[low] = k
            arrays[k] = v
            origin[k] = f
    return Arrays(arrays, origin, list(files), ambiguous)


# =============================================================================== layouts
@dataclass
class Part:
    """One split of the file(s): image/text features, labels (either may be ``None``), the
    key of each (for messages) and each row's sample id."""

    split: str
    image: np.ndarray
    text: np.ndarray
    label: np.ndarray | None
    text_label: np.ndarray | None
    keys: dict[str, str]
    ids: list[str]


def _check_keys(keys: Mapping[str, str] | None) -> dict[str, str]:
    if keys is None:
        return {}
    if not isinstance(keys, Mapping):
        raise ConfigError(f"keys must be a mapping role → array key, got {keys!r}.")
    allowed = set(ROLES) | set(SPLIT_MARKS) | {f"{s}_{r}" for s in FILE_SPLITS for r in ROLES}
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise ConfigError(f"Unknown keys role(s) {unknown}; known roles: {', '.join(sorted(allowed))}.")
    for k, v in keys.items():
        if not isinstance(v, str) or not v:
            raise ConfigError(f"keys[{k!r}] must be an array key (a non-empty string), got {v!r}.")
    return dict(keys)


def _templates(role: str, split: str) -> list[str]:
    out = []
    for t in SPLIT_KEYS[role]:
        for long in _LONG[split]:
            for short in _SHORT[split]:
                key = t.format(L=long, S=short)
                if key not in out:
                    out.append(key)
    return out


def _split_layout(src: Arrays, keys: dict[str, str]) -> dict[str, dict[str, tuple[str, np.ndarray]]]:
    found: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for split in FILE_SPLITS:
        got: dict[str, tuple[str, np.ndarray]] = {}
        for role in ROLES:
            explicit = keys.get(f"{split}_{role}")
            hit = src.require(explicit, f"{split} {role}") if explicit else src.first(_templates(role, split))
            if hit is not None:
                got[role] = hit
        if "image" in got or "text" in got:
            found[split] = got
    return found


def _joint_labels(
    src: Arrays, found: dict[str, dict[str, tuple[str, np.ndarray]]], dataset: str
) -> dict[str, dict[str, tuple[str, np.ndarray]]]:
    """Labels of every split in one array (:data:`JOINT_LABEL_KEYS`), cut into the splits in
    file order (train, valid, test) — used only when no split has label arrays of its own."""
    if any("label" in got or "text_label" in got for got in found.values()):
        return {}
    if any("image" not in got or "text" not in got for got in found.values()):
        return {}  # a split without its features: read_parts names what is missing
    hits = {role: src.first(JOINT_LABEL_KEYS[role]) for role in JOINT_LABEL_KEYS}
    if not any(hits.values()):
        return {}
    order = [s for s in FILE_SPLITS if s in found and "image" in found[s]]
    sizes = [rows_of(np.asarray(found[s]["image"][1])) for s in order]
    total = sum(sizes)
    out: dict[str, dict[str, tuple[str, np.ndarray]]] = {s: {} for s in order}
    for role, hit in hits.items():
        if hit is None:
            continue
        key, arr = hit
        a = _take(arr, np.arange(total), total)
        if a.shape[0] != total:
            shape = np.shape(arr)
            have = int(np.prod(shape)) if len(shape) == 2 and min(shape) == 1 else (shape[0] if shape else 0)
            raise DataError(
                f"{dataset}: {src.describe()}: {src.where(key)} has {have} rows but the "
                + " + ".join(f"{s} {found[s]['image'][0]} {n}" for s, n in zip(order, sizes))
                + f" = {total} pairs; it must hold the labels of every split in that order. Name the label "
                "arrays with keys= (train_label, test_label, …)."
            )
        start = 0
        for s, n in zip(order, sizes):
            out[s][role] = (f"{key}[{start}:{start + n}]", a[start : start + n])
            start += n
    return out


def _cells(arr: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(x) for x in np.asarray(arr, dtype=object).reshape(-1)]


def _check_rows(parts: list[Part], src: Arrays, dataset: str) -> None:
    for p in parts:
        n = {p.keys["image"]: rows_of(p.image), p.keys["text"]: rows_of(p.text)}
        for role in ("label", "text_label"):
            arr = getattr(p, role)
            if arr is not None:
                n[p.keys[role]] = _label_rows(arr, rows_of(p.image))
        if len(set(n.values())) != 1:
            raise DataError(
                f"{dataset}: {src.describe()}: the {p.split} arrays disagree in rows: "
                + ", ".join(f"{k} {v}" for k, v in n.items())
                + "; row i of each must be the same image–text pair."
            )
    for role in ("image", "text"):
        dims = {(p.split, getattr(p, role).shape[1:]) for p in parts}
        if len({d for _, d in dims}) != 1:
            raise DataError(
                f"{dataset}: {src.describe()}: the {role} feature sizes differ between splits: "
                + ", ".join(f"{s} {d}" for s, d in sorted(dims))
                + "."
            )


def rows_of(arr: np.ndarray) -> int:
    """Rows of a feature array (0 for a scalar)."""
    return int(arr.shape[0]) if arr.ndim else 0


def _label_rows(arr: np.ndarray, n: int) -> int:
    a = np.asarray(arr)
    if a.ndim == 2 and a.shape[0] != n and a.shape[1] == n:
        return n  # a (1, n) row of ids, or a (C, n) transposed matrix
    return int(a.shape[0]) if a.ndim else 0


def _features(arr: np.ndarray, key: str, src: Arrays) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype.kind not in "fiub":
        raise DataError(f"{src.describe()}: {key} must hold numbers, got dtype {a.dtype}.")
    if a.ndim == 4:
        raise DataError(
            f"{src.describe()}: {key} has shape {a.shape}: raw images (h×w×c×n, e.g. "
            "DCMH IAll), not features. Use feature arrays (e.g. XAll), or the raw "
            "source with the image files."
        )
    if a.ndim not in (2, 3):
        raise DataError(f"{src.describe()}: {key} must be (n, d) features, got shape {a.shape}.")
    return a


def read_parts(src: Arrays, *, keys: Mapping[str, str] | None = None, test_size: int | None = None, dataset: str) -> tuple[list[Part], str]:
    """The splits (``train``, ``valid``, ``test``) of ``src`` and the layout's name.

    Layouts, in order: split keys (``keys`` roles ``{split}_{role}`` or :data:`SPLIT_KEYS`),
    five-view cells (``train``/``test`` cell arrays, view 0 image, view 1 text), one set of
    all pairs (:data:`SINGLE_KEYS`) split by a split array (:data:`SPLIT_MARKS`) or by
    ``test_size`` (the last ``test_size`` rows are test)."""
    keys = _check_keys(keys)
    explicit_split = any("_" in k and k.split("_", 1)[0] in FILE_SPLITS and k not in SPLIT_MARKS for k in keys)
    explicit_single = any(k in ROLES or k in SPLIT_MARKS for k in keys)
    if explicit_split and explicit_single:
        raise ConfigError("keys mixes per-split roles (train_image, …) with one-set roles (image, split, …); use one kind.")
    parts: list[Part] = []
    if not explicit_single:
        found = _split_layout(src, keys)
        if found:
            joint = _joint_labels(src, found, dataset)
            for split in FILE_SPLITS:
                got = found.get(split)
                if got is None:
                    if split == "valid":
                        continue
                    raise DataError(
                        f"{dataset}: {src.describe()} has {', '.join(found)} arrays but "
                        f"no {split} image/text arrays (looked for "
                        f"{' or '.join(_templates('image', split)[:4])} …); it has {src.listing()}."
                    )
                missing = [r for r in ("image", "text") if r not in got]
                if "label" not in got and "text_label" not in got and joint:
                    got.update(joint.get(split, {}))
                if "label" not in got and "text_label" not in got:
                    missing.append("label")
                if missing:
                    raise DataError(
                        f"{dataset}: the {split} split of {src.describe()} has no "
                        f"{' and no '.join(missing)} array (looked for "
                        + "; ".join(f"{r}: {', '.join(_templates(r, split)[:5])} …" for r in missing)
                        + f"); it has {src.listing()}. Name them with keys=."
                    )
                n = rows_of(np.asarray(got["image"][1]))
                parts.append(
                    Part(
                        split,
                        _features(got["image"][1], got["image"][0], src),
                        _features(got["text"][1], got["text"][0], src),
                        got["label"][1] if "label" in got else None,
                        got["text_label"][1] if "text_label" in got else None,
                        {r: src.where(got[r][0]) for r in got},
                        [f"{split}-{i:06d}" for i in range(n)],
                    )
                )
            _check_rows(parts, src, dataset)
            return parts, "split keys + labels of all splits in one array" if joint else "split keys"
        if explicit_split:
            raise DataError(f"{dataset}: keys= names no image or text array found in {src.describe()}.")
        cell_train = src.get("train")
        if cell_train is not None and np.asarray(cell_train[1]).dtype.kind == "O":
            return _cell_layout(src, dataset), "five-view cells"
    return _single_layout(src, keys, test_size, dataset), "one set + split"


def _cell_layout(src: Arrays, dataset: str) -> list[Part]:
    parts = []
    for split in FILE_SPLITS:
        got = next((src.get(k) for k in _LONG[split] if src.get(k) is not None), None)
        if got is None:
            if split == "valid":
                continue
            raise DataError(f"{dataset}: {src.describe()} has cell arrays but no {split!r} cell; it has {src.listing()}.")
        views = _cells(got[1])
        lab_key = next((f"{k}_labels" for k in _LONG[split] if src.get(f"{k}_labels") is not None), None)
        if len(views) < 2 or lab_key is None:
            raise DataError(
                f"{dataset}: {src.describe()}: the {got[0]!r} cell needs an image (view 0) "
                f"and a text (view 1) array and a {got[0]}_labels cell; it has {len(views)} "
                f"view(s) and labels {'found' if lab_key else 'missing'}."
            )
        lab_hit = src.get(lab_key)
        assert lab_hit is not None  # lab_key was chosen because it exists
        labs = _cells(lab_hit[1])
        n = rows_of(views[0])
        parts.append(
            Part(
                split,
                _features(views[0], f"{got[0]}{{1}}", src),
                _features(views[1], f"{got[0]}{{2}}", src),
                labs[0],
                labs[1] if len(labs) > 1 else None,
                {"image": f"{got[0]}{{1}}", "text": f"{got[0]}{{2}}", "label": f"{lab_key}{{1}}", "text_label": f"{lab_key}{{2}}"},
                [f"{split}-{i:06d}" for i in range(n)],
            )
        )
    _check_rows(parts, src, dataset)
    return parts


def _index_rows(idx: np.ndarray, n: int, key: str, src: Arrays) -> np.ndarray:
    a = np.asarray(idx).reshape(-1)
    if a.dtype.kind == "f" and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise DataError(f"{src.describe()}: {key} must hold row indices, got dtype {a.dtype}.")
    a = a.astype(np.int64)
    matlab = src.origin.get(key, Path("x")).suffix.lower() == ".mat"
    one_based = a.size and a.min() >= 1 and (matlab or a.max() == n)
    if one_based:
        a = a - 1
    if a.size and (a.min() < 0 or a.max() >= n):
        raise DataError(
            f"{src.describe()}: {key} holds row indices outside the {n} rows ({'1' if one_based else '0'}-based: {a.min()}..{a.max()})."
        )
    return a


def _single_layout(src: Arrays, keys: dict[str, str], test_size: int | None, dataset: str) -> list[Part]:
    """All pairs in one set of arrays, split by a split array (or the last ``test_size`` rows)."""
    got = _single_arrays(src, keys, dataset)
    image = _features(got["image"][1], got["image"][0], src)
    text = _features(got["text"][1], got["text"][0], src)
    n = rows_of(image)
    found = _marked_split(src, keys, n, dataset)
    if found is None:
        if test_size is None:
            raise DataError(
                f"{dataset}: {src.describe()} holds all pairs in one set ({got['image'][0]}, "
                f"{got['text'][0]}) with no split array ({', '.join(m for v in SPLIT_MARKS.values() for m in v[:2])}). "
                "Pass test_size=N to make the last N rows the test pairs (the DCMH/DSCMR convention: "
                "2100 for NUS-WIDE TC-10/TC-21), or add a split array."
            )
        if isinstance(test_size, bool) or not isinstance(test_size, int) or not 0 < test_size < n:
            raise ConfigError(f"test_size must be an integer in 1..{n - 1}, got {test_size!r}.")
        found = np.array(["train"] * (n - test_size) + ["test"] * test_size, dtype=object), f"last {test_size} rows are test"
    split, how = found
    parts = []
    for s in ("train", "test"):
        rows = np.flatnonzero(split == s)
        parts.append(
            Part(
                s,
                image[rows],
                text[rows],
                _take(got["label"][1], rows, n) if "label" in got else None,
                _take(got["text_label"][1], rows, n) if "text_label" in got else None,
                {r: src.where(got[r][0]) for r in got} | {"split": how},
                [f"row-{i:06d}" for i in rows],
            )
        )
    lengths = {src.where(got[r][0]): _label_rows(got[r][1], n) if r in ("label", "text_label") else rows_of(got[r][1]) for r in got}
    if len(set(lengths.values())) != 1:
        raise DataError(
            f"{dataset}: {src.describe()}: the arrays disagree in rows: "
            + ", ".join(f"{k} {v}" for k, v in lengths.items())
            + "; row i of each must be the same image–text pair."
        )
    return parts


def _single_arrays(src: Arrays, keys: dict[str, str], dataset: str) -> dict[str, tuple[str, np.ndarray]]:
    """The arrays of all pairs by role (image, text and image or text labels at least)."""
    got = {}
    for role in ROLES:
        explicit = keys.get(role)
        hit = src.require(explicit, role) if explicit else src.first(SINGLE_KEYS[role])
        if hit is not None:
            got[role] = hit
    if "image" in got and "text" in got and ("label" in got or "text_label" in got):
        return got
    raw = src.first(("IAll", "I_all_raw"))
    extra = (f" ({raw[0]} holds raw images, not features: this loader reads image features such as XAll)") if raw is not None else ""
    raise DataError(
        f"{dataset}: cannot tell the layout of {src.describe()}{extra}: found no split arrays "
        f"(e.g. {', '.join(_templates('image', 'train')[:4])}), no five-view cells and no "
        f"complete set of all pairs (image: {', '.join(SINGLE_KEYS['image'][:4])} …; text: "
        f"{', '.join(SINGLE_KEYS['text'][:4])} …; label: {', '.join(SINGLE_KEYS['label'][:4])} …). "
        f"It has {src.listing()}. "
        + (
            "Some keys are in several of the files read together: name the files to read with features_file=."
            if src.ambiguous
            else "Name the arrays with keys=."
        )
    )


def _marked_split(src: Arrays, keys: dict[str, str], n: int, dataset: str) -> tuple[np.ndarray, str] | None:
    """``(train/test per row, where from)`` from the first split array found, or ``None``."""
    for mark in SPLIT_MARKS:
        explicit = keys.get(mark)
        hit = src.require(explicit, mark) if explicit else src.first(SPLIT_MARKS[mark], numeric=False)
        if hit is None:
            continue
        if mark in ("train_index", "test_index"):
            return _index_split(src, keys, mark, hit[0], n, dataset)
        k, arr = hit
        a = np.asarray(arr).reshape(-1)
        if a.shape[0] != n:
            raise DataError(f"{dataset}: {src.describe()}: {k} has {a.shape[0]} entries for {n} rows.")
        if a.dtype.kind in "USO":
            return _named_split(a, k, src, dataset), src.where(k)
        if not np.isin(a, (0, 1)).all():
            raise DataError(
                f"{dataset}: {src.describe()}: {k} must be 0/1 "
                f"({'1 = test' if mark != 'is_train' else '1 = train'}) or the strings "
                "'train'/'test'."
            )
        is_test = (a == 1) if mark != "is_train" else (a == 0)
        return np.where(is_test, "test", "train").astype(object), src.where(k)
    return None


def _index_split(src: Arrays, keys: dict[str, str], mark: str, k: str, n: int, dataset: str) -> tuple[np.ndarray, str]:
    """The split of a pair of train/test row-index arrays (``mark`` found as ``k``)."""
    other = "test_index" if mark == "train_index" else "train_index"
    o = src.require(keys[other], other) if keys.get(other) else src.first(SPLIT_MARKS[other])
    tr_key, te_key = (k, o[0] if o else None) if mark == "train_index" else (o[0] if o else None, k)
    if tr_key is None or te_key is None:
        raise DataError(f"{dataset}: {src.describe()} has {k} but no {other.replace('_', ' ')} array ({', '.join(SPLIT_MARKS[other])}).")
    tr = _index_rows(src.arrays[tr_key], n, tr_key, src)
    te = _index_rows(src.arrays[te_key], n, te_key, src)
    both = np.intersect1d(tr, te)
    if both.size:
        raise DataError(f"{dataset}: {src.describe()}: rows {both[:5].tolist()} are in both {tr_key} and {te_key}.")
    split = np.full(n, "", dtype=object)
    split[tr] = "train"
    split[te] = "test"
    return split, f"{src.where(tr_key)} / {src.where(te_key)}"


_SPLIT_WORDS = {
    "train": "train",
    "tr": "train",
    "training": "train",
    "test": "test",
    "te": "test",
    "query": "test",
    "": "",
    "none": "",
    "unused": "",
}


def _named_split(a: np.ndarray, k: str, src: Arrays, dataset: str) -> np.ndarray:
    """A split array of strings (``train``/``tr``/``training``, ``test``/``te``/``query``;
    ``""``/``none``/``unused``: neither)."""
    vals = [(x.decode() if isinstance(x, bytes) else str(x)).strip().lower() for x in a.tolist()]
    vals = [_SPLIT_WORDS.get(v, v) for v in vals]
    bad = sorted({v for v in vals if v not in ("train", "test", "")})
    if bad:
        raise DataError(f"{dataset}: {src.describe()}: {k} holds {format_list(bad)}; expected 'train' or 'test'.")
    return np.array(vals, dtype=object)


def _take(labels: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim == 2 and a.shape[0] != n and a.shape[1] == n:
        a = a.T
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.shape[0] != n:
        return a  # the length check reports it
    return a[rows]
