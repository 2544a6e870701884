"""Feature stores: a dataset's features written once to disk and read by row.

A store is a folder::

    store.json                      format, rows, ids' SHA-256, per file: shape, dtype, bytes,
                                    SHA-256 of the row-checksum file; the features' content
                                    digest; what the store was built from; written last
    ids.json                        the sample ids, in row order
    image_local.npy  image_pooled.npy  text_local.npy  text_pooled.npy
                                    the rows (C order, the source's dtype)
    image_local.crc32.npy …         one CRC-32 per row of each of those four files
    image_mask.npy  text_mask.npy   the (n, L) masks (small: read whole, SHA-256 checked)

:func:`open_store` checks the record and every file's header and size (a truncated or
half-written store is refused) and returns a :class:`~gcrdp.data.features.FeatureSet` whose
local and pooled arrays are :class:`~gcrdp.data.lazy.DiskArray` views: every row read is
checked against its CRC-32, so a changed byte is an error that names the file and row — never a
silently wrong feature. :func:`open_or_build` rebuilds a store that fails to open, and removes
one whose rows fail their checksum when read, so the next run rebuilds it.

:func:`write_store` streams any feature set — in memory or lazy — into a store in chunks of
bounded size: memory does not grow with the number of rows. It first checks that the disk has
room for the whole store (a clear error before any work), writes into a temporary folder next to
the target, fsyncs every file and renames the folder into place, so an interrupted write leaves
no store behind, only a ``.tmp-*`` folder that the next write removes. Two processes building the
same store each write their own temporary folder; the first rename wins and the other opens it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..utils.io import file_sha256, fsync_dir, fsync_tree
from .features import FeatureSet, ModalityFeatures
from .lazy import STREAM_CHUNK_BYTES, DiskArray, StoreDamaged, iter_row_chunks, read_npy_header

log = logging.getLogger(__name__)

STORE_FORMAT = "gcrdp-feature-store/1"
MODALITIES = ("image", "text")
ROW_PARTS = ("local", "pooled")
#: room kept free on the disk beyond the store itself
DISK_MARGIN_BYTES = 64 << 20
#: ``feature_storage="auto"`` (``storage="auto"``) keeps features in memory up to this many
#: bytes, in a store on disk above (re-exported as ``gcrdp.experiments.runner.AUTO_DISK_BYTES``)
AUTO_DISK_BYTES = 1 << 30
_STALE_TMP_SECONDS = 3600.0


def store_nbytes(features: FeatureSet) -> int:
    """Bytes a store of ``features`` takes on disk (rows, masks, checksums, headers)."""
    total = 0
    for mod in MODALITIES:
        mf: ModalityFeatures = getattr(features, mod)
        total += int(mf.local.nbytes) + int(mf.pooled.nbytes) + int(np.asarray(mf.mask).nbytes) + 8 * len(mf) + 6 * 128
    return total + sum(len(i) + 4 for i in features.sample_ids) + 4096


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(shutil.disk_usage(probe).free)


def check_disk_space(folder: Path, need: int, what: str = "the feature store") -> None:
    """:class:`DataError` before any work when ``folder``'s disk has less than ``need`` bytes
    (plus a margin) free."""
    free = _free_bytes(folder)
    if free < need + DISK_MARGIN_BYTES:
        raise DataError(
            f"Not enough disk space for {what}: it needs {need / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free at {folder}. "
            "Free some space, point --cache-dir (GCRDP_CACHE_DIR) at a larger disk, or keep the features in memory "
            "(--feature-storage memory) if they fit."
        )


def _write_header(f: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    from numpy.lib import format as npformat

    header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(int(x) for x in shape)}
    npformat.write_array_header_1_0(f, header) if shape[0] < 2**31 else npformat.write_array_header_2_0(f, header)


def _save_small(path: Path, arr: np.ndarray) -> str:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
    return file_sha256(path)


def clean_stale(parent: Path, max_age_s: float = _STALE_TMP_SECONDS) -> None:
    """Remove ``.tmp-*`` folders under ``parent`` older than ``max_age_s`` (interrupted writes)."""
    if not parent.is_dir():
        return
    now = time.time()
    for p in parent.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)


def write_store(path: str | Path, features: FeatureSet, *, source: Any = None, chunk_bytes: int = STREAM_CHUNK_BYTES) -> FeatureSet:
    """Write ``features`` (in memory or lazy) as a store at ``path`` and return it opened.

    Rows are copied in chunks of at most ``chunk_bytes``, in the source's dtype; non-finite
    valid values are a :class:`DataError` listing the rows (and nothing is left behind).
    ``source`` is recorded in ``store.json`` (what the store was built from). An existing store
    at ``path`` is replaced atomically."""
    from .. import __version__

    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(parent, store_nbytes(features))
    clean_stale(parent)
    tmp = parent / f".tmp-{path.name}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        digest = hashlib.sha256(b"gcrdp-features-v1\0")
        files: dict[str, Any] = {}
        bad_rows: set[int] = set()
        for mod in MODALITIES:
            mf: ModalityFeatures = getattr(features, mod)
            mask = np.ascontiguousarray(np.asarray(mf.mask), dtype=bool)
            for part in ("local", "mask", "pooled"):
                name = f"{mod}_{part}"
                if part == "mask":
                    digest.update(f"{mask.dtype.str}{mask.shape}".encode())
                    digest.update(mask.view(np.uint8).reshape(-1).data)
                    files[name] = {"shape": list(mask.shape), "dtype": "bool", "sha256": _save_small(tmp / f"{name}.npy", mask)}
                    continue
                arr = getattr(mf, part)
                dtype, shape = np.dtype(arr.dtype), tuple(int(x) for x in arr.shape)
                digest.update(f"{dtype.str}{shape}".encode())
                crc = np.zeros(shape[0], np.uint32)
                with open(tmp / f"{name}.npy", "wb") as f:
                    _write_header(f, shape, dtype)
                    for start, rows in iter_row_chunks(arr, chunk_bytes):
                        rows = np.ascontiguousarray(rows, dtype=dtype)
                        flat = rows.reshape(len(rows), -1)
                        for j in range(len(rows)):
                            crc[start + j] = zlib.crc32(flat[j])
                        finite = np.isfinite(rows) if rows.dtype.kind == "f" else np.ones(rows.shape, bool)
                        if part == "local":
                            ok = finite.all(axis=2) | ~mask[start : start + len(rows)]
                            bad = np.flatnonzero(~ok.all(axis=1))
                        else:
                            bad = np.flatnonzero(~finite.all(axis=1))
                        bad_rows.update((start + bad).tolist())
                        digest.update(flat.view(np.uint8).reshape(-1).data)
                        f.write(flat.view(np.uint8).data)
                    f.flush()
                    os.fsync(f.fileno())
                files[name] = {
                    "shape": list(shape),
                    "dtype": dtype.name,
                    "bytes": (tmp / f"{name}.npy").stat().st_size,
                    "crc32_sha256": _save_small(tmp / f"{name}.crc32.npy", crc),
                }
        if bad_rows:
            rows_ = sorted(bad_rows)
            raise DataError(
                f"NaN or infinite feature values in {len(rows_)} samples (rows {rows_[:5]}); re-extract the features or drop these samples."
            )
        ids = list(features.sample_ids)
        digest.update("\0".join(ids).encode("utf-8"))
        ids_text = json.dumps(ids)
        (tmp / "ids.json").write_text(ids_text, encoding="utf-8")
        record = {
            "format": STORE_FORMAT,
            "n": len(ids),
            "ids_sha256": hashlib.sha256(ids_text.encode("utf-8")).hexdigest(),
            "files": files,
            "content_digest": digest.hexdigest(),
            "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "gcrdp_version": __version__,
        }
        with open(tmp / "store.json", "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_tree(tmp)
        _publish(tmp, path)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_store(path)


def _publish(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing store there is moved aside first (replaced). When
    another process published the same store meanwhile, keep theirs."""
    if path.exists():
        trash = path.parent / f".tmp-old-{path.name}-{secrets.token_hex(4)}"
        with contextlib.suppress(OSError):
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, path)
    except OSError:
        if (path / "store.json").is_file():  # a concurrent writer won
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise


