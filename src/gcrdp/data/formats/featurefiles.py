"""Your own pre-extracted features (dataset ``features``, option ``path``).

``path`` is one file — ``.npz``, ``.safetensors``, ``.mat`` (v5 or v7.3), ``.h5`` — or a folder
of ``.npy`` files named after the arrays (``image.npy``, ``text.npy``, ``labels.npy``, …, plus
optional ``classes.txt`` and ``ids.txt``, one entry a line). The arrays (key names are
case-insensitive; the first name found is used):

===============  ========================================================================
image            ``image``, ``image_local``, ``img``, ``image_features``, ``image_emb``:
                 (n, d) pooled-only features, or (n, L, d) sets of local features
image_mask       optional (n, L) bool, for (n, L, d) image features (default all True)
image_pooled     optional (n, d_g) global features (default: the masked mean, or the row)
text, …          the same for texts: ``text``, ``text_local``, ``txt``, ``text_features``,
                 ``text_emb``; ``text_mask``; ``text_pooled``
labels           ``labels``/``label``/``y``: (n,) class ids or class names, or (n, C) 0/1
                 multi-hot (several labels: relevance = at least one shared label)
split            optional ``split``: (n,) strings ``train``/``test``; or ``is_test``: (n,)
                 0/1. Without either, a seeded per-class split (``test_fraction``, see
                 :func:`gcrdp.data.formats.build.assign_test_split`)
classes          optional ``classes``/``class_names``: (C,) strings; class id i is
                 ``classes[i]`` (default: the ids as strings)
ids              optional ``ids``: (n,) unique strings (default ``row-000000``, …)
===============  ========================================================================

safetensors holds numbers only: put ``classes`` and ``ids`` in its string metadata as JSON
lists (``save_file(tensors, path, metadata={"classes": json.dumps([...])})``) and the split as
``is_test``. The ``.npz`` written by ``gcrdp extract --output`` loads as is.

Checks: all arrays have the same number of rows (else an error naming each array's length);
per sample — NaN/inf features, an unknown split value, no label, a class id without a name —
are problems (listed together, or left out with ``skip_bad=True``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, format_list
from ..features import FeatureSet, ModalityFeatures
from ..lazy import is_lazy
from ..problems import Problems
from ..registry import load_dataset, register_reader
from ..types import Dataset, Sample
from .arrays import as_label_vector, pick, read_safetensors_metadata
from .build import RawDataset, SeededSplit, check_test_fraction
from .featurearrays import read_feature_arrays

KEYS = {
    "image": ("image", "image_local", "img", "image_features", "image_feats", "image_emb", "img_emb", "image_embeddings"),
    "image_mask": ("image_mask", "img_mask"),
    "image_pooled": ("image_pooled", "img_pooled", "image_global"),
    "text": ("text", "text_local", "txt", "text_features", "text_feats", "text_emb", "text_embeddings"),
    "text_mask": ("text_mask", "txt_mask"),
    "text_pooled": ("text_pooled", "txt_pooled", "text_global"),
    "labels": ("labels", "label", "y"),
    "split": ("split", "splits"),
    "is_test": ("is_test",),
    "classes": ("classes", "class_names"),
    "ids": ("ids", "id", "sample_ids"),
}


def _read_source(path: Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Arrays and string lists (classes, ids from metadata or sidecar text files)."""
    lists: dict[str, list[str]] = {}
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise DataError(
                f"Feature folder {path} has no .npy files (expected image.npy, "
                "text.npy, labels.npy, optionally split.npy, classes.txt, ids.txt)."
            )
        arrays: dict[str, np.ndarray] = {}
        for f in files:
            arrays.update(read_feature_arrays(f, lazy=True))  # large .npy files stay on disk, read by row
        for name in ("classes", "ids"):
            side = path / f"{name}.txt"
            if side.is_file():
                try:
                    lists[name] = [ln.strip() for ln in side.read_text(encoding="utf-8").splitlines() if ln.strip()]
                except UnicodeDecodeError as exc:
                    raise DataError(f"{side} is not valid UTF-8 ({exc}).") from None
        return arrays, lists
    arrays = read_feature_arrays(path)
    if path.suffix.lower() == ".safetensors":
        for name, value in read_safetensors_metadata(path).items():
            if name in ("classes", "class_names", "ids"):
                try:
                    items = json.loads(value)
                    if not isinstance(items, list):
                        raise ValueError("not a list")
                except ValueError as exc:
                    raise DataError(f"{path}: metadata {name!r} must be a JSON list of strings ({exc}).") from None
                lists["classes" if name != "ids" else "ids"] = [str(x) for x in items]
    return arrays, lists


