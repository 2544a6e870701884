"""Reading arrays from the feature files that cross-modal retrieval datasets ship.

:func:`read_arrays` returns ``{key: numpy array}`` for:

=================  =========================================================================
``.mat``           MATLAB v4/v5/v7 (``scipy.io.loadmat``) and v7.3 (HDF5, with ``h5py``;
                   arrays are transposed back to MATLAB's row × column order)
``.h5``/``.hdf5``  HDF5 datasets at any depth (``group/name`` keys), with ``h5py`` (also
                   ``.h5py``, the extension of the Hu et al. Doc2Vec feature files)
``.npz``           NumPy archives (no pickles)
``.npy``           one array, under the key of the file stem
``.safetensors``   safetensors tensors; the string metadata is returned by
                   :func:`read_safetensors_metadata`
=================  =========================================================================

Every failure (missing file, unknown extension, damaged file, pickled object arrays) is a
:class:`~gcrdp.errors.DataError` naming the file; :func:`pick` finds an array under one of
several conventional keys and lists the keys a file has when none matches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from ...errors import DataError, optional_import

FORMATS_EXTRA = "formats"
EXTENSIONS = (".mat", ".h5", ".hdf5", ".h5py", ".npz", ".npy", ".safetensors")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(1024)
    # MATLAB v7.3 files have a 512-byte text header, then the HDF5 superblock.
    return head.startswith(_HDF5_SIGNATURE) or head[512:520] == _HDF5_SIGNATURE


def file_form(path: Path) -> str:
    """How a feature file is stored, for messages and ``gcrdp inspect``: ``"MATLAB v7.3
    (HDF5)"``, ``"MATLAB v5"``, ``"HDF5"``, ``"npz"`` …"""
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return "MATLAB v7.3 (HDF5)" if _is_hdf5(path) else "MATLAB v5"
    if suffix in (".h5", ".hdf5", ".h5py"):
        return "HDF5"
    return suffix.lstrip(".")


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    if _is_hdf5(path):
        return _read_hdf5(path, matlab=True)
    import scipy.io

    try:
        raw = scipy.io.loadmat(path, squeeze_me=False)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise DataError(f"Cannot read {path} as a MATLAB .mat file: {exc}") from None
    out = {}
    for k, v in raw.items():
        if k.startswith("__"):
            continue
        if isinstance(v, np.ndarray) and v.dtype.kind in "fiub":
            out[k] = v
        elif isinstance(v, np.ndarray) and v.dtype.kind in "UO":
            out[k] = v  # cell arrays / strings (e.g. class names); callers decide
    return out


