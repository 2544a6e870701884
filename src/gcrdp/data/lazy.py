"""Feature rows that stay on disk until asked for.

A :class:`LazyRows` looks like a read-only numpy array of rows — ``shape``, ``dtype``,
``ndim``, ``len()``, ``arr[i]``, ``arr[a:b]``, ``arr[index_array]``, ``arr[rows, ...]`` and
``np.asarray(arr)`` — but holds no rows in memory: each access reads the rows it names and
returns a new numpy array. ``take(indices)`` is a view (no rows are read), so a protocol split's
train, validation and test sets of a 25 GB feature file cost nothing until a batch is read.

:class:`DiskArray` reads the rows of one C-ordered ``.npy`` file with ``os.preadv`` into the
returned array. Not a memory map, on purpose: pages of a mapped file that a process has touched
count in its resident set, so reading every row of a large file once per epoch through a map
makes the process's RSS grow towards the file's size; explicit reads leave the caching to the
kernel's page cache, which it shrinks under pressure, and keep the process's own memory at the
rows it holds. With per-row CRC-32s (a feature store, :mod:`gcrdp.data.store`) every row read
is verified, and a mismatch raises :class:`StoreDamaged` — damaged rows are never returned.

:class:`DerivedRows` computes rows from another lazy source (the masked mean of local features
as the pooled feature, the zeroing of padded positions): what
:meth:`~gcrdp.data.features.ModalityFeatures.from_array` computes for a whole array, row by row,
so both give the same values.

Lazy arrays pickle as their file names and row maps (no rows), so worker processes
(``gcrdp run --jobs``) share the files instead of copies.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

#: rows per chunk when a whole lazy array is streamed (at most this many bytes at once)
STREAM_CHUNK_BYTES = 64 << 20


class StoreDamaged(DataError):
    """A feature store's file does not hold what its record says (truncated, changed bytes, a
    failed row checksum). ``store`` is the store folder (``None`` for a user's own file)."""

    def __init__(self, message: str, store: Path | None = None) -> None:
        super().__init__(message)
        self.store = store


def rows_per_chunk(row_bytes: int, budget: int = STREAM_CHUNK_BYTES) -> int:
    """How many rows of ``row_bytes`` fit in ``budget`` bytes (at least one)."""
    return max(1, budget // max(1, row_bytes))


def invalidate_store(store: Path | None) -> None:
    """Mark a feature store damaged (its record is renamed away), so that the next run rebuilds it
    instead of reading it again."""
    if store is None:
        return
    try:
        os.replace(store / "store.json", store / "store.json.damaged")
    except OSError:
        pass


class LazyRows:
    """Base of the lazy arrays: a row map over ``n_physical`` rows of shape ``row_shape``.

    Subclasses implement :meth:`_read_physical` (rows by physical index, sorted and unique) and
    :meth:`signature` (what identifies the values without reading them)."""

    def __init__(self, n_physical: int, row_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._n_physical = int(n_physical)
        self.row_shape = tuple(int(x) for x in row_shape)
        self.dtype = np.dtype(dtype)
        self._rows: np.ndarray | None = None  # None: every physical row in order

    # ------------------------------------------------------------------ array look
    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return self._n_physical if self._rows is None else int(self._rows.shape[0])

    @property
    def row_nbytes(self) -> int:
        """Bytes of one returned row."""
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def read_row_nbytes(self) -> int:
        """Bytes held per row while reading one (a derived row reads its source row too)."""
        return self.row_nbytes

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_nbytes

    @property
    def size(self) -> int:
        return len(self) * int(np.prod(self.row_shape, dtype=np.int64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype.name}, source={self.describe()})"

    def describe(self) -> str:
        return "?"

    # ------------------------------------------------------------------ views
    def physical(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Physical row numbers of view rows ``idx`` (all rows when ``None``)."""
        if idx is None:
            return np.arange(self._n_physical, dtype=np.int64) if self._rows is None else self._rows
        return idx if self._rows is None else self._rows[idx]

    def take(self, indices: Any) -> LazyRows:
        """A view of rows ``indices`` (in that order; repeats allowed). Reads nothing."""
        idx = self._check_index(indices)
        out = copy.copy(self)
        out._rows = self.physical(idx).copy()
        return out

    def _check_index(self, indices: Any) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} rows")
            return np.flatnonzero(idx)
        if idx.size == 0:
            return np.zeros(0, np.int64)
        if idx.dtype.kind not in "iu":
            raise IndexError(f"row indices must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        n = len(self)
        if idx.min() < -n or idx.max() >= n:
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(idx < 0, idx + n, idx)

    # ------------------------------------------------------------------ reading
    def read(self, indices: Any) -> np.ndarray:
        """Rows ``indices`` (view order; repeats allowed) as a new array."""
        idx = self._check_index(indices)
        phys = self.physical(idx)
        if phys.size == 0:
            return np.zeros((0, *self.row_shape), self.dtype)
        if phys.size == 1 or bool(np.all(phys[1:] > phys[:-1])):
            return self._read_physical(phys)
        uniq, inverse = np.unique(phys, return_inverse=True)
        return self._read_physical(uniq)[inverse.reshape(-1)]

    def _read_physical(self, phys: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_range(self, start: int, stop: int) -> np.ndarray:
        return self.read(np.arange(start, stop, dtype=np.int64))

    def chunks(self, budget: int = STREAM_CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` over the whole view, at most ``budget`` bytes at a time."""
        step = rows_per_chunk(self.read_row_nbytes, budget)
        for start in range(0, len(self), step):
            yield start, self.read_range(start, min(start + step, len(self)))

    def __getitem__(self, key: Any) -> Any:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(key, (int, np.integer)):
            out = self.read(np.array([int(key)]))[0]
        elif isinstance(key, slice):
            out = self.read(np.arange(*key.indices(len(self)), dtype=np.int64))
        elif key is Ellipsis:
            out = self.read(np.arange(len(self), dtype=np.int64))
        else:
            out = self.read(key)
        if rest:
            out = out[(slice(None), *rest)] if not isinstance(key, (int, np.integer)) else out[rest]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        for start, rows in self.chunks():
            out[start : start + len(rows)] = rows
        return out if dtype is None else out.astype(dtype, copy=False)

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=False)

    # ------------------------------------------------------------------ identity
    def signature(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rows_signature(self) -> str | None:
        if self._rows is None:
            return None
        return hashlib.sha256(np.ascontiguousarray(self._rows).tobytes()).hexdigest()

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) of a ``.npy`` file."""
    from numpy.lib import format as npformat

    with open(path, "rb") as f:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
        else:
            shape, fortran, dtype = npformat._read_array_header(f, version)  # type: ignore[attr-defined]
        return tuple(int(x) for x in shape), np.dtype(dtype), bool(fortran), f.tell()


class DiskArray(LazyRows):
    """The rows of a C-ordered ``.npy`` file, read on demand (see the module docstring).

    Args:
        path: the file.
        crc: optional (n,) uint32 CRC-32 of each row's bytes, checked on every read.
        store: the feature store the file belongs to (named in :class:`StoreDamaged`).
        row_shape: another shape for each row with as many values (``(d,)`` read as ``(1, d)``).
        cast: the dtype rows are returned as (``None``: as stored).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        crc: np.ndarray | None = None,
        store: Path | None = None,
        row_shape: tuple[int, ...] | None = None,
        cast: Any = None,
    ) -> None:
        self.path = Path(path)
        try:
            shape, dtype, fortran, offset = read_npy_header(self.path)
        except (OSError, ValueError, EOFError) as exc:
            raise self._damage(f"{self.path} is not a readable .npy file ({exc})", store) from None
        if fortran and len(shape) > 1:
            raise DataError(f"{self.path}: a Fortran-ordered array cannot be read by row; save it C-ordered (np.ascontiguousarray).")
        if dtype.hasobject or dtype.kind not in "fiub" or not shape:
            raise DataError(f"{self.path}: expected an array of numbers with rows, got dtype {dtype} shape {shape}.")
        self.file_dtype = dtype
        self.file_row_shape = shape[1:]
        self.offset = offset
        self.store = store
        self.crc = crc
        tail = tuple(row_shape) if row_shape is not None else shape[1:]
        if int(np.prod(tail, dtype=np.int64)) != int(np.prod(shape[1:], dtype=np.int64)):
            raise DataError(f"{self.path}: rows of shape {shape[1:]} cannot be read as {tail}.")
        super().__init__(shape[0], tail, np.dtype(cast) if cast is not None else dtype)
        file_row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.file_row_nbytes = file_row
        need = offset + shape[0] * file_row
        size = self.path.stat().st_size
        if size < need:
            raise self._damage(f"{self.path} is truncated: {size} bytes where its header announces {shape[0]} rows ({need} bytes)", store)
        if crc is not None and crc.shape != (shape[0],):
            raise self._damage(f"{self.path}: {crc.shape[0]} row checksums for {shape[0]} rows", store)
        self._stat = (size, self.path.stat().st_mtime_ns)
        self._fd: int | None = None
        self._pid = -1

    @staticmethod
    def _damage(message: str, store: Path | None) -> DataError:
        if store is None:
            return DataError(message)
        return StoreDamaged(f"feature store {store} is damaged: {message}. It will be rebuilt on the next run.", store)

    def describe(self) -> str:
        return str(self.path)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state

    def __copy__(self) -> DiskArray:
        out = DiskArray.__new__(DiskArray)
        out.__dict__.update(self.__dict__)
        out._fd, out._pid = None, -1
        return out

    def _read_physical(self, phys: np.ndarray) -> np.ndarray:
        if phys[0] < 0 or phys[-1] >= self._n_physical:
            raise IndexError("row index out of range")
        fd = self._file()
        rb = self.file_row_nbytes
        buf = np.empty((phys.size, rb), np.uint8)
        # runs of consecutive rows are read with one call each
        breaks = np.flatnonzero(np.diff(phys) != 1) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [phys.size]))
        for a, b in zip(starts.tolist(), stops.tolist()):
            view = buf[a:b].reshape(-1).data
            pos, done, want = self.offset + int(phys[a]) * rb, 0, (b - a) * rb
            while done < want:
                got = os.preadv(fd, [view[done:]], pos + done)
                if got <= 0:
                    raise self._damage(f"{self.path} ended early while reading row {int(phys[a])}", self.store)
                done += got
        if self.crc is not None:
            expected = self.crc[phys]
            for j in range(phys.size):
                if zlib.crc32(buf[j]) != int(expected[j]):
                    invalidate_store(self.store)
                    raise self._damage(f"row {int(phys[j])} of {self.path.name} fails its checksum", self.store)
        out = buf.view(self.file_dtype).reshape((phys.size, *self.row_shape))
        return out if out.dtype == self.dtype else out.astype(self.dtype)

    def signature(self) -> dict[str, Any]:
        return {
            "file": str(self.path.resolve()),
            "size": self._stat[0],
            "mtime_ns": self._stat[1],
            "dtype": self.dtype.str,
            "row_shape": list(self.row_shape),
            "rows": self._rows_signature(),
        }


