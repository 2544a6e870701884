"""DSCMR-style feature folders (dataset ``dscmr``), as used by DSCMR (Zhen et al., CVPR 2019)
and the code that copied it for Pascal Sentence, Wikipedia, NUS-WIDE and XMediaNet.

One ``.mat`` (or ``.npy``/``.h5``) file per array, the key equal to the file stem::

    {split}_img.mat      key {split}_img      (n, d_img) image features (e.g. VGG19 fc7)
    {split}_txt.mat      key {split}_txt      (n, d_txt) text features, row i paired with image i
    {split}_img_lab.mat  key {split}_img_lab  (n, 1) class ids, or (n, C) multi-hot
    {split}_txt_lab.mat  (optional)           the text labels; must equal the image labels

for ``split`` in ``train`` and ``test`` (a ``valid``/``val`` split, when present, is added to
``train``: the protocol carves its own validation pairs out of ``train``; ``meta`` records it).
A split whose files are incomplete is an error naming the missing file. A key other than the
stem is accepted when the file holds exactly one array.

Class names: ``class_names`` (a list, or a text file with one name a line, line i = id i for
0-based ids) or the ids as strings. With names, ids are taken as 0-based (as DSCMR writes
them) unless they run exactly from 1 to the number of names; ``label_base=0`` or ``1`` says it
explicitly. Sample ids: ``{split}-{row:06d}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ...errors import ConfigError, DataError
from ..features import FeatureSet, ModalityFeatures
from ..problems import Problems
from ..registry import load_dataset, register_reader
from ..types import Dataset, Sample
from .arrays import as_label_vector, as_multi_hot, read_arrays
from .build import RawDataset, SeededSplit

PARTS = ("img", "txt", "img_lab")
_EXTS = (".mat", ".npy", ".h5")
_VALID = ("valid", "val")


def _find(folder: Path, stem: str) -> Path | None:
    for ext in _EXTS:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def _read_one(path: Path) -> np.ndarray:
    arrays = read_arrays(path)
    if path.stem in arrays:
        return arrays[path.stem]
    numeric = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray) and v.dtype.kind in "fiub"}
    if len(numeric) == 1:
        return next(iter(numeric.values()))
    raise DataError(
        f"{path} has no array under the key {path.stem!r} (DSCMR files use the file stem as key); it has {sorted(arrays) or '(none)'}."
    )


def read_dscmr_split(folder: Path, split: str) -> dict[str, np.ndarray] | None:
    """``{"img", "txt", "img_lab"[, "txt_lab"]}`` of one split, ``None`` when none of its files
    exist. Raises :class:`DataError` naming the missing file of an incomplete split, or rows
    that disagree in number."""
    found = {p: _find(folder, f"{split}_{p}") for p in (*PARTS, "txt_lab")}
    if not any(found[p] for p in PARTS):
        return None
    missing = [f"{split}_{p}.mat" for p in PARTS if found[p] is None]
    if missing:
        present = ", ".join(cast(Path, found[p]).name for p in PARTS if found[p] is not None)
        raise DataError(f"DSCMR folder {folder}: split {split!r} is incomplete: missing {', '.join(missing)} (found {present}).")
    out = {p: _read_one(path) for p, path in found.items() if path is not None}
    n = {cast(Path, found[p]).name: int(np.shape(v)[0]) if np.ndim(v) else 0 for p, v in out.items()}
    for p in ("img", "txt"):
        if out[p].ndim != 2:
            raise DataError(f"DSCMR folder {folder}: {cast(Path, found[p]).name} must be (n, d), got shape {out[p].shape}.")
    if len(set(n.values())) != 1:
        raise DataError(
            f"DSCMR folder {folder}: the {split} files disagree in rows: "
            + ", ".join(f"{k} {v}" for k, v in n.items())
            + "; row i of each must be the same pair."
        )
    return out


def _labels(arr: np.ndarray, path: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2 and a.shape[1] > 1 and a.shape[0] > 1:
        return as_multi_hot(a, path)
    return as_label_vector(a, path)


def _class_names(class_names: Sequence[str] | str | Path | None) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, (str, Path)):
        p = Path(class_names).expanduser()
        if not p.is_file():
            raise DataError(f"class_names file not found: {p}")
        names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    else:
        names = [str(c) for c in class_names]
    if len(set(names)) != len(names):
        raise DataError("class_names lists a name twice.")
    return names


def read_dscmr_folder(
    folder: str | Path,
    *,
    name: str,
    class_names: Sequence[str] | str | Path | None = None,
    splits: Sequence[str] = ("train", "test"),
    label_base: int | None = None,
    resplit: float | None = None,
) -> RawDataset:
    """What a DSCMR-style folder holds (see the module docstring); ``splits`` are the splits that
    must be present (``("test",)`` reads a folder that has only its test files).

    ``resplit``: pool the pairs read and split them again per class, this share to test (drawn
    with ``split_seed`` when the dataset is finished, :class:`~gcrdp.data.formats.build.SeededSplit`)
    — for a folder whose only split is ``test``; results are then not comparable with the
    official split (``meta["resplit"]`` records it)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"DSCMR feature folder not found: {folder}")
    splits = tuple(splits)
    if not splits or any(s not in ("train", "test") for s in splits):
        raise ConfigError(f"splits must be 'train' and/or 'test', got {list(splits)}.")
    names = _class_names(class_names)
    if label_base not in (None, 0, 1) or isinstance(label_base, bool):
        raise ConfigError(f"label_base must be 0, 1 or None (guess), got {label_base!r}.")
    parts = _read_splits(folder, splits)
    merged_valid = _merge_valid(folder, parts) if "train" in parts else None
    problems = Problems(f"DSCMR folder {folder}")
    dims = {(p["img"].shape[1], p["txt"].shape[1]) for p in parts.values()}
    if len(dims) != 1:
        raise DataError(
            f"DSCMR folder {folder}: feature dimensions differ between splits: "
            + ", ".join(f"{s} image {p['img'].shape[1]} text {p['txt'].shape[1]}" for s, p in parts.items())
        )
    per_split = {split: _split_labels(folder, split, p, problems) for split, p in parts.items()}
    if len({lab.ndim == 2 for lab in per_split.values()}) != 1:
        raise DataError(f"DSCMR folder {folder}: labels are class ids in one split and multi-hot in another.")
    multi = next(iter(per_split.values())).ndim == 2
    classes, base = _multi_hot_classes(folder, per_split, names) if multi else _id_classes(folder, per_split, names, label_base)
    samples = [s for split, lab in per_split.items() for s in _split_samples(split, lab, classes, base, names is not None, problems)]
    used = {lab for s in samples for lab in s.labels}
    feats = FeatureSet(
        ModalityFeatures.from_array(np.concatenate([p["img"] for p in parts.values()]), name="image features"),
        ModalityFeatures.from_array(np.concatenate([p["txt"] for p in parts.values()]), name="text features"),
        tuple(s.id for s in samples),
        {"source": str(folder.resolve())},
    )
    meta = {
        "source": str(folder.resolve()),
        "format": "dscmr",
        "splits": list(parts),
        "valid_merged_into_train": merged_valid,
        "label_base": base,
        "class_names": "given" if names is not None else "label ids",
        "named_classes_without_rows": [c for c in classes if c not in used],
        "resplit": None if resplit is None else f"pooled and re-split per class, test share {resplit}, seed {{seed}}",
    }
    seeded = None if resplit is None else SeededSplit([(x.labels[0], x.id) for x in samples], test_fraction=resplit, notes=("resplit",))
    return RawDataset(name, samples, [c for c in classes if c in used], problems, features=feats, meta=meta, seeded_split=seeded)


