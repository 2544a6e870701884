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

:func:`extract_items_dask` does the same for lists of items that later
:func:`~gcrdp.encoders.cache.encode_items` calls will read (a search index's batches), and
:func:`use_cluster` names the cluster for a block of code that looks for one
(:func:`current_cluster`: ``Retriever.build``, so ``gcrdp index --workers/--scheduler``).
A scheduler lost mid-run is a :class:`SchedulerLostError`: the chunks published before stay, a
re-run extracts the rest. The progress bar advances per shard done (``k/N shards``).

The rest of gcrdp imports this module only where a cluster is asked for; without Dask nothing
changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.features import FeatureSet, ModalityFeatures
from ..data.types import Dataset
from ..errors import ConfigError, DataError, GcrdpError, MissingDependencyError, format_list
from .base import check_batch_size
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
from .factory import EncoderSpec
from .images import check_image_files

#: task retries after an error raised inside a task (a lost worker is rescheduled by Dask anyway)
RETRIES = 2
#: seconds to wait for a scheduler given by address
CONNECT_TIMEOUT_S = 30.0


class SchedulerLostError(GcrdpError, RuntimeError):
    """The Dask scheduler went away while shards were being extracted (killed, its machine
    lost, the network cut). The chunks published before are complete and stay in the cache:
    the same call run again extracts only the rest."""


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


def plan_shards(
    cache: FeatureCache,
    encoder: Any,
    items: list[Any],
    keys: list[str],
    dtype: str,
    batch_size: int,
    *,
    known: set[str] | None = None,
) -> list[Shard]:
    """The shards a local extraction of the missing items of ``items`` would encode, in order
    (mirrors ``_extract_missing``: the samples whose item is missing, in dataset order, duplicates
    too; reordered by ``encode_order`` when there is more than one shard; first occurrences kept).

    ``known``: the item keys to take as published (default: the cache's); the keys planned here
    are added to it, so that consecutive calls plan what consecutive local calls would encode."""
    modality = encoder.modality
    inputs = space_inputs(modality, encoder.fingerprint(), dtype)
    if known is None:
        known = set(cache.index(cache.space_dir(inputs)))
    rows = [i for i, k in enumerate(keys) if k not in known]
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
    known.update(seen)
    return shards


def _client(client: Any, workers: int | None) -> tuple[Any, list[Any]]:
    """(a client, what to close afterwards) from a Client, a scheduler address or ``workers``."""
    from distributed import Client, LocalCluster

    if client is not None and workers is not None:
        raise ConfigError("Pass either a Dask client (or scheduler address) or workers=N, not both.")
    if client is None:
        if workers is None or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"workers must be a positive number of worker processes, got {workers!r}.")
        # each worker process takes its share of the cores, not all of them (oversubscribed, torch's
        # threads slow every worker down)
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        )
        made = Client(cluster)
        return made, [made, cluster]
    if isinstance(client, str):
        try:
            made = Client(client, timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise ConfigError(f"Could not reach the Dask scheduler at {client} ({exc}); is `dask scheduler` running there?") from None
        return made, [made]
    return client, []


@contextlib.contextmanager
def _connected(client: Any, workers: int | None) -> Iterator[Any]:
    """:func:`_client` as a context: what it started is closed on exit (quietly after the
    scheduler was lost: the client's reconnection attempts would log tracebacks)."""
    made, to_close = _client(client, workers)
    lost = False
    try:
        yield made
    except SchedulerLostError:
        lost = True
        raise
    finally:
        loggers = [logging.getLogger(name) for name in ("distributed", "distributed.client")]
        levels = [lg.level for lg in loggers]
        if lost:
            for lg in loggers:
                lg.setLevel(logging.CRITICAL)
        try:
            for obj in to_close:
                with contextlib.suppress(Exception) if lost else contextlib.nullcontext():
                    obj.close()
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


@contextlib.contextmanager
def open_cluster(cluster: Any) -> Iterator[Any]:
    """A ``distributed.Client`` for the cluster ``cluster`` names: a Client (yielded as it is),
    a scheduler address (``"tcp://host:8786"``) or a number of local worker processes (a local
    cluster started here); closed on exit if started here. ``None`` yields ``None`` (dask is
    not imported): one cluster for several :func:`extract_items_dask` calls."""
    if cluster is None:
        yield None
        return
    _require_dask()
    workers = cluster if isinstance(cluster, int) and not isinstance(cluster, bool) else None
    with _connected(None if workers is not None else cluster, workers) as client:
        yield client


class _ClusterInUse:
    """The cluster :func:`use_cluster` names, connected (or started) on first use."""

    def __init__(self, cluster: Any, stack: contextlib.ExitStack) -> None:
        self.cluster, self._stack, self._client = cluster, stack, None

    def client(self) -> Any:
        if self._client is None:
            self._client = self._stack.enter_context(open_cluster(self.cluster))
        return self._client


_IN_USE: contextvars.ContextVar[_ClusterInUse | None] = contextvars.ContextVar("gcrdp_dask_cluster", default=None)


@contextlib.contextmanager
def use_cluster(cluster: Any) -> Iterator[None]:
    """Within this block, extraction that looks for a cluster (:func:`current_cluster`: the
    search index's embedding, :meth:`gcrdp.search.Retriever.build`) runs on the Dask cluster
    ``cluster`` names (as for :func:`open_cluster`: a Client, a scheduler address or a number
    of local worker processes); it is connected, or started, when first needed and closed at
    the end of the block. ``None`` changes nothing."""
    if cluster is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        token = _IN_USE.set(_ClusterInUse(cluster, stack))
        try:
            yield
        finally:
            _IN_USE.reset(token)


def current_cluster() -> _ClusterInUse | None:
    """The cluster of the innermost :func:`use_cluster` block (``.client()`` connects to it), or None."""
    return _IN_USE.get()


def _scheduler_address(client: Any) -> str:
    try:
        return str(client.scheduler.address)
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def _run_shards(
    client: Any,
    specs: dict[str, EncoderSpec],
    cache: FeatureCache,
    shards: list[Shard],
    dtype: str,
    *,
    progress: bool,
    retries: int,
) -> dict[str, int]:
    """Submit one :func:`encode_shard` task per shard and wait for them all; the items written
    per modality. The progress bar counts items and advances when a shard is done (``k/N
    shards``). A lost scheduler is a :class:`SchedulerLostError` (not a hang: Dask cancels the
    futures of a client that lost its scheduler)."""
    from concurrent.futures import CancelledError

    from distributed import as_completed
    from distributed.comm.core import CommClosedError

    from ..utils.progress import progress_bar

    address = _scheduler_address(client)
    futures = {
        client.submit(
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
    written = {"image": 0, "text": 0}
    done = 0
    total = sum(len(s.items) for s in shards)
    with progress_bar(total, enabled=progress, unit="item", desc="Encoding on Dask") as bar:
        bar.set_postfix_str(f"0/{len(shards)} shards")
        future = None
        try:
            for future in as_completed(futures):
                shard = futures[future]
                written[shard.modality] += future.result()
                done += 1
                bar.set_postfix_str(f"{done}/{len(shards)} shards")
                bar.update(len(shard.items))
        except (CancelledError, OSError) as exc:
            if not isinstance(exc, (CancelledError, CommClosedError)) and future is not None and future.status == "error":
                raise  # the task's own error (an unreadable file, …), not the cluster's
            raise SchedulerLostError(
                f"The Dask scheduler at {address} went away during the extraction ({done} of {len(shards)} shards done; "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). The feature cache "
                f"{cache.root} keeps every shard published before it (complete chunks only): start the scheduler again "
                "and re-run the same command; only the missing items are extracted."
            ) from None
    return written


def extract_items_dask(
    spec: EncoderSpec,
    parts: list[list[Any]],
    *,
    cache_dir: str | Path,
    client: Any = None,
    workers: int | None = None,
    dtype: str = "float16",
    batch_size: int = 32,
    progress: bool = True,
    retries: int = RETRIES,
) -> int:
    """Extract into the cache, on a Dask cluster, the items (image paths or texts, by
    ``spec.modality``) of ``parts`` — one list per later local
    :func:`~gcrdp.encoders.cache.encode_items` call with this ``batch_size``, in the order of those
    calls — in the very batches those calls would encode, so that they find every item and
    return the arrays they would have computed (the search index's embedding). Returns the items
    written now; ``client`` and ``workers`` as for :func:`extract_features_dask`."""
    _require_dask()
    dtype = check_dtype(dtype)
    check_batch_size(batch_size)
    encoder = spec.build()
    if spec.modality == "image":
        check_image_files([p for part in parts for p in part])
    item_key: Any = image_item_key if spec.modality == "image" else text_item_key
    cache = FeatureCache(cache_dir)
    known = set(cache.index(cache.space_dir(space_inputs(spec.modality, encoder.fingerprint(), dtype))))
    shards: list[Shard] = []
    for part in parts:
        shards += plan_shards(cache, encoder, list(part), [item_key(x) for x in part], dtype, batch_size, known=known)
    if not shards:
        return 0
    with _connected(client, workers) as dask_client:
        written = _run_shards(dask_client, {spec.modality: spec}, cache, shards, dtype, progress=progress, retries=retries)
    return written[spec.modality]


def extract_features_dask(  # noqa: PLR0913 - keyword options of extract_features, which it mirrors
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
        with _connected(client, workers) as dask_client:
            written = _run_shards(dask_client, specs, cache, shards, dtype, progress=progress, retries=retries)
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
