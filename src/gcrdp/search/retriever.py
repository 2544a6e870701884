"""A search index over a collection, and :class:`Retriever` to build and query it.

An index is a folder::

    INDEX/CURRENT                the name of the live version (replaced atomically)
    INDEX/v000002/index.json     format, the model's fingerprint, the checkpoint, backend and
                                 index type, dimension, counts, recall@10 of an approximate index
    INDEX/v000002/image.faiss    the image vectors (FAISS), when the collection has images
    INDEX/v000002/text.faiss     the text vectors, when it has texts
    INDEX/v000002/image.ivfdata  an on-disk IVF index's inverted lists (memory-mapped), beside
                                 image.trained.faiss (the trained, empty index, for adds)
    INDEX/v000002/items.sqlite   one row per vector: modality, row, id, path, text (an image's
                                 own caption when the collection pairs one with it), label,
                                 content hash (SHA-256 of the image bytes or of the text), labels
    INDEX/v000002/checksums.json the size and SHA-256 of every file above, written last
    INDEX/v000002/.readers.lock  shared-locked by a reader while it loads the version
    INDEX/.milvus-load.json      a load into Milvus in progress or interrupted (``--resume``:
                                 :mod:`gcrdp.search.milvus_load`); removed when published

A build or an ``add`` writes a new version folder next to the live one and then switches
``CURRENT`` to it; an interrupted build leaves the previous index intact (and a ``.tmp-*``
folder that the next build removes). Loading checks every file against ``checksums.json``
(a damaged file is a :class:`DataError` naming it) and refuses a ``CURRENT`` that names
anything but a version folder of the index; a build removes an old version only when no reader
holds its lock (it stays for a later build otherwise). The embeddings are computed in batches and spooled to a
file in that folder, from which the index is trained (on a seeded sample), filled and measured
in batches: memory holds a batch and the index, never all the embeddings at once. Queries are embedded with the index's own model: loading
an index re-creates it from the checkpoint and refuses a checkpoint whose bytes, method or
encoders differ from the fingerprint stored at build time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..utils.io import fsync_tree
from .backends import EXACT, MAX_TRAIN, FaissBackend, MilvusBackend, check_milvus_options, resolve_index_type, template_digest
from .milvus_load import check_resumable, clear_record, discard_leftover, read_record, rows_digest, write_record
from .streaming import EmbeddingSpool, batches, own_pair_recall, recall_against_exact, scan_rows, take_rows

BACKENDS = ("faiss", "milvus")
# Items embedded per batch by default (features files: as many rows as fit in FEATURE_BATCH_BYTES).
BATCH_ITEMS = {"image": 256, "text": 1024}
FEATURE_BATCH_BYTES = 64 << 20


def _new_backend(kind: str, dim: int, index_type: str, uri: str | None, nprobe: int | None = None) -> Any:
    if kind == "faiss":
        return FaissBackend(dim, index_type, nprobe=nprobe)
    if uri is None:
        raise ConfigError(
            "The Milvus backend needs uri=: a local file such as index.db (Milvus Lite) or http://host:19530 (a Milvus server or cluster)."
        )
    return MilvusBackend(dim, index_type, uri=_milvus_uri(uri))


def _milvus_uri(uri: str) -> str:
    """A Milvus Lite file kept absolute (so that the index can be opened anywhere); a server's URI as it is."""
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def _save_backend(backend: Any, folder: Path, modality: str) -> None:
    backend.save(folder / f"{modality}.faiss")  # Milvus writes <modality>.milvus.json beside


def _index_types(info: dict[str, Any]) -> dict[str, str]:
    """Each modality's FAISS factory string (indexes before IVF-PQ sizing had one for both)."""
    return {m: str((info.get("index_types") or {}).get(m, info["index_type"])) for m in MODALITIES}


def _load_backends(folder: Path, info: dict[str, Any], nprobe: int | None = None) -> dict[str, Any]:
    """Each modality's vectors; a file FAISS (or JSON) cannot read, or one that disagrees with
    ``index.json`` (its count, its dimension), is a :class:`DataError` naming it."""
    out: dict[str, Any] = {}
    types = _index_types(info)
    counts = info.get("counts") or {}
    index_dir = folder.parent
    for m in MODALITIES:
        path = folder / f"{m}.faiss"
        try:
            if info.get("backend", "faiss") == "faiss" and path.is_file():
                probe = nprobe if nprobe is not None else (info.get("nprobe") or {}).get(m)
                out[m] = FaissBackend.load(path, types[m], nprobe=probe)
            elif (folder / f"{m}.milvus.json").is_file():
                path = folder / f"{m}.milvus.json"
                out[m] = MilvusBackend.load(folder / f"{m}.faiss", types[m])
        except DataError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise _corrupt(index_dir, path, f"cannot be read ({first})") from None
        if m in out and (out[m].ntotal != counts.get(m) or out[m].dim != info.get("dim")):
            raise _corrupt(
                index_dir,
                path,
                f"holds {out[m].ntotal} vectors of dim {out[m].dim} where index.json says {counts.get(m)} of dim {info.get('dim')}",
            )
        if m not in out and counts.get(m):
            raise _corrupt(index_dir, path, f"is missing ({counts[m]} {m} vectors)")
    return out


INDEX_FORMAT = "gcrdp-index/1"
MODALITIES = ("image", "text")


@dataclass(frozen=True)
class Item:
    """One thing to index: an image file or a text, with an optional id and label(s). An
    image's ``text`` is its own caption (a manifest row's text, a Twemoji's name), stored to be
    shown with it; only a text item's ``text`` is embedded. ``label`` is the first of ``labels``."""

    modality: str
    id: str
    path: str | None = None
    text: str | None = None
    label: str | None = None
    row: int | None = None  # the sample's row in a features file (items_from_features)
    labels: tuple[str, ...] = ()  # every label (empty: just ``label``, when there is one)


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id, its text (a text's own, an image's caption when it has
    one), its first label and all its labels."""

    rank: int
    score: float
    modality: str
    id: str
    path: str | None
    text: str | None
    label: str | None
    labels: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"labels": list(self.labels)}


def _all_labels(labels: Any, label: str | None) -> tuple[str, ...]:
    """Every label of an item: the sample's labels, else its one label, else none."""
    got = tuple(str(x) for x in labels or ())
    return got or ((label,) if label else ())


def _content_hash(item: Item, features: Any = None) -> str:
    from ..encoders.cache import image_item_key, text_item_key

    if features is not None and item.row is not None:  # pre-extracted: the feature row's bytes
        mf = getattr(features, item.modality)
        rows = np.asarray([item.row])
        return _feature_hashes(item.modality, [take_rows(a, rows) for a in (mf.local, mf.mask, mf.pooled)])[0]
    return image_item_key(item.path) if item.modality == "image" else text_item_key(item.text or "")  # type: ignore[arg-type]


def _extract_on_cluster(model: Any, modality: str, todo: list[Item], seen: set, step: int, cache_dir: Any, progress: bool) -> None:
    """Inside :func:`gcrdp.encoders.dask_extract.use_cluster` (``gcrdp index --workers N`` or
    ``--scheduler ADDRESS``): the items each batch of :meth:`Retriever._embed_modality` will
    embed (those not in the index yet) extracted into the feature cache on the Dask cluster, in
    the batches those calls use — which then read the very rows they would have computed."""
    from ..encoders.dask_extract import current_cluster

    cluster = current_cluster()
    if cluster is None:
        return
    parts = [
        [it.path if modality == "image" else it.text for it in todo[a:b] if (modality, _content_hash(it)) not in seen]
        for a, b in batches(len(todo), step)
    ]
    model.extract_on_cluster(modality, parts, cache_dir=cache_dir, client=cluster.client(), progress=progress)


def _feature_hashes(modality: str, arrays: list[np.ndarray]) -> list[str]:
    """The content hash of each row of a batch of feature rows (local, mask, pooled): SHA-256
    over the modality and the row's bytes in each array."""
    out = []
    for i in range(len(arrays[0])):
        h = hashlib.sha256(modality.encode() + b"\0")
        for a in arrays:
            h.update(np.ascontiguousarray(a[i]).tobytes())
        out.append(h.hexdigest())
    return out


