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
    """The ``class_split_source`` text of a generated split: the rule, and — when the draw cannot
    serve the few-shot protocols (:func:`split_shortfalls`: lopsided, or fewer than two seen
    classes) — why, and a ``split_seed`` that draws a usable split."""
    method = "ordered" if split.version.startswith("generated-") else "hash"
    text = f"generated (seed {seed}): {SPLIT_METHODS[method]}"
    problems = split_shortfalls(len(split.seen), len(split.unseen), unseen_fraction if method == "hash" else None)
    if problems:
        classes = [*split.seen, *split.unseen]
        good = find_split_seed(classes, unseen_fraction=unseen_fraction, start=seed + 1, method=method)
        text += f"; this draw cannot serve the few-shot protocols ({'; '.join(problems)})"
        text += (
            f" — split_seed={good} draws a usable one (--dataset-option split_seed={good}), or pass a class split file"
            if good is not None
            else f" — {len(classes)} classes are too few for them (at least {min_classes()}); use --protocol standard"
        )
    return text


#: The fewest seen classes a fewshot/generalized run with class-disjoint validation needs: two
#: held out to validate on (on one class alone every retrieval is right, so its mAP is always 100
#: and says nothing) and one to train on.
MIN_SEEN_CLASSES = 3
#: The fewest unseen classes the fewshot protocol needs: its test gallery holds only them, and on
#: one class every retrieval is right. (generalized: 1, its gallery holds the seen classes too.)
MIN_UNSEEN_CLASSES = 2


def split_shortfalls(
    n_seen: int, n_unseen: int, unseen_fraction: float | None = None, *, validate: bool = True, protocol: str = "fewshot"
) -> list[str]:
    """Why a seen/unseen split of ``n_seen + n_unseen`` classes cannot serve ``protocol``
    (``"fewshot"`` or ``"generalized"``; an empty list when it can).

    * fewer than :data:`MIN_UNSEEN_CLASSES` unseen classes (fewshot; generalized: none): the test
      would rank one class against itself — mAP 100 whatever the model;
    * fewer than :data:`MIN_SEEN_CLASSES` seen classes (when ``validate``: a validation on held-out
      seen classes, the default): the validation needs two classes of its own (on one class every
      retrieval is right: mAP 100 whatever the model) and training at least one other;
    * ``unseen_fraction`` given (a *generated* split): the number of unseen classes is further
      from ``unseen_fraction · n`` than one class or a fifth of the classes, whichever is more
      (with 7 classes and 0.5: 3 or 4 unseen are near, 1, 2, 5 or 6 are not).
    """
    n = n_seen + n_unseen
    problems: list[str] = []
    min_unseen = MIN_UNSEEN_CLASSES if protocol == "fewshot" else 1
    if n_unseen < min_unseen:
        problems.append(
            f"{n_unseen} unseen class{'' if n_unseen == 1 else 'es'}: the {protocol} test needs at least {min_unseen}"
            + (
                " (its gallery holds only them, and on one class every retrieval is right: mAP 100 whatever the model)"
                if min_unseen > 1
                else ""
            )
        )
    if not validate and n_seen < 1:
        problems.append("no seen class to train on")
    if validate and n_seen < MIN_SEEN_CLASSES:
        problems.append(
            f"{n_seen} seen class{'' if n_seen == 1 else 'es'}: at least {MIN_SEEN_CLASSES} are needed — 2 held out "
            "for validation (on one class every retrieval is right: its mAP is 100 whatever the model) and 1 to train "
            "on, so that the model is never validated on the classes it trains on"
        )
    if unseen_fraction is not None and n and abs(n_unseen - unseen_fraction * n) > max(1.0, 0.2 * n) + 1e-9:
        problems.append(f"{n_unseen} of {n} classes unseen, far from the requested share of {unseen_fraction:g}")
    return problems


def min_classes(protocol: str = "fewshot", *, validate: bool = True) -> int:
    """The fewest classes a dataset needs for ``protocol`` (see :func:`split_shortfalls`)."""
    return (MIN_SEEN_CLASSES if validate else 1) + (MIN_UNSEEN_CLASSES if protocol == "fewshot" else 1)


def find_split_seed(
    classes: Iterable[str],
    *,
    unseen_fraction: float = 0.5,
    start: int = 0,
    tries: int = 1000,
    method: str = "hash",
    validate: bool = True,
    protocol: str = "fewshot",
) -> int | None:
    """The first ``split_seed`` from ``start`` (at most ``tries`` of them) whose generated split has
    no :func:`split_shortfalls`, or ``None`` (e.g. too few classes: no split can serve)."""
    names = sorted({str(c) for c in classes})
    if len(names) < min_classes(protocol, validate=validate):
        return None
    for seed in range(max(0, int(start)), max(0, int(start)) + tries):
        split = generate_class_split(names, dataset="", seed=seed, unseen_fraction=unseen_fraction, method=method)
        if not split_shortfalls(len(split.seen), len(split.unseen), unseen_fraction, validate=validate, protocol=protocol):
            return seed
    return None


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
