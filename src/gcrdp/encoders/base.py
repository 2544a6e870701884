"""The encoder protocol, the encoder registries and small shared helpers.

An encoder turns a list of items of one modality (image paths, texts) into
:class:`~gcrdp.data.features.ModalityFeatures`: a padded set of local features with a mask and
a pooled (global) feature per item, all float32. Its :meth:`Encoder.fingerprint` is a JSON-able
dict of everything that changes that output (weights digest, preprocessing, token limit,
backend, output dims); the feature cache is keyed by it.

Encoders are looked up by name in :data:`IMAGE_ENCODERS` and :data:`TEXT_ENCODERS`::

    enc = IMAGE_ENCODERS.get("efficientnet-lite0")(backend="torch")
    feats = enc.encode(["a.png", "b.png"], batch_size=32, progress=False)

Constructors only store their arguments (and resolve where the weights are); the model is loaded
on the first :meth:`Encoder.encode`, so a cache hit never loads a model.

Two optional parts serve extraction in shards (:func:`~gcrdp.encoders.cache.extract_features`
encodes a large collection a bounded number of items at a time, with the batches of one
call over all of them):

- ``encode_order(items)``: the order in which :meth:`Encoder.encode` batches ``items`` (a
  permutation; batch ``k`` is ``items[order[k*b:(k+1)*b]]``) when it is not the given order —
  the text encoders batch texts by token length — such that ``items`` already in that order
  are batched in that order. Without it, batches are runs of consecutive items.
- progress through :func:`progress_bar` instead of a tqdm bar of its own: the cache shows one
  bar over every shard, and an encoder reporting through it moves that bar batch by batch
  (one that does not is counted shard by shard).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..data.features import ModalityFeatures
from ..errors import ConfigError, DataError, MissingDependencyError
from ..registry import Registry

MODALITIES = ("image", "text")

ENCODERS_EXTRA = "encoders"


@runtime_checkable
class Encoder(Protocol):
    """What the feature pipeline needs from an encoder.

    Attributes:
        modality: ``"image"`` or ``"text"``.
        name: the registry name (``"efficientnet-lite0"``, ``"minilm-l6"``).
    """

    modality: str
    name: str

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of everything that changes :meth:`encode`'s output."""
        ...

    def encode(self, items: Sequence[Any], *, batch_size: int = 32, progress: bool = True) -> ModalityFeatures:
        """Encode ``items`` in order: local (n, L, d) float32, mask (n, L) bool,
        pooled (n, d_g) float32."""
        ...


EncoderFactory = Callable[..., Encoder]

#: Image encoders by name; values are factories (usually the encoder class).
IMAGE_ENCODERS: Registry[EncoderFactory] = Registry("image encoder")
#: Text encoders by name; values are factories (usually the encoder class).
TEXT_ENCODERS: Registry[EncoderFactory] = Registry("text encoder")


def get_image_encoder(name: str, **kwargs: Any) -> Encoder:
    """Build the image encoder registered as ``name`` (unknown names list the known ones)."""
    return IMAGE_ENCODERS.get(name)(**kwargs)


def get_text_encoder(name: str, **kwargs: Any) -> Encoder:
    """Build the text encoder registered as ``name`` (unknown names list the known ones)."""
    return TEXT_ENCODERS.get(name)(**kwargs)


def require_module(module: str, extra: str, purpose: str) -> None:
    """Raise :class:`MissingDependencyError` naming the extra to install unless ``module`` is
    installed — without importing it, so that building an encoder (and reading its fingerprint)
    stays cheap; the module is imported when the encoder first loads its model."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        found = False
    if not found:
        raise MissingDependencyError(
            f"{purpose} needs the Python package providing {module!r}, which is not installed. "
            f"Install it with: pip install 'gcrdp[{extra}]'"
        )


def check_encoder(encoder: object, modality: str, role: str = "encoder") -> None:
    """Raise :class:`ConfigError` unless ``encoder`` follows the protocol for ``modality``."""
    missing = [a for a in ("modality", "name", "fingerprint", "encode") if not hasattr(encoder, a)]
    if missing:
        raise ConfigError(
            f"{role} must follow the gcrdp Encoder protocol (attributes modality, name, "
            f"fingerprint(), encode()); {type(encoder).__name__} lacks {', '.join(missing)}."
        )
    got = getattr(encoder, "modality")  # noqa: B009  (checked above; object has no such attribute for mypy)
    if got != modality:
        raise ConfigError(f"{role} must be an encoder of modality {modality!r}; {getattr(encoder, 'name', '?')!r} has modality {got!r}.")


def check_texts(texts: Sequence[Any]) -> list[str]:
    """The texts stripped; :class:`DataError` naming the positions of empty or non-string ones."""
    from ..errors import format_list

    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DataError(
            f"{len(bad)} texts are empty or not strings (positions {format_list(bad)}). "
            "Every sample needs a non-empty text; drop or fill these samples."
        )
    return [t.strip() for t in texts]


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return batch_size


# ----------------------------------------------------------------------------- progress
class SharedProgress:
    """Progress reported into an outer bar (``update(n)`` forwards ``n``), counting what it got."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.count = 0

    def update(self, n: int = 1) -> None:
        self.count += int(n)
        self.bar.update(n)

    def __enter__(self) -> SharedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_SHARED_BAR: contextvars.ContextVar[SharedProgress | None] = contextvars.ContextVar("gcrdp_shared_progress", default=None)


