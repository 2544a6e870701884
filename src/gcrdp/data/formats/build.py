"""What every loader does last: leave out bad samples (``skip_bad``), pick the class split,
and build the :class:`~gcrdp.data.types.Dataset` with its metadata.

Class split precedence: the user's ``class_split`` (a shipped name, a JSON path or a
:class:`ClassSplit`) › the split shipped for the dataset (``gcrdp/data/splits/<name>.json``)
› one generated from the class names (:func:`~gcrdp.data.splits.generate_class_split`,
``seed=split_seed``). ``meta["class_split_source"]`` says which.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import ConfigError, format_list
from ..features import FeatureSet
from ..problems import Problems
from ..splits import generate_class_split, generated_split_source, list_class_splits, load_class_split
from ..types import ClassSplit, Dataset, Sample, split_label


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
        split = load_class_split(shipped)
        present = set(classes)
        listed = set(split.seen) | set(split.unseen)
        if present <= listed:
            if present == listed:
                return split, f"shipped: {shipped} {split_label(split.version)}", False
            dropped = sorted(listed - present)
            restricted = ClassSplit(
                split.dataset,
                f"{split.version}-restricted",
                tuple(c for c in split.seen if c in present),
                tuple(c for c in split.unseen if c in present),
            )
            return (
                restricted,
                (
                    f"shipped: {shipped} {split_label(split.version)}, restricted to the "
                    f"{len(present)} present classes (absent: {format_list(dropped)})"
                ),
                False,
            )
    split = generate_class_split(classes, dataset=dataset, seed=split_seed)
    return split, generated_split_source(split, split_seed), True


def finish_dataset(
    name: str,
    samples: list[Sample],
    classes: Sequence[str],
    *,
    problems: Problems,
    skip_bad: bool,
    features: FeatureSet | None = None,
    class_split: str | Path | ClassSplit | None = None,
    split_seed: int = 0,
    shipped_split: str | None = None,
    meta: dict | None = None,
    hint: str = "",
) -> Dataset:
    """Resolve ``problems`` (raise, or leave the bad samples out), drop classes left without
    samples by skipping, choose the class split and build the dataset.

    ``features`` (optional) has one row per entry of ``samples``, in the same order."""
    bad = problems.resolve(skip_bad, n_total=len(samples), hint=hint)
    meta = dict(meta or {})
    dropped_classes: list[str] = []
    if bad:
        keep = np.array([s.id not in bad for s in samples], dtype=bool)
        samples = [s for s, k in zip(samples, keep) if k]
        if features is not None:
            features = features.subset(np.flatnonzero(keep))
        used = {lab for s in samples for lab in s.labels}
        dropped_classes = [c for c in classes if c not in used]
        classes = [c for c in classes if c in used]
    split, source, generated = resolve_class_split(
        list(classes), dataset=name, class_split=class_split, split_seed=split_seed, shipped=shipped_split
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
            "n_skipped": len(bad),
            "skipped": problems.report() if bad else [],
        }
    )
    if dropped_classes:
        meta["classes_dropped"] = dropped_classes
    return Dataset(name=name, samples=samples, classes=list(classes), class_split=split, meta=meta, features=features)


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
