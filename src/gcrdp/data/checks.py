"""Data checks that run before any work: what a loader accepts but an experiment should not
silently absorb.

* :func:`small_classes` — classes with fewer items than the protocol needs: fewer than 2
  anywhere (one to query, one to find), and unseen classes with fewer than ``N + 1`` items
  (``N`` shots and at least one test pair) or fewer than ``N`` train-split items. ``gcrdp run``
  stops on them (:func:`check_class_sizes`) unless the user opts in (``--allow-small-classes``);
  ``gcrdp inspect`` lists them.
* :func:`class_split_problems` — a seen/unseen split the few-shot protocols cannot use: fewer than
  two seen classes (validation classes must differ from the training classes), no unseen class,
  or (a generated split) an unseen share far from the requested half. ``gcrdp run`` stops on it
  (:func:`check_class_split`) and names a ``split_seed`` that works.
* :func:`near_duplicate_labels` — class names that differ only by case, spacing or separators,
  or by one or two edits (a transposition counts as one): ``acitons`` beside ``actions``.
* :func:`duplicate_images` — image files with the same bytes (content hash).
* :func:`image_size_problems` — images too small to carry content (under 16 px on a side) or
  so large that decoding them is slow or refused (over 10,000 px on a side or 50 megapixels).

Each returns plain data; :mod:`gcrdp.data.inspect` words it for people.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..utils.io import file_sha256
from .types import Dataset

MIN_ITEMS = 2
TINY_PX = 16
HUGE_SIDE_PX = 10_000
HUGE_PIXELS = 50_000_000
MAX_IDS_SHOWN = 5
NEAR_DUPLICATE_MAX_CLASSES = 1500


@dataclass(frozen=True)
class SmallClass:
    """A class with fewer items than the protocol needs."""

    name: str
    n_items: int
    n_train: int
    n_test: int
    side: str  # "seen", "unseen" or "" (no class split)
    need: int
    reason: str
    sample_ids: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        ids = ", ".join(repr(i) for i in self.sample_ids[:MAX_IDS_SHOWN])
        more = f" and {len(self.sample_ids) - MAX_IDS_SHOWN} more" if len(self.sample_ids) > MAX_IDS_SHOWN else ""
        where = f" (sample{'s' if len(self.sample_ids) != 1 else ''} {ids}{more})" if ids else ""
        side = f"{self.side} " if self.side else ""
        return (
            f"{side}class {self.name!r} has {self.n_items} item{'s' if self.n_items != 1 else ''} "
            f"({self.n_train} train, {self.n_test} test){where}: {self.reason}"
        )

    def to_dict(self) -> dict:
        return {
            "class": self.name,
            "n_items": self.n_items,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "side": self.side,
            "need": self.need,
            "reason": self.reason,
            "samples": list(self.sample_ids),
        }


def _per_class(dataset: Dataset) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {c: {"train": [], "test": []} for c in dataset.classes}
    for s in dataset.samples:
        for lab in s.labels:
            out[lab][s.split].append(s.id)
    return out


def small_classes(dataset: Dataset, shots: int | Iterable[int] = 0, protocol: str = "fewshot") -> list[SmallClass]:
    """Classes of ``dataset`` with fewer items than ``protocol`` needs at the largest of
    ``shots`` (see the module docstring), smallest first."""
    max_shots = max([int(s) for s in ([shots] if isinstance(shots, int) else shots)] or [0])
    split = dataset.class_split
    unseen = set(split.unseen) if split is not None and protocol != "standard" else set()
    out = []
    for c, ids in _per_class(dataset).items():
        n_train, n_test = len(ids["train"]), len(ids["test"])
        n = n_train + n_test
        side = ("unseen" if c in unseen else "seen") if split is not None and protocol != "standard" else ""
        reason, need = "", MIN_ITEMS
        if n < MIN_ITEMS:
            reason = (
                f"fewer than {MIN_ITEMS} items: a class of one item is almost always a label "
                "typo, and it changes the experiment (the class list, the split)"
            )
        elif c in unseen and max_shots and (n < max_shots + 1 or n_train < max_shots):
            need = max_shots + 1
            reason = (
                f"an unseen class needs {max_shots + 1} items at {max_shots} shots: {max_shots} "
                "train-split pairs to draw the shots from and a test pair to retrieve"
            )
        elif c in unseen and n_test == 0:
            need = 1
            reason = "an unseen class needs a test pair: without one it has nothing to retrieve"
        if reason:
            out.append(SmallClass(c, n, n_train, n_test, side, need, reason, tuple(ids["train"] + ids["test"])))
    return sorted(out, key=lambda sc: (sc.n_items, sc.name))


def check_class_sizes(dataset: Dataset, shots: int | Iterable[int], protocol: str = "fewshot", allow: bool = False) -> list[SmallClass]:
    """Raise :class:`DataError` naming the classes (and their samples) that :func:`small_classes`
    finds, unless ``allow``; return them."""
    small = small_classes(dataset, shots, protocol)
    # multi-label data: a one-item tag is a real (rare) class, not a typo; only the protocol's needs stop
    blocking = [sc for sc in small if not (dataset.is_multilabel and sc.need == MIN_ITEMS)]
    if blocking and not allow:
        small = blocking
        lines = "\n  ".join(sc.describe() for sc in small[:10])
        more = f"\n  (and {len(small) - 10} more classes)" if len(small) > 10 else ""
        near = near_duplicate_labels(dataset.classes, _counts(dataset))
        hint = ""
        if near:
            hint = (
                "\nLabels that look like typos of others: "
                + "; ".join(f"{a!r} ({na}) ~ {b!r} ({nb})" for a, na, b, nb, _ in near[:5])
                + "."
            )
        raise DataError(
            f"Dataset {dataset.name!r}: {len(small)} class(es) have fewer items than the protocol needs:"
            f"\n  {lines}{more}{hint}\nFix the labels (or the class split), lower --shots, or pass "
            "--allow-small-classes (allow_small_classes=true) to run anyway."
        )
    return small


def class_split_problems(dataset: Dataset, protocol: str = "fewshot", *, validate: bool = True) -> list[str]:
    """Why ``dataset``'s class split cannot serve ``protocol`` (empty when it can, and always for
    ``standard``): :func:`gcrdp.data.splits.split_shortfalls`, with the share of unseen classes
    checked only for a generated split (``meta["class_split_generated"]``: the user's own file
    may be as lopsided as they like). ``validate``: the run validates on held-out seen classes."""
    split = dataset.class_split
    if protocol == "standard" or split is None:
        return []
    from .splits import split_shortfalls

    fraction = 0.5 if dataset.meta.get("class_split_generated") and not split.version.startswith("generated-") else None
    return split_shortfalls(len(split.seen), len(split.unseen), fraction, validate=validate, protocol=protocol)


def check_class_split(dataset: Dataset, protocol: str = "fewshot", *, validate: bool = True) -> None:
    """Raise :class:`DataError` when :func:`class_split_problems` finds any, before any work: the
    message names a ``split_seed`` whose generated split works (searched from the one used), or
    says that the collection has too few classes for the protocol."""
    problems = class_split_problems(dataset, protocol, validate=validate)
    if not problems:
        return
    from .splits import MIN_SEEN_CLASSES, MIN_UNSEEN_CLASSES, find_split_seed, min_classes

    split = dataset.class_split
    assert split is not None
    n = len(dataset.classes)
    shown = f"seen {_names(split.seen)}, unseen {_names(split.unseen)}"
    need = min_classes(protocol, validate=validate)
    if n < need:
        unseen_need = MIN_UNSEEN_CLASSES if protocol == "fewshot" else 1
        raise DataError(
            f"Dataset {dataset.name!r} has {n} class{'' if n == 1 else 'es'}, too few for the {protocol} protocol: it "
            f"needs at least {need} — {unseen_need} unseen to test on and {MIN_SEEN_CLASSES if validate else 1} seen, "
            "so that neither the test nor the validation ranks a single class (on one class every retrieval is right) "
            "and the validation classes are not the training classes. Use --protocol standard (every class seen, "
            "validated on held-out pairs), or add classes."
        )
    what = f"The class split of {dataset.name!r} ({shown}) cannot serve the {protocol} protocol: {'; '.join(problems)}."
    if dataset.meta.get("class_split_generated"):
        seed = int(dataset.meta.get("class_split_seed", 0))
        good = find_split_seed(dataset.classes, start=seed + 1, validate=validate, protocol=protocol)
        if good is None:
            good = find_split_seed(dataset.classes, start=0, validate=validate, protocol=protocol)
        if good is not None:
            from .splits import generate_class_split

            other = generate_class_split(dataset.classes, dataset=dataset.name, seed=good)
            raise DataError(
                f"{what} It was generated with split_seed {seed}; split_seed {good} draws {len(other.seen)} seen and "
                f"{len(other.unseen)} unseen classes: add --dataset-option split_seed={good} (or pass a class split "
                "file with --class-split)."
            )
    raise DataError(
        f"{what} Pass a class split file with at least {MIN_SEEN_CLASSES} seen classes and {MIN_UNSEEN_CLASSES} unseen (--class-split), "
        "or --val-fraction 0 to train without a validation."
    )


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"{len(names)} [{shown}{', …' if len(names) > limit else ''}]"


def _counts(dataset: Dataset) -> dict[str, int]:
    c: Counter[str] = Counter()
    for s in dataset.samples:
        c.update(s.labels)
    return dict(c)


def _normalized(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.casefold())


def edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Optimal-string-alignment distance (insertions, deletions, substitutions and adjacent
    transpositions, each 1) between ``a`` and ``b``; any value above ``limit`` is returned as
    ``limit + 1``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)


def _allowed_edits(a: str, b: str) -> int:
    """Edits that still look like a typo: none under 4 characters (``cat``/``car`` are two
    classes), one from 4, two from 12."""
    n = min(len(a), len(b))
    return 0 if n < 4 else (1 if n < 12 else 2)


def near_duplicate_labels(classes: Sequence[str], counts: dict[str, int] | None = None) -> list[tuple[str, int, str, int, str]]:
    """Pairs of class names that look like one label written two ways:
    ``(a, items of a, b, items of b, why)`` with the smaller class first; ``why`` is
    ``"case/spacing"`` or ``"1 edit"``/``"2 edits"``."""
    counts = counts or {}
    names = [str(c) for c in classes]
    if len(names) > NEAR_DUPLICATE_MAX_CLASSES:
        return []
    out = []
    norm = {c: _normalized(c) for c in names}
    by_len = sorted(names, key=lambda c: (len(norm[c]), c))
    for i, a in enumerate(by_len):
        for b in by_len[i + 1 :]:
            if len(norm[b]) - len(norm[a]) > 2:
                break
            why = ""
            if norm[a] == norm[b]:
                why = "case/spacing"
            else:
                limit = _allowed_edits(norm[a], norm[b])
                d = edit_distance(norm[a], norm[b], limit) if limit else 99
                if d <= limit:
                    why = f"{d} edit{'s' if d > 1 else ''}"
            if why:
                x, y = sorted((a, b), key=lambda c: (counts.get(c, 0), c))
                out.append((x, counts.get(x, 0), y, counts.get(y, 0), why))
    return sorted(out, key=lambda t: (t[1], t[0]))


def duplicate_images(paths: Sequence[Path | None]) -> list[list[int]]:
    """Groups (indices into ``paths``, two or more each) of existing files with identical bytes."""
    groups: dict[tuple[int, str], list[int]] = {}
    by_size: dict[int, list[int]] = {}
    for i, p in enumerate(paths):
        if p is not None and p.is_file():
            by_size.setdefault(p.stat().st_size, []).append(i)
    for size, idx in by_size.items():
        if len(idx) < 2:
            continue
        for i in idx:
            groups.setdefault((size, file_sha256(paths[i])), []).append(i)  # type: ignore[arg-type]
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def image_size_problems(paths: Sequence[Path | None]) -> list[tuple[int, str]]:
    """``(index, reason)`` for images under ``TINY_PX`` on a side or over ``HUGE_SIDE_PX`` /
    ``HUGE_PIXELS`` (read from the file header; undecodable files are the loaders' concern)."""
    from PIL import Image

    out = []
    for i, p in enumerate(paths):
        if p is None or not p.is_file():
            continue
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - reported by the loaders/encoders, not here
            continue
        if min(w, h) < TINY_PX:
            out.append((i, f"tiny ({w}×{h} px, under {TINY_PX} px on a side)"))
        elif max(w, h) > HUGE_SIDE_PX or w * h > HUGE_PIXELS:
            out.append((i, f"huge ({w}×{h} px): slow to decode, and resized to the encoder's input anyway"))
    return out
