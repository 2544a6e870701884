"""The sample and dataset types.

A :class:`Dataset` is an ordered list of :class:`Sample` (one image, one text, one or
more class labels, a ``train``/``test`` split) plus the ordered list of class names
(which fixes label indices) and, where the dataset ships one, its seen/unseen
:class:`ClassSplit`.

A dataset loaded from pre-extracted feature files carries its :class:`FeatureSet` in
``Dataset.features`` (rows in sample order, ids equal): the pipeline then uses those features
and extracts nothing. Its samples may lack the image (``image=None``) and the text
(``text=None``); a dataset without features needs a text per sample.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .features import FeatureSet

SPLITS = ("train", "test")


def split_label(version: str) -> str:
    """How a split version reads in messages: ``v1`` for a number, the name otherwise
    (``hashed-seed0``)."""
    return f"v{version}" if str(version)[:1].isdigit() else str(version)


@dataclass(frozen=True)
class Sample:
    """One image–text pair.

    Attributes:
        id: unique identifier within the dataset.
        text: the text (non-empty), or ``None`` when only pre-extracted features exist.
        labels: the class names it belongs to (one for single-label datasets).
        split: ``"train"`` or ``"test"``.
        image: path of the image file, or ``None`` when only pre-extracted features exist.
    """

    id: str
    text: str | None
    labels: tuple[str, ...]
    split: str
    image: Path | None = None


@dataclass(frozen=True)
class ClassSplit:
    """Seen (base) and unseen (novel) class names of a dataset, from a versioned file."""

    dataset: str
    version: str
    seen: tuple[str, ...]
    unseen: tuple[str, ...]

    def __post_init__(self) -> None:
        overlap = set(self.seen) & set(self.unseen)
        if overlap:
            raise DataError(
                f"Class split {self.dataset!r} {split_label(self.version)}: classes listed as both seen and unseen: {sorted(overlap)[:5]}"
            )

    @classmethod
    def from_json(cls, path: str | Path) -> ClassSplit:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                dataset=str(raw["dataset"]),
                version=str(raw["version"]),
                seen=tuple(raw["seen"]),
                unseen=tuple(raw["unseen"]),
            )
        except FileNotFoundError:
            raise DataError(f"Class split file not found: {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"Class split file {path} is not valid: expected JSON with keys 'dataset', 'version', 'seen', 'unseen' ({exc})."
            ) from None

    def to_json(self) -> str:
        return json.dumps(
            {"dataset": self.dataset, "version": self.version, "seen": list(self.seen), "unseen": list(self.unseen)},
            indent=2,
        )

    def check_against(self, classes: Sequence[str]) -> None:
        """Raise :class:`DataError` unless seen ∪ unseen equals ``classes`` exactly."""
        listed = set(self.seen) | set(self.unseen)
        known = set(classes)
        missing = sorted(known - listed)
        extra = sorted(listed - known)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"classes of the data not in the split: {missing[:5]} ({len(missing)})")
            if extra:
                parts.append(f"split classes not in the data: {extra[:5]} ({len(extra)})")
            raise DataError(
                f"Class split {self.dataset!r} {split_label(self.version)} does not match the dataset: "
                + "; ".join(parts)
                + ". Regenerate the split or pass a matching --class-split file."
            )


@dataclass
class Dataset:
    """An ordered list of samples with their class vocabulary.

    ``classes`` fixes the label index of each class name; ``label_matrix()`` is the
    (n_samples, n_classes) boolean multi-hot matrix used everywhere downstream. Every class
    must have at least one sample. ``features`` holds pre-extracted features (see the module
    docstring); ``meta["skipped"]`` lists the samples a loader left out with ``skip_bad=True``.
    """

    name: str
    samples: list[Sample]
    classes: list[str]
    class_split: ClassSplit | None = None
    meta: dict = field(default_factory=dict)
    features: FeatureSet | None = None

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return len(self.samples)

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        if not self.samples:
            raise DataError(f"Dataset {self.name!r} has no samples.")
        if len(set(self.classes)) != len(self.classes):
            raise DataError(f"Dataset {self.name!r}: duplicate class names in the class list.")
        problems = self._sample_problems()
        if problems:
            raise DataError(f"Dataset {self.name!r} is invalid: " + "; ".join(problems) + ".")
        if self.features is not None:
            if len(self.features) != len(self.samples):
                raise DataError(f"Dataset {self.name!r}: its features hold {len(self.features)} rows for {len(self.samples)} samples.")
            if tuple(self.features.sample_ids) != tuple(s.id for s in self.samples):
                raise DataError(
                    f"Dataset {self.name!r}: the feature rows are not in sample order (their ids differ from the samples' ids)."
                )
        if self.class_split is not None:
            self.class_split.check_against(self.classes)

    def _sample_problems(self) -> list[str]:
        """What is wrong with the samples (duplicate ids, empty texts, bad splits, no or unknown
        labels), else the classes without a sample."""
        from ..errors import format_list

        index = set(self.classes)
        seen_ids: set[str] = set()
        dup, empty, bad_split, no_label, unknown = [], [], [], [], []
        for s in self.samples:
            if s.id in seen_ids:
                dup.append(s.id)
            seen_ids.add(s.id)
            if (s.text is None and self.features is None) or (s.text is not None and not s.text.strip()):
                empty.append(s.id)
            if s.split not in SPLITS:
                bad_split.append(s.id)
            if not s.labels:
                no_label.append(s.id)
            if any(lab not in index for lab in s.labels):
                unknown.append(s.id)
        found = [
            (dup, "duplicate sample ids: {}"),
            (empty, "empty texts in samples {}"),
            (bad_split, "split not 'train' or 'test' in samples {}"),
            (no_label, "no label in samples {}"),
            (unknown, "labels not in the class list in samples {}"),
        ]
        problems = [what.format(format_list(ids)) for ids, what in found if ids]
        if problems:
            return problems
        used = {lab for s in self.samples for lab in s.labels}
        unused = [c for c in self.classes if c not in used]
        if unused:
            return [f"classes with no sample: {format_list(unused)} (drop them from the class list, or add their samples)"]
        return []

    # ------------------------------------------------------------- accessors
    @property
    def is_multilabel(self) -> bool:
        return any(len(s.labels) > 1 for s in self.samples)

    def label_matrix(self, indices: np.ndarray | None = None) -> np.ndarray:
        """(n, n_classes) bool multi-hot matrix, rows in sample order (or ``indices`` order)."""
        index = {c: i for i, c in enumerate(self.classes)}
        rows = list(range(len(self.samples))) if indices is None else list(np.asarray(indices))
        out = np.zeros((len(rows), len(self.classes)), dtype=bool)
        for r, i in enumerate(rows):
            for lab in self.samples[int(i)].labels:
                out[r, index[lab]] = True
        return out

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        return np.array([i for i, s in enumerate(self.samples) if s.split == split], dtype=np.int64)

    @property
    def texts(self) -> list[str | None]:
        return [s.text for s in self.samples]

    @property
    def has_texts(self) -> bool:
        return all(s.text is not None for s in self.samples)

    @property
    def image_paths(self) -> list[Path | None]:
        return [s.image for s in self.samples]

    def content_digest(self) -> str:
        """SHA-256 over everything that changes extracted features or labels: ids, texts,
        labels, splits and the bytes of every image file (files hashed in order)."""
        h = hashlib.sha256()
        h.update(b"gcrdp-dataset-v1\0")
        if self.features is not None:
            h.update(b"features\0" + self.features.content_digest().encode())
        for s in self.samples:
            h.update(json.dumps([s.id, s.text, list(s.labels), s.split]).encode("utf-8"))
            if s.image is None:
                h.update(b"\0noimage")
            else:
                try:
                    with open(s.image, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            h.update(chunk)
                except OSError as exc:
                    raise DataError(f"Cannot read image {s.image} of sample {s.id!r}: {exc}") from None
            h.update(b"\0")
        return h.hexdigest()