def open_store(path: str | Path) -> FeatureSet:
    """The store at ``path`` as a lazy feature set (see the module docstring). Raises
    :class:`FileNotFoundError` when there is no (complete) store there and
    :class:`~gcrdp.data.lazy.StoreDamaged` when it does not match its record."""
    path = Path(path)
    record_path = path / "store.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"no feature store at {path}")

    def damaged(why: str) -> StoreDamaged:
        return StoreDamaged(f"feature store {path} is damaged: {why}. It will be rebuilt on the next run.", path)

    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("format") != STORE_FORMAT:
            raise ValueError(f"format {record.get('format')!r}, expected {STORE_FORMAT!r}")
        n = int(record["n"])
        ids_text = (path / "ids.json").read_text(encoding="utf-8")
        if hashlib.sha256(ids_text.encode("utf-8")).hexdigest() != record["ids_sha256"]:
            raise ValueError("ids.json does not match its checksum")
        ids = json.loads(ids_text)
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} rows")
        mods = {}
        for mod in MODALITIES:
            info = record["files"][f"{mod}_mask"]
            if file_sha256(path / f"{mod}_mask.npy") != info["sha256"]:
                raise ValueError(f"{mod}_mask.npy does not match its checksum")
            mask = np.load(path / f"{mod}_mask.npy", allow_pickle=False)
            arrays: dict[str, Any] = {"mask": mask}
            for part in ROW_PARTS:
                name = f"{mod}_{part}"
                info = record["files"][name]
                crc_path = path / f"{name}.crc32.npy"
                if file_sha256(crc_path) != info["crc32_sha256"]:
                    raise ValueError(f"{crc_path.name} does not match its checksum")
                crc = np.load(crc_path, allow_pickle=False)
                shape, dtype, _fortran, _offset = read_npy_header(path / f"{name}.npy")
                if list(shape) != info["shape"] or dtype.name != info["dtype"]:
                    raise ValueError(f"{name}.npy holds {shape} {dtype}, the record says {info['shape']} {info['dtype']}")
                if (path / f"{name}.npy").stat().st_size != info["bytes"]:
                    raise ValueError(f"{name}.npy has {(path / f'{name}.npy').stat().st_size} bytes, the record says {info['bytes']}")
                arrays[part] = DiskArray(path / f"{name}.npy", crc=crc, store=path)
            mods[mod] = ModalityFeatures(arrays["local"], arrays["mask"], arrays["pooled"])
            mods[mod]._finite_checked = True  # write_store refuses non-finite rows; row checksums hold them
    except StoreDamaged:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise damaged(str(exc)) from None
    except DataError as exc:
        raise damaged(str(exc)) from None
    feats = FeatureSet(mods["image"], mods["text"], tuple(ids), {"storage": "disk", "store": str(path)})
    feats.set_content_digest(record["content_digest"])
    return feats