def _feature_batch_rows(mf: Any) -> int:
    """Rows of a (possibly lazy, on-disk) ModalityFeatures read per batch: about
    FEATURE_BATCH_BYTES of local, mask and pooled rows."""
    row = sum(int(np.prod(a.shape[1:])) * np.dtype(a.dtype).itemsize for a in (mf.local, mf.mask, mf.pooled))
    return max(1, min(16384, FEATURE_BATCH_BYTES // max(1, row)))


# --------------------------------------------------------------------------- collections
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def items_from_images(folder: str | Path) -> list[Item]:
    """Every image file under ``folder`` (recursively, sorted); id = the path relative to it,
    label = the first sub-folder when there is one."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"Image folder not found: {root}")
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            rel = p.relative_to(root)
            label = rel.parts[0] if len(rel.parts) > 1 else None
            out.append(Item("image", rel.as_posix(), path=str(p.resolve()), label=label, labels=_all_labels((), label)))
    if not out:
        raise DataError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) under {root}.")
    return out


def items_from_text_file(path: str | Path) -> list[Item]:
    """One text per non-empty line of a UTF-8 file; id = ``<file name>@<digest>:line-<n>``, the
    digest the first 8 hex digits of the SHA-256 of the file's bytes — so that the lines of a
    second file (or of an edited one) added later never take ids already used. (Indexes built
    before kept ``line-<n>``; they read as they are.)"""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"Text file not found: {p}")
    try:
        data = p.read_bytes()
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not valid UTF-8 ({exc}).") from None
    prefix = f"{p.name}@{hashlib.sha256(data).hexdigest()[:8]}:"
    out = [Item("text", f"{prefix}line-{i}", text=t.strip()) for i, t in enumerate(lines, 1) if t.strip()]
    if not out:
        raise DataError(f"{p} holds no text.")
    return out


def items_from_features(path: str | Path, **options: Any) -> tuple[list[Item], Any]:
    """Both modalities of a pre-extracted features file (``gcrdp datasets features``), for a
    model trained on features made the same way: ``(items, FeatureSet)``; each item's ``row``
    points into the FeatureSet."""
    from ..data.registry import load_dataset

    ds = load_dataset("features", path=str(path), **options)
    out = []
    for i, s in enumerate(ds.samples):
        label = s.labels[0] if s.labels else None
        labels = _all_labels(s.labels, label)
        out.append(Item("image", s.id, text=s.text or None, label=label, row=i, labels=labels))
        out.append(Item("text", s.id, text=s.text, label=label, row=i, labels=labels))
    return out, ds.features


def items_from_dataset(name: str, **options: Any) -> tuple[list[Item], Any]:
    """Both modalities of a registered dataset (``gcrdp datasets``), e.g. the demo's Twemoji:
    ``(items, FeatureSet or None)`` — the FeatureSet when the dataset is pre-extracted features."""
    from ..data.registry import load_dataset

    ds = load_dataset(name, **options)
    out = []
    for i, s in enumerate(ds.samples):
        label = s.labels[0] if s.labels else None
        labels = _all_labels(s.labels, label)
        row = i if ds.features is not None else None
        if ds.features is not None or s.image is not None:
            path = str(s.image) if s.image else None
            out.append(Item("image", s.id, path=path, text=s.text or None, label=label, row=row, labels=labels))
        if ds.features is not None or s.text:
            out.append(Item("text", s.id, text=s.text, label=label, row=row, labels=labels))
    return out, ds.features


def items_from_manifest(path: str | Path, **options: Any) -> list[Item]:
    """Both modalities of a gcrdp manifest (see ``gcrdp datasets manifest``): each row's image
    (with the row's text as its caption) and its text, with the row's id and labels."""
    from ..data.formats.manifest import load_manifest

    ds = load_manifest(path, **options)
    out = []
    for s in ds.samples:
        label = s.labels[0] if s.labels else None
        labels = _all_labels(s.labels, label)
        out.append(Item("image", s.id, path=str(s.image), text=s.text or None, label=label, labels=labels))
        out.append(Item("text", s.id, text=s.text, label=label, labels=labels))
    return out


def _instance_quality(sources: dict[str, Any], rows: list[tuple], max_queries: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """Instance-level recall@1/5/10 of the collection's own pairs (an image and a text with the
    same id), I2T and T2I, over up to ``max_queries`` pairs, exact on ``sources`` (per modality,
    by row: arrays or spools, scanned in batches); ``None`` without pairs."""
    if set(sources) != set(MODALITIES):
        return None
    by_id = {m: {r[2]: int(r[1]) for r in rows if r[0] == m} for m in MODALITIES}
    common = sorted(set(by_id["image"]) & set(by_id["text"]))
    if len(common) < 2:
        return None
    rng = np.random.default_rng(seed)
    pick = common if len(common) <= max_queries else [common[i] for i in sorted(rng.choice(len(common), max_queries, replace=False))]
    qi = np.asarray([by_id["image"][c] for c in pick])
    qt = np.asarray([by_id["text"][c] for c in pick])
    return {
        "n_pairs": len(common),
        "n_queries": len(pick),
        "i2t": own_pair_recall(sources["image"], sources["text"], qi, qt),
        "t2i": own_pair_recall(sources["text"], sources["image"], qt, qi),
    }


# --------------------------------------------------------------------------- the folder
#: A version's checksums (SHA-256 and size of each of its files), written last by a build.
CHECKSUMS = "checksums.json"
CHECKSUMS_FORMAT = "gcrdp-checksums/1"
#: The lock file of a version: readers hold a shared lock on it while they load the version; a
#: build removes an old version only under an exclusive lock (never while one is being read).
READERS_LOCK = ".readers.lock"
#: A memory-mapped ``.ivfdata`` file larger than this is checked on load by its size and a
#: bounded sample of its bytes (its full SHA-256 is stored too: :func:`verify_index` checks it).
SAMPLED_ABOVE = 256 << 20
SAMPLE_CHUNK = 1 << 20
SAMPLE_CHUNKS = 64
_VERSION_NAME = re.compile(r"v[0-9]{1,12}")

log = logging.getLogger(__name__)


def _rebuild_hint(index_dir: Path) -> str:
    return f"Build it again: gcrdp index {index_dir} with its model and collection (a build without --add replaces it)."


def _corrupt(index_dir: Path, path: Path, why: str) -> DataError:
    return DataError(f"Index {index_dir} is damaged: {path} {why}. {_rebuild_hint(index_dir)}")


def _current(index_dir: Path) -> Path:
    """The live version named by ``INDEX/CURRENT``: a version folder of ``index_dir`` itself
    (``v`` and digits; anything else — a path, ``..``, an absolute name, garbage — is refused)."""
    pointer = index_dir / "CURRENT"
    if not pointer.is_file():
        raise DataError(f"{index_dir} is not a gcrdp index (no CURRENT file); build one with 'gcrdp index'.")
    try:
        raw = pointer.read_bytes()
        name = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(index_dir, pointer, f"is unreadable ({exc})") from None
    if not _VERSION_NAME.fullmatch(name):
        shown = name if len(name) <= 60 and name.isprintable() else repr(raw[:40]) + ("…" if len(raw) > 40 else "")
        raise _corrupt(index_dir, pointer, f"should name a version folder of the index (v000001, …) but holds {shown or 'nothing'}")
    version = index_dir / name
    if not (version / "index.json").is_file():
        raise DataError(f"{index_dir}: CURRENT names {version.name}, which is missing or incomplete. {_rebuild_hint(index_dir)}")
    return version


def _file_sha256(path: Path, sampled: bool = False) -> str:
    """SHA-256 of a file's bytes, streamed; ``sampled``: of :data:`SAMPLE_CHUNKS` chunks of
    :data:`SAMPLE_CHUNK` bytes spread evenly over it, the first and the last included."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if not sampled:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            return h.hexdigest()
        size = os.fstat(f.fileno()).st_size
        last = max(0, size - SAMPLE_CHUNK)
        for i in range(SAMPLE_CHUNKS):
            h.update(os.pread(f.fileno(), SAMPLE_CHUNK, last * i // (SAMPLE_CHUNKS - 1)))
    return h.hexdigest()


def _checksummed_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != CHECKSUMS)


def _write_checksums(folder: Path) -> None:
    """``checksums.json``: the size and SHA-256 of every file of the version (and a sampled
    SHA-256 of a large memory-mapped ``.ivfdata``); written last."""
    files: dict[str, Any] = {}
    for p in _checksummed_files(folder):
        entry: dict[str, Any] = {"size": p.stat().st_size, "sha256": _file_sha256(p)}
        if p.suffix == ".ivfdata" and entry["size"] > SAMPLED_ABOVE:
            entry["sampled_sha256"] = _file_sha256(p, sampled=True)
        files[p.name] = entry
    record = {"format": CHECKSUMS_FORMAT, "algorithm": "sha256", "files": files}
    (folder / CHECKSUMS).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _read_checksums(index_dir: Path, version: Path) -> dict[str, Any] | None:
    """The version's checksums, or None for an index written before they were recorded."""
    path = version / CHECKSUMS
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _corrupt(index_dir, path, f"is unreadable ({exc})") from None
    files = record.get("files") if isinstance(record, dict) else None
    ok = (
        isinstance(files, dict)
        and record.get("format") == CHECKSUMS_FORMAT
        and all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str) for v in files.values())
        and "index.json" in files
    )
    if not ok:
        raise _corrupt(index_dir, path, "is not a checksums record of this format")
    return files


def _verify_file(index_dir: Path, version: Path, name: str, sums: dict[str, Any] | None, *, full: bool = False) -> None:
    """Check one file of a version against its recorded size and SHA-256 (nothing to check
    without checksums); :class:`DataError` naming the file otherwise."""
    if sums is None:
        return
    path = version / name
    entry = sums.get(name)
    if entry is None:
        raise _corrupt(index_dir, path, f"is not among the files recorded in {CHECKSUMS}")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _corrupt(index_dir, path, "is missing") from None
    if size != entry["size"]:
        raise _corrupt(index_dir, path, f"has {size} bytes where {entry['size']} were written")
    sampled = not full and "sampled_sha256" in entry
    got = _file_sha256(path, sampled=sampled)
    if got != entry["sampled_sha256" if sampled else "sha256"]:
        raise _corrupt(index_dir, path, "does not have the content that was written (its SHA-256 differs)")


def _verify_all(index_dir: Path, version: Path, sums: dict[str, Any] | None, *, full: bool = False) -> None:
    if sums is None:
        return
    for name in sorted(sums):
        _verify_file(index_dir, version, name, sums, full=full)


def verify_index(index_dir: str | Path, *, full: bool = True) -> dict[str, Any]:
    """Check every file of an index's live version against its recorded checksums (``full``:
    the whole of a large ``.ivfdata`` too, not a sample); returns the checksums (``{}`` for an
    index written before they were recorded). :class:`DataError` naming a damaged file."""
    index_dir = Path(index_dir).expanduser()
    version = _current(index_dir)
    with _reader_lock(version) as held:
        if not held:
            raise DataError(f"Index {index_dir} changed while it was checked; check it again.")
        sums = _read_checksums(index_dir, version)
        _verify_all(index_dir, version, sums, full=full)
    return sums or {}


@contextlib.contextmanager
def _reader_lock(version: Path) -> Iterator[bool]:
    """A shared lock on a version while it is read: a build does not remove it meanwhile.
    Yields False when the version is gone (removed by a build since CURRENT was read: read
    CURRENT again)."""
    import fcntl

    path = version / READERS_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if not (version / "index.json").is_file():
            yield False
            return
        try:  # a version written before the lock file existed
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:  # a read-only folder: nothing can remove the version either
            yield True
            return
    except OSError:
        yield True
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield (version / "index.json").is_file()  # not removed before the lock was taken
    finally:
        os.close(fd)


def _remove_unread_version(folder: Path) -> bool:
    """Remove an old version unless a reader holds it (then it stays, for a later build to
    remove); True when removed."""
    import fcntl

    try:
        fd = os.open(folder / READERS_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("Version %s is being read; it is kept, and removed by a later build.", folder)
                return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def _labels_column(labels: tuple[str, ...], label: str | None) -> str | None:
    """The ``labels`` cell of a row: a JSON list when there is more than its one ``label``."""
    return json.dumps(list(labels), ensure_ascii=False) if labels and tuple(labels) != ((label,) if label else ()) else None


def _write_metadata(path: Path, rows: list[tuple]) -> None:
    """Rows (modality, row, id, path, text, label, hash[, labels]); an image's text is its own
    caption (shown, not embedded); labels is a JSON list, NULL when it is just ``label``."""
    con = sqlite3.connect(path)
    try:
        con.execute(
            "CREATE TABLE items (modality TEXT NOT NULL, row INTEGER NOT NULL, id TEXT NOT NULL, "
            "path TEXT, text TEXT, label TEXT, hash TEXT NOT NULL, labels TEXT, PRIMARY KEY (modality, row))"
        )
        con.execute("CREATE INDEX items_hash ON items (modality, hash)")
        con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (tuple(r[:7]) + (r[7] if len(r) > 7 else None,) for r in rows))
        con.commit()
    finally:
        con.close()


def _read_metadata(path: Path) -> list[tuple]:
    """The rows of items.sqlite: (modality, row, id, path, text, label, hash, labels); an index
    written before labels were stored reads with labels None (its images' texts are None too:
    :meth:`Retriever.describe` then shows the text paired with the image by id)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Index {path.parent.parent} is damaged: {path} is missing. {_rebuild_hint(path.parent.parent)}")
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            columns = {r[1] for r in con.execute("PRAGMA table_info(items)")}
            if not columns:
                raise sqlite3.DatabaseError("no items table")
            labels = "labels" if "labels" in columns else "NULL"
            return con.execute(f"SELECT modality, row, id, path, text, label, hash, {labels} FROM items ORDER BY modality, row").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise _corrupt(path.parent.parent, path, f"is not a readable items database ({exc})") from None


@contextlib.contextmanager
def _build_lock(index_dir: Path) -> Any:
    """An exclusive lock on ``INDEX/.lock`` for a build or an add: two at once would lose one's
    items (or, on Milvus, mix their rows)."""
    import fcntl

    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"Another build or --add is writing index {index_dir} right now; run this one when it has finished.") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _same_collection_text(ref: str, version: Path) -> bool:
    """Whether the Milvus collection of ``ref`` (a ``.milvus.json``'s text) is used by
    ``version`` (an add reuses it)."""
    try:
        col = json.loads(ref)["collection"]
        return any(json.loads(p.read_text(encoding="utf-8"))["collection"] == col for p in version.glob("*.milvus.json"))
    except (OSError, ValueError, KeyError):
        return True  # when unsure, keep it


@dataclass
class _Version:
    tmp: Path  # where the version is written
    final: Path  # its name once published


@contextlib.contextmanager
def _new_version(index_dir: Path) -> Iterator[_Version]:
    """A new version folder to write in (``.tmp-*``); when the block ends without error it is
    fsynced, renamed, named by CURRENT, and the old versions are removed; on any error (an
    interrupt included) it is removed and the live version stays as it was."""
    index_dir.mkdir(parents=True, exist_ok=True)
    for stale in index_dir.glob(".tmp-*"):  # left by an interrupted build
        shutil.rmtree(stale, ignore_errors=True)
    existing = sorted(p.name for p in index_dir.glob("v[0-9]*") if p.is_dir())
    n = int(existing[-1][1:]) + 1 if existing else 1
    name = f"v{n:06d}"
    version = _Version(index_dir / f".tmp-{name}-{secrets.token_hex(4)}", index_dir / name)
    version.tmp.mkdir()
    (version.tmp / READERS_LOCK).touch()
    try:
        yield version
        _write_checksums(version.tmp)  # last: every other file of the version is written
        fsync_tree(version.tmp)  # the new version is on disk before CURRENT names it
        os.rename(version.tmp, version.final)
        fsync_tree(index_dir)
    except BaseException:
        shutil.rmtree(version.tmp, ignore_errors=True)
        raise
    from ..utils.io import atomic_write_text

    atomic_write_text(index_dir / "CURRENT", name + "\n")
    live = {p.read_text(encoding="utf-8") for p in version.final.glob("*.milvus.json")}
    for old in existing:  # the old versions no reader holds (the others stay for a later build)
        refs = [ref.read_text(encoding="utf-8") for ref in (index_dir / old).glob("*.milvus.json")]
        if not _remove_unread_version(index_dir / old):
            continue
        for text in refs:  # collections no longer referenced
            if text not in live and not _same_collection_text(text, version.final):
                with contextlib.suppress(Exception):
                    info = json.loads(text)
                    MilvusBackend(info["dim"], info["index_type"], uri=info["uri"], collection=info["collection"]).drop()


def _publish_version(index_dir: Path, fill: Any) -> Path:
    """Write a new version folder with ``fill(tmp)``, switch CURRENT to it, remove the old ones."""
    with _new_version(index_dir) as version:
        fill(version.tmp)
    return version.final


class _NothingNew(Exception):
    """An add whose every item is already in the index (nothing is written)."""

    def __init__(self, skipped: int) -> None:
        super().__init__(skipped)
        self.skipped = skipped


@dataclass(frozen=True)
class _Load:
    """How a build loads its vectors beyond the index type: batches, Milvus's resume, shards and
    partition, and the FAISS shard and shared training."""

    batch_rows: int | None = None
    resume: bool = False
    shards: int | None = None
    partition: str | None = None
    shard: tuple[int, int] | None = None
    trained: str | Path | None = None


@dataclass(frozen=True)
class _Build:
    """One build or add, as :meth:`Retriever.build` was asked it (see there for each field),
    after its checks; an add then takes ``backend``, ``uri``, ``on_disk`` and ``index_type``
    from the index it extends."""

    index_dir: Path
    items: list[Item]
    checkpoint: Any = None
    clip: Any = None
    features: Any = None
    index_type: str = EXACT
    add: bool = False
    cache_dir: Any = None
    device: str = "cpu"
    progress: bool = True
    backend: str = "faiss"
    uri: str | None = None
    on_disk: bool = False
    nprobe: int | None = None
    batch_size: int | None = None
    train_size: int | None = None
    seed: int = 0
    load: _Load = _Load()


@dataclass
class _State:
    """What a new version starts from (for an add, the index it extends: ``old``) and what it
    gathers while it is filled: the backends and metadata rows (extended in place), the content
    hashes already indexed, each modality's index type, the training record, the interrupted
    Milvus load being resumed (``record``), a shared training's templates, the shard, and the
    Milvus collections of this load and the rows a resumed load found inserted."""

    model: Any
    backends: dict[str, Any]
    rows: list[tuple]
    seen: set
    index_types: dict[str, str]
    training: dict[str, Any]
    record: dict[str, Any] | None = None
    old: Retriever | None = None
    templates: dict[str, Any] = field(default_factory=dict)
    shard_info: dict[str, Any] | None = None
    collections: dict[str, str] = field(default_factory=dict)
    resumed: dict[str, int] = field(default_factory=dict)


def _interrupted_load(req: _Build) -> dict[str, Any] | None:
    """The record of an interrupted load into Milvus that this build resumes (``--resume``), or
    None; an interrupted load not resumed is dropped (the build starts over)."""
    record = read_record(req.index_dir)
    if record is not None and not req.load.resume:
        dropped = discard_leftover(req.index_dir)
        if dropped:
            log.info("Dropped the Milvus collection(s) %s of an interrupted build of %s.", ", ".join(dropped), req.index_dir)
        return None
    if record is None and req.load.resume:
        log.info("--resume: no interrupted load into Milvus at %s; building as usual.", req.index_dir)
    return record


def _check_load(req: _Build) -> None:
    """:class:`ConfigError` for load options that the build's backend does not take."""
    load = req.load
    if req.on_disk and req.backend != "faiss":
        raise ConfigError("An on-disk index is a FAISS index (backend faiss); Milvus keeps its own storage.")
    if req.backend != "milvus":
        for flag, value in (("--resume", load.resume or None), ("--shards", load.shards), ("--partition", load.partition)):
            if value is not None:
                raise ConfigError(
                    f"{flag} applies to the Milvus backend (--backend milvus); a FAISS index is written whole into a new version."
                )
    elif load.shards is not None and req.add:
        raise ConfigError("--shards is set when a Milvus collection is created; an --add inserts into the index's collections.")
    if (load.shard is not None or load.trained is not None) and req.backend != "faiss":
        raise ConfigError("--shard and --trained build FAISS indexes to merge; a Milvus collection is one index already.")


def _chunk_hashes(modality: str, chunk: list[Item], features: Any) -> tuple[list[np.ndarray] | None, list[str]]:
    """The content hashes of a batch of items, and their feature rows (local, mask, pooled) when
    the items are rows of pre-extracted ``features`` (one modality's), else None."""
    if features is None:
        return None, [_content_hash(it) for it in chunk]
    arrays = [take_rows(x, np.asarray([it.row for it in chunk])) for x in (features.local, features.mask, features.pooled)]
    return arrays, _feature_hashes(modality, arrays)


def _embed_chunk(
    model: Any, modality: str, items: list[Item], arrays: list[np.ndarray] | None, keep: list[int], cache_dir: Any
) -> np.ndarray:
    """The embeddings of ``items`` (rows ``keep`` of their batch): from the batch's feature rows
    ``arrays`` when given, else from the images or texts (through the feature cache ``cache_dir``)."""
    if arrays is not None:
        from ..data.features import ModalityFeatures

        sel = np.asarray(keep)
        return model.embed_features(modality, ModalityFeatures(*(x[sel] for x in arrays)))
    return model.embed(modality, [it.path if modality == "image" else it.text for it in items], cache_dir=cache_dir, progress=False)


def _metadata_row(modality: str, row: int, item: Item, content_hash: str) -> tuple:
    """An item's row of ``items.sqlite``."""
    return (modality, row, item.id, item.path, item.text, item.label, content_hash, _labels_column(item.labels, item.label))


def _record_milvus_load(
    folder: Path, req: _Build, state: _State, spools: dict[str, EmbeddingSpool], n_old: dict[str, int], n_rows: int
) -> _Build:
    """Record the load into Milvus before its first insert (so that an interrupted one can be
    resumed; a resumed one is checked against its record) and name the collections it makes;
    returns the build with its URI as stored."""
    if req.uri is None:
        _new_backend(req.backend, 1, EXACT, req.uri)  # the error that says what uri= takes
    uri = _milvus_uri(str(req.uri))
    expected = {
        "uri": uri,
        "model": state.model.fingerprint,
        "base": state.old.version if state.old is not None else None,
        "rows": rows_digest(state.rows[n_rows:]),
        "index_types": {m: state.index_types[m] for m in spools if m in state.index_types},
        "dim": int(next(iter(spools.values())).shape[1]),
        "start": n_old,
    }
    if state.record is not None:
        check_resumable(state.record, expected, folder.parent)
    made_names = dict((state.record or {}).get("made") or {})
    for m, spool in spools.items():
        if m not in state.backends and len(spool):
            state.collections[m] = made_names.get(m) or f"gcrdp_{secrets.token_hex(6)}"
    reused = {m: b.collection for m, b in state.backends.items()}
    write_record(folder.parent, {**expected, "made": state.collections, "reused": reused})
    return replace(req, uri=uri)


def _open_engine(engine: Any, modality: str, dim: int, req: _Build, state: _State) -> Any:
    """The backend that ``modality``'s new vectors go into: the index's own (an add; its load
    options set anew), or a new one (a Milvus collection, a copy of a shared training, or empty)."""
    load, kind = req.load, state.index_types[modality]
    if engine is None and req.backend == "milvus":
        return MilvusBackend(
            dim,
            kind,
            uri=str(req.uri),
            collection=state.collections[modality],
            shards=load.shards,
            partition=load.partition,
            batch_rows=load.batch_rows,
        )
    if engine is None and modality in state.templates:
        return FaissBackend.from_trained(_faiss_clone(state.templates[modality][0]), kind, nprobe=req.nprobe)
    if engine is None:
        return _new_backend(req.backend, dim, kind, req.uri, req.nprobe)
    if isinstance(engine, MilvusBackend):
        engine.partition, engine.batch_rows = load.partition, load.batch_rows
    elif req.nprobe is not None and isinstance(engine, FaissBackend):
        engine.set_nprobe(req.nprobe)
    return engine


def _fill_backend(modality: str, spool: EmbeddingSpool, start: int, folder: Path, work: Path, req: _Build, state: _State) -> None:
    """Add ``modality``'s vectors from row ``start`` of its spool to its backend (training it
    first when it is new and trainable), into ``state``."""
    engine = state.backends.get(modality)
    if req.on_disk:
        engine, trained = FaissBackend.build_on_disk(
            spool,
            folder,
            modality,
            state.index_types[modality],
            start=start,
            previous=engine,
            work_dir=work,
            seed=req.seed,
            max_train=req.train_size or MAX_TRAIN,
            nprobe=req.nprobe,
            batch_rows=req.load.batch_rows,
            template=state.templates[modality][0] if modality in state.templates and engine is None else None,
        )
    else:
        engine = _open_engine(engine, modality, int(spool.shape[1]), req, state)
        if isinstance(engine, MilvusBackend):
            trained = engine.add_from(spool, start, resume=state.record is not None)
            if engine.resumed_rows:
                state.resumed[modality] = engine.resumed_rows
        else:
            trained = engine.add_from(spool, start, seed=req.seed, max_train=req.train_size or MAX_TRAIN, batch_rows=req.load.batch_rows)
    state.backends[modality] = engine
    if trained:
        state.training["vectors"][modality] = trained


def _version_info(
    req: _Build, state: _State, spools: dict[str, EmbeddingSpool], added: dict[str, int], skipped: int, t0: float
) -> dict[str, Any]:
    """The index.json of a filled version (``t0``: when its embedding started)."""
    from .. import __version__

    backends, model = state.backends, state.model
    recall, recall_queries = {}, 0
    for modality, engine in backends.items():
        if state.index_types[modality] != EXACT:
            recall[modality], recall_queries = recall_against_exact(engine.search, spools[modality], k=10)
    instance = _instance_quality(dict(spools), state.rows)
    probes = {m: b.nprobe for m, b in backends.items() if getattr(b, "nprobe", None) is not None}
    info = {
        "format": INDEX_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": str(model.checkpoint) if model.checkpoint is not None else None,
        "encoders": model.encoders_config() if model.checkpoint is None else None,
        "model": model.fingerprint,
        "backend": req.backend,
        "uri": getattr(next(iter(backends.values())), "uri", None) if req.backend == "milvus" else None,
        "index_type": req.index_type,
        "index_types": {m: state.index_types[m] for m in backends},
        "on_disk": req.on_disk,
        "nprobe": probes or None,
        "training": state.training if state.training["vectors"] else None,
        "metric": "inner product" + (" of unit vectors (cosine)" if model.metric == "cosine" else ""),
        "dim": next(iter(backends.values())).dim,
        "counts": {m: b.ntotal for m, b in backends.items()},
        "added_now": added,
        "skipped_duplicates": skipped,
        "recall_at_10_vs_exact": recall or None,
        "recall_queries": recall_queries or None,
        "instance_recall": instance,
        "embed_seconds": round(time.perf_counter() - t0, 3),
    }
    if req.backend == "milvus":
        info["milvus"] = {
            "collections": {m: b.collection for m, b in backends.items()},
            "shards": req.load.shards,
            "num_shards": {m: b.num_shards for m, b in backends.items()},
            "partition": req.load.partition,
            "batch_rows": req.load.batch_rows or min(b.insert_rows for b in backends.values()),
            "resumed_rows": state.resumed or None,
        }
    if state.shard_info is not None:
        info["shard"] = state.shard_info
    if req.load.trained is not None:
        info["trained_from"] = str(Path(req.load.trained).expanduser().resolve())
    if state.shard_info is not None or req.load.trained is not None:
        info["template_sha256"] = {m: template_digest(b.trained_template()) for m, b in backends.items() if isinstance(b, FaissBackend)}
    info["gcrdp_version"] = __version__
    return info


def _check_shard(shard: Any) -> tuple[int, int]:
    """``(i, n)`` with ``0 <= i < n``; :class:`ConfigError` naming ``--shard`` otherwise."""
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (the I-th of N shards, counted from 0), got {shard!r}.")
    return int(shard[0]), int(shard[1])


def collection_digest(items: Sequence[Item]) -> str:
    """SHA-256 of a collection's items, (modality, id) each in order: the shards of one collection
    share it."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.modality, it.id], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def _shard_items(items: list[Item], i: int, n: int) -> tuple[list[Item], dict[str, Any]]:
    """The ``i``-th of ``n`` contiguous blocks of each modality's items (rows ``i·len//n`` to
    ``(i+1)·len//n``), and the shard's record: its place in the collection."""
    out: list[Item] = []
    start, stop, total = {}, {}, {}
    for m in MODALITIES:
        todo = [it for it in items if it.modality == m]
        if todo:
            lo, hi = i * len(todo) // n, (i + 1) * len(todo) // n
            start[m], stop[m], total[m] = lo, hi, len(todo)
            out += todo[lo:hi]
    if not out:
        raise DataError(f"Shard {i}/{n} of this collection is empty (it has {total}); use fewer shards.")
    return out, {"index": i, "of": n, "collection": collection_digest(items), "start": start, "stop": stop, "total": total}


def _faiss_clone(index: Any) -> Any:
    import faiss

    return faiss.clone_index(index)


def _trained_templates(index_dir: Path, model: Any, index_type: str, seed: int) -> tuple[dict[str, tuple[Any, str]], str, dict[str, Any]]:
    """Each modality's trained, empty index (and factory string) of the FAISS index at
    ``index_dir`` (``--trained``), its index type, and its training record."""
    version = _current(index_dir)
    with _reader_lock(version) as held:
        if not held:
            raise DataError(f"--trained: index {index_dir} changed while it was read; try again.")
        _verify_all(index_dir, version, _read_checksums(index_dir, version))
        try:
            info = json.loads((version / "index.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _corrupt(index_dir, version / "index.json", f"is unreadable ({exc})") from None
        if info.get("backend", "faiss") != "faiss":
            raise ConfigError(f"--trained {index_dir} is a Milvus index; name a FAISS index (its trained quantizer is what shards share).")
        if info.get("model") != model.fingerprint:
            raise ConfigError(f"--trained {index_dir} was built with another model; train the shards' index with the same model.")
        if index_type not in (EXACT, info["index_type"]):
            raise ConfigError(
                f"--index-type {index_type!r} differs from the index type of --trained {index_dir} ({info['index_type']!r}); "
                "leave --index-type out (the shard takes the trained index's)."
            )
        types = _index_types(info)
        templates = {m: (b.trained_template(), types[m]) for m, b in _load_backends(version, info).items()}
    training = dict(info.get("training") or {"seed": seed, "vectors": {}})
    training["vectors"] = dict(training.get("vectors") or {})
    return templates, str(info["index_type"]), training


# --------------------------------------------------------------------------- the retriever
class Retriever:
    """Search a collection by text or by image with a trained model.

    Build: ``Retriever.build(index_dir, checkpoint=DIR, items=...)`` (or the ``gcrdp index``
    command); load: ``Retriever.load(index_dir)``; query: ``retriever.search(text="a red
    bicycle", k=5)`` (images that match a text) or ``search(image="photo.jpg")`` (texts that
    match an image).
    """

    def __init__(self, index_dir: Path, info: dict[str, Any], model: Any, backends: dict[str, FaissBackend], rows: list[tuple]) -> None:
        self.index_dir, self.info, self.model, self.backends = index_dir, info, model, backends
        #: the version folder's name (``v000002``) this retriever was loaded from or built as
        self.version: str | None = None
        self._meta: dict[tuple[str, int], tuple] = {(r[0], int(r[1])): r for r in rows}
        self._by_id: dict[tuple[str, str], int] = {(r[0], r[2]): int(r[1]) for r in rows}
        self._hashes = {(r[0], r[6]) for r in rows}

    def item(self, modality: str, id: str) -> tuple | None:
        """The metadata row (modality, row, id, path, text, label, hash, labels) of an item, or None."""
        row = self._by_id.get((modality, id))
        return None if row is None else self._meta[(modality, row)]

    def describe(self, modality: str, row: int) -> dict[str, Any]:
        """What is shown of the item at ``row``: modality, row, id, path, text, label, labels,
        hash. An image without a stored caption (an index written before captions were stored)
        shows the text indexed with the same id — its pair in a manifest or a dataset."""
        m = self._meta[(modality, row)]
        text = m[4]
        if text is None and modality == "image":
            pair = self._by_id.get(("text", m[2]))
            text = None if pair is None else self._meta[("text", pair)][4]
        stored = m[7] if len(m) > 7 else None
        labels = _all_labels(json.loads(stored) if stored else (), m[5])
        return {
            "modality": modality,
            "row": int(m[1]),
            "id": m[2],
            "path": m[3],
            "text": text,
            "label": m[5],
            "labels": labels,
            "hash": m[6],
        }

    def examples(self, n: int = 6, max_chars: int = 60) -> list[str]:
        """Up to ``n`` distinct short texts of the collection, spread evenly over it (the texts,
        else the images' captions): example queries."""
        for modality in ("text", "image"):
            total = self.backends[modality].ntotal if modality in self.backends else 0
            looked = min(total, 20 * n)  # rows looked at, evenly spaced
            found: list[str] = []
            for row in sorted({i * total // looked for i in range(looked)}):
                if (modality, row) not in self._meta:
                    continue
                text = " ".join((self.describe(modality, row)["text"] or "").split())
                if text and len(text) <= max_chars and text not in found:
                    found.append(text)
            if found:
                take = min(n, len(found))
                return [found[i * len(found) // take] for i in range(take)]
        return []

    def __repr__(self) -> str:
        counts = ", ".join(f"{m} {b.ntotal}" for m, b in self.backends.items())
        return f"Retriever({str(self.index_dir)!r}: {counts}; {self.info['index_type']})"

    def __len__(self) -> int:
        return sum(b.ntotal for b in self.backends.values())

    # ---------------------------------------------------------------- build
    @classmethod
    def build(  # noqa: PLR0913 - keyword-only: the options of `gcrdp index`, one by one
        cls,
        index_dir: str | Path,
        *,
        checkpoint: str | Path | None = None,
        items: Sequence[Item],
        clip: str | Path | None = None,
        features: Any = None,
        index_type: str = EXACT,
        add: bool = False,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        progress: bool = True,
        backend: str = "faiss",
        uri: str | None = None,
        on_disk: bool = False,
        nprobe: int | None = None,
        batch_size: int | None = None,
        train_size: int | None = None,
        seed: int = 0,
        batch_rows: int | None = None,
        resume: bool = False,
        shards: int | None = None,
        partition: str | None = None,
        shard: tuple[int, int] | None = None,
        trained: str | Path | None = None,
    ) -> Retriever:
        """Embed ``items`` with the model of ``checkpoint`` and write the index (see the module
        docstring). With ``add=True`` the items are appended to the existing index at
        ``index_dir`` (its checkpoint, backend, index type and on-disk choice are kept; items
        whose content hash is already there are skipped); the model must match the index's
        fingerprint.

        ``clip=DIR`` instead of a checkpoint indexes with a local CLIP folder alone (aligned
        encoders, no training: the ``zero-shot`` method).

        Memory stays bounded by the batch, not the collection: items are embedded
        ``batch_size`` at a time (default 256 images, 1024 texts, or about 64 MiB of feature
        rows) into a spool file in the new version's folder, from which the index is trained
        (a trainable type — ``IVF…``, ``PQ…``, ``IVF-PQ`` — on a random sample of at most
        ``train_size`` vectors (default 262,144) drawn with ``seed``), filled and measured in batches.
        ``index_type="IVF-PQ"`` picks ``IVF<nlist>,PQ<dim/4>`` for the collection's size;
        ``on_disk=True`` (an IVF type) builds the inverted lists shard by shard into a file of
        the index folder, memory-mapped when searched; ``nprobe`` sets the IVF lists searched
        per query.

        ``backend="faiss"`` (default) keeps the vectors in the folder; ``backend="milvus"`` keeps
        them in Milvus at ``uri`` — a local ``.db`` file (Milvus Lite, embedded) or
        ``http://host:19530`` (a server or cluster) — with the metadata still in the folder.
        One build or add at a time per index (a lock file refuses a second).

        ``batch_rows``: rows added to the index per batch (Milvus: rows a single insert sends;
        default at most 5,000 and about 16 MiB). On Milvus, ``shards`` sets a new collection's
        shards (``num_shards``) and ``partition`` the partition this load's rows go to (created
        when missing); ``resume=True`` continues a build or add that was interrupted while it
        inserted (:mod:`gcrdp.search.milvus_load`): the rows already in the collection are found by
        primary key, checked and not sent again (with nothing to resume, it builds as usual).

        ``shard=(i, n)`` indexes the ``i``-th of ``n`` contiguous blocks of each modality's items
        (a shard, to be merged with the others by :func:`gcrdp.search.shards.merge_indexes`);
        ``trained=INDEX`` fills a trained, empty copy of that index's vectors instead of training
        (its index types too): the shards of an IVF index must share it."""
        index_dir = Path(index_dir).expanduser()
        items = list(items)
        if not items:
            raise DataError("Nothing to index: the collection is empty.")
        for name, value in (("nprobe", nprobe), ("batch_size", batch_size), ("train_size", train_size), ("batch_rows", batch_rows)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        check_milvus_options(shards=shards, partition=partition)
        if shard is not None:
            shard = _check_shard(shard)
            if add:
                raise ConfigError("--shard builds a new index of one shard of a collection; it cannot be combined with --add.")
        if trained is not None and add:
            raise ConfigError("--trained applies to a new index; an --add keeps the training of the index it extends.")
        with _build_lock(index_dir):
            return cls._build_locked(
                _Build(
                    index_dir,
                    items,
                    checkpoint=checkpoint,
                    clip=clip,
                    features=features,
                    index_type=index_type,
                    add=add,
                    cache_dir=cache_dir,
                    device=device,
                    progress=progress,
                    backend=backend,
                    uri=uri,
                    on_disk=on_disk,
                    nprobe=nprobe,
                    batch_size=batch_size,
                    train_size=train_size,
                    seed=seed,
                    load=_Load(batch_rows, resume, shards, partition, shard, trained),
                )
            )

    @classmethod
    def _build_locked(cls, req: _Build) -> Retriever:
        bad = sorted({it.modality for it in req.items} - set(MODALITIES))
        if bad:
            raise ConfigError(f"Item modality must be 'image' or 'text', got {bad}.")
        if req.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {req.backend!r}.")
        req, state = cls._start(req, _interrupted_load(req))
        _check_load(req)
        if req.load.shard is not None:
            items, state.shard_info = _shard_items(req.items, *req.load.shard)
            req = replace(req, items=items)
        if req.load.trained is not None:
            state.templates, index_type, state.training = _trained_templates(
                Path(req.load.trained).expanduser(), state.model, req.index_type, req.seed
            )
            req = replace(req, index_type=index_type)
        try:
            with _new_version(req.index_dir) as version:
                work = version.tmp / ".work"
                work.mkdir()
                spools: dict[str, EmbeddingSpool] = {}
                try:
                    info = cls._fill_version(version.tmp, work, spools, req, state)
                finally:
                    for spool in spools.values():
                        spool.remove()
                    shutil.rmtree(work, ignore_errors=True)
        except _NothingNew as nothing:  # every item is already in the index: it stays as it is
            old = state.old
            assert old is not None  # only an add finds nothing new
            log.info("--add: nothing new (%d items already in the index); index %s is unchanged.", nothing.skipped, req.index_dir)
            info = dict(old.info, added_now={}, skipped_duplicates=nothing.skipped, unchanged=True)
            same = cls(req.index_dir, info, state.model, state.backends, state.rows)
            same.version = old.version
            return same
        except BaseException as exc:
            if req.backend == "milvus" and not isinstance(exc, ConfigError) and read_record(req.index_dir) is not None:
                log.warning(
                    "The load into Milvus stopped; run the same gcrdp index again with --resume to continue from the rows already "
                    "inserted (without --resume, they are dropped and the build starts over)."
                )
            raise
        clear_record(req.index_dir)
        backends = _load_backends(version.final, info) if req.on_disk else state.backends  # on disk: open the lists where they now live
        out = cls(req.index_dir, info, state.model, backends, state.rows)
        out.version = version.final.name
        return out

    @classmethod
    def _start(cls, req: _Build, record: dict[str, Any] | None) -> tuple[_Build, _State]:
        """What the new version starts from: a new index's model, or the index an add extends
        (whose backend, URI, on-disk choice and index type the build then keeps)."""
        from .model import SearchModel

        training: dict[str, Any] = {"seed": req.seed, "vectors": {}}
        if not req.add:
            if (req.checkpoint is None) == (req.clip is None):
                raise ConfigError(
                    "Building an index needs one model: checkpoint= (gcrdp train's folder) or clip= (a local CLIP folder, used as it is)."
                )
            if req.clip is not None:
                d = str(Path(req.clip).expanduser().resolve())
                model = SearchModel.from_encoders(image_encoder_options={"model_dir": d}, text_encoder_options={"model_dir": d})
            else:
                model = SearchModel.from_checkpoint(req.checkpoint, req.device)
            return req, _State(model, {}, [], set(), {}, training, record=record)
        old = cls.load(req.index_dir, device=req.device)
        training = dict(old.info.get("training") or training)
        training["vectors"] = dict(training.get("vectors") or {})
        for b in old.backends.values():
            if hasattr(b, "trim") and record is None:  # a resumed add checks those rows instead
                b.trim()
        if req.checkpoint is not None:
            given = SearchModel.from_checkpoint(req.checkpoint, req.device)
            if given.fingerprint != old.model.fingerprint:
                raise ConfigError(
                    f"--add: checkpoint {req.checkpoint} is not the model index {req.index_dir} was "
                    "built with (its fingerprint differs); build a new index instead."
                )
        req = replace(
            req,
            backend=old.info.get("backend", "faiss"),
            uri=old.info.get("uri"),
            on_disk=bool(old.info.get("on_disk")),
            index_type=old.info["index_type"],
        )
        index_types = {m: t for m, t in _index_types(old.info).items() if m in old.backends}
        return req, _State(
            old.model, old.backends, list(old._meta.values()), set(old._hashes), index_types, training, record=record, old=old
        )

    @classmethod
    def _fill_version(cls, folder: Path, work: Path, spools: dict[str, EmbeddingSpool], req: _Build, state: _State) -> dict[str, Any]:
        """Embed, index, measure and write one version into ``folder`` (``state.backends`` and
        ``state.rows`` are extended in place); returns its index.json."""
        t0 = time.perf_counter()
        backends = state.backends
        n_old = {m: b.ntotal for m, b in backends.items()}
        # the vectors as computed (an approximate index may store them compressed), spooled on
        # disk for the training sample and the recall figures; after an add, the old ones first,
        # as the index gives them back
        for m, b in backends.items():
            spools[m] = EmbeddingSpool(work / f"{m}.f32", b.dim)
            for a, c in batches(b.ntotal, min(5000, scan_rows(b.dim))):
                spools[m].append(b.vectors(a, c))
        added: dict[str, int] = {}
        skipped = 0
        n_rows = len(state.rows)
        for modality in MODALITIES:
            got, dup = cls._embed_modality(modality, spools, work, req, state, n_old.get(modality, 0))
            skipped += dup
            if got:
                added[modality] = got
        if not added and not backends:
            raise DataError("Nothing to index: every item is already in the index.")
        if not added:  # an add with nothing new: no new version
            raise _NothingNew(skipped)
        for modality, spool in spools.items():
            if modality not in backends and len(spool) > n_old.get(modality, 0):
                state.index_types[modality] = (
                    state.templates[modality][1]
                    if modality in state.templates
                    else resolve_index_type(req.index_type, len(spool), int(spool.shape[1]))
                )
        if req.backend == "milvus":  # recorded before the first insert: an interrupted load can be resumed
            req = _record_milvus_load(folder, req, state, spools, n_old, n_rows)
        for modality, spool in spools.items():
            if len(spool) != n_old.get(modality, 0):
                _fill_backend(modality, spool, n_old.get(modality, 0), folder, work, req, state)
        info = _version_info(req, state, spools, added, skipped, t0)
        for m, b in backends.items():
            _save_backend(b, folder, m)
        _write_metadata(folder / "items.sqlite", state.rows)
        (folder / "index.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        return info

    @staticmethod
    def _embed_modality(
        modality: str, spools: dict[str, EmbeddingSpool], work: Path, req: _Build, state: _State, start: int
    ) -> tuple[int, int]:
        """Embed one modality's new items batch by batch into its spool, appending their
        metadata rows; returns (items added, duplicates skipped)."""
        todo = [it for it in req.items if it.modality == modality]
        if not todo:
            return 0, 0
        model, rows, seen = state.model, state.rows, state.seen
        mf = getattr(req.features, modality) if req.features is not None else None
        if mf is not None and any(it.row is None for it in todo):
            raise ConfigError("With features=, every item needs its row (items_from_features).")
        step = req.batch_size or (_feature_batch_rows(mf) if mf is not None else BATCH_ITEMS[modality])
        if mf is None and req.cache_dir is not None:
            _extract_on_cluster(model, modality, todo, seen, step, req.cache_dir, req.progress)
        ids = {r[2] for r in rows if r[0] == modality}
        new_hashes: set[tuple[str, str]] = set()  # within one build, repeated content is kept
        count = skipped = bad = 0
        bad_ids: list[str] = []
        bar = None
        if req.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"embedding {modality}s", unit=modality, file=sys.stderr, dynamic_ncols=True)
        try:
            for a, b in batches(len(todo), step):
                chunk = todo[a:b]
                arrays, hashes = _chunk_hashes(modality, chunk, mf)
                keep = []
                for i, (it, h) in enumerate(zip(chunk, hashes)):
                    if (modality, h) in seen:  # already in the index (an add): not embedded again
                        skipped += 1
                        continue
                    if it.id in ids:
                        raise DataError(
                            f"Two {modality}s have the id {it.id!r}"
                            + (" (one is already in the index)" if req.add else "")
                            + "; ids must be unique per modality."
                        )
                    ids.add(it.id)
                    new_hashes.add((modality, h))
                    keep.append(i)
                if keep:
                    vectors = _embed_chunk(model, modality, [chunk[i] for i in keep], arrays, keep, req.cache_dir)
                    finite = np.isfinite(vectors).all(axis=1)
                    if not finite.all():
                        bad_ids += [chunk[keep[j]].id for j in np.flatnonzero(~finite)[: max(0, 3 - len(bad_ids))]]
                        bad += int((~finite).sum())
                    if modality not in spools:
                        spools[modality] = EmbeddingSpool(work / f"{modality}.f32")
                    spools[modality].append(vectors)
                    rows += [_metadata_row(modality, start + count + j, chunk[i], hashes[i]) for j, i in enumerate(keep)]
                    count += len(keep)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if bad:
            raise DataError(
                f"{bad} of the {count} {modality} embeddings are not finite (NaN or infinite), e.g. "
                f"{', '.join(repr(i) for i in bad_ids)}: the model's weights (or these items' features) are damaged. "
                "Nothing was written; train the model again or index with another checkpoint."
            )
        seen.update(new_hashes)
        return count, skipped

    # ---------------------------------------------------------------- load and search
    @classmethod
    def load(
        cls, index_dir: str | Path, *, device: str = "cpu", checkpoint: str | Path | None = None, nprobe: int | None = None
    ) -> Retriever:
        """Open the index at ``index_dir`` with its model (re-created from the checkpoint it
        names, or ``checkpoint`` when the folder moved), checked against the stored fingerprint.
        ``nprobe`` overrides the IVF lists searched per query that the index was built with."""
        index_dir = Path(index_dir).expanduser()
        for _ in range(5):
            version = _current(index_dir)
            with _reader_lock(version) as held:
                if held:  # the version stays while it is read, even if a build publishes another
                    return cls._load_version(index_dir, version, device=device, checkpoint=checkpoint, nprobe=nprobe)
            # removed by a build that published a newer version since CURRENT was read: read it again
        raise DataError(f"Index {index_dir} kept changing while it was loaded (builds in a row); load it again.")

    @classmethod
    def _load_version(cls, index_dir: Path, version: Path, *, device: str, checkpoint: str | Path | None, nprobe: int | None) -> Retriever:
        from .model import SearchModel

        sums = _read_checksums(index_dir, version)
        if sums is None:
            log.warning(
                "Index %s was written before its files' checksums were recorded: it is loaded unchecked (a build or an --add writes them).",
                index_dir,
            )
        _verify_all(index_dir, version, sums)  # before the model loads: a damaged index fails fast
        try:
            info = json.loads((version / "index.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise _corrupt(index_dir, version / "index.json", f"is unreadable ({exc})") from None
        if not isinstance(info, dict):
            raise _corrupt(index_dir, version / "index.json", "is not a JSON object")
        if info.get("format") != INDEX_FORMAT:
            raise DataError(f"{version}: unknown index format {info.get('format')!r}. {_rebuild_hint(index_dir)}")
        missing = [k for k in ("model", "index_type", "dim", "counts") if k not in info]
        if missing or ("encoders" not in info and info.get("checkpoint") is None):
            raise _corrupt(index_dir, version / "index.json", f"lacks {', '.join(missing) or 'its model'}")
        if info.get("checkpoint") is None and checkpoint is None:
            model = SearchModel.from_encoders(**info["encoders"], assume_aligned=True)
        else:
            model = SearchModel.from_checkpoint(checkpoint or info["checkpoint"], device)
        if model.fingerprint != info["model"]:
            differ = sorted(k for k in set(model.fingerprint) | set(info["model"]) if model.fingerprint.get(k) != info["model"].get(k))
            raise ConfigError(
                f"The model at {model.checkpoint or 'the encoders'} is not the one index {index_dir} was built with "
                f"(differs in: {', '.join(differ)}). Rebuild the index, or pass the original "
                "checkpoint."
            )
        backends = _load_backends(version, info, nprobe)
        rows = _read_metadata(version / "items.sqlite")
        got = {m: sum(1 for r in rows if r[0] == m) for m in MODALITIES}
        if any(got[m] != int((info.get("counts") or {}).get(m, 0)) for m in MODALITIES):
            raise _corrupt(index_dir, version / "items.sqlite", f"describes {got} items where index.json counts {info.get('counts')}")
        out = cls(index_dir, info, model, backends, rows)
        out.version = version.name
        return out

    def is_current(self) -> bool:
        """Whether this retriever still holds the live version of its index (cheap: reads
        ``CURRENT``); False once a build or an add has published another (reload it then)."""
        try:
            return (self.index_dir / "CURRENT").read_text(encoding="utf-8").strip() == self.version
        except (OSError, UnicodeDecodeError):
            return False

    def search(
        self,
        *,
        text: str | Iterable[str] | None = None,
        image: str | Path | Iterable[str | Path] | None = None,
        like: str | None = None,
        like_modality: str = "image",
        k: int = 10,
    ) -> list[Hit] | list[list[Hit]]:
        """The ``k`` best images for a text (``text=``), or texts for an image (``image=``). A
        list of queries gives a list of result lists. ``like=ID`` queries with an indexed item's
        own vector (its ``like_modality`` side; the other modality comes back) — the way to
        query an index of pre-extracted features."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}.")
        if like is not None:
            if text is not None or image is not None:
                raise ConfigError("search takes one of text=, image= or like=.")
            if like_modality not in MODALITIES:
                raise ConfigError(f"like_modality must be 'image' or 'text', got {like_modality!r}.")
            row = self._by_id.get((like_modality, like))
            if row is None:
                raise DataError(f"No {like_modality} with id {like!r} in index {self.index_dir}.")
            target = "text" if like_modality == "image" else "image"
            return self.search_vectors(target, self.backends[like_modality].vector(row), k)[0]
        if (text is None) == (image is None):
            raise ConfigError("search needs exactly one of text=, image= or like=.")
        query_mod, target = ("text", "image") if text is not None else ("image", "text")
        given = text if text is not None else image
        single = isinstance(given, (str, Path))
        queries = [given] if single else list(given)  # type: ignore[arg-type]
        if target not in self.backends:
            raise DataError(f"Index {self.index_dir} holds no {target}s to search with a {query_mod} query.")
        out = self.search_vectors(target, self.query_vectors(query_mod, [str(x) for x in queries]), k)
        return out[0] if single else out

    def search_vectors(self, target: str, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Search the ``target`` modality with query vectors already in the model's space (as
        :meth:`query_vectors` makes them): one ranked list per row."""
        if target not in self.backends:
            raise DataError(f"Index {self.index_dir} holds no {target}s.")
        scores, rows = self.backends[target].search(vectors, k)
        meta = self._meta
        return [
            [
                self._hit(target, r + 1, float(s), int(row))
                for r, (s, row) in enumerate(zip(sc.tolist(), rw.tolist()))
                if row >= 0 and (target, row) in meta
            ]
            for sc, rw in zip(scores, rows)
        ]

    def query_vectors(self, modality: str, queries: list[str]) -> np.ndarray:
        """The queries embedded with the index's model (nothing cached)."""
        return self.model.embed(modality, queries, cache_dir=None, progress=False)

    def _hit(self, modality: str, rank: int, score: float, row: int) -> Hit:
        d = self.describe(modality, row)
        return Hit(rank, score, modality, d["id"], d["path"], d["text"], d["label"], d["labels"])


def format_hits(hits: list[Hit]) -> str:
    """A ranked table: rank, score, id, text (an image's caption), labels, and the file of an
    image (its path's end, which says the most)."""
    head = ["rank", "score", "id", "text", "labels"]
    files = any(h.path for h in hits)
    if files:
        head.append("file")

    def short(s: str, n: int = 60) -> str:
        s = " ".join(s.split())
        return s if len(s) <= n else s[: n - 1] + "…"

    def file(path: str | None) -> str:
        p = (path or "").replace("\n", " ")
        return p if len(p) <= 60 else "…" + p[-59:]

    rows = [
        [str(h.rank), f"{h.score:.3f}", h.id, short(h.text or ""), short(", ".join(h.labels or ((h.label,) if h.label else ())), 40)]
        + ([file(h.path)] if files else [])
        for h in hits
    ]
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) if rows else len(head[i]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head)] + [line(r) for r in rows])