def _read_hdf5(path: Path, matlab: bool = False) -> dict[str, np.ndarray]:
    h5py = optional_import("h5py", FORMATS_EXTRA, f"Reading the HDF5 file {path}")
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and not name.startswith("#refs#"):
                    arr = obj[()]
                    if isinstance(arr, np.ndarray):
                        if matlab and arr.ndim >= 2:
                            arr = arr.T  # MATLAB stores column-major: h5py sees the dims reversed
                        out[name] = arr

            f.visititems(visit)
    except OSError as exc:
        raise DataError(f"Cannot read {path} as an HDF5 file: {exc}") from None
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    import zipfile

    if not zipfile.is_zipfile(path):  # else np.load takes it for a pickle and says so
        raise DataError(f"Cannot read {path} as a .npz archive: it is not a zip archive (damaged, or not written by np.savez).")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(
                f"{path} holds pickled Python objects, which are not loaded (unsafe). "
                "Save plain numeric/string arrays (np.savez with numpy arrays)."
            ) from None
        raise DataError(f"Cannot read {path} as a .npz archive: {exc}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"Cannot read {path} as a .npz archive: {exc}") from None


#: a ``.npy`` file with more data than this is opened lazily by :func:`read_arrays` with
#: ``lazy=True`` (its rows stay on disk until read; :class:`gcrdp.data.lazy.DiskArray`)
LAZY_NPY_BYTES = 64 << 20


def _read_npy(path: Path, lazy: bool = False) -> dict[str, Any]:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # else np.load takes it for a pickle and says so
        raise DataError(f"Cannot read {path} as a .npy array: it does not start with the .npy header (damaged, or not written by np.save).")
    if lazy:
        from ..lazy import DiskArray, read_npy_header

        try:
            shape, dtype, fortran, offset = read_npy_header(path)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"Cannot read {path} as a .npy array: {exc}") from None
        big = len(shape) >= 2 and int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > LAZY_NPY_BYTES
        if big and not fortran and not dtype.hasobject and dtype.kind in "fiub":
            return {path.stem: DiskArray(path)}
    try:
        return {path.stem: np.load(path, allow_pickle=False)}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path} holds pickled Python objects, which are not loaded (unsafe).") from None
        raise DataError(f"Cannot read {path} as a .npy array: {exc}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"Cannot read {path} as a .npy array: {exc}") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise DataError(f"Cannot read {path} as a .safetensors file: {exc}") from None


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata (``__metadata__``) of a safetensors file (``{}`` when none)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 1 << 30:
                raise ValueError(f"bad header length {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read the header of {path} as a .safetensors file: {exc}") from None
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def read_arrays(path: str | Path, *, lazy: bool = False) -> dict[str, np.ndarray]:
    """All arrays of one feature file, by key (see the module docstring). With ``lazy``, a
    large ``.npy`` file (over :data:`LAZY_NPY_BYTES`) is a :class:`~gcrdp.data.lazy.DiskArray`
    whose rows stay on disk until read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"Feature file not found: {path}")
    ext = path.suffix.lower()
    readers = {
        ".mat": _read_mat,
        ".h5": _read_hdf5,
        ".hdf5": _read_hdf5,
        ".h5py": _read_hdf5,
        ".npz": _read_npz,
        ".npy": _read_npy,
        ".safetensors": _read_safetensors,
    }
    if ext not in readers:
        raise DataError(f"Cannot read feature file {path}: unknown extension {ext or '(none)'!r}; known: {', '.join(EXTENSIONS)}.")
    if ext == ".npy":
        return _read_npy(path, lazy)  # type: ignore[return-value]
    return readers[ext](path)


@overload
def pick(
    arrays: dict[str, np.ndarray], keys: Sequence[str], path: str | Path, what: str, required: Literal[True] = ...
) -> tuple[str, np.ndarray]: ...
@overload
def pick(
    arrays: dict[str, np.ndarray], keys: Sequence[str], path: str | Path, what: str, required: bool
) -> tuple[str, np.ndarray] | None: ...
def pick(
    arrays: dict[str, np.ndarray], keys: Sequence[str], path: str | Path, what: str, required: bool = True
) -> tuple[str, np.ndarray] | None:
    """The first of ``keys`` present in ``arrays`` (case-insensitive), as ``(key, array)``.

    Raises:
        DataError: none is present and ``required`` (the message lists the file's keys).
    """
    lower = {k.lower(): k for k in arrays}
    for key in keys:
        real = lower.get(key.lower())
        if real is not None:
            return real, arrays[real]
    if not required:
        return None
    have = ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in sorted(arrays.items())) or "(none)"
    raise DataError(f"{path} has no {what} array: looked for key {' or '.join(map(repr, keys))}; the file has {have}.")


def as_label_vector(arr: np.ndarray, path: str | Path, what: str = "labels") -> np.ndarray:
    """An ``(n,)``, ``(n, 1)`` or ``(1, n)`` integer label array as an int64 vector."""
    a = np.asarray(arr)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1:
        raise DataError(f"{path}: {what} must be a vector of class ids, got shape {a.shape}.")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise DataError(f"{path}: {what} must be whole numbers (class ids), got non-integer values.")
    elif a.dtype.kind not in "iub":
        raise DataError(f"{path}: {what} must be integer class ids, got dtype {a.dtype}.")
    return a.astype(np.int64)


def as_multi_hot(arr: np.ndarray, path: str | Path, what: str = "labels") -> np.ndarray:
    """An ``(n, C)`` 0/1 array as bool."""
    a = np.asarray(arr)
    if a.ndim != 2:
        raise DataError(f"{path}: {what} must be (n, C) multi-hot, got shape {a.shape}.")
    if a.dtype.kind not in "fiub" or not np.isin(a, (0, 1)).all():
        raise DataError(f"{path}: {what} must hold only 0 and 1 (multi-hot).")
    return a.astype(bool)