class DerivedRows(LazyRows):
    """Rows computed from the same rows of ``source`` (an unviewed lazy array):
    ``fn(source rows, physical row numbers) -> rows`` of ``row_shape`` and ``dtype``. ``kind``
    and ``inputs`` name the computation in :meth:`signature`."""

    def __init__(
        self,
        source: LazyRows,
        fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
        row_shape: tuple[int, ...],
        dtype: Any,
        kind: str,
        inputs: str = "",
    ) -> None:
        if source._rows is not None:
            source = copy.copy(source)
            source._rows = None
        super().__init__(source._n_physical, row_shape, np.dtype(dtype))
        self.source, self.fn, self.kind, self.inputs = source, fn, kind, inputs

    def describe(self) -> str:
        return f"{self.kind} of {self.source.describe()}"

    @property
    def read_row_nbytes(self) -> int:
        # the source row as read, its float64 working copy for a mean, and the result
        return max(self.row_nbytes, self.source.read_row_nbytes) + (
            8 * int(np.prod(self.source.row_shape)) if self.kind == "masked-mean" else 0
        )

    def _read_physical(self, phys: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(self.source._read_physical(phys), phys), dtype=self.dtype)

    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "inputs": self.inputs, "source": self.source.signature(), "rows": self._rows_signature()}


