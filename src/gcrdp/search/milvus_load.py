"""Resuming an interrupted load into Milvus: the record of a build in progress.

A build (or ``--add``) on the Milvus backend writes ``INDEX/.milvus-load.json`` before its first
insert: the Milvus URI, the collections it inserts into (those it made, and those of the index it
extends), the model's fingerprint, the version it extends and a digest of the rows it inserts
(each item's modality, row, id and content hash). The record is removed when the build is
published. A build killed (or failed) after that point leaves the record and the rows it inserted;
``Retriever.build(..., resume=True)`` (``gcrdp index --resume``) of the same items with the same
model reuses the collections and inserts only the rows not there yet (found by primary key; the
vectors of those that are must equal the ones computed again). A build without ``resume`` drops
the collections a leftover record says an interrupted build made (never one a version of the
index uses) and starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

RECORD = ".milvus-load.json"
RECORD_FORMAT = "gcrdp-milvus-load/1"


def rows_digest(rows: list[tuple]) -> str:
    """SHA-256 of the metadata rows a load inserts: (modality, row, id, content hash) each."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r[0], int(r[1]), r[2], r[6]], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def read_record(index_dir: Path) -> dict[str, Any] | None:
    """The record of an interrupted load into Milvus, or None (none, or unreadable: then a
    resume is impossible and the leftover is dropped like any other)."""
    try:
        record = json.loads((index_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def write_record(index_dir: Path, record: dict[str, Any]) -> None:
    from ..utils.io import atomic_write_text

    atomic_write_text(index_dir / RECORD, json.dumps({"format": RECORD_FORMAT, **record}, indent=1) + "\n")


def clear_record(index_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(index_dir / RECORD)


def _used_collections(index_dir: Path) -> set[tuple[str, str]]:
    """(uri, collection) of every Milvus collection a version of the index names."""
    used = set()
    for ref in index_dir.glob("v[0-9]*/*.milvus.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = json.loads(ref.read_text(encoding="utf-8"))
            used.add((str(info["uri"]), str(info["collection"])))
    return used


def discard_leftover(index_dir: Path) -> list[str]:
    """Drop the collections an interrupted load made (not one a version uses) and remove its
    record; returns the names dropped."""
    from .backends import _client

    record = read_record(index_dir)
    dropped: list[str] = []
    if record is not None:
        used = _used_collections(index_dir)
        for name in (record.get("made") or {}).values():
            if (str(record["uri"]), str(name)) in used:
                continue
            with contextlib.suppress(Exception):
                c = _client(str(record["uri"]))
                if c.has_collection(name):
                    c.drop_collection(name)
                    dropped.append(str(name))
    clear_record(index_dir)
    return dropped


def check_resumable(record: dict[str, Any], expected: dict[str, Any], index_dir: Path) -> None:
    """:class:`ConfigError` when ``record`` is not an interrupted load of what this build would
    insert (``expected``: the same keys), naming what differs."""
    labels = {
        "uri": "the Milvus URI",
        "model": "the model",
        "base": "the index version it extends",
        "rows": "the items (ids, contents or order)",
        "index_types": "the index type",
        "dim": "the dimension",
        "start": "the rows already published",
    }
    differ = [labels[k] for k in labels if record.get(k) != expected.get(k)]
    if differ:
        raise ConfigError(
            f"--resume: the interrupted load into Milvus recorded in {index_dir / RECORD} differs from this build in "
            f"{', '.join(differ)}. Give the same collection and model to resume it, or build without --resume "
            "(which drops what it inserted and starts over)."
        )
