"""The feature cache and :func:`extract_features`.

**Per item.** The cache stores features per *item*: an image (keyed by the SHA-256 of its file
bytes) or a text (the SHA-256 of its UTF-8), in a *space* per (modality, encoder fingerprint,
storage dtype). Changing one row of a dataset re-extracts that one item; two datasets that
share images share their features; a label, id or split change re-extracts nothing. Layout::

    <root>/items/<space>/space.json          the space's inputs (modality, encoder fingerprint,
                                             dtype, format)
    <root>/items/<space>/<chunk>/            written once, never changed:
        local.npy  mask.npy  pooled.npy      rows of the items extracted together
        keys.json                            the item key of each row
        meta.json                            shapes, dtypes, per-file SHA-256, created, version
    <root>/models/                           derived model files (the ONNX export, …)
    <root>/stores/<key[:32]>/                a dataset's features as a feature store
                                             (storage="disk"; :mod:`gcrdp.data.store`)

A run looks every item up in the chunks of its two spaces, extracts the missing ones (each once,
however many samples share it), and assembles the dataset's arrays in sample order. Local
features are padded to the longest item of the dataset; the mask marks the valid rows as before.

**At scale.** Missing items are encoded in shards of :data:`SHARD_ITEMS` (a whole number of
batches), each published as its own chunk as soon as it is done: memory holds one shard's
features, and a killed extraction resumes from the chunks already written (the next run finds
them and extracts the rest; its batches are the uninterrupted run's unless an item of a written
shard recurs later in the dataset, which shifts the later batches). The shards are runs of the order in which one encoder call would
batch the items (``encode_order``, for encoders that sort texts by length), so every batch —
and every row — is the one a single call gives; one progress bar counts all shards. With
``storage="disk"`` (or ``"auto"`` above :data:`gcrdp.data.store.AUTO_DISK_BYTES`) the dataset's
features are not assembled in memory: :class:`ChunkRows` views read them by row from the
chunks into a feature store under ``<root>/stores/`` (chunked writes, row checksums), which
later runs open without looking items up; a damaged store is removed and rebuilt from the
chunks. Only the masks (n × L booleans) and the item keys are held for the whole dataset.

**Safe against interruption and concurrent runs.** A chunk is written into
``<space>/.tmp-<name>/``, every file fsynced, then renamed into place (``os.rename`` of a
directory within one filesystem is atomic); chunk names are unique (time, pid, random), so two
processes never write the same one — two runs that extract the same item concurrently each
publish a chunk, and lookups take the first in name order. An interrupted write leaves a
``.tmp-*`` directory that lookups ignore and later writes delete once it is an hour old. A chunk
that fails to read (missing or truncated array, checksum mismatch, unreadable keys or meta) is
logged as damaged, removed, and its items are extracted again.

**Identity.** ``FeatureSet.meta["key"]`` still names the dataset's features as a whole: the
SHA-256 of a canonical JSON (sorted keys, no whitespace) of::

    {"format": CACHE_FORMAT_VERSION, "dataset": Dataset.content_digest(),
     "image_encoder": image_encoder.fingerprint(), "text_encoder": text_encoder.fingerprint(),
     "dtype": "float16" | "float32"}

(checkpoints record it to refuse features that changed). Entries of the first, per-dataset
layout (``<root>/features/<key>/``) are read once when their key matches and imported as chunks,
so an upgrade re-extracts nothing.

Storage dtype: float16 by default (half the disk and memory; about 3 significant digits, enough
for frozen features), float32 on request. The returned :class:`FeatureSet` holds the stored
dtype both on a miss and on a hit — both are read back from the chunks — so a first run and a
cached run see identical arrays. Downstream code computes in float32.
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
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..data.features import FeatureSet, ModalityFeatures
from ..data.lazy import DiskArray, LazyRows, StoreDamaged
from ..data.types import Dataset
from ..errors import ConfigError, DataError, format_list
from ..utils.io import file_sha256, fsync_dir
from .base import check_batch_size, check_encoder, shared_progress
from .images import check_image_files

log = logging.getLogger(__name__)

#: The identity key's format (``FeatureSet.meta["key"]``): bump when the meaning of arrays changes.
CACHE_FORMAT_VERSION = 1
#: The per-item layout's format.
ITEM_FORMAT_VERSION = 1
STORAGE_DTYPES = ("float16", "float32")
_ARRAYS = ("local", "mask", "pooled")
_STALE_TMP_SECONDS = 3600.0
_ATTEMPTS = 3
#: items per encoder call (a shard, published as one chunk) when extracting, rounded down to a
#: whole number of batches (:func:`shard_items`): what bounds extraction's memory (EfficientNet-
#: Lite0: 1024 × 49 × 1280 float32 = 257 MB of encoder output, plus its float16 copy)
SHARD_ITEMS = 1024
#: where :func:`extract_features` returns the features (see its ``storage``)
STORAGES = ("auto", "memory", "disk")
#: chunk files a :class:`ChunkRows` keeps open at once
_OPEN_CHUNK_FILES = 16


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace (the hashed form of cache keys)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def check_dtype(dtype: str) -> str:
    dtype = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}.")
    return dtype


def cache_key_inputs(dataset_digest: str, image_fingerprint: dict, text_fingerprint: dict, dtype: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT_VERSION,
        "dataset": dataset_digest,
        "image_encoder": image_fingerprint,
        "text_encoder": text_fingerprint,
        "dtype": check_dtype(dtype),
    }


def cache_key(inputs: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of the key inputs."""
    return hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()


