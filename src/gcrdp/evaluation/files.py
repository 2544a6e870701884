"""Evaluating embeddings a user computed: ``.npz`` files with ``image`` (n, d), ``text`` (n, d)
and ``labels`` ((n,) class indices or names, or (n, C) multi-hot) — ``gcrdp evaluate FILE``.

The arrays of an ``.npz`` written by ``np.savez`` (members stored uncompressed) are memory-mapped,
not read: the metrics read the embeddings block by block, so 100,000 × 256 × 2 float32
embeddings are not held in memory twice. Compressed members (``np.savez_compressed``) are read
whole."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .metrics import _self_paired_metrics, chance_map, cross_modal_metrics

_REQUIRED = ("image", "text", "labels")


def load_embeddings(path: Path) -> dict[str, Any]:
    """The ``image``, ``text`` and ``labels`` arrays of an ``.npz`` file (embeddings
    memory-mapped where stored uncompressed, labels in memory)."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename[:-4] if info.filename.endswith(".npy") else info.filename: info for info in zf.infolist()}
            missing = [k for k in _REQUIRED if k not in members]
            data = {} if missing else {k: _npz_member(path, zf, members[k]) for k in _REQUIRED}
    except FileNotFoundError:
        raise DataError(f"Embeddings file not found: {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"Cannot read embeddings file {path} as .npz: {exc}") from None
    if missing:
        raise DataError(
            f"{path} lacks the array(s) {missing}; it must hold 'image' (n, d), 'text' (n, d) "
            f"and 'labels' ((n,) class ids or (n, C) multi-hot). It has {sorted(members)}."
        )
    data["labels"] = np.array(data["labels"])  # small; names are converted in place later
    n = {k: len(data[k]) for k in _REQUIRED}
    if len(set(n.values())) != 1:
        raise DataError(f"{path}: mismatched lengths {n}; image, text and labels must be paired row by row.")
    return data


def _npz_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One array of an ``.npz``: memory-mapped when stored uncompressed, read otherwise."""
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:  # not encrypted
        mapped = _memmap_stored(path, info)
        if mapped is not None:
            return mapped
    with zf.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _memmap_stored(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A memory map of an uncompressed ``.npy`` member, or None where it cannot be mapped (the
    caller reads it then, which reports any error)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header; its name and extra field lengths may differ from the central directory's
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            return None
        f.seek(info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"))
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return None
        except ValueError:
            return None
        offset = f.tell()
        f.seek(0, 2)
        size = f.tell()
    n_bytes = math.prod(shape) * dtype.itemsize
    if dtype.hasobject or n_bytes == 0 or offset + n_bytes > size:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def names_to_indices(q: dict[str, Any], g: dict[str, Any]) -> None:
    """1-D labels given as class names (strings) become indices into the names of queries and
    gallery together, in place (the same name is the same class on both sides)."""
    arrays = [d["labels"] for d in (q, g)]
    if not any(a.ndim == 1 and a.dtype.kind in "USO" for a in arrays):
        return
    if any(a.ndim != 1 or a.dtype.kind not in "USO" for a in arrays):
        raise ConfigError("Labels are class names in one file and not in the other; give both as names or both as indices.")
    names = [str(x) for x in np.concatenate([a.astype(str) for a in arrays])]
    vocab = {n: i for i, n in enumerate(sorted(set(names)))}
    q["labels"] = np.array([vocab[str(x)] for x in q["labels"]], dtype=np.int64)
    if g is not q:
        g["labels"] = np.array([vocab[str(x)] for x in g["labels"]], dtype=np.int64)


def evaluate_embedding_files(
    embeddings: str | Path, gallery: str | Path | None = None, ks: tuple[int, ...] | list[int] = ()
) -> dict[str, Any]:
    """Class-level metrics (I2T, T2I, mAP@all and @k) of the embeddings in ``embeddings``
    against ``gallery`` (default: themselves), the chance level, and — when the gallery is the
    queries — instance-level recall@1/5/10 of each row's own pair."""
    q = load_embeddings(Path(embeddings))
    g = load_embeddings(Path(gallery)) if gallery is not None else q
    names_to_indices(q, g)
    if gallery is None:  # row i's pair is row i; each direction is scored once
        return _self_paired_metrics(q["image"], q["text"], q["labels"], ks=ks)
    res = cross_modal_metrics(q["image"], q["text"], q["labels"], g["image"], g["text"], g["labels"], ks=ks)
    res["chance"] = chance_map(q["labels"], g["labels"])
    return res