def _read_splits(folder: Path, splits: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    parts: dict[str, dict[str, np.ndarray]] = {}
    for split in splits:
        got = read_dscmr_split(folder, split)
        if got is None:
            raise DataError(
                f"DSCMR folder {folder}: split {split!r} is missing: no "
                f"{split}_img.mat, {split}_txt.mat or {split}_img_lab.mat. Pass "
                f"splits={[s for s in splits if s != split]} to load the others."
            )
        parts[split] = got
    return parts


def _merge_valid(folder: Path, parts: dict[str, dict[str, np.ndarray]]) -> str | None:
    """Add the first ``valid``/``val`` split found to ``train``; its name, or ``None``."""
    for v in _VALID:
        got = read_dscmr_split(folder, v)
        if got is None:
            continue
        tr = parts["train"]
        if "txt_lab" in tr or "txt_lab" in got:  # one side without text labels: its image labels
            tr.setdefault("txt_lab", tr["img_lab"])
            got.setdefault("txt_lab", got["img_lab"])
        merged = {}
        for k in tr:
            a, b = np.asarray(tr[k]), np.asarray(got[k])
            if a.ndim != b.ndim or a.shape[1:] != b.shape[1:]:
                raise DataError(
                    f"DSCMR folder {folder}: the {v} split cannot be merged into train: "
                    f"{v}_{k} has shape {b.shape} but train_{k} has {a.shape}."
                )
            merged[k] = np.concatenate([a, b])
        parts["train"] = merged
        return v
    return None


def _split_labels(folder: Path, split: str, p: dict[str, np.ndarray], problems: Problems) -> np.ndarray:
    """The image labels of one split; text labels, when given, must equal them."""
    lab = _labels(p["img_lab"], f"{split}_img_lab")
    if "txt_lab" in p:
        tl = _labels(p["txt_lab"], f"{split}_txt_lab")
        if tl.shape != lab.shape:
            raise DataError(f"DSCMR folder {folder}: {split}_txt_lab has shape {tl.shape} but {split}_img_lab has {lab.shape}.")
        r: int | np.integer[Any]
        for r in np.flatnonzero((tl != lab).reshape(len(lab), -1).any(axis=1)):
            problems.add(f"{split} row {r}", f"image and text labels disagree ({lab[r].tolist()} vs {tl[r].tolist()})", f"{split}-{r:06d}")
    return lab


def _multi_hot_classes(folder: Path, per_split: dict[str, np.ndarray], names: list[str] | None) -> tuple[list[str], int]:
    n_classes = {lab.shape[1] for lab in per_split.values()}
    if len(n_classes) != 1:
        raise DataError(f"DSCMR folder {folder}: multi-hot labels with {sorted(n_classes)} columns.")
    C = n_classes.pop()
    classes = names if names is not None else [str(i) for i in range(C)]
    if len(classes) != C:
        raise DataError(f"class_names has {len(classes)} names for {C} label columns.")
    return classes, 0


def _id_classes(folder: Path, per_split: dict[str, np.ndarray], names: list[str] | None, label_base: int | None) -> tuple[list[str], int]:
    """The classes of class-id labels and the id of the first class (see the module docstring)."""
    raw_ids = {int(x) for lab in per_split.values() for x in lab}
    if names is None:
        return [str(i) for i in sorted(raw_ids)], 0 if label_base is None else label_base
    if label_base is not None:
        base = label_base
    else:  # 0-based (DSCMR) unless the ids run exactly 1..len(names)
        base = 1 if min(raw_ids) >= 1 and max(raw_ids) == len(names) else 0
    bad = sorted(i for i in raw_ids if not 0 <= i - base < len(names))
    if bad:
        raise DataError(f"DSCMR folder {folder}: class ids {bad[:5]} have no name in class_names ({len(names)} names, ids from {base}).")
    return names, base


def _split_samples(split: str, lab: np.ndarray, classes: list[str], base: int, named: bool, problems: Problems) -> list[Sample]:
    samples = []
    for r in range(len(lab)):
        if lab.ndim == 2:
            labels = tuple(classes[j] for j in np.flatnonzero(lab[r]))
        else:
            labels = (classes[int(lab[r]) - base] if named else str(int(lab[r])),)
        sid = f"{split}-{r:06d}"
        if not labels:
            problems.add(f"{split} row {r}", "no label", sid)
            labels = (classes[0],)
        samples.append(Sample(id=sid, text=None, labels=labels, split=split))
    return samples


@register_reader("dscmr")
def read_dscmr(
    root: str | Path,
    *,
    class_names: Sequence[str] | str | None = None,
    splits: Sequence[str] = ("train", "test"),
    name: str | None = None,
    label_base: int | None = None,
    resplit: float | None = None,
) -> RawDataset:
    """Any DSCMR-style feature folder (layout in the module docstring)."""
    root = Path(root).expanduser()
    return read_dscmr_folder(root, name=name or root.name, class_names=class_names, splits=splits, label_base=label_base, resplit=resplit)


def load_dscmr(root: str | Path, **options: Any) -> Dataset:
    """``load_dataset("dscmr", root=root, **options)``: :func:`read_dscmr`, finished."""
    return load_dataset("dscmr", root=root, **options)
