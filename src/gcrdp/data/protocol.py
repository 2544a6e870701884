"""The evaluation protocols (SPEC §1): which samples train, validate and test a model.

:func:`make_split` turns a :class:`Dataset` into a :class:`ProtocolSplit` of index arrays.

**fewshot** (default; ``shots`` = N ∈ {0, 1, 3, 5, ...}, N = 0 is zero-shot)
    Seen/unseen classes come from the dataset's class split (or ``class_split=``).

    * *Unseen side*: a sample is on the unseen side when **any** of its labels is unseen
      (multi-label data); otherwise it is on the seen side. Unseen-side samples never enter
      training or validation except as drawn shots.
    * *Validation classes* (``val_by="class"``, default): held-out seen classes chosen by the
      seed. A seen-side sample with *any* label among them is on the validation side, so the
      validation classes are disjoint from the classes of the seen training pairs.

      - ``val_mode="mirror"`` (default) treats them **exactly as the test treats the unseen
        classes**: each validation class gives ``shots`` of its train-split pairs to training
        (drawn like the unseen shots, nested, kept apart for oversampling: ``val_fewshot``),
        and is evaluated on its remaining pairs. Only seen classes with more than ``shots``
        train-split pairs are eligible. Classes are taken in a seeded order until there are at
        least ``max(round(val_fraction * n_seen), val_min_classes)`` of them *and* at least
        ``val_min_pairs`` validation pairs, but never more than half of the seen classes (two
        of three), so that training keeps at least as many seen classes as validation holds
        out; fewer than two validation classes is an error (on one class every retrieval is
        right). The order
        depends on the seed only, so for one seed the classes are the same at every shot count
        as long as they stay eligible.
      - ``val_mode="zero-shot"`` (the first protocol, kept for comparison): all seen-side
        train-split pairs of ``n_val = max(1, round(val_fraction * n_seen))`` classes (at
        least 2 when there are 3 or more seen classes, always leaving one to train on) are
        validation pairs, and none of them trains: a zero-shot check whatever ``shots``.
      - ``val_mode="zero-shot-matched"``: the control that tells protocol from size — the
        validation classes and pairs of ``mirror`` exactly (the same seeded classes, evaluated
        on the same pairs), but the classes' ``shots`` pairs do not train either (they are left
        out): a zero-shot validation of the mirrored one's size.

      A seen class that an unseen-class shot also carries (multi-label data) trains, so it is
      never a validation class.
      With ``val_by="pair"``, validation is instead a per-class (stratified) ``val_fraction`` of
      the seen-side train pairs. With fewer than 3 seen classes a class-disjoint validation of
      two classes or more is impossible, and :func:`make_split` raises :class:`DataError` rather
      than validate on the training classes or on one class (``val_fraction=0``: no validation;
      or another class split).
    * *Training*: the other seen-side train-split pairs, plus ``shots`` train-split pairs
      drawn for each unseen class (``fewshot``, kept apart for oversampling).
    * *Test*: every test-split pair on the unseen side; queries = gallery.

**generalized**
    As fewshot, but the gallery is the whole test split (seen and unseen classes); the queries
    are the unseen-side test pairs.

**standard**
    Every class is seen (``shots`` must be 0). Validation = a stratified ``val_fraction`` of
    the train split (per class, by each sample's first label; at least one pair per class of 2
    or more pairs, never the whole class); training = the rest; test = the whole test split,
    queries = gallery.

**Randomness.** Only :class:`numpy.random.Generator` objects seeded from ``seed`` and a
stable hash of the class name (``SeedSequence([seed, tag, sha256(name)[:8]])``), never the
global RNG. The shots of unseen class ``c`` are the first ``shots`` items of a seeded
permutation of ``c``'s train-split pairs (sorted by dataset index), so the draw depends only
on the seed, the class and its pairs, not on ``shots`` or the other classes: for one seed the
1-shot draw ⊂ the 3-shot draw ⊂ the 5-shot draw (*nested shots*). With multi-label data a
pair drawn for one unseen class may carry another unseen label too, so a class can end up
with more than ``shots`` training pairs; single-label data has exactly ``shots`` per class.

All index arrays are sorted, unique, ``int64`` and read-only; they index ``dataset.samples``.
The test split is never used for training or validation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError, DataError
from .splits import split_shortfalls
from .types import ClassSplit, Dataset, split_label

PROTOCOLS = ("fewshot", "standard", "generalized")
VAL_BY = ("class", "pair")

# Tags that keep the independent random streams apart.
_TAG_SHOTS = 1
_TAG_VAL_CLASSES = 2
_TAG_VAL_PAIRS = 3
VAL_MODES = ("mirror", "zero-shot", "zero-shot-matched")


def _name_key(name: str) -> int:
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16)


def _rng(seed: int, tag: int, name: str | None = None) -> np.random.Generator:
    entropy = [int(seed), tag] + ([_name_key(name)] if name is not None else [])
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _index(values: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.unique(np.asarray(values, dtype=np.int64))
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ProtocolSplit:
    """Index arrays into ``dataset.samples`` for one protocol, shot count and seed.

    Attributes:
        protocol: ``"fewshot"``, ``"standard"`` or ``"generalized"``.
        shots: pairs drawn per unseen class (0 for zero-shot and for ``standard``).
        seed: the seed of every random choice.
        train: (n_train,) int64 — training pairs (seen training classes + the shots).
        val: (n_val,) int64 — validation pairs (train split only).
        test_query: (n_query,) int64 — test queries (both directions: I2T and T2I).
        test_gallery: (n_gallery,) int64 — test gallery; ⊇ ``test_query``.
        fewshot: (n_shots,) int64 — the drawn unseen-class pairs, a subset of ``train``.
        val_fewshot: (n,) int64 — the pairs drawn from the validation classes (``val_mode=
            "mirror"``), a subset of ``train``, oversampled like ``fewshot``; empty otherwise.
        train_classes: classes carried by the training pairs, in ``dataset.classes`` order.
        val_classes: classes of the validation pairs (fewshot: the held-out seen classes).
        test_classes: the query classes (unseen classes; all classes for ``standard``).
        seen_classes, unseen_classes: the class split used (``standard``: all seen).
        dataset: the dataset's name; class_split_version: the split's version (or None).
        val_fraction, val_by, val_mode, val_min_classes, val_min_pairs: the validation
            settings used (:meth:`split_options` gives them back as ``make_split`` keywords).
    """

    protocol: str
    shots: int
    seed: int
    train: np.ndarray
    val: np.ndarray
    test_query: np.ndarray
    test_gallery: np.ndarray
    fewshot: np.ndarray
    train_classes: tuple[str, ...]
    val_classes: tuple[str, ...]
    test_classes: tuple[str, ...]
    seen_classes: tuple[str, ...] = ()
    unseen_classes: tuple[str, ...] = ()
    dataset: str = ""
    class_split_version: str | None = None
    val_fraction: float = 0.2
    val_by: str = "class"
    val_fewshot: np.ndarray = field(default_factory=lambda: _index([]))
    val_mode: str = "mirror"
    val_min_classes: int = 0
    val_min_pairs: int = 0

    def digest(self) -> str:
        """SHA-256 of the index arrays (short, for provenance and cache keys)."""
        h = hashlib.sha256()
        for name in ("train", "val", "test_query", "test_gallery", "fewshot"):
            arr = np.ascontiguousarray(getattr(self, name), dtype="<i8")
            h.update(name.encode() + b"\0" + arr.tobytes())
        if self.val_fewshot.size:  # (absent from the digests of splits without it)
            h.update(b"val_fewshot\0" + np.ascontiguousarray(self.val_fewshot, dtype="<i8").tobytes())
        return h.hexdigest()[:16]

    @property
    def oversampled(self) -> np.ndarray:
        """The training pairs drawn as shots (unseen and validation classes): sorted indices."""
        return _index(np.concatenate([self.fewshot, self.val_fewshot]))

    def split_options(self) -> dict:
        """The :func:`make_split` keywords that re-create this split from the same dataset."""
        return {
            "protocol": self.protocol,
            "shots": self.shots,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "val_by": self.val_by,
            "val_mode": self.val_mode,
            "val_min_classes": self.val_min_classes,
            "val_min_pairs": self.val_min_pairs,
        }

    def summary(self) -> dict:
        """JSON-ready description: settings, sizes, class lists and the index digest."""
        return {
            "protocol": self.protocol,
            "dataset": self.dataset,
            "class_split_version": self.class_split_version,
            "shots": self.shots,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "val_by": self.val_by,
            "val_mode": self.val_mode,
            "val_min_classes": self.val_min_classes,
            "val_min_pairs": self.val_min_pairs,
            "n_train": int(self.train.size),
            "n_val_fewshot": int(self.val_fewshot.size),
            "n_val": int(self.val.size),
            "n_test_query": int(self.test_query.size),
            "n_test_gallery": int(self.test_gallery.size),
            "n_fewshot": int(self.fewshot.size),
            "n_train_classes": len(self.train_classes),
            "n_val_classes": len(self.val_classes),
            "n_test_classes": len(self.test_classes),
            "train_classes": list(self.train_classes),
            "val_classes": list(self.val_classes),
            "test_classes": list(self.test_classes),
            "seen_classes": list(self.seen_classes),
            "unseen_classes": list(self.unseen_classes),
            "digest": self.digest(),
        }

    def verify(self, dataset: Dataset) -> None:
        """Raise :class:`DataError` if an invariant of the protocol does not hold on ``dataset``:
        train/val in the train split and disjoint, test in the test split, query ⊆ gallery,
        shots ⊆ train, and (fewshot/generalized) no unseen-side pair in train except the shots
        and none in val."""
        n = len(dataset)
        for name in ("train", "val", "test_query", "test_gallery", "fewshot"):
            arr = getattr(self, name)
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                return self._fail([f"{name} has indices outside [0, {n})"])
        self._fail(self._index_problems(dataset) + self._class_problems(dataset))

    def _index_problems(self, dataset: Dataset) -> list[str]:
        """The broken invariants of the index arrays: splits, overlaps, inclusions."""
        split = np.array([s.split for s in dataset.samples])
        checks = [
            (np.any(split[self.train] != "train") or np.any(split[self.val] != "train"), "train/val hold test-split pairs"),
            (np.any(split[self.test_gallery] != "test"), "the test gallery holds train-split pairs"),
            (np.intersect1d(self.train, self.val).size, "train and val overlap"),
            (np.setdiff1d(self.test_query, self.test_gallery).size, "some test queries are not in the gallery"),
            (np.setdiff1d(self.fewshot, self.train).size or np.setdiff1d(self.val_fewshot, self.train).size, "some shots are not in train"),
            (np.intersect1d(self.val_fewshot, self.fewshot).size, "validation shots overlap the unseen-class shots"),
        ]
        return [problem for failed, problem in checks if failed]

    def _class_problems(self, dataset: Dataset) -> list[str]:
        """The broken invariants of the classes: validation classes beyond their shots in train,
        unseen-side pairs in train beyond the shots, in val, or seen ones among the queries."""
        problems = []
        if self.val_by == "class" and self.val_classes:
            held = set(self.val_classes)
            val_side = np.array([any(lab in held for lab in s.labels) for s in dataset.samples])
            if np.any(val_side[np.setdiff1d(self.train, self.val_fewshot)]):
                problems.append("validation-class pairs in train beyond their shots")
        if self.protocol != "standard":
            unseen = set(self.unseen_classes)
            side = np.array([any(lab in unseen for lab in s.labels) for s in dataset.samples])
            checks = [
                (np.any(side[np.setdiff1d(self.train, self.fewshot)]), "unseen-class pairs in train beyond the shots"),
                (np.any(side[self.val]), "unseen-class pairs in val"),
                (np.any(~side[self.test_query]), "seen-class pairs among the test queries"),
            ]
            problems += [problem for failed, problem in checks if failed]
        return problems

    def _fail(self, problems: list[str]) -> None:
        if problems:
            raise DataError(
                f"Protocol split ({self.protocol}, shots={self.shots}, seed={self.seed}) is "
                "inconsistent with the dataset: " + "; ".join(problems) + "."
            )


def _check_int(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_protocol(protocol: str) -> str:
    key = str(protocol).lower().replace("-", "").replace("_", "")
    if key not in PROTOCOLS:
        raise ConfigError(
            f"Unknown protocol {protocol!r}. Known protocols: {', '.join(PROTOCOLS)} "
            "(fewshot: train on seen classes + N shots per unseen class, test on unseen; "
            "generalized: same, gallery also holds the seen classes' test pairs; standard: "
            "all classes seen)."
        )
    return key


def _check_fraction(val_fraction: float) -> float:
    try:
        value = float(val_fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}.") from None
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {value!r}.")
    return value


def _check_val_by(val_by: str) -> str:
    if val_by not in VAL_BY:
        raise ConfigError(f"Unknown val_by {val_by!r}. Known: {', '.join(VAL_BY)}.")
    return val_by


def _check_val_mode(val_mode: str) -> str:
    if val_mode not in VAL_MODES:
        raise ConfigError(
            f"Unknown val_mode {val_mode!r}. Known: {', '.join(VAL_MODES)} (mirror: the "
            "validation classes get the run's shots in training, like the unseen "
            "classes; zero-shot: they get none; zero-shot-matched: mirror's validation classes and pairs, "
            "their shots left out of training)."
        )
    return val_mode


@dataclass(frozen=True)
class SplitOptions:
    """The settings of :func:`make_split` (its keywords, same defaults); :meth:`checked` gives
    them validated, ``protocol`` normalised to one of :data:`PROTOCOLS`."""

    protocol: str = "fewshot"
    shots: int = 0
    seed: int = 0
    val_fraction: float = 0.2
    val_by: str = "class"
    val_mode: str = "mirror"
    val_min_classes: int = 10
    val_min_pairs: int = 200

    def checked(self) -> SplitOptions:
        """The same options, checked in field order; :class:`ConfigError` on the first bad one."""
        return SplitOptions(
            protocol=_check_protocol(self.protocol),
            shots=_check_int("shots", self.shots),
            seed=_check_int("seed", self.seed),
            val_fraction=_check_fraction(self.val_fraction),
            val_by=_check_val_by(self.val_by),
            val_mode=_check_val_mode(self.val_mode),
            val_min_classes=_check_int("val_min_classes", self.val_min_classes),
            val_min_pairs=_check_int("val_min_pairs", self.val_min_pairs),
        )


class _Validation(NamedTuple):
    """The seen side's train-split pairs, divided: what trains, what validates."""

    train_seen: np.ndarray  # seen-side pairs that train (not counting the validation shots)
    val: np.ndarray  # validation pairs
    val_fewshot: np.ndarray  # the validation classes' shots (mirror), they train too
    classes: tuple[str, ...]  # the validation classes


