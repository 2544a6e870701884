"""Seen/unseen class splits: the versioned files shipped with the package, user files, and
deterministic generation.

Shipped splits live in ``gcrdp/data/splits/<dataset>.json`` (package data)::

    {"dataset": "twemoji", "version": "1", "seed": 0, "method": "...",
     "seen": [...], "unseen": [...], "note": "..."}

Only ``dataset``, ``version``, ``seen`` and ``unseen`` are read by
:meth:`ClassSplit.from_json`; the other keys (seed, method, note, counts) are provenance.

**Generation** (:func:`generate_class_split`) is a seeded shuffle that does not depend on any
random-number library: each class name is keyed by ``sha256(f"{seed}\\0{name}")`` and the
classes are sorted by that key; the first ``round(n * unseen_fraction)`` (default ``n // 2``,
so the seen side gets the odd class) become *unseen*, the rest *seen*. The result depends only
on the seed and the set of class names (not on their order, the NumPy version or the
platform), and both lists are stored sorted by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from ..errors import ConfigError, DataError, format_list
from .types import ClassSplit

SPLIT_METHOD = (
    "sha256-ordered shuffle: classes sorted by sha256('<seed>\\0<class name>'); "
    "the first n//2 are unseen, the rest seen"
)


def _shipped_dir():
    return resources.files("gcrdp.data").joinpath("splits")


def list_class_splits() -> list[str]:
    """Names of the datasets that ship a class split file (e.g. ``['twemoji']``)."""
    try:
        entries = list(_shipped_dir().iterdir())
    except (FileNotFoundError, NotADirectoryError):  # pragma: no cover - broken install
        return []
    return sorted(e.name[: -len(".json")] for e in entries if e.name.endswith(".json"))


def load_class_split(name_or_path: str | Path | ClassSplit) -> ClassSplit:
    """Load a class split.

    Args:
        name_or_path: the name of a dataset that ships a split (``"twemoji"``), the path of a
            JSON file with keys ``dataset``, ``version``, ``seen``, ``unseen`` (extra keys are
            ignored), or a :class:`ClassSplit` (returned unchanged).

    Raises:
        DataError: the file is missing or malformed.
        ConfigError: a bare name that no shipped split has (the message lists the shipped ones).
    """
    if isinstance(name_or_path, ClassSplit):
        return name_or_path
    if isinstance(name_or_path, Path):
        return ClassSplit.from_json(name_or_path)
    text = str(name_or_path)
    if text.endswith(".json") or "/" in text or "\\" in text or Path(text).is_file():
        return ClassSplit.from_json(Path(text).expanduser())
    entry = _shipped_dir().joinpath(f"{text}.json")
    if not entry.is_file():
        raise ConfigError(
            f"No shipped class split for dataset {text!r}. Shipped splits: "
            f"{format_list(list_class_splits()) or '(none)'}. Pass the path of a JSON file "
            f"with keys 'dataset', 'version', 'seen', 'unseen' instead."
        )
    with resources.as_file(entry) as path:
        return ClassSplit.from_json(path)


def _order_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest()


def generate_class_split(
    classes: Iterable[str],
    *,
    dataset: str,
    seed: int = 0,
    unseen_fraction: float = 0.5,
    version: str | None = None,
) -> ClassSplit:
    """Split ``classes`` into seen and unseen deterministically (see the module docstring).

    Args:
        classes: the class names (order does not matter; duplicates are an error).
        dataset: stored in the split.
        seed: selects the shuffle.
        unseen_fraction: share of unseen classes, rounded down (0.5 → ``n // 2`` unseen).
        version: defaults to ``f"generated-seed{seed}"``.
    """
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise DataError(f"Cannot split classes of {dataset!r}: duplicate class names.")
    if not 0.0 <= unseen_fraction <= 1.0:
        raise ConfigError(f"unseen_fraction must be in [0, 1], got {unseen_fraction!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}.")
    ordered = sorted(names, key=lambda c: (_order_key(seed, c), c))
    n_unseen = int(len(ordered) * unseen_fraction + 1e-9)
    unseen = sorted(ordered[:n_unseen])
    seen = sorted(ordered[n_unseen:])
    return ClassSplit(
        dataset=dataset,
        version=version if version is not None else f"generated-seed{seed}",
        seen=tuple(seen),
        unseen=tuple(unseen),
    )


def class_split_document(split: ClassSplit, *, seed: int | None = None, note: str = "",
                         **extra: object) -> dict:
    """The JSON document written for a split file: the four keys read back plus provenance."""
    doc: dict = {"dataset": split.dataset, "version": split.version}
    if seed is not None:
        doc["seed"] = seed
        doc["method"] = SPLIT_METHOD
    doc.update(extra)
    doc["n_seen"] = len(split.seen)
    doc["n_unseen"] = len(split.unseen)
    doc["seen"] = list(split.seen)
    doc["unseen"] = list(split.unseen)
    if note:
        doc["note"] = note
    return doc


def write_class_split(split: ClassSplit, path: str | Path, *, seed: int | None = None,
                      note: str = "", **extra: object) -> Path:
    """Write ``split`` as JSON (UTF-8, sorted lists, trailing newline) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = class_split_document(split, seed=seed, note=note, **extra)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
