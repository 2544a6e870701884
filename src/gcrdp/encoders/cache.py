"""The feature cache and :func:`extract_features`.

A cache entry holds both modalities' features for one dataset and one encoder pair. Its key is
the SHA-256 of a canonical JSON (sorted keys, no whitespace) of::

    {"format": CACHE_FORMAT_VERSION, "dataset": Dataset.content_digest(),
     "image_encoder": image_encoder.fingerprint(), "text_encoder": text_encoder.fingerprint(),
     "dtype": "float16" | "float32"}

so any change to a text, an image's bytes, a label, the weights, the preprocessing, the token
limit, the backend or the storage dtype gives a new entry. Layout::

    <root>/features/<key>/
        image_local.npy  image_mask.npy  image_pooled.npy
        text_local.npy   text_mask.npy   text_pooled.npy
        meta.json        (the key's inputs, sample ids, shapes, dtypes, per-file SHA-256,
                          created time, gcrdp version)
    <root>/models/       (derived model files such as the ONNX export, keyed by weights digest)

Writes are atomic: everything goes into ``<root>/features/.tmp-<key>-<random>/``, each file is
fsynced, then the directory is renamed into place (``os.rename`` of a directory within one
filesystem is atomic). An interrupted write leaves only a ``.tmp-*`` directory, which lookups
ignore and which later writes delete once it is older than an hour. An entry that fails to
load (missing or truncated array, checksum mismatch, unreadable meta) is treated as a miss,
with a warning, and rebuilt.

Storage dtype: float16 by default (half the disk and memory; about 3 significant digits, enough
for frozen features), float32 on request. The returned :class:`FeatureSet` holds the stored
dtype both on a miss and on a hit, so a first run and a cached run see identical arrays.
Downstream code computes in float32: cast with ``np.asarray(x, np.float32)`` or
``torch.as_tensor(x).float()`` before arithmetic.
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
from pathlib import Path
from typing import Any

import numpy as np

from ..data.features import FeatureSet, ModalityFeatures
from ..data.types import Dataset
from ..errors import ConfigError, DataError, format_list
from .base import check_batch_size, check_encoder
from .images import check_image_files

log = logging.getLogger(__name__)

#: Bump when the on-disk layout or the meaning of stored arrays changes.
CACHE_FORMAT_VERSION = 1
STORAGE_DTYPES = ("float16", "float32")
_ARRAYS = ("local", "mask", "pooled")
_STALE_TMP_SECONDS = 3600.0


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace (the hashed form of cache keys)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def check_dtype(dtype: str) -> str:
    dtype = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}.")
    return dtype


def cache_key_inputs(dataset_digest: str, image_fingerprint: dict, text_fingerprint: dict,
                     dtype: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT_VERSION, "dataset": dataset_digest,
        "image_encoder": image_fingerprint, "text_encoder": text_fingerprint,
        "dtype": check_dtype(dtype),
    }


def cache_key(inputs: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of the key inputs."""
    return hashlib.sha256(canonical_json(inputs).encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move the finished temp directory into place (fails if ``final`` exists)."""
    os.rename(tmp, final)


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


class FeatureCache:
    """Directory-backed cache of :class:`FeatureSet` entries (see the module doc).

    Args:
        root: cache directory (created on first write). Entries live in ``root/features``,
            derived model files in ``root/models``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def entry_dir(self, key: str) -> Path:
        return self.features_dir / key

    def __contains__(self, key: str) -> bool:
        return (self.entry_dir(key) / "meta.json").is_file()

    def keys(self) -> list[str]:
        if not self.features_dir.is_dir():
            return []
        return sorted(p.name for p in self.features_dir.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    # ------------------------------------------------------------------ reading
    def load(self, key: str) -> FeatureSet | None:
        """The entry for ``key``, or ``None`` on a miss. A damaged entry is removed, logged as a
        warning and reported as a miss."""
        path = self.entry_dir(key)
        if not path.exists():
            return None
        try:
            return self._read(path, key)
        except Exception as exc:  # any damage means: rebuild
            log.warning("Feature cache entry %s is damaged (%s); it will be rebuilt.", path, exc)
            self._discard(path)
            return None

    def _read(self, path: Path, key: str) -> FeatureSet:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT_VERSION or meta.get("key") != key:
            raise ValueError(f"format/key mismatch (format {meta.get('format')!r})")
        mods = {}
        for modality in ("image", "text"):
            arrays = {}
            for part in _ARRAYS:
                name = f"{modality}_{part}.npy"
                info = meta["files"][name]
                if _sha256(path / name) != info["sha256"]:
                    raise ValueError(f"checksum mismatch in {name}")
                arr = np.load(path / name, allow_pickle=False)
                if list(arr.shape) != info["shape"] or arr.dtype.name != info["dtype"]:
                    raise ValueError(f"{name} has shape {arr.shape} {arr.dtype}, meta says "
                                     f"{info['shape']} {info['dtype']}")
                arrays[part] = arr
            mods[modality] = ModalityFeatures(**arrays)
        return FeatureSet(mods["image"], mods["text"], tuple(meta["sample_ids"]),
                          {**_public_meta(meta), "cache_path": str(path), "cache_hit": True})

    # ------------------------------------------------------------------ writing
    def save(self, key: str, features: FeatureSet, key_inputs: dict[str, Any]) -> Path:
        """Write ``features`` as the entry ``key`` atomically and return its directory. If a
        concurrent writer finished the same key first, its entry is kept."""
        from .. import __version__

        self.features_dir.mkdir(parents=True, exist_ok=True)
        self.clean_stale_tmp()
        final = self.entry_dir(key)
        tmp = self.features_dir / f".tmp-{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            files = {}
            for modality, mf in (("image", features.image), ("text", features.text)):
                for part in _ARRAYS:
                    name = f"{modality}_{part}.npy"
                    arr = getattr(mf, part)
                    _save_array(tmp / name, arr)
                    files[name] = {"shape": list(arr.shape), "dtype": arr.dtype.name,
                                   "sha256": _sha256(tmp / name)}
            meta = {
                "format": CACHE_FORMAT_VERSION, "key": key, "key_inputs": key_inputs,
                "sample_ids": list(features.sample_ids), "n_samples": len(features),
                "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "gcrdp_version": __version__,
            }
            with open(tmp / "meta.json", "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            if final.exists():  # a damaged entry that load() could not remove, or a racer's
                if key in self and self.load(key) is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                self._discard(final)
            try:
                _publish(tmp, final)
            except OSError:
                if key in self:  # another process published the same key meanwhile
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                raise
            _fsync_dir(self.features_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _discard(self, path: Path) -> None:
        """Remove an entry: rename it out of the way first, so no reader sees half of it."""
        trash = self.features_dir / f".tmp-trash-{secrets.token_hex(6)}"
        try:
            os.rename(path, trash)
        except OSError:
            trash = path
        shutil.rmtree(trash, ignore_errors=True)

    def clean_stale_tmp(self, max_age_s: float = _STALE_TMP_SECONDS) -> int:
        """Delete ``.tmp-*`` directories older than ``max_age_s`` (left by interrupted writes);
        return how many were removed."""
        if not self.features_dir.is_dir():
            return 0
        now, removed = time.time(), 0
        for p in self.features_dir.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > max_age_s:
                    shutil.rmtree(p, ignore_errors=True)
                    removed += 1
        return removed


def _public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: meta[k] for k in ("key", "key_inputs", "created", "gcrdp_version") if k in meta}
    out["dtype"] = meta.get("key_inputs", {}).get("dtype")
    return out


def _as_storage(mf: ModalityFeatures, dtype: str, name: str) -> ModalityFeatures:
    mf.check_finite(f"{name} features")
    with np.errstate(over="ignore"):  # overflow is reported by the check below
        out = ModalityFeatures(np.ascontiguousarray(mf.local, dtype=dtype), mf.mask.astype(bool),
                               np.ascontiguousarray(mf.pooled, dtype=dtype))
    if dtype != "float32":
        out.check_finite(f"{name} features after conversion to {dtype} (values out of range)")
    return out


def extract_features(
    dataset: Dataset, image_encoder: Any, text_encoder: Any, *,
    cache_dir: str | Path | None = None, dtype: str = "float16", batch_size: int = 32,
    progress: bool = True,
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

    Returns:
        A :class:`FeatureSet` with ``sample_ids`` = the dataset's ids and ``meta`` holding the
        cache key, its inputs and ``cache_hit``.

    Raises:
        DataError: a sample has no image, image files are missing or undecodable, a text is
            empty, or the encoders produce NaN/inf.
    """
    check_encoder(image_encoder, "image", "image_encoder")
    check_encoder(text_encoder, "text", "text_encoder")
    dtype = check_dtype(dtype)
    check_batch_size(batch_size)
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

    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    key_inputs = cache_key_inputs(
        dataset.content_digest(), image_encoder.fingerprint(), text_encoder.fingerprint(), dtype
    )
    key = cache_key(key_inputs)
    if cache is not None:
        hit = cache.load(key)
        if hit is not None:  # sample ids are part of the dataset digest, hence of the key
            log.info("Feature cache hit: %s", cache.entry_dir(key))
            return hit
        for enc in (image_encoder, text_encoder):
            if hasattr(enc, "use_artifact_dir"):
                enc.use_artifact_dir(cache.models_dir)

    image = image_encoder.encode([s.image for s in samples], batch_size=batch_size,
                                 progress=progress)
    text = text_encoder.encode([s.text for s in samples], batch_size=2 * batch_size,
                               progress=progress)
    for name, mf in (("image", image), ("text", text)):
        if len(mf) != len(samples):
            raise DataError(f"The {name} encoder returned {len(mf)} rows for {len(samples)} "
                            "samples; an encoder must return one row per item.")
    features = FeatureSet(_as_storage(image, dtype, "image"), _as_storage(text, dtype, "text"),
                          tuple(ids), {"key": key, "key_inputs": key_inputs, "dtype": dtype,
                                       "cache_hit": False})
    if cache is not None:
        path = cache.save(key, features, key_inputs)
        features.meta["cache_path"] = str(path)
    return features
