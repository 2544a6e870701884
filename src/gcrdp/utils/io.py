"""Atomic file writes and fsync — the one home for them: a reader sees the old file or the
complete new one, never a part. Checkpoints, the feature cache, exports and search indexes
publish their folders with these."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk; a no-op where folders
    cannot be opened (some platforms and file systems)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush one file's content to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(folder: str | Path) -> None:
    """Flush every file directly in ``folder``, then the folder itself."""
    for p in Path(folder).iterdir():
        if p.is_file():
            fsync_file(p)
    fsync_dir(folder)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), default_file_mode())  # mkstemp makes 0600; a file gets the umask's mode
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)  # make the rename itself durable


def _read_umask() -> int:
    mask = os.umask(0o022)  # read it the only portable way, once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process umask (0o666 & ~umask; the umask
    as it was when gcrdp was imported)."""
    return 0o666 & ~_UMASK


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
