"""What a reader returns and what :func:`gcrdp.data.registry.load_dataset` does with it.

A reader (``@register_reader("name")``) reads files and returns a :class:`RawDataset`: the
samples, the class names, the problems found, pre-extracted features, the name of a class
split shipped for it, its metadata — and, when the data has no train/test split of its own,
how to draw one (:class:`SeededSplit`). :func:`finish` — called by ``load_dataset`` with the
options every dataset shares (``class_split``, ``split_seed``, ``skip_bad``) — draws that split,
resolves the problems (raise, or leave the bad samples out), picks the class split and builds
the :class:`~gcrdp.data.types.Dataset` with its metadata.

Class split precedence: the user's ``class_split`` (a shipped name, a JSON path or a
:class:`ClassSplit`) › the reader's own default (:attr:`RawDataset.default_split`) › the split
shipped for the dataset (``gcrdp/data/splits/<name>.json``) › one generated from the class names
(:func:`~gcrdp.data.splits.generate_class_split`, ``seed=split_seed``).
``meta["class_split_source"]`` says which.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, format_list
from ..features import FeatureSet
from ..problems import Problems
from ..splits import generate_class_split, generated_split_source, list_class_splits, load_class_split
from ..types import ClassSplit, Dataset, Sample, split_label

#: The options every dataset shares, with their defaults; ``load_dataset`` applies them.
SHARED_OPTIONS: dict[str, Any] = {"class_split": None, "split_seed": 0, "skip_bad": False}


@dataclass(frozen=True)
class SeededSplit:
    """A train/test split left to ``split_seed``, for data that has none of its own.

    ``keys`` has one entry a sample: ``(class, key)`` to draw (the key unique within its class),
    or ``None`` for a sample not drawn (it goes to train). Per class, the keys are ordered by a
    seeded SHA-256 and the first ones go to test: :func:`per_class_test_split`'s
    ``test_fraction`` rule, or (``test_per_class``) the first ``test_per_class`` of each class
    ordered by ``sha256("<seed>\\0<key>")``. ``notes`` names the entries of the reader's meta whose
    text says ``{seed}``: the seed is written into them."""

    keys: Sequence[tuple[str, str] | None]
    test_fraction: float | None = None
    test_per_class: int | None = None
    notes: tuple[str, ...] = ()

    def draw(self, seed: int) -> list[str]:
        """``"train"``/``"test"`` per sample, in order."""
        drawn = [(i, k) for i, k in enumerate(self.keys) if k is not None]
        if self.test_per_class is not None:
            sides = _first_per_class([k for _, k in drawn], self.test_per_class, seed)
        else:
            sides = per_class_test_split([k for _, k in drawn], self.test_fraction, seed)  # type: ignore[arg-type]
        out = ["train"] * len(self.keys)
        for (i, _), side in zip(drawn, sides):
            out[i] = side
        return out


def _first_per_class(items: Sequence[tuple[str, str]], n_test: int, seed: int) -> list[str]:
    by_class: dict[str, list[str]] = {}
    for cls, key in items:
        by_class.setdefault(cls, []).append(key)
    test: set[tuple[str, str]] = set()
    for cls, keys in by_class.items():
        ranked = sorted(keys, key=lambda k: (hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest(), k))
        test.update((cls, k) for k in ranked[:n_test])
    return ["test" if item in test else "train" for item in items]


#: ``default_split(classes)`` → ``(split, source)``: a reader's own default class split.
DefaultSplit = Callable[[list[str]], tuple[ClassSplit, str]]


@dataclass
class RawDataset:
    """What a reader read (see the module docstring).

    Attributes:
        name: the dataset's name.
        samples: the samples read, bad ones included (their problems are in ``problems``).
        classes: the class names, in label order.
        problems: the per-sample problems found (``skip_bad`` decides what they do).
        features: pre-extracted features, one row per sample, or ``None``.
        shipped_split: name of a class split shipped for this dataset, if one may apply.
        meta: what the reader knows about the source (the finishing entries are added).
        seeded_split: how to draw a train/test split with ``split_seed``, if the data has none.
        hint: a line added to the problems' message.
        unusable: set when nothing can be built (e.g. no sample has a label): raised once the
            problems are resolved, so that they are reported first.
        n_read: the number of samples read, for messages (default ``len(samples)``).
        default_split: the reader's own default class split (when the user gives none).
        meta_keys: the finished meta's keys, in order (default: the reader's, then the
            finishing entries).
    """

    name: str
    samples: list[Sample]
    classes: list[str]
    problems: Problems
    features: FeatureSet | None = None
    shipped_split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    seeded_split: SeededSplit | None = None
    hint: str = ""
    unusable: str | None = None
    n_read: int | None = None
    default_split: DefaultSplit | None = None
    meta_keys: tuple[str, ...] | None = None


def check_skip_bad(skip_bad: object) -> bool:
    if not isinstance(skip_bad, bool):
        raise ConfigError(f"skip_bad must be true or false, got {skip_bad!r}.")
    return skip_bad


def resolve_class_split(
    classes: Sequence[str],
    *,
    dataset: str,
    class_split: str | Path | ClassSplit | None,
    split_seed: int = 0,
    shipped: str | None = None,
) -> tuple[ClassSplit, str, bool]:
    """``(split, source description, generated?)`` for ``classes`` (see the module doc).

    A shipped split is restricted to ``classes`` when some of its classes are absent (e.g.
    left out by ``skip_bad`` or by a subset option); the source then says so."""
    if class_split is not None:
        split = load_class_split(class_split)
        split.check_against(classes)
        source = "user" if isinstance(class_split, ClassSplit) else f"user: {class_split}"
        return split, source, False
    if shipped is not None and shipped in list_class_splits():
        found = _shipped_split(classes, shipped)
        if found is not None:
            return found[0], found[1], False
    split = generate_class_split(classes, dataset=dataset, seed=split_seed)
    return split, generated_split_source(split, split_seed), True


def _shipped_split(classes: Sequence[str], shipped: str) -> tuple[ClassSplit, str] | None:
    """The shipped split ``shipped``, restricted to ``classes``; ``None`` when it lacks some."""
    split = load_class_split(shipped)
    present = set(classes)
    listed = set(split.seen) | set(split.unseen)
    if not present <= listed:
        return None
    if present == listed:
        return split, f"shipped: {shipped} {split_label(split.version)}"
    dropped = sorted(listed - present)
    restricted = ClassSplit(
        split.dataset,
        f"{split.version}-restricted",
        tuple(c for c in split.seen if c in present),
        tuple(c for c in split.unseen if c in present),
    )
    source = (
        f"shipped: {shipped} {split_label(split.version)}, restricted to the "
        f"{len(present)} present classes (absent: {format_list(dropped)})"
    )
    return restricted, source


def finish(
    raw: RawDataset,
    *,
    class_split: str | Path | ClassSplit | None = None,
    split_seed: int = 0,
    skip_bad: bool = False,
) -> Dataset:
    """The dataset of what a reader read: draw the seeded train/test split (if any), resolve
    the problems (raise, or leave the bad samples out), drop the classes left without samples,
    choose the class split and build the dataset with its metadata."""
    samples = raw.samples
    meta = dict(raw.meta)
    if raw.seeded_split is not None:
        samples = [replace(s, split=side) for s, side in zip(samples, raw.seeded_split.draw(split_seed))]
        meta.update({k: str(meta[k]).replace("{seed}", str(split_seed)) for k in raw.seeded_split.notes})
    bad = raw.problems.resolve(skip_bad, n_total=len(samples) if raw.n_read is None else raw.n_read, hint=raw.hint)
    if raw.unusable is not None:
        raise DataError(raw.unusable)
    classes, features = list(raw.classes), raw.features
    dropped_classes: list[str] = []
    if bad:
        keep = np.array([s.id not in bad for s in samples], dtype=bool)
        samples = [s for s, k in zip(samples, keep) if k]
        if features is not None:
            features = features.subset(np.flatnonzero(keep))
        used = {lab for s in samples for lab in s.labels}
        dropped_classes = [c for c in classes if c not in used]
        classes = [c for c in classes if c in used]
    if class_split is None and raw.default_split is not None:
        (split, source), generated = raw.default_split(classes), False
    else:
        split, source, generated = resolve_class_split(
            classes, dataset=raw.name, class_split=class_split, split_seed=split_seed, shipped=raw.shipped_split
        )
    n_train = sum(s.split == "train" for s in samples)
    meta.update(
        {
            "n_samples": len(samples),
            "n_classes": len(classes),
            "n_train": n_train,
            "n_test": len(samples) - n_train,
            "multilabel": any(len(s.labels) > 1 for s in samples),
            "class_split_source": source,
            "class_split_generated": generated,
            **({"class_split_seed": split_seed} if generated else {}),
            "features": "pre-extracted" if features is not None else "extracted by the encoders",
            "n_skipped": raw.problems.n_skipped(bad),
            "skipped": raw.problems.skip_report(bad),
        }
    )
    if dropped_classes:
        meta["classes_dropped"] = dropped_classes
    if raw.meta_keys is not None:
        meta = {k: meta[k] for k in raw.meta_keys if k in meta}
    return Dataset(name=raw.name, samples=samples, classes=classes, class_split=split, meta=meta, features=features)


def read_utf8(path: Path) -> tuple[str | None, str | None]:
    """``(text, None)`` or ``(None, reason)`` for a text file that is missing, unreadable or not
    valid UTF-8 (the reason names the byte offset)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, f"text file {path} does not exist"
    except OSError as exc:
        return None, f"cannot read text file {path}: {exc}"
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        return None, (f"text file {path} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); re-save it as UTF-8")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def index_images(folder: Path) -> dict[str, Path]:
    """``{file stem: path}`` of the image files anywhere under ``folder`` (a stem found twice
    keeps the first path in sorted order)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            out.setdefault(p.stem, p)
    return out


def assign_test_split(ids: Sequence[str], first_labels: Sequence[str], test_fraction: float, seed: int) -> list[str]:
    """A deterministic per-class train/test split for data that has none (``"train"`` /
    ``"test"`` per sample, in order): the rule of :func:`per_class_test_split`
    with the sample ids as keys — per class (a sample's first label), ids ordered by
    ``sha256("<seed>\\0<class>\\0<id>")``, the first ``floor(test_fraction · n + 0.5)`` (at
    least one when the class has two or more samples, never all) to test."""
    return per_class_test_split(list(zip(first_labels, ids)), test_fraction, seed)


# --------------------------------------------------------------------------- generated train/test splits
def check_test_fraction(test_fraction: object) -> float:
    """``test_fraction`` as a float in (0, 1), else :class:`ConfigError`."""
    try:
        f = float(test_fraction)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}.") from None
    if isinstance(test_fraction, bool) or not 0.0 < f < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1) (exclusive), got {test_fraction!r}.")
    return f


def _split_key(seed: int, cls: str, key: str) -> str:
    return hashlib.sha256(f"{seed}\0{cls}\0{key}".encode()).hexdigest()


def n_test_of(n: int, test_fraction: float) -> int:
    """How many of a class's ``n`` samples go to test (see the module docstring)."""
    if n < 2:
        return 0
    k = int(math.floor(test_fraction * n + 0.5))
    return min(max(k, 1), n - 1)


def per_class_test_split(items: Sequence[tuple[str, str]], test_fraction: float, seed: int = 0) -> list[str]:
    """The generated train/test split: ``items`` are ``(class, key)`` pairs (the key unique
    within its class, e.g. a file stem or a sample id); returns ``"train"``/``"test"`` per
    item, in the order given. Per class, the items are ordered by
    ``sha256(f"{seed}\\0{class}\\0{key}")`` and the first :func:`n_test_of` are ``test``."""
    test_fraction = check_test_fraction(test_fraction)
    by_class: dict[str, list[int]] = {}
    for i, (cls, _) in enumerate(items):
        by_class.setdefault(cls, []).append(i)
    out = ["train"] * len(items)
    for cls, idx in by_class.items():
        order = sorted(idx, key=lambda i: (_split_key(seed, cls, items[i][1]), i))
        for i in order[: n_test_of(len(order), test_fraction)]:
            out[i] = "test"
    return out