def remove_store(path: Path, reason: str) -> None:
    """Move a store out of the way and delete it (no reader sees half of it)."""
    log.warning("Feature store %s is damaged (%s); it is removed and will be rebuilt.", path, reason)
    trash = path.parent / f".tmp-trash-{path.name}-{secrets.token_hex(4)}"
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def open_or_build(path: str | Path, build: Callable[[], FeatureSet], *, source: Any = None) -> tuple[FeatureSet, bool]:
    """The store at ``path``, written from ``build()`` when absent or damaged (a damaged one is
    removed with a warning first). Returns ``(features, built now)``."""
    path = Path(path)
    try:
        return open_store(path), False
    except FileNotFoundError:
        pass
    except StoreDamaged as exc:
        remove_store(path, str(exc))
    return write_store(path, build(), source=source), True


def store_key(features: FeatureSet) -> str:
    """What names the store of ``features`` without reading their rows: a SHA-256 over the
    sources' signatures (files with size and modification time, row maps, computations) and the
    sample ids."""
    from .lazy import is_lazy

    h = hashlib.sha256((STORE_FORMAT + "\0").encode())
    for mod in MODALITIES:
        mf: ModalityFeatures = getattr(features, mod)
        for part in ("local", "mask", "pooled"):
            arr = getattr(mf, part)
            if is_lazy(arr):
                h.update(json.dumps(arr.signature(), sort_keys=True).encode())
            else:
                a = np.ascontiguousarray(arr)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(hashlib.sha256(a.reshape(-1).view(np.uint8).data).digest())
    h.update("\0".join(features.sample_ids).encode("utf-8"))
    return h.hexdigest()