@contextlib.contextmanager
def shared_progress(bar: Any) -> Iterator[SharedProgress]:
    """Within the block, :func:`progress_bar` reports into ``bar`` (a tqdm bar) instead of
    drawing a bar of its own; the yielded object counts the items reported."""
    shared = SharedProgress(bar)
    token = _SHARED_BAR.set(shared)
    try:
        yield shared
    finally:
        _SHARED_BAR.reset(token)


class _NoBar:
    """What :func:`progress_bar` returns when nothing is shown: ``update`` does nothing."""

    def update(self, n: int = 1) -> None:
        return None

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def progress_bar(total: int, *, progress: bool, unit: str, desc: str) -> Any:
    """The progress bar an encoder's :meth:`~Encoder.encode` updates per batch: a tqdm bar
    (hidden unless ``progress``), or, inside :func:`shared_progress`, the outer bar (whatever
    ``progress`` says: the outer bar decides whether it shows)."""
    shared = _SHARED_BAR.get()
    if shared is not None:
        return shared
    if not progress:  # nothing to show: no tqdm (importing tqdm.auto costs about 0.1 s, a query's worth)
        return _NoBar()
    from ..utils.progress import progress_bar as bar_for_stderr

    return bar_for_stderr(total, enabled=True, unit=unit, desc=desc)  # a bar on a terminal, a line now and then in a log


# ----------------------------------------------------------------------------- weights digests
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()
#: Files of at least this many bytes (weights) have their digests kept on disk too.
DIGEST_RECORD_BYTES = 8 << 20
_DIGEST_RECORD = "file-digests.json"
_RECORDED: dict[Path, dict[str, dict[str, Any]]] = {}  # models folder -> its record, read once
#: A file changed less than this long ago is not recorded (as git's "racily clean" entries: file
#: times advance in clock ticks, so a write in the same tick as the stat could leave them equal).
DIGEST_SETTLED_NS = 2_000_000_000


def _stat_key(st: os.stat_result) -> dict[str, int]:
    # ctime changes with every write or rename onto the path and cannot be set back by a user
    return {"size": st.st_size, "dev": st.st_dev, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _recorded_digests(folder: Path) -> dict[str, dict[str, Any]]:
    if folder not in _RECORDED:
        try:
            data = json.loads((folder / _DIGEST_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        _RECORDED[folder] = {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}
    return _RECORDED[folder]


def _remember_digest(folder: Path, name: str, st: os.stat_result, digest: str) -> None:
    from ..utils.io import atomic_write_json

    record = _recorded_digests(folder)
    record[name] = {**_stat_key(st), "sha256": digest}
    try:
        atomic_write_json(folder / _DIGEST_RECORD, record)
    except OSError:  # a read-only cache: digests are computed each time
        pass


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file, memoised per (path, size, mtime) within the process.

    Files of :data:`DIGEST_RECORD_BYTES` or more (weights) are also recorded on disk, in
    ``file-digests.json`` of the models folder (:func:`default_artifact_dir`), under their
    resolved path with their size, device, inode, mtime and ctime: a later process trusts the
    recorded digest only while all five are unchanged (any write or replacement of the file
    changes its ctime), so that naming a model (its fingerprint) does not read 90 MB of weights
    on every search. A file changed in the last :data:`DIGEST_SETTLED_NS` is not recorded."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"Cannot read weights file {path}: {exc}") from None
    name = str(path.resolve())
    key = (name, st.st_size, st.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
        large = st.st_size >= DIGEST_RECORD_BYTES
        folder = default_artifact_dir()
        known = _recorded_digests(folder).get(name) if large else None
    if isinstance(known, dict) and {k: known.get(k) for k in _stat_key(st)} == _stat_key(st) and isinstance(known.get("sha256"), str):
        digest = str(known["sha256"])
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        if large and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > DIGEST_SETTLED_NS:
            with _DIGEST_LOCK:
                _remember_digest(folder, name, st, digest)
    with _DIGEST_LOCK:
        _DIGESTS[key] = digest
    return digest


# ----------------------------------------------------------------------------- threads
def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(num_threads: int | None) -> int:
    """The encoders' torch threads: ``num_threads``, else ``$OMP_NUM_THREADS`` when set (what
    ``torchrun`` and a local Dask cluster give each of their processes: its share of the cores),
    else every CPU this process may run on."""
    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        return int(env) if env.isdigit() and int(env) >= 1 else available_cpus()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ConfigError(f"num_threads must be a positive integer or None, got {num_threads!r}.")
    return num_threads


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous value after."""
    import torch

    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def default_artifact_dir() -> Path:
    """Where derived model files (the ONNX export) go when no cache directory is given:
    ``$GCRDP_CACHE_DIR/models`` or ``~/.cache/gcrdp/models``."""
    root = os.environ.get("GCRDP_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "gcrdp"
    return base / "models"
