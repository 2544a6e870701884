"""Feature extraction on a Dask cluster (``pip install 'gcrdp[dask]'``): :func:`extract_features_dask`.

The missing items of a dataset are split into the shards a local :func:`~gcrdp.encoders.cache.
extract_features` would encode (the same ``encode_order``, the same :func:`~gcrdp.encoders.cache.
shard_items`, the same first occurrences kept), so every row is bit-identical to a local run.
Each shard is one Dask task, a pure function of its inputs: the encoder's *spec* (a registered
name, or an importable ``"module:factory"``, and its options — never a live model), the cache
folder (shared by every worker: a shared filesystem), the shard's items and item keys. A task
builds the encoder once per worker process, encodes its shard and publishes it as a chunk with
:meth:`~gcrdp.encoders.cache.FeatureCache.write_chunk` (a temp folder renamed into place), so a
task retried after a lost worker, or run twice, is harmless: a task whose items are all
published already writes nothing, and two copies racing each publish identical rows (lookups
take the first chunk). When every shard is done, the driver reads the features through the
ordinary cache path (:func:`~gcrdp.encoders.cache.extract_features`, which finds every item).

Nothing here is imported by the rest of gcrdp; without Dask nothing changes.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.features import FeatureSet, ModalityFeatures
from ..data.types import Dataset
from ..errors import ConfigError, DataError, MissingDependencyError, format_list
from .base import check_batch_size, check_encoder, get_image_encoder, get_text_encoder
from .cache import (
    FeatureCache,
    _as_storage,
    _processing_order,
    check_dtype,
    extract_features,
    image_item_key,
    shard_items,
    space_inputs,
    text_item_key,
)
from .images import check_image_files

#: task retries after an error raised inside a task (a lost worker is rescheduled by Dask anyway)
RETRIES = 2
#: seconds to wait for a scheduler given by address
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class EncoderSpec:
    """What a worker needs to build an encoder: ``name`` is a registered encoder name
    (``"efficientnet-lite0"``) or an importable factory ``"package.module:callable"``;
    ``options`` are its keyword arguments (picklable values)."""

    modality: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        if ":" in self.name:
            module, _, attr = self.name.partition(":")
            factory = getattr(importlib.import_module(module), attr)
            encoder = factory(**self.options)
        elif self.modality == "image":
            encoder = get_image_encoder(self.name, **self.options)
        else:
            encoder = get_text_encoder(self.name, **self.options)
        check_encoder(encoder, self.modality, f"{self.modality} encoder {self.name!r}")
        return encoder

    def cache_id(self) -> str:
        return repr((self.modality, self.name, sorted(self.options.items())))


def _spec(value: EncoderSpec | str, modality: str) -> EncoderSpec:
    if isinstance(value, str):
        value = EncoderSpec(modality, value)
    if not isinstance(value, EncoderSpec) or value.modality != modality:
        raise ConfigError(f"The {modality} encoder must be a name or an EncoderSpec of modality {modality!r}, got {value!r}.")
    return value


def dask_available() -> bool:
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def _require_dask() -> None:
    if not dask_available():
        raise MissingDependencyError("Extraction on a Dask cluster needs dask and distributed: pip install 'gcrdp[dask]'.")


# ---------------------------------------------------------------------------- the worker side
_ENCODERS: dict[str, Any] = {}
_ENCODERS_LOCK = threading.Lock()


def _worker_encoder(spec: EncoderSpec, cache: FeatureCache) -> Any:
    """The encoder of ``spec``, built once per worker process (its model loads on first use)."""
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(spec.cache_id())
        if encoder is None:
            encoder = _ENCODERS[spec.cache_id()] = spec.build()
            if hasattr(encoder, "use_artifact_dir"):
                encoder.use_artifact_dir(cache.models_dir)
    return encoder


def encode_shard(
    spec: EncoderSpec,
    cache_dir: str,
    inputs: dict[str, Any],
    items: list[Any],
    keys: list[str],
    keep: list[int],
    dtype: str,
    batch_size: int,
) -> int:
    """One task: encode ``items`` (one shard, in batching order) with ``spec``'s encoder and
    publish the rows ``keep`` (their items' first occurrences) as a chunk of the space
    ``inputs``; returns the items written (0 when they are all published already)."""
    cache = FeatureCache(cache_dir)
    wanted = [keys[j] for j in keep]
    if not wanted:
        return 0
    index = cache.index(cache.space_dir(inputs))
    if all(k in index for k in wanted):  # a retried or duplicated task: its chunk is there
        return 0
    encoder = _worker_encoder(spec, cache)
    got = encoder.encode(list(items), batch_size=batch_size, progress=False)
    if len(got) != len(items):
        raise DataError(
            f"The {spec.modality} encoder returned {len(got)} rows for {len(items)} items; an encoder must return one row per item."
        )
    got = _as_storage(got, dtype, spec.modality)
    mf = got if len(keep) == len(items) else ModalityFeatures(got.local[keep], got.mask[keep], got.pooled[keep])
    cache.write_chunk(inputs, wanted, mf)
    return len(wanted)


# ---------------------------------------------------------------------------- the driver side
@dataclass
class Shard:
    """One task's inputs (see :func:`encode_shard`)."""

    modality: str
    items: list[Any]
    keys: list[str]
    keep: list[int]
    batch_size: int
    inputs: dict[str, Any]


def plan_shards(cache: FeatureCache, encoder: Any, items: list[Any], keys: list[str], dtype: str, batch_size: int) -> list[Shard]:
    """The shards a local extraction of the missing items of ``items`` would encode, in order
    (mirrors ``_extract_missing``: the samples whose item is missing, in dataset order, duplicates
    too; reordered by ``encode_order`` when there is more than one shard; first occurrences kept)."""
    modality = encoder.modality
    inputs = space_inputs(modality, encoder.fingerprint(), dtype)
    index = cache.index(cache.space_dir(inputs))
    rows = [i for i, k in enumerate(keys) if k not in index]
    step = shard_items(batch_size)
    if len(rows) > step:
        order = _processing_order(encoder, [items[i] for i in rows])
        if order is not None:
            rows = [rows[j] for j in order.tolist()]
    seen: set[str] = set()
    shards = []
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        keep = []
        for j, i in enumerate(part):
            if keys[i] not in seen:
                seen.add(keys[i])
                keep.append(j)
        shards.append(Shard(modality, [items[i] for i in part], [keys[i] for i in part], keep, batch_size, inputs))
    return shards


def _client(client: Any, workers: int | None) -> tuple[Any, list[Any]]:
    """(a client, what to close afterwards) from a Client, a scheduler address or ``workers``."""
    from distributed import Client, LocalCluster

    if client is not None and workers is not None:
        raise ConfigError("Pass either a Dask client (or scheduler address) or workers=N, not both.")
    if client is None:
        if workers is None or workers < 1:
            raise ConfigError(f"workers must be a positive number of worker processes, got {workers!r}.")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        made = Client(cluster)
        return made, [made, cluster]
    if isinstance(client, str):
        try:
            made = Client(client, timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise ConfigError(f"Could not reach the Dask scheduler at {client} ({exc}); is `dask scheduler` running there?") from None
        return made, [made]
    return client, []


def extract_features_dask(
    dataset: Dataset,
    image_encoder: EncoderSpec | str,
    text_encoder: EncoderSpec | str,
    *,
    cache_dir: str | Path,
    client: Any = None,
    workers: int | None = None,
    dtype: str = "float16",
    batch_size: int = 32,
    progress: bool = True,
    storage: str = "auto",
    retries: int = RETRIES,
) -> FeatureSet:
    """:func:`~gcrdp.encoders.cache.extract_features` with the missing items encoded on a Dask
    cluster; the same arrays as a local call.

    Args:
        dataset: as for ``extract_features``.
        image_encoder, text_encoder: registered names or :class:`EncoderSpec` (a worker builds
            its own encoder from it).
        cache_dir: the cache root, on a filesystem every worker sees at the same path.
        client: a ``distributed.Client`` or a scheduler address (``"tcp://host:8786"``); or
        workers: the number of worker processes of a local cluster started (and closed) here.
        dtype, batch_size, progress, storage: as for ``extract_features``.
        retries: how often a task that raised is tried again.

    Returns:
        The :class:`FeatureSet`; its ``meta["items_extracted"]`` counts the items the cluster
        wrote, ``meta["dask_shards"]`` the tasks per modality.
    """
    _require_dask()
    from distributed import as_completed

    from ..utils.progress import progress_bar

    dtype = check_dtype(dtype)
    check_batch_size(batch_size)
    specs = {"image": _spec(image_encoder, "image"), "text": _spec(text_encoder, "text")}
    encoders = {m: s.build() for m, s in specs.items()}  # constructors only store their options
    samples = dataset.samples
    ids = [s.id for s in samples]
    for what, missing in (("image", [s.id for s in samples if s.image is None]), ("text", [s.id for s in samples if s.text is None])):
        if missing:
            raise DataError(f"Dataset {dataset.name!r}: {len(missing)} samples have no {what} ({format_list(missing)}).")
    images: list[Any] = [s.image for s in samples]
    texts: list[Any] = [s.text for s in samples]
    check_image_files(images, ids)
    cache = FeatureCache(cache_dir)
    shards = plan_shards(cache, encoders["image"], images, [image_item_key(p) for p in images], dtype, batch_size)
    shards += plan_shards(cache, encoders["text"], texts, [text_item_key(t) for t in texts], dtype, 2 * batch_size)
    written = {"image": 0, "text": 0}
    if shards:
        dask_client, to_close = _client(client, workers)
        try:
            futures = {
                dask_client.submit(
                    encode_shard,
                    specs[s.modality],
                    str(cache.root),
                    s.inputs,
                    s.items,
                    s.keys,
                    s.keep,
                    dtype,
                    s.batch_size,
                    pure=False,
                    retries=retries,
                ): s
                for s in shards
            }
            total = sum(len(s.items) for s in shards)
            with progress_bar(total, enabled=progress, unit="item", desc="Encoding on Dask") as bar:
                for future in as_completed(futures):
                    shard = futures[future]
                    written[shard.modality] += future.result()
                    bar.update(len(shard.items))
        finally:
            for obj in to_close:
                obj.close()
    feats = extract_features(
        dataset,
        encoders["image"],
        encoders["text"],
        cache_dir=cache.root,
        dtype=dtype,
        batch_size=batch_size,
        progress=False,
        storage=storage,
    )
    local = feats.meta.get("items_extracted", {})
    feats.meta = {
        **feats.meta,
        "cache_hit": not shards,
        "items_extracted": {m: written[m] + local.get(m, 0) for m in written},
        "dask_shards": {m: sum(s.modality == m for s in shards) for m in written},
    }
    return feats