def _strings(arr: np.ndarray, path: Path, what: str) -> list[str]:
    a = np.asarray(arr).reshape(-1)
    items = a.tolist()
    if a.dtype.kind == "O":  # MATLAB cell arrays (1-element char arrays), HDF5 variable-length strings
        items = [
            (x.reshape(-1).tolist() or [""])[0] if isinstance(x, np.ndarray) and x.size <= 1 and x.dtype.kind in "US" else x for x in items
        ]
        if not all(isinstance(x, (str, bytes)) for x in items):
            raise DataError(f"{path}: {what} must be strings, got an array of objects that are not all strings.")
    elif a.dtype.kind not in "US":
        raise DataError(f"{path}: {what} must be strings, got dtype {a.dtype}.")
    # .strip(): MATLAB char matrices (scipy.io.savemat of a list of strings) pad with spaces
    out = []
    for i, x in enumerate(items):
        if isinstance(x, bytes):
            try:
                x = x.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: {what}[{i}] is not valid UTF-8 ({exc.reason} at byte {exc.start}).") from None
        out.append(str(x).strip())
    return out


def _check_mask_and_pooled(mask: tuple[str, Any] | None, pooled: tuple[str, Any] | None, path: Path) -> None:
    """A mask holds booleans or 0/1 (NaN or strings would all read as True); pooled features hold
    numbers (strings would fail deep inside NumPy)."""
    if mask is not None:
        m = mask[1]
        if m.dtype.kind not in "biuf":
            raise DataError(f"{path}: {mask[0]} must hold booleans or 0/1, got dtype {m.dtype}.")
        if m.dtype.kind != "b" and not is_lazy(m) and not np.isin(np.asarray(m), (0, 1)).all():
            raise DataError(f"{path}: {mask[0]} must hold booleans or 0/1 (1 = a valid local feature), got other values.")
    if pooled is not None and pooled[1].dtype.kind not in "fiu":
        raise DataError(f"{path}: {pooled[0]} must hold numbers, got dtype {pooled[1].dtype}.")