def masked_mean(local: np.ndarray, mask: np.ndarray, dtype: Any) -> np.ndarray:
    """The mean of each row's valid local features, accumulated in float64, as ``dtype``:
    the pooled feature :meth:`~gcrdp.data.features.ModalityFeatures.from_array` gives a set
    without one (the same function for a whole array and for rows read lazily)."""
    w = mask.astype(np.float64)
    denom = np.maximum(w.sum(1, keepdims=True), 1.0)
    out = np.empty((local.shape[0], local.shape[2]), dtype)
    for s in range(0, local.shape[0], 256):  # rows are independent: any chunking gives equal values
        part = np.einsum("nld,nl->nd", local[s : s + 256].astype(np.float64), w[s : s + 256])
        out[s : s + 256] = (part / denom[s : s + 256]).astype(dtype)
    return out


def zero_padding(local: np.ndarray, mask: np.ndarray, dtype: Any) -> np.ndarray:
    """``local`` with the positions ``mask`` marks invalid set to 0, as ``dtype``."""
    return np.where(mask[:, :, None], local, 0).astype(dtype, copy=False)


def _cast_rows(rows: np.ndarray, phys: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=dtype)


def _local_rows(rows: np.ndarray, phys: np.ndarray) -> np.ndarray:
    return rows.reshape(len(rows), 1, -1)


