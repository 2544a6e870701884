"""Seen/unseen class splits: the versioned files shipped with the package, user files, and
deterministic generation.

Shipped splits live in ``gcrdp/data/splits/<dataset>.json`` (package data)::

    {"dataset": "twemoji", "version": "1", "seed": 0, "method": "...",
     "seen": [...], "unseen": [...], "note": "..."}

Only ``dataset``, ``version``, ``seen`` and ``unseen`` are read by
:meth:`ClassSplit.from_json`; the other keys (seed, method, note, counts) are provenance.

**Generation** (:func:`generate_class_split`) does not depend on any random-number library.
The default, ``method="hash"``, is *stable*: each class is placed on its own, by a seeded hash
of its name — unseen when ``u = int(sha256(f"{seed}\\0{name}")[:16], 16) / 2**64`` is below
``unseen_fraction`` (default 0.5), seen otherwise. Adding, removing or renaming one class
therefore never moves another class between seen and unseen (a typo in one label cannot
reshuffle the experiment). The price: the number of unseen classes is not fixed (with 10
classes and 0.5 it is 5 on average); the one exception to stability is a draw that puts every
class on one side, where the class with the most extreme hash is moved to the other side so
that both sides exist. ``method="ordered"`` is the first rule (sorted by that hash, the first
``round(n * unseen_fraction)`` unseen): exact counts, but one class more or less can move
others. Either result depends only on the seed and the set of class names (not on their order,
the NumPy version or the platform); both lists are stored sorted by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from ..errors import ConfigError, DataError, format_list
from .types import ClassSplit, split_label  # noqa: F401  (re-exported)

SPLIT_METHODS = {
    "hash": (
        "stable per-class hash: a class is unseen when sha256('<seed>\\0<class name>') / 2^256 "
        "< the unseen fraction; adding or removing a class moves no other class"
    ),
    "ordered": ("sha256-ordered shuffle: classes sorted by sha256('<seed>\\0<class name>'); the first n//2 are unseen, the rest seen"),
}
SPLIT_METHOD = SPLIT_METHODS["hash"]


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


def _unit(seed: int, name: str) -> float:
    return int(_order_key(seed, name)[:16], 16) / float(1 << 64)


def generate_class_split(
    classes: Iterable[str],
    *,
    dataset: str,
    seed: int = 0,
    unseen_fraction: float = 0.5,
    version: str | None = None,
    method: str = "hash",
) -> ClassSplit:
    """Split ``classes`` into seen and unseen deterministically (see the module docstring).

    Args:
        classes: the class names (order does not matter; duplicates are an error).
        dataset: stored in the split.
        seed: selects the draw.
        unseen_fraction: with ``method="hash"`` the probability of a class being unseen; with
            ``"ordered"`` the share of unseen classes, rounded down (0.5 → ``n // 2``).
        version: defaults to ``f"hashed-seed{seed}"`` (hash) or ``f"generated-seed{seed}"``
            (ordered).
        method: ``"hash"`` (default: stable when classes are added or removed) or
            ``"ordered"`` (exact counts; the rule before version 0.2).
    """
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise DataError(f"Cannot split classes of {dataset!r}: duplicate class names.")
    if not 0.0 <= unseen_fraction <= 1.0:
        raise ConfigError(f"unseen_fraction must be in [0, 1], got {unseen_fraction!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {seed!r}.")
    if method not in SPLIT_METHODS:
        raise ConfigError(f"split method must be one of {sorted(SPLIT_METHODS)}, got {method!r}.")
    if method == "ordered":
        ordered = sorted(names, key=lambda c: (_order_key(seed, c), c))
        n_unseen = int(len(ordered) * unseen_fraction + 1e-9)
        unseen_set = set(ordered[:n_unseen])
        default_version = f"generated-seed{seed}"
    else:
        u = {c: _unit(seed, c) for c in names}
        unseen_set = {c for c in names if u[c] < unseen_fraction}
        if len(names) >= 2 and 0.0 < unseen_fraction < 1.0:
            if not unseen_set:  # every class drawn seen: the lowest hash becomes unseen
                unseen_set = {min(names, key=lambda c: (u[c], c))}
            elif len(unseen_set) == len(names):  # every class unseen: the highest becomes seen
                unseen_set.discard(max(names, key=lambda c: (u[c], c)))
        default_version = f"hashed-seed{seed}"
    return ClassSplit(
        dataset=dataset,
        version=version if version is not None else default_version,
        seen=tuple(sorted(c for c in names if c not in unseen_set)),
        unseen=tuple(sorted(unseen_set)),
    )


def generated_split_source(split: ClassSplit, seed: int, unseen_fraction: float = 0.5) -> str:
    """The ``class_split_source`` text of a generated split: the rule, and a note when the
    stable draw is lopsided (a share of unseen classes far from ``unseen_fraction``)."""
    method = "ordered" if split.version.startswith("generated-") else "hash"
    n = len(split.seen) + len(split.unseen)
    text = f"generated (seed {seed}): {SPLIT_METHODS[method]}"
    if method == "hash" and n >= 4 and abs(len(split.unseen) / n - unseen_fraction) > 0.2:
        text += (
            f"; this draw has {len(split.unseen)} unseen of {n} classes — another split_seed "
            "(--dataset-option split_seed=N) draws another, or pass a class split file"
        )
    return text


def class_split_document(split: ClassSplit, *, seed: int | None = None, note: str = "", method: str | None = None, **extra: object) -> dict:
    """The JSON document written for a split file: the four keys read back plus provenance."""
    doc: dict = {"dataset": split.dataset, "version": split.version}
    if seed is not None:
        doc["seed"] = seed
        method = method or ("ordered" if split.version.startswith("generated-") else "hash")
        doc["method"] = SPLIT_METHODS[method]
    doc.update(extra)
    doc["n_seen"] = len(split.seen)
    doc["n_unseen"] = len(split.unseen)
    doc["seen"] = list(split.seen)
    doc["unseen"] = list(split.unseen)
    if note:
        doc["note"] = note
    return doc


def write_class_split(
    split: ClassSplit, path: str | Path, *, seed: int | None = None, note: str = "", method: str | None = None, **extra: object
) -> Path:
    """Write ``split`` as JSON (UTF-8, sorted lists, trailing newline) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = class_split_document(split, seed=seed, note=note, method=method, **extra)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