def _label_values(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A class-id vector with its bad entries (NaN, inf, fractions, below 0, past int64) set to 0,
    and a mask of them: each is a problem of its row, not an error of the whole file nor — past
    int64 — a silently wrapped class id."""
    a = np.asarray(lab)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1 or a.dtype.kind not in "fiu":
        return lab, np.zeros(a.shape[0] if a.ndim else 0, dtype=bool)
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(a) | (a != np.round(a)) | (a < 0) | (a >= 2.0**63)
    elif a.dtype.kind == "u":
        bad = a > np.iinfo(np.int64).max
    else:
        bad = a < 0
    if bad.any():
        a = np.where(bad, 0, a)
    return a, bad


def _modality(arrays: dict, prefix: str, path: Path) -> tuple[str, ModalityFeatures]:
    key, arr = pick(arrays, KEYS[prefix], path, f"{prefix} feature")
    mask = pick(arrays, KEYS[f"{prefix}_mask"], path, "", required=False)
    pooled = pick(arrays, KEYS[f"{prefix}_pooled"], path, "", required=False)
    _check_mask_and_pooled(mask, pooled, path)
    if is_lazy(arr):  # a large .npy file: its rows stay on disk (same values as in memory)
        if mask is not None and arr.ndim != 3:
            raise DataError(f"{path}: {mask[0]} is given but {key} is not (n, L, d) (shape {arr.shape}).")
        if arr.dtype.kind not in "fiu":
            raise DataError(f"{path}: {key} must hold numbers, got dtype {arr.dtype}.")
        return key, ModalityFeatures.from_lazy(
            arr,
            mask[1] if mask else None,
            pooled[1] if pooled else None,
            name=f"{path}: {key}",
            dtype="float16" if arr.dtype == np.float16 else "float32",
        )
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: {key} must hold numbers, got dtype {arr.dtype}.")
    if mask is not None and arr.ndim != 3:
        raise DataError(f"{path}: {mask[0]} is given but {key} is not (n, L, d) (shape {arr.shape}).")
    dtype = "float16" if arr.dtype == np.float16 else "float32"
    with np.errstate(invalid="ignore", over="ignore"):
        mf = ModalityFeatures.from_array(arr, mask[1] if mask else None, pooled[1] if pooled else None, name=f"{path}: {key}", dtype=dtype)
    return key, mf


#: A row's labels when they are not usable: ``("\0bad", value, "value")`` (not a class id) or
#: ``("\0bad", id)`` (a class id without a name); a problem of the row.
_BAD = "\0bad"


@register_reader("features")
def read_feature_files(
    path: str | Path,
    *,
    test_fraction: float = 0.2,
    name: str | None = None,
) -> RawDataset:
    """Read pre-extracted features with labels (and splits) — conventions in the module doc.

    Args:
        path: a ``.npz``/``.safetensors``/``.mat``/``.h5`` file or a folder of ``.npy`` files.
        test_fraction: share of each class's samples that are test pairs when the file has no
            split.
        name: dataset name (default: the file or folder stem).

    ``load_dataset`` adds ``split_seed`` (seed of that split and of a generated class split),
    ``class_split`` (default: generated from the class names) and ``skip_bad`` (leave bad
    samples out, listed in ``meta["skipped"]``, instead of failing).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"Features file or folder not found: {path}")
    arrays, lists = _read_source(path)
    ikey, image = _modality(arrays, "image", path)
    tkey, text = _modality(arrays, "text", path)
    lkey, labels = pick(arrays, KEYS["labels"], path, "labels")
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[0] == 1 and labels.shape[1] == len(image) != 1:
        labels = labels.reshape(-1)  # a 1 × n row: how MATLAB and scipy.io.savemat store vectors
    split_arr = pick(arrays, KEYS["split"], path, "", required=False)
    is_test = pick(arrays, KEYS["is_test"], path, "", required=False)
    if split_arr is not None and is_test is not None:
        raise DataError(f"{path} has both {split_arr[0]!r} and {is_test[0]!r}; keep one.")
    ids_arr = pick(arrays, KEYS["ids"], path, "", required=False)
    if ids_arr is not None:
        lists["ids"] = _strings(ids_arr[1], path, ids_arr[0])
    _check_lengths(
        path, {ikey: len(image), tkey: len(text), lkey: int(np.shape(labels)[0]) if np.ndim(labels) else 0}, split_arr, is_test, lists
    )
    n = len(image)
    ids, names = _ids_and_names(path, arrays, lists, n)
    problems = Problems(f"Features {path}")
    classes, per_sample = _labels(labels, lkey, names, path)
    _label_problems(per_sample, classes, ids, problems)
    splits, split_note = _splits(split_arr, is_test, path, ids, problems)
    if splits is None:
        check_test_fraction(test_fraction)
        split_note = f"seeded per-class split (test_fraction {test_fraction}, seed {{seed}})"
    for mf, what in ((image, "image"), (text, "text")):
        for i in mf.nonfinite_rows().tolist():  # streamed in chunks when the rows are on disk
            problems.add(f"row {i}", f"NaN or infinite {what} features", ids[i])
    raw = RawDataset(name or path.stem, [], [], problems, n_read=n)
    if not classes:  # no row has a usable label (each is a problem): nothing to build a dataset of
        raw.unusable = f"Features {path}: no sample has a usable label."
        return raw
    raw.samples = [
        Sample(
            id=ids[i],
            text=None,
            labels=per_sample[i] if per_sample[i] and per_sample[i][0] != _BAD else (classes[0],),
            split=splits[i] if splits is not None and splits[i] in ("train", "test") else "train",
        )
        for i in range(n)
    ]
    if splits is None:
        raw.seeded_split = SeededSplit([(labs[0] if labs else "", i) for labs, i in zip(per_sample, ids)], test_fraction, notes=("split",))
    raw.features = FeatureSet(image, text, tuple(ids), {"source": str(path.resolve())})
    used = {x for s in raw.samples for x in s.labels}
    raw.meta = {
        "source": str(path.resolve()),
        "format": "features " + (path.suffix or "npy folder"),
        "arrays": {"image": ikey, "text": tkey, "labels": lkey},
        "split": split_note,
        "split_generated": splits is None,
        "named_classes_without_rows": [c for c in classes if c not in used],
    }
    raw.classes = [c for c in classes if c in used]
    return raw


def load_feature_files(path: str | Path, **options: Any) -> Dataset:
    """``load_dataset("features", path=path, **options)``: :func:`read_feature_files`, finished."""
    return load_dataset("features", path=path, **options)