def _stratified_holdout(
    candidates: np.ndarray,
    primary: list[str],
    class_order: list[str],
    fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``candidates`` into (kept, held out) per primary class: ``round(fraction * n)``
    held out, at least 1 when n >= 2 and fraction > 0, at most n - 1."""
    groups: dict[str, list[int]] = {}
    for i in candidates:
        groups.setdefault(primary[int(i)], []).append(int(i))
    held: list[int] = []
    for c in class_order:
        items = groups.get(c)
        if not items or fraction <= 0:
            continue
        n = len(items)
        k = int(round(fraction * n))
        k = min(max(k, 1 if n >= 2 else 0), n - 1)
        if k:
            perm = _rng(seed, _TAG_VAL_PAIRS, c).permutation(np.asarray(sorted(items)))
            held.extend(perm[:k].tolist())
    held_arr = _index(held)
    return _index(np.setdiff1d(candidates, held_arr)), held_arr


def _classes_of(dataset: Dataset, indices: np.ndarray) -> tuple[str, ...]:
    present = {lab for i in indices for lab in dataset.samples[int(i)].labels}
    return tuple(c for c in dataset.classes if c in present)


def _primary_labels(dataset: Dataset) -> list[str]:
    """Each sample's first label (the class of the stratified hold-outs)."""
    return [s.labels[0] for s in dataset.samples]


def _draw(seed: int, name: str, pool: list[int], shots: int) -> list[int]:
    """The ``shots`` pairs of class ``name``: the head of its seeded permutation of ``pool``
    (sorted), so the draws are nested over ``shots`` (module docstring, *Randomness*)."""
    if not shots:
        return []
    return _rng(seed, _TAG_SHOTS, name).permutation(np.asarray(pool, dtype=np.int64))[:shots].tolist()


def make_split(
    dataset: Dataset,
    protocol: str = "fewshot",
    shots: int = 0,
    seed: int = 0,
    val_fraction: float = 0.2,
    *,
    val_by: str = "class",
    val_mode: str = "mirror",
    val_min_classes: int = 10,
    val_min_pairs: int = 200,
    class_split: ClassSplit | None = None,
) -> ProtocolSplit:
    """Build the :class:`ProtocolSplit` of ``dataset`` (conventions in the module docstring).

    Args:
        dataset: the data; its ``class_split`` is used unless ``class_split`` is given.
        protocol: ``"fewshot"`` (default), ``"generalized"`` or ``"standard"``.
        shots: train pairs drawn per unseen class (N-shot; 0 = zero-shot). Must be 0 for
            ``standard``.
        seed: non-negative int; fixes the shot draw and the validation choice.
        val_fraction: in [0, 1); share of seen classes (``val_by="class"``) or of train pairs
            per class (``val_by="pair"``, ``standard``) held out for validation. 0 = no
            validation set.
        val_by: ``"class"`` (class-disjoint validation, default) or ``"pair"``.
        val_mode: ``"mirror"`` (validation classes get ``shots`` training pairs, like the
            unseen classes; default), ``"zero-shot"`` (they get none) or
            ``"zero-shot-matched"`` (mirror's classes and validation pairs, their shots left
            out). ``val_by="class"`` only.
        val_min_classes, val_min_pairs: ``"mirror"`` only — the fewest validation classes and
            validation pairs to aim for (capped at half of the seen classes).
        class_split: overrides ``dataset.class_split``.

    Raises:
        ConfigError: unknown protocol or ``val_by``, negative ``shots``/``seed``, a bad
            ``val_fraction``, shots with ``standard``, or no class split for fewshot/generalized.
        DataError: an unseen class has fewer train pairs than ``shots``, no unseen classes, or
            no test pairs.
    """
    options = SplitOptions(protocol, shots, seed, val_fraction, val_by, val_mode, val_min_classes, val_min_pairs).checked()
    train_split, test_split = _train_test(dataset)
    if options.protocol == "standard":
        return _standard_split(dataset, options, train_split, test_split)
    return _class_split_protocol(dataset, options, class_split, train_split, test_split)


def _train_test(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the train-split and of the test-split samples; an error without test pairs."""
    splits = np.array([s.split for s in dataset.samples])
    train_split = np.flatnonzero(splits == "train").astype(np.int64)
    test_split = np.flatnonzero(splits == "test").astype(np.int64)
    if test_split.size == 0:
        raise DataError(
            f"Dataset {dataset.name!r} has no test-split pairs, so there is nothing to evaluate on. Mark some samples split='test'."
        )
    return train_split, test_split


def _standard_split(dataset: Dataset, options: SplitOptions, train_split: np.ndarray, test_split: np.ndarray) -> ProtocolSplit:
    """The standard protocol: every class seen, a stratified validation, the whole test split."""
    if options.shots != 0:
        raise ConfigError(
            f"shots={options.shots} has no meaning in the standard protocol (every class is seen "
            "and trained on in full); use shots=0, or protocol='fewshot'."
        )
    train, val = _stratified_holdout(train_split, _primary_labels(dataset), dataset.classes, options.val_fraction, options.seed)
    test = _index(test_split)
    return ProtocolSplit(
        protocol="standard",
        shots=0,
        seed=options.seed,
        train=train,
        val=val,
        test_query=test,
        test_gallery=test,
        fewshot=_index([]),
        train_classes=_classes_of(dataset, train),
        val_classes=_classes_of(dataset, val),
        test_classes=tuple(dataset.classes),
        seen_classes=tuple(dataset.classes),
        unseen_classes=(),
        dataset=dataset.name,
        class_split_version=None,
        val_fraction=options.val_fraction,
        val_by="pair",
        val_mode=options.val_mode,
    )


def _class_split_protocol(
    dataset: Dataset, options: SplitOptions, class_split: ClassSplit | None, train_split: np.ndarray, test_split: np.ndarray
) -> ProtocolSplit:
    """The fewshot and generalized protocols: seen classes train and validate, the unseen ones
    give their shots and are tested on."""
    cs = _resolve_class_split(dataset, class_split, options.protocol)
    unseen_set = set(cs.unseen)
    seen = [c for c in dataset.classes if c not in unseen_set]
    unseen = [c for c in dataset.classes if c in unseen_set]
    if not unseen:
        raise DataError(
            f"Class split {cs.dataset!r} {split_label(cs.version)} has no unseen classes, so the {options.protocol} "
            "protocol has nothing to test on. Use a split with unseen classes or "
            "protocol='standard'."
        )
    unseen_side = np.array([any(lab in unseen_set for lab in s.labels) for s in dataset.samples])
    fewshot = _unseen_shots(dataset, cs, unseen, train_split, options)
    _check_class_validation(cs, len(seen), len(unseen), options)
    # Seen classes that the unseen shots carry (multi-label data) train, so they cannot validate.
    trained = {lab for i in fewshot for lab in dataset.samples[int(i)].labels if lab not in unseen_set}
    validation = _seen_validation(dataset, seen, train_split[~unseen_side[train_split]], trained, options)
    train = _index(np.concatenate([validation.train_seen, fewshot, validation.val_fewshot]))
    test_query = _unseen_test_pairs(dataset, unseen, test_split[unseen_side[test_split]])
    class_mode = options.val_by == "class"
    return ProtocolSplit(
        protocol=options.protocol,
        shots=options.shots,
        seed=options.seed,
        train=train,
        val=validation.val,
        test_query=test_query,
        test_gallery=test_query if options.protocol == "fewshot" else _index(test_split),
        fewshot=fewshot,
        train_classes=_classes_of(dataset, train),
        val_classes=validation.classes,
        test_classes=tuple(unseen),
        seen_classes=tuple(seen),
        unseen_classes=tuple(unseen),
        dataset=dataset.name,
        class_split_version=cs.version,
        val_fraction=options.val_fraction,
        val_by=options.val_by,
        val_fewshot=validation.val_fewshot,
        val_mode=options.val_mode if class_mode else "zero-shot",
        val_min_classes=options.val_min_classes,
        val_min_pairs=options.val_min_pairs,
    )


def _resolve_class_split(dataset: Dataset, class_split: ClassSplit | None, key: str) -> ClassSplit:
    """``class_split`` (checked against the dataset's classes) or the dataset's own."""
    cs = class_split if class_split is not None else dataset.class_split
    if cs is None:
        raise ConfigError(
            f"The {key} protocol needs a seen/unseen class split, and dataset {dataset.name!r} "
            "has none. Pass class_split= (e.g. gcrdp.data.load_class_split(path) or "
            "gcrdp.data.generate_class_split(dataset.classes, dataset=...)), or use "
            "protocol='standard'."
        )
    if class_split is not None:
        cs.check_against(dataset.classes)
    return cs


def _unseen_shots(dataset: Dataset, cs: ClassSplit, unseen: list[str], train_split: np.ndarray, options: SplitOptions) -> np.ndarray:
    """The ``shots`` train-split pairs drawn for each unseen class (nested draws, one
    independent stream per class); an error when a class has fewer."""
    by_class: dict[str, list[int]] = {c: [] for c in unseen}
    for i in train_split:
        for lab in dataset.samples[int(i)].labels:
            if lab in by_class:
                by_class[lab].append(int(i))
    _check_enough_shots(dataset, cs, by_class, options.shots)
    return _index([i for c in unseen for i in _draw(options.seed, c, sorted(by_class[c]), options.shots)])


def _check_enough_shots(dataset: Dataset, cs: ClassSplit, by_class: dict[str, list[int]], shots: int) -> None:
    short = {c: len(v) for c, v in by_class.items() if len(v) < shots}
    if not short:
        return
    listed = ", ".join(f"{c!r} has {n}" for c, n in sorted(short.items(), key=lambda t: t[1])[:10])
    more = f" (and {len(short) - 10} more classes)" if len(short) > 10 else ""
    max_shots = min(len(v) for v in by_class.values())
    raise DataError(
        f"shots={shots} needs at least {shots} train-split pairs in every unseen class, but "
        f"{len(short)} unseen class(es) have fewer: {listed}{more}. With this class split "
        f"(dataset {dataset.name!r}, {split_label(cs.version)}) at most shots={max_shots} is possible; "
        "lower shots or use a class split whose unseen classes have more train pairs."
    )


def _check_class_validation(cs: ClassSplit, n_seen: int, n_unseen: int, options: SplitOptions) -> None:
    """A class-disjoint validation needs 3 seen classes or more (never validate on the training
    classes); the seen side only — the runner's check_class_split also refuses a one-class test."""
    if options.val_by != "class" or options.val_fraction <= 0:
        return
    lacking = split_shortfalls(n_seen, n_unseen, protocol="generalized")
    if lacking:
        raise DataError(
            f"Class split {cs.dataset!r} {split_label(cs.version)} cannot serve the {options.protocol} protocol: {'; '.join(lacking)}. "
            "Use a class split with at least 3 seen classes (for a generated one, another split_seed), "
            "val_fraction=0 to train without a validation, or protocol='standard'."
        )


def _seen_validation(dataset: Dataset, seen: list[str], seen_train: np.ndarray, trained: set[str], options: SplitOptions) -> _Validation:
    """The seen-side train-split pairs ``seen_train`` divided by ``options.val_by`` and
    ``val_mode`` (module docstring); the classes in ``trained`` never validate."""
    if options.val_by == "pair":
        train_seen, val = _stratified_holdout(seen_train, _primary_labels(dataset), seen, options.val_fraction, options.seed)
        return _Validation(train_seen, val, _index([]), _classes_of(dataset, val))
    if options.val_mode == "zero-shot":
        validation = _zero_shot_validation(dataset.samples, seen, seen_train, trained, options)
    else:
        validation = _mirror_validation(dataset.samples, seen, seen_train, trained, options)
        if options.val_mode == "zero-shot-matched":  # the same validation, none of its classes trains
            validation = validation._replace(val_fewshot=_index([]))
    if options.val_fraction > 0 and len(validation.classes) < 2:
        raise DataError(
            f"Only {len(validation.classes)} validation class(es): of the {len(seen)} seen classes of {dataset.name!r}, too few have "
            f"more than {options.shots} train-split pair(s) left to validate on after their {options.shots} shot(s), and on fewer "
            "than 2 classes every retrieval is right (mAP 100 whatever the model). Lower the shots, or val_fraction=0 to train "
            "without a validation."
        )
    return validation


def _zero_shot_validation(samples, seen: list[str], seen_train: np.ndarray, trained: set[str], options: SplitOptions) -> _Validation:
    """``val_mode="zero-shot"``: every seen-side pair of the seeded validation classes validates
    and none of them trains."""
    n_val = 0
    if options.val_fraction > 0:
        n_val = max(1, int(round(options.val_fraction * len(seen))))
        if len(seen) >= 3:
            n_val = max(n_val, 2)
        n_val = min(n_val, len(seen) - 1)
    order = _rng(options.seed, _TAG_VAL_CLASSES).permutation(len(seen))
    val_set = set([seen[int(j)] for j in order if seen[int(j)] not in trained][:n_val])
    if not seen_train.size:
        return _Validation(_index([]), _index([]), _index([]), tuple(c for c in seen if c in val_set))
    in_val = np.array([any(lab in val_set for lab in samples[int(i)].labels) for i in seen_train], dtype=bool)
    return _Validation(_index(seen_train[~in_val]), _index(seen_train[in_val]), _index([]), tuple(c for c in seen if c in val_set))


def _mirror_validation(
    samples, seen: list[str], seen_train: np.ndarray, trained: set[str] | frozenset[str], options: SplitOptions
) -> _Validation:
    """Validation classes that mirror the test (module docstring, ``val_mode="mirror"``); the
    classes in ``trained`` (carried by the unseen shots) are never chosen."""
    labels_of = {int(i): samples[int(i)].labels for i in seen_train}
    members: dict[str, list[int]] = {c: [] for c in seen}
    for i, labs in labels_of.items():
        for lab in labs:
            if lab in members:
                members[lab].append(i)
    chosen, drawn = _mirror_classes(seen, members, trained, options)
    held = set(chosen)
    # Any pair carrying a validation class is on the validation side (multi-label data).
    side = {i for i, labs in labels_of.items() if any(lab in held for lab in labs)}
    return _Validation(
        train_seen=_index(sorted(set(labels_of) - side)),
        val=_index(sorted(side - drawn)),
        val_fewshot=_index(sorted(drawn & side)),
        classes=tuple(c for c in seen if c in held),
    )


def _mirror_target(n_seen: int, options: SplitOptions) -> tuple[int, int]:
    """(the fewest validation classes to aim for, the most allowed) of the mirrored validation."""
    target = 0
    if options.val_fraction > 0:
        target = max(int(round(options.val_fraction * n_seen)), options.val_min_classes, 2 if n_seen >= 3 else 1)
    cap = max(min(2, n_seen - 1), n_seen // 2)  # two validation classes at least, one class left to train
    return target, cap


def _mirror_classes(
    seen: list[str], members: dict[str, list[int]], trained: set[str] | frozenset[str], options: SplitOptions
) -> tuple[list[str], set[int]]:
    """The mirrored validation classes, taken in the seed's order until there are enough classes
    and pairs (or the cap), and their shots: (classes, the pairs drawn as their shots)."""
    target, cap = _mirror_target(len(seen), options)
    chosen: list[str] = []
    val_side: set[int] = set()
    drawn: set[int] = set()
    for j in _rng(options.seed, _TAG_VAL_CLASSES).permutation(len(seen)):
        if target == 0 or len(chosen) >= cap:
            break
        if len(chosen) >= target and len(val_side - drawn) >= options.val_min_pairs:
            break
        c = seen[int(j)]
        pool = sorted(members[c])
        if len(pool) <= options.shots or c in trained:  # nothing left to validate on, or it trains anyway
            continue
        chosen.append(c)
        val_side.update(pool)
        drawn.update(_draw(options.seed, c, pool, options.shots))  # as for the unseen classes
    return chosen, drawn


def _unseen_test_pairs(dataset: Dataset, unseen: list[str], test_query: np.ndarray) -> np.ndarray:
    """The test queries (the unseen side's test-split pairs); an error when there are none."""
    if test_query.size == 0:
        raise DataError(
            f"No test-split pairs of the unseen classes in dataset {dataset.name!r} (unseen: "
            f"{', '.join(map(repr, unseen[:5]))}{' ...' if len(unseen) > 5 else ''}), so there "
            "is nothing to evaluate on. Check the class split and the samples' splits."
        )
    return _index(test_query)


def split_from_summary(dataset: Dataset, info: dict) -> ProtocolSplit:
    """Re-create the split described by :meth:`ProtocolSplit.summary` (e.g. a checkpoint's).
    Summaries written before ``val_mode`` existed describe the zero-shot validation."""
    return make_split(
        dataset,
        protocol=info["protocol"],
        shots=info["shots"],
        seed=info["seed"],
        val_fraction=info["val_fraction"],
        val_by=info.get("val_by", "class"),
        val_mode=info.get("val_mode", "zero-shot"),
        val_min_classes=info.get("val_min_classes", 10),
        val_min_pairs=info.get("val_min_pairs", 200),
    )