def space_inputs(modality: str, fingerprint: dict, dtype: str) -> dict[str, Any]:
    """What a space of item features is: one modality, one encoder, one storage dtype."""
    return {"format": ITEM_FORMAT_VERSION, "modality": modality, "encoder": fingerprint, "dtype": check_dtype(dtype)}


def image_item_key(path: str | Path) -> str:
    """An image item's key: the SHA-256 of its file bytes (where it lies does not matter)."""
    return file_sha256(Path(path))


def text_item_key(text: str) -> str:
    """A text item's key: the SHA-256 of its UTF-8."""
    return hashlib.sha256(b"text\0" + text.encode("utf-8")).hexdigest()


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move the finished temp directory into place (fails if ``final`` exists)."""
    os.rename(tmp, final)


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


#: what reading a damaged chunk raises (missing file, bad JSON or array, checksum mismatch);
#: anything else — no memory, no permission — is not damage and is raised as it is
_DAMAGE = (FileNotFoundError, ValueError, KeyError, TypeError, EOFError, IndexError)


def _text_sha256(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


class DamagedChunk(Exception):
    """A chunk that cannot be read as written (its path is ``.chunk``)."""

    def __init__(self, chunk: Path, reason: str) -> None:
        super().__init__(f"{chunk}: {reason}")
        self.chunk = chunk


class FeatureCache:
    """Directory-backed per-item feature cache (see the module docstring).

    Args:
        root: cache directory (created on first write). Items live in ``root/items``, derived
            model files in ``root/models``; ``root/features`` holds entries of the first layout.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    @property
    def items_dir(self) -> Path:
        return self.root / "items"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def features_dir(self) -> Path:  # the first layout (one entry per dataset), read-only now
        return self.root / "features"

    def space_dir(self, inputs: dict[str, Any]) -> Path:
        return self.items_dir / cache_key(inputs)[:32]

    def chunks(self, space: Path) -> list[Path]:
        """The published chunks of ``space``, in name (creation) order."""
        if not space.is_dir():
            return []
        return sorted(p for p in space.iterdir() if p.is_dir() and not p.name.startswith("."))

    def n_items(self) -> int:
        """Rows stored over every space (duplicates across chunks counted once per chunk)."""
        total = 0
        for space in (p for p in self.items_dir.glob("*") if p.is_dir()):
            for chunk in self.chunks(space):
                with contextlib.suppress(Exception):
                    total += len(json.loads((chunk / "keys.json").read_text(encoding="utf-8")))
        return total

    # ------------------------------------------------------------------ reading
    def index(self, space: Path) -> dict[str, tuple[Path, int]]:
        """``{item key: (chunk, row)}`` over the chunks of ``space`` (the first chunk holding a
        key wins). A chunk whose key list cannot be read is discarded with a warning."""
        out: dict[str, tuple[Path, int]] = {}
        for chunk in self.chunks(space):
            try:
                keys = json.loads((chunk / "keys.json").read_text(encoding="utf-8"))
                if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                    raise ValueError("keys.json is not a list of strings")
                meta = json.loads((chunk / "meta.json").read_text(encoding="utf-8"))
                if meta.get("n_items") != len(keys) or meta.get("keys_sha256") != _text_sha256(keys):
                    raise ValueError("keys.json disagrees with meta.json")
            except _DAMAGE as exc:
                self.discard(chunk, f"unreadable key list ({exc})")
                continue
            for row, key in enumerate(keys):
                out.setdefault(key, (chunk, row))
        return out

    def read_chunk(self, chunk: Path, parts: tuple[str, ...] = _ARRAYS) -> dict[str, np.ndarray]:
        """The arrays ``parts`` of ``chunk``, each checked against the SHA-256, shape and dtype
        in its meta; :class:`DamagedChunk` when they do not match or a file is missing. Other
        errors (no memory, no permission) are raised as they are: they are not damage."""
        try:
            meta = json.loads((chunk / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != ITEM_FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r}")
            arrays = {}
            for part in parts:
                name = f"{part}.npy"
                info = meta["files"][name]
                if file_sha256(chunk / name) != info["sha256"]:
                    raise ValueError(f"checksum mismatch in {name}")
                # memory-mapped once checked: a run copies only its own rows out of a large chunk
                arr = np.load(chunk / name, allow_pickle=False, mmap_mode="r")
                if list(arr.shape) != info["shape"] or arr.dtype.name != info["dtype"]:
                    raise ValueError(f"{name} has shape {arr.shape} {arr.dtype}, meta says {info['shape']} {info['dtype']}")
                arrays[part] = arr
            if any(len(a) != meta["n_items"] for a in arrays.values()):
                raise ValueError("the arrays disagree in rows")
            return arrays
        except _DAMAGE as exc:
            raise DamagedChunk(chunk, str(exc)) from None

    # ------------------------------------------------------------------ writing
    def write_chunk(self, inputs: dict[str, Any], keys: list[str], features: ModalityFeatures) -> Path:
        """Write ``features`` (one row per entry of ``keys``) as a new chunk of the space of
        ``inputs``, atomically, and return it."""
        from .. import __version__

        space = self.space_dir(inputs)
        space.mkdir(parents=True, exist_ok=True)
        if not (space / "space.json").is_file():
            tmp_meta = space / f".space-{secrets.token_hex(4)}.json"
            _write_json(tmp_meta, inputs)
            os.replace(tmp_meta, space / "space.json")
        self.clean_stale_tmp(space)
        name = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp, final = space / f".tmp-{name}", space / name
        tmp.mkdir()
        try:
            files = {}
            for part in _ARRAYS:
                arr = getattr(features, part)
                _save_array(tmp / f"{part}.npy", arr)
                files[f"{part}.npy"] = {"shape": list(arr.shape), "dtype": arr.dtype.name, "sha256": file_sha256(tmp / f"{part}.npy")}
            _write_json(tmp / "keys.json", list(keys))
            _write_json(
                tmp / "meta.json",
                {
                    "format": ITEM_FORMAT_VERSION,
                    "n_items": len(keys),
                    "keys_sha256": _text_sha256(list(keys)),
                    "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "gcrdp_version": __version__,
                },
            )
            fsync_dir(tmp)
            _publish(tmp, final)
            fsync_dir(space)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def discard(self, chunk: Path, reason: str) -> None:
        """Remove a damaged chunk (renamed out of the way first, so no reader sees half of it)."""
        log.warning("Feature cache chunk %s is damaged (%s); its items will be extracted again (rebuilt).", chunk, reason)
        trash = chunk.parent / f".tmp-trash-{secrets.token_hex(6)}"
        try:
            os.rename(chunk, trash)
        except OSError:
            trash = chunk
        shutil.rmtree(trash, ignore_errors=True)

    def clean_stale_tmp(self, space: Path, max_age_s: float = _STALE_TMP_SECONDS) -> int:
        """Delete ``.tmp-*`` directories of ``space`` older than ``max_age_s`` (left by
        interrupted writes); return how many were removed."""
        if not space.is_dir():
            return 0
        now, removed = time.time(), 0
        for p in space.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > max_age_s:
                    shutil.rmtree(p, ignore_errors=True)
                    removed += 1
        return removed

    # ------------------------------------------------------------------ the first layout
    def load_legacy(self, key: str) -> FeatureSet | None:
        """The first layout's entry for dataset key ``key`` (``root/features/<key>``), or
        ``None`` when absent or damaged."""
        path = self.features_dir / key
        if not (path / "meta.json").is_file():
            return None
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            if meta.get("format") != CACHE_FORMAT_VERSION or meta.get("key") != key:
                raise ValueError("format/key mismatch")
            mods = {}
            for modality in ("image", "text"):
                arrays = {}
                for part in _ARRAYS:
                    name = f"{modality}_{part}.npy"
                    if file_sha256(path / name) != meta["files"][name]["sha256"]:
                        raise ValueError(f"checksum mismatch in {name}")
                    arrays[part] = np.load(path / name, allow_pickle=False)
                mods[modality] = ModalityFeatures(**arrays)
            return FeatureSet(mods["image"], mods["text"], tuple(meta["sample_ids"]), {})
        except Exception as exc:  # noqa: BLE001
            log.warning("Old-layout feature cache entry %s is unreadable (%s); ignored.", path, exc)
            return None


def _as_storage(mf: ModalityFeatures, dtype: str, name: str) -> ModalityFeatures:
    mf.check_finite(f"{name} features")
    with np.errstate(over="ignore"):  # overflow is reported by the check below
        out = ModalityFeatures(
            np.ascontiguousarray(mf.local, dtype=dtype), mf.mask.astype(bool), np.ascontiguousarray(mf.pooled, dtype=dtype)
        )
    if dtype != "float32":
        out.check_finite(f"{name} features after conversion to {dtype} (values out of range)")
    return out


def _used_length(mask: np.ndarray) -> int:
    """One past the last valid position of any row (at least 1)."""
    used = np.flatnonzero(np.asarray(mask, dtype=bool).any(axis=0))
    return int(used[-1]) + 1 if used.size else 1


def _trimmed(mf: ModalityFeatures) -> ModalityFeatures:
    """Local features padded to the longest item, as the cache assembles them (so that a run
    with and one without the cache see the same arrays)."""
    length = _used_length(mf.mask) if len(mf) else mf.local.shape[1]
    if length == mf.local.shape[1]:
        return mf
    return ModalityFeatures(np.ascontiguousarray(mf.local[:, :length]), np.ascontiguousarray(mf.mask[:, :length]), mf.pooled)


class ChunkRows(LazyRows):
    """One part (``"local"`` or ``"pooled"``) of a dataset's features, read by row from the
    cache's chunks (``<chunk>/<part>.npy``, with ``os.preadv``: see
    :class:`~gcrdp.data.lazy.DiskArray`) — the gather view a feature store is written from.

    Row ``i`` is row ``row_of[i]`` of chunk file ``files[chunk_of[i]]``; local rows are cut or
    zero-padded to ``row_shape[0]`` positions (the dataset's longest item), as the in-memory
    assembly does. At most :data:`_OPEN_CHUNK_FILES` files are open at once. The chunks' files
    are checked (SHA-256) when the view is made, not on each read."""

    def __init__(self, files: list[Path], chunk_of: np.ndarray, row_of: np.ndarray, row_shape: tuple[int, ...], dtype: Any) -> None:
        super().__init__(len(chunk_of), row_shape, np.dtype(dtype))
        self.files, self.chunk_of, self.row_of = list(files), chunk_of, row_of
        self._open: OrderedDict[int, DiskArray] = OrderedDict()

    def describe(self) -> str:
        return f"{len(self.files)} feature cache chunks"

    def _source(self, c: int) -> DiskArray:
        arr = self._open.pop(c, None)
        if arr is None:
            arr = DiskArray(self.files[c])
            while len(self._open) >= _OPEN_CHUNK_FILES:
                self._open.popitem(last=False)[1].close()
        self._open[c] = arr
        return arr

    def _read_physical(self, phys: np.ndarray) -> np.ndarray:
        out = np.zeros((phys.size, *self.row_shape), self.dtype)
        chunk_of = self.chunk_of[phys]
        for c in np.unique(chunk_of).tolist():
            sel = np.flatnonzero(chunk_of == c)
            got = self._source(c).read(self.row_of[phys[sel]])
            if len(self.row_shape) == 2:  # local: (positions, d), cut or padded to the dataset's longest item
                m = min(self.row_shape[0], got.shape[1])
                out[sel, :m] = got[:, :m]
            else:
                out[sel] = got
        return out

    def signature(self) -> dict[str, Any]:
        where = hashlib.sha256(np.ascontiguousarray(self.chunk_of).tobytes() + np.ascontiguousarray(self.row_of).tobytes()).hexdigest()
        return {
            "kind": "feature-cache-chunks",
            "files": [str(f) for f in self.files],
            "where": where,
            "row_shape": list(self.row_shape),
            "dtype": self.dtype.str,
            "rows": self._rows_signature(),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


class _Gather:
    """Where each row of a dataset's features lies in the cache's chunks, checked: every chunk
    involved is read once through :meth:`FeatureCache.read_chunk` (SHA-256 of every file, shapes,
    dtypes; :class:`DamagedChunk` otherwise), and the mask is gathered in memory, cut to the
    dataset's longest item. :meth:`in_memory` assembles the arrays, :meth:`lazy` gives the view
    a feature store is written from: both read the same rows through :class:`ChunkRows`."""

    def __init__(self, cache: FeatureCache, where: list[tuple[Path, int]], dtype: str) -> None:
        n = len(where)
        if n == 0:
            raise DataError("Nothing to assemble: no samples.")
        ids: dict[Path, int] = {}
        chunk_of = np.empty(n, np.int64)
        row_of = np.empty(n, np.int64)
        for i, (chunk, row) in enumerate(where):
            chunk_of[i] = ids.setdefault(chunk, len(ids))
            row_of[i] = row
        self.chunks = list(ids)
        order = np.argsort(chunk_of, kind="stable")
        bounds = np.searchsorted(chunk_of[order], np.arange(len(self.chunks) + 1))
        dim = pooled_dim = -1
        length = 1
        masks: list[tuple[np.ndarray, np.ndarray]] = []
        for c, chunk in enumerate(self.chunks):
            pos = order[bounds[c] : bounds[c + 1]]
            arr = cache.read_chunk(chunk)  # every file's SHA-256, shape and dtype
            d, dg = int(arr["local"].shape[2]), int(arr["pooled"].shape[1])
            if dim < 0:
                dim, pooled_dim = d, dg
            elif (d, dg) != (dim, pooled_dim):
                raise DamagedChunk(chunk, f"feature dimension {d} differs from {dim} in its space")
            if arr["local"].dtype != np.dtype(dtype) or arr["pooled"].dtype != np.dtype(dtype):
                raise DamagedChunk(chunk, f"dtype {arr['local'].dtype} where its space stores {dtype}")
            m = np.asarray(arr["mask"][row_of[pos]], dtype=bool)
            length = max(length, _used_length(m))
            masks.append((pos, m))
            del arr
        mask = np.zeros((n, length), dtype=bool)
        for pos, m in masks:
            k = min(length, m.shape[1])
            mask[pos, :k] = m[:, :k]
        self.n, self.length, self.dim, self.pooled_dim, self.dtype = n, length, dim, pooled_dim, np.dtype(dtype)
        self.chunk_of, self.row_of, self.mask = chunk_of, row_of, mask

    @property
    def nbytes(self) -> int:
        """Bytes of the assembled local, mask and pooled arrays."""
        return self.n * (self.length * self.dim * self.dtype.itemsize + self.length + self.pooled_dim * self.dtype.itemsize)

    def lazy(self) -> ModalityFeatures:
        local = ChunkRows([c / "local.npy" for c in self.chunks], self.chunk_of, self.row_of, (self.length, self.dim), self.dtype)
        pooled = ChunkRows([c / "pooled.npy" for c in self.chunks], self.chunk_of, self.row_of, (self.pooled_dim,), self.dtype)
        # lazy arrays stand in for numpy ones (shape, dtype, row indexing; see gcrdp.data.lazy)
        return ModalityFeatures(cast(np.ndarray, local), self.mask, cast(np.ndarray, pooled))

    def in_memory(self) -> ModalityFeatures:
        lazy = self.lazy()
        local, pooled = cast(ChunkRows, lazy.local), cast(ChunkRows, lazy.pooled)
        try:
            return ModalityFeatures(np.asarray(local), self.mask, np.asarray(pooled))
        finally:
            local.close()
            pooled.close()


def shard_items(batch_size: int) -> int:
    """Items per encoder call when extracting: :data:`SHARD_ITEMS` rounded down to a multiple
    of ``batch_size`` (at least one batch), so that the shards' batches are those of one call."""
    return max(1, SHARD_ITEMS // batch_size) * batch_size


def _processing_order(encoder: Any, items: list[Any]) -> np.ndarray | None:
    """The encoder's batching order of ``items`` (``encode_order``), or ``None`` when it batches
    them as given."""
    order_fn = getattr(encoder, "encode_order", None)
    if order_fn is None:
        return None
    order = np.asarray(order_fn(items))
    if order.shape != (len(items),) or order.dtype.kind not in "iu" or not np.array_equal(np.sort(order), np.arange(len(items))):
        raise ConfigError(f"{getattr(encoder, 'name', '?')}.encode_order() must return a permutation of the {len(items)} items.")
    return order


@dataclass(frozen=True)
class _Encoding:
    """How one modality's missing items are encoded into the cache: its encoder, the storage
    dtype, the encoder's batch size and whether a progress bar shows."""

    modality: str
    encoder: Any
    dtype: str
    batch_size: int
    progress: bool


def _extract_missing(
    cache: FeatureCache,
    inputs: dict[str, Any],
    how: _Encoding,
    items: list[Any],
    keys: list[str],
    rows: list[int],
    index: dict[str, tuple[Path, int]],
) -> int:
    """Encode the samples ``rows`` (every sample whose item is missing, in dataset order,
    duplicates too) in shards of :func:`shard_items`, each published as a chunk as soon as it is
    done (its items' first occurrences), and add them to ``index``; returns the items written.

    The shards are runs of the order in which one call over all of them would batch them
    (``encode_order``), a whole number of batches each, so every batch — and so every row — is
    the one a single call gives. One progress bar counts every sample over all shards."""
    from ..utils.progress import progress_bar

    modality, encoder, dtype, batch_size = how.modality, how.encoder, how.dtype, how.batch_size
    if hasattr(encoder, "use_artifact_dir"):
        encoder.use_artifact_dir(cache.models_dir)
    step = shard_items(batch_size)
    if len(rows) > step:
        order = _processing_order(encoder, [items[i] for i in rows])
        if order is not None:
            rows = [rows[j] for j in order.tolist()]
    written: set[str] = set()
    unit, what = ("img", "images") if modality == "image" else ("text", "texts")
    # a bar on a terminal, a line every 30 s in a log (not dozens of carriage returns)
    with progress_bar(len(rows), enabled=how.progress, unit=unit, desc=f"Encoding {what} ({getattr(encoder, 'name', '?')})") as bar:
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            with shared_progress(bar) as shared:
                got = encoder.encode([items[i] for i in part], batch_size=batch_size, progress=False)
            if shared.count < len(part):  # an encoder that does not report through progress_bar()
                bar.update(len(part) - shared.count)
            if len(got) != len(part):
                raise DataError(
                    f"The {modality} encoder returned {len(got)} rows for {len(part)} items; an encoder must return one row per item."
                )
            got = _as_storage(got, dtype, modality)
            keep: list[int] = []
            for j, i in enumerate(part):
                if keys[i] not in written:  # first occurrences only: later copies were encoded to keep the batches
                    written.add(keys[i])
                    keep.append(j)
            if keep:
                new = [keys[part[j]] for j in keep]
                mf = got if len(keep) == len(part) else ModalityFeatures(got.local[keep], got.mask[keep], got.pooled[keep])
                chunk = cache.write_chunk(inputs, new, mf)
                index.update({k: (chunk, r) for r, k in enumerate(new)})
                del mf
            del got
    return len(written)


def _gather_for(cache: FeatureCache, how: _Encoding, items: list[Any], keys: list[str], legacy: Any) -> tuple[_Gather, int]:
    """One modality's rows for ``items`` (with their item ``keys``) located in the cache's
    chunks, extracting the missing items first (in shards, as ``how`` says); returns (where they
    are, items extracted now). A damaged chunk is discarded and its items extracted again."""
    modality, dtype = how.modality, how.dtype
    inputs = space_inputs(modality, how.encoder.fingerprint(), dtype)
    space = cache.space_dir(inputs)
    encoded = 0
    for _attempt in range(len(cache.chunks(space)) + _ATTEMPTS):  # each failed pass removes a damaged chunk
        index = cache.index(space)
        # every sample whose item is missing, in dataset order — duplicates too, so that a
        # first extraction sees exactly the batches an uncached one does (identical arrays)
        rows = [i for i, k in enumerate(keys) if k not in index]
        if rows:
            old = legacy() if legacy is not None else None
            if old is not None:  # the first layout holds these rows already: import, do not re-extract
                first: dict[str, int] = {}
                for i in rows:
                    first.setdefault(keys[i], i)
                src = getattr(old, modality)
                take = list(first.values())
                chunk = cache.write_chunk(inputs, list(first), ModalityFeatures(src.local[take], src.mask[take], src.pooled[take]))
                index.update({k: (chunk, r) for r, k in enumerate(first)})
            else:
                encoded += _extract_missing(cache, inputs, how, items, keys, rows, index)
        try:
            return _Gather(cache, [index[k] for k in keys], dtype), encoded
        except DamagedChunk as exc:
            cache.discard(exc.chunk, str(exc).split(": ", 1)[-1])
    raise DataError(
        f"The feature cache in {cache.root} keeps failing to read back what was just written; check the disk, or pass another --cache-dir."
    )


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise ConfigError(f"storage must be one of {STORAGES}, got {storage!r}.")
    return storage


def store_path(cache_dir: str | Path, key: str) -> Path:
    """Where :func:`extract_features` keeps the feature store of the dataset features ``key``."""
    return Path(cache_dir) / "stores" / key[:32]


def _existing_store(path: Path, ids: list[str]) -> FeatureSet | None:
    """The store at ``path`` when it opens and holds ``ids``; a damaged one is removed (and
    rebuilt by the caller), an absent one is ``None``."""
    from ..data.store import open_store, remove_store

    try:
        feats = open_store(path)
    except FileNotFoundError:
        return None
    except StoreDamaged as exc:
        remove_store(path, str(exc))
        return None
    if list(feats.sample_ids) != ids:
        remove_store(path, "its sample ids are not the dataset's")
        return None
    return feats


def extract_features(
    dataset: Dataset,
    image_encoder: Any,
    text_encoder: Any,
    *,
    cache_dir: str | Path | None = None,
    dtype: str = "float16",
    batch_size: int = 32,
    progress: bool = True,
    storage: str = "auto",
) -> FeatureSet:
    """Features of every sample of ``dataset`` (in dataset order), from the cache when present.

    Args:
        dataset: samples with an image file each (image-free datasets are out of scope).
        image_encoder, text_encoder: objects following :class:`~gcrdp.encoders.base.Encoder`.
        cache_dir: cache root (see :class:`FeatureCache`); ``None`` computes without caching.
        dtype: storage dtype of local and pooled arrays, ``"float16"`` (default) or
            ``"float32"``; the returned arrays have this dtype (compute in float32 downstream).
        batch_size: images per batch; texts use twice as many.
        progress: show tqdm progress bars.
        storage: where the returned features live: ``"memory"`` (numpy arrays), ``"disk"`` (a
            feature store at ``<cache_dir>/stores/<key[:32]>``, written from the cache's chunks
            without holding the dataset's features in memory, reused by later runs, rebuilt when
            damaged) or ``"auto"`` (default: disk when the features exceed
            :data:`gcrdp.data.store.AUTO_DISK_BYTES`). ``"disk"`` needs a ``cache_dir``.

    Returns:
        A :class:`FeatureSet` with ``sample_ids`` = the dataset's ids and ``meta`` holding the
        dataset's feature key, its inputs, ``cache_hit`` (nothing was extracted) and
        ``items_extracted`` (per modality, the items extracted now); on disk also
        ``storage="disk"`` and ``store`` (its folder). The arrays are the same either way.

    Raises:
        DataError: a sample has no image, image files are missing or undecodable, a text is
            empty, or the encoders produce NaN/inf.
    """
    from ..data import store as store_mod

    check_encoder(image_encoder, "image", "image_encoder")
    check_encoder(text_encoder, "text", "text_encoder")
    dtype = check_dtype(dtype)
    check_batch_size(batch_size)
    storage = check_storage(storage)
    if storage == "disk" and cache_dir is None:
        raise ConfigError("storage='disk' keeps the features in a store under the cache directory: pass a cache_dir.")
    samples = dataset.samples
    ids = [s.id for s in samples]
    no_image = [s.id for s in samples if s.image is None]
    if no_image:
        raise DataError(
            f"Dataset {dataset.name!r}: {len(no_image)} samples have no image "
            f"({format_list(no_image)}). Feature extraction needs an image per sample; use "
            "pre-extracted features for image-free data."
        )
    check_image_files([s.image for s in samples], ids)  # every file, before any slow work
    key_inputs = cache_key_inputs(dataset.content_digest(), image_encoder.fingerprint(), text_encoder.fingerprint(), dtype)
    key = cache_key(key_inputs)
    meta: dict[str, Any] = {"key": key, "key_inputs": key_inputs, "dtype": dtype}
    images, texts = [s.image for s in samples], [s.text for s in samples]

    no_text = [s.id for s in samples if s.text is None]
    if no_text:
        raise DataError(
            f"Dataset {dataset.name!r}: {len(no_text)} samples have no text "
            f"({format_list(no_text)}). Feature extraction needs a text per sample."
        )

    if cache_dir is None:
        image = image_encoder.encode(images, batch_size=batch_size, progress=progress)
        text = text_encoder.encode(texts, batch_size=2 * batch_size, progress=progress)
        for name, mf in (("image", image), ("text", text)):
            if len(mf) != len(samples):
                raise DataError(
                    f"The {name} encoder returned {len(mf)} rows for {len(samples)} samples; an encoder must return one row per item."
                )
        return FeatureSet(
            _trimmed(_as_storage(image, dtype, "image")),
            _trimmed(_as_storage(text, dtype, "text")),
            tuple(ids),
            {**meta, "cache_hit": False, "items_extracted": {"image": len(samples), "text": len(samples)}},
        )

    cache = FeatureCache(cache_dir)
    where = store_path(cache.root, key)
    if storage != "memory":  # the dataset's store, when a run wrote it: no item lookup at all
        stored = _existing_store(where, ids)
        if stored is not None and (storage == "disk" or stored.nbytes > store_mod.AUTO_DISK_BYTES):
            log.info("Feature store %s holds the features of %d samples", where, len(ids))
            stored.meta = {
                **meta,
                "cache_hit": True,
                "cache_path": str(cache.items_dir),
                "items_extracted": {"image": 0, "text": 0},
                "storage": "disk",
                "store": str(where),
            }
            return stored
    legacy_state: dict[str, Any] = {}

    def legacy() -> FeatureSet | None:
        if "value" not in legacy_state:
            old = cache.load_legacy(key)
            legacy_state["value"] = old if old is not None and list(old.sample_ids) == ids else None
            if legacy_state["value"] is not None:
                log.info("Importing the old-layout feature cache entry %s", cache.features_dir / key)
        return legacy_state["value"]

    image_keys = [image_item_key(p) for p in images]  # type: ignore[arg-type]
    text_keys = [text_item_key(t) for t in texts]  # type: ignore[arg-type]
    image, n_img = _gather_for(cache, _Encoding("image", image_encoder, dtype, batch_size, progress), images, image_keys, legacy)
    text, n_txt = _gather_for(cache, _Encoding("text", text_encoder, dtype, 2 * batch_size, progress), texts, text_keys, legacy)
    del image_keys, text_keys
    meta.update(
        {"cache_hit": n_img == 0 and n_txt == 0, "cache_path": str(cache.items_dir), "items_extracted": {"image": n_img, "text": n_txt}}
    )
    if n_img or n_txt:
        log.info("Feature cache %s: extracted %d images and %d texts of %d samples", cache.items_dir, n_img, n_txt, len(samples))
    if storage == "memory" or (storage == "auto" and image.nbytes + text.nbytes <= store_mod.AUTO_DISK_BYTES):
        return FeatureSet(image.in_memory(), text.in_memory(), tuple(ids), meta)
    log.info("Feature store %s (%.2f GiB), written from the feature cache", where, (image.nbytes + text.nbytes) / 2**30)
    feats, _built = store_mod.open_or_build(
        where, lambda: FeatureSet(image.lazy(), text.lazy(), tuple(ids), {}), source={"feature_cache": str(cache.items_dir), "key": key}
    )
    feats.meta = {**meta, "storage": "disk", "store": str(where)}
    return feats


def encode_items(
    encoder: Any,
    items: list[Any],
    *,
    cache_dir: str | Path | None = None,
    dtype: str = "float16",
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[ModalityFeatures, int]:
    """Features of ``items`` (image paths or texts, by ``encoder.modality``) through the per-item
    cache (``cache_dir``; ``None`` encodes directly): ``(features, items extracted now)``. The
    building block of :func:`extract_features`, for collections without labels or splits (a
    search index). Missing items are extracted in shards as there; the result is in memory."""
    modality = getattr(encoder, "modality", None)
    check_encoder(encoder, modality if modality in ("image", "text") else "image", "encoder")
    assert modality is not None  # check_encoder made it "image" or "text"
    dtype = check_dtype(dtype)
    check_batch_size(batch_size)
    if modality == "image":
        check_image_files(items)
    elif any(not isinstance(t, str) or not t.strip() for t in items):
        raise DataError("Every text must be a non-empty string.")
    if not items:
        raise DataError("Nothing to encode: the list of items is empty.")
    if cache_dir is None:
        got = encoder.encode(list(items), batch_size=batch_size, progress=progress)
        if len(got) != len(items):
            raise DataError(f"The {modality} encoder returned {len(got)} rows for {len(items)} items.")
        return _trimmed(_as_storage(got, dtype, modality)), len(items)
    keys = [image_item_key(p) if modality == "image" else text_item_key(p) for p in items]
    how = _Encoding(modality, encoder, dtype, batch_size, progress)
    gathered, encoded = _gather_for(FeatureCache(cache_dir), how, list(items), keys, None)
    return gathered.in_memory(), encoded