def _check_lengths(
    path: Path, lengths: dict[str, int], split_arr: tuple[str, Any] | None, is_test: tuple[str, Any] | None, lists: dict[str, list[str]]
) -> None:
    """Every array (and the ids) has one row a sample."""
    for got in (split_arr, is_test):
        if got is not None:
            lengths[got[0]] = int(np.asarray(got[1]).reshape(-1).shape[0])
    if "ids" in lists:
        lengths["ids"] = len(lists["ids"])
    if len(set(lengths.values())) != 1:
        raise DataError(
            f"{path}: the arrays disagree in length: "
            + ", ".join(f"{k} {v}" for k, v in lengths.items())
            + ". Row i of every array must be the same sample."
        )


def _ids_and_names(path: Path, arrays: dict[str, np.ndarray], lists: dict[str, list[str]], n: int) -> tuple[list[str], list[str] | None]:
    """The sample ids (default ``row-000000``, …; unique) and the class names, if given."""
    cls_arr = pick(arrays, KEYS["classes"], path, "", required=False)
    if cls_arr is not None:
        lists["classes"] = _strings(cls_arr[1], path, cls_arr[0])
    names = lists.get("classes")
    if names is not None and len(set(names)) != len(names):
        raise DataError(f"{path}: the class names list a name twice.")
    ids = lists.get("ids") or [f"row-{i:06d}" for i in range(n)]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"{path}: duplicate sample ids {format_list(dup)}.")
    return ids, names


def _labels(lab: np.ndarray, lkey: str, names: list[str] | None, path: Path) -> tuple[list[str], list[tuple[str, ...]]]:
    """``(classes, labels of each row)``: multi-hot columns, class names or class ids."""
    if lab.ndim == 2 and lab.shape[1] > 1:
        return _multi_hot_labels(lab, lkey, names, path)
    if lab.dtype.kind in "USO":  # O: a MATLAB cell array / HDF5 strings (pickles are refused)
        vals = _strings(lab, path, lkey)
        classes = names if names is not None else sorted(set(v.strip() for v in vals if v.strip()))
        return classes, [(v.strip(),) if v.strip() else () for v in vals]
    return _id_labels(lab, lkey, names, path)


def _multi_hot_labels(lab: np.ndarray, lkey: str, names: list[str] | None, path: Path) -> tuple[list[str], list[tuple[str, ...]]]:
    if lab.dtype.kind not in "fiub" or not np.isin(lab, (0, 1)).all():
        raise DataError(f"{path}: {lkey} (n, C) must be 0/1 multi-hot.")
    C = lab.shape[1]
    classes = names if names is not None else [str(j) for j in range(C)]
    if len(classes) != C:
        raise DataError(f"{path}: {len(classes)} class names for {C} label columns.")
    return classes, [tuple(classes[j] for j in np.flatnonzero(row)) for row in lab]


def _id_labels(lab: np.ndarray, lkey: str, names: list[str] | None, path: Path) -> tuple[list[str], list[tuple[str, ...]]]:
    """Class ids (with their names, when given); an unusable value is marked :data:`_BAD`."""
    values, bad_rows = _label_values(lab)
    vec = as_label_vector(values, path, lkey)
    per_sample: list[tuple[str, ...]]
    if names is not None:
        classes = names
        per_sample = [(names[v],) if 0 <= v < len(names) else (_BAD, str(v)) for v in vec.tolist()]
    else:
        classes = [str(v) for v in sorted(set(vec[~bad_rows].tolist()))]
        per_sample = [(str(v),) for v in vec.tolist()]
    for i in np.flatnonzero(bad_rows).tolist():
        per_sample[i] = (_BAD, repr(lab.reshape(-1)[i].item()), "value")
    return classes, per_sample


def _label_problems(per_sample: list[tuple[str, ...]], classes: list[str], ids: list[str], problems: Problems) -> None:
    known = set(classes)
    for i, labs in enumerate(per_sample):
        if not labs:
            problems.add(f"row {i}", "no label", ids[i])
        elif labs[0] == _BAD and len(labs) == 3:
            problems.add(f"row {i}", f"label {labs[1]} is not a class id (a whole number from 0 up)", ids[i])
        elif labs[0] == _BAD:
            problems.add(f"row {i}", f"class id {labs[1]} has no name ({len(classes)} class names)", ids[i])
        elif any(x not in known for x in labs):
            problems.add(f"row {i}", f"label {labs!r} is not among the class names", ids[i])