def _mean_rows(rows: np.ndarray, phys: np.ndarray, mask: np.ndarray, dtype: Any) -> np.ndarray:
    return masked_mean(rows, mask[phys], dtype)


def _zeroed_rows(rows: np.ndarray, phys: np.ndarray, mask: np.ndarray, dtype: Any) -> np.ndarray:
    return zero_padding(rows, mask[phys], dtype)


def _mask_digest(mask: np.ndarray) -> str:
    m = np.ascontiguousarray(mask, dtype=bool)
    return hashlib.sha256(m.view(np.uint8).reshape(-1).data).hexdigest()


def as_dtype(arr: LazyRows, dtype: Any) -> LazyRows:
    """``arr`` whose rows are returned as ``dtype`` (itself when they already are)."""
    if np.dtype(dtype) == arr.dtype:
        return arr
    return DerivedRows(arr, functools.partial(_cast_rows, dtype=np.dtype(dtype)), arr.row_shape, dtype, "cast", np.dtype(dtype).str)


def as_local(arr: LazyRows) -> LazyRows:
    """(n, d) rows as sets of one, (n, 1, d)."""
    return DerivedRows(arr, _local_rows, (1, *arr.row_shape), arr.dtype, "set-of-one")


def mean_pooled(local: LazyRows, mask: np.ndarray, dtype: Any) -> LazyRows:
    """The masked mean of each row of ``local`` (n, L, d) as ``dtype`` (n, d) — the default
    pooled feature (:func:`masked_mean`)."""
    fn = functools.partial(_mean_rows, mask=np.asarray(mask, dtype=bool), dtype=np.dtype(dtype))
    return DerivedRows(local, fn, (local.row_shape[-1],), dtype, "masked-mean", _mask_digest(mask))


def zeroed(local: LazyRows, mask: np.ndarray, dtype: Any) -> LazyRows:
    """``local`` with its padded positions (``~mask``) zeroed."""
    fn = functools.partial(_zeroed_rows, mask=np.asarray(mask, dtype=bool), dtype=np.dtype(dtype))
    return DerivedRows(local, fn, local.row_shape, dtype, "zero-padding", _mask_digest(mask))


def is_lazy(arr: Any) -> bool:
    return isinstance(arr, LazyRows)


def take_rows(arr: Any, indices: np.ndarray) -> Any:
    """Rows ``indices`` of an in-memory array (a copy) or of a lazy one (a view)."""
    return arr.take(indices) if isinstance(arr, LazyRows) else arr[indices]


def iter_row_chunks(arr: Any, budget: int = STREAM_CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` of any array, lazy or not, at most about ``budget`` bytes at a time."""
    if isinstance(arr, LazyRows):
        yield from arr.chunks(budget)
        return
    n = len(arr)
    row = int(arr.nbytes // max(n, 1))
    step = rows_per_chunk(row, budget)
    for start in range(0, n, step):
        yield start, arr[start : start + step]


def iter_slices(arrays: tuple[Any, ...], step: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Rows ``[s, s + step)`` of every array of ``arrays`` (same length), slice after slice, as
    contiguous numpy arrays. When any array is lazy, the next slice is read in a background
    thread while the caller works on the current one (disk reads overlap the computation)."""
    n = len(arrays[0])
    bounds = [(s, min(s + step, n)) for s in range(0, n, max(1, step))]

    def get(b: tuple[int, int]) -> tuple[np.ndarray, ...]:
        return tuple(np.ascontiguousarray(a[b[0] : b[1]]) for a in arrays)

    if not any(is_lazy(a) for a in arrays) or len(bounds) < 2:
        for b in bounds:
            yield get(b)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="gcrdp-rows") as pool:
        pending = pool.submit(get, bounds[0])
        for i in range(len(bounds)):
            got = pending.result()
            if i + 1 < len(bounds):
                pending = pool.submit(get, bounds[i + 1])
            yield got