def _splits(
    split_arr: tuple[str, Any] | None, is_test: tuple[str, Any] | None, path: Path, ids: list[str], problems: Problems
) -> tuple[list[str] | None, str]:
    """The file's split of each row and where it comes from; ``(None, "")`` when the file has
    none (it is drawn with ``split_seed``)."""
    if split_arr is not None:
        vals = _strings(split_arr[1], path, split_arr[0])
        splits = [v.strip().lower() for v in vals]
        for i, s in enumerate(splits):
            if s not in ("train", "test"):
                problems.add(f"row {i}", f"split {vals[i]!r} is not 'train' or 'test'", ids[i])
        return splits, f"from {split_arr[0]!r}"
    if is_test is not None:
        t = np.asarray(is_test[1]).reshape(-1)
        if t.dtype.kind not in "iub" or not np.isin(t, (0, 1)).all():
            raise DataError(f"{path}: {is_test[0]} must be 0/1 (1 = test).")
        return ["test" if x else "train" for x in t.tolist()], f"from {is_test[0]!r}"
    return None, ""


def save_features_folder(feats: Any, dataset: Any, path: Path) -> None:
    """Write ``feats`` of ``dataset`` as a folder of ``.npy`` files that
    :func:`load_feature_files` reads back (large ones lazily, row by row): both modalities'
    local/mask/pooled, labels, split, ``classes.txt`` and ``ids.txt``. Rows are streamed in
    chunks (memory does not grow with the number of samples); the disk's free space is checked
    first; the folder appears whole or not at all (written beside it, then renamed)."""
    import os
    import secrets
    import shutil

    from ..lazy import iter_row_chunks
    from ..store import _write_header, check_disk_space, store_nbytes

    path = Path(path)
    if path.exists():
        raise ConfigError(f"--output {path} exists; pass a new folder (or a .npz file).")
    path.parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(path.parent, store_nbytes(feats), f"the features folder {path}")
    tmp = path.parent / f".tmp-{path.name}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for mod in ("image", "text"):
            mf = getattr(feats, mod)
            for part in ("local", "mask", "pooled"):
                arr = getattr(mf, part)
                with open(tmp / f"{mod}_{part}.npy", "wb") as f:
                    _write_header(f, tuple(arr.shape), np.dtype(arr.dtype))
                    for _start, rows in iter_row_chunks(arr):
                        f.write(np.ascontiguousarray(rows).reshape(-1).view(np.uint8).data)
                    f.flush()
                    os.fsync(f.fileno())
        if dataset.is_multilabel:
            np.save(tmp / "labels.npy", dataset.label_matrix())
        else:  # one class id a row (n × C booleans would grow with the classes)
            index = {c: i for i, c in enumerate(dataset.classes)}
            np.save(tmp / "labels.npy", np.array([index[s.labels[0]] for s in dataset.samples], dtype=np.int64))
        np.save(tmp / "split.npy", np.array([s.split for s in dataset.samples]))
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in dataset.classes), encoding="utf-8")
        (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in feats.sample_ids), encoding="utf-8")
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_features(feats: Any, dataset: Any, path: Path) -> None:
    """``gcrdp extract --output``: a ``.npz`` file (:func:`save_features_npz`, built in memory) or,
    for any other name, a folder of ``.npy`` files (:func:`save_features_folder`, streamed)."""
    path = Path(path)
    if path.suffix == ".npz":
        save_features_npz(feats, dataset, path)
    else:
        save_features_folder(feats, dataset, path)


def save_features_npz(feats: Any, dataset: Any, path: Path) -> None:
    """Write ``feats`` of ``dataset`` (rows in sample order) as one ``.npz`` that
    :func:`load_feature_files` reads back: both modalities' local/mask/pooled, labels, classes,
    ids and split; atomically."""
    import io

    from ...utils.io import atomic_write_bytes

    if path.suffix != ".npz":
        raise ConfigError(f"--output must end in .npz, got {path}")
    buf = io.BytesIO()
    np.savez(
        buf,
        image_local=feats.image.local,
        image_mask=feats.image.mask,
        image_pooled=feats.image.pooled,
        text_local=feats.text.local,
        text_mask=feats.text.mask,
        text_pooled=feats.text.pooled,
        labels=dataset.label_matrix(),
        classes=np.array(dataset.classes),
        ids=np.array(feats.sample_ids),
        split=np.array([s.split for s in dataset.samples]),
    )
    atomic_write_bytes(path, buf.getvalue())
