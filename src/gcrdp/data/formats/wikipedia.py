"""The Wikipedia cross-modal dataset (Rasiwasia et al., ACM MM 2010): dataset ``wikipedia``.

2,866 image–article pairs in 10 classes, 2,173 train / 693 test. Get it from the SVCL page of
UCSD ("Cross-modal multimedia retrieval"): ``wikipedia_dataset.zip`` (images, texts, lists)
and the published features. Point ``root`` at the folder that holds::

    trainset_txt_img_cat.list  testset_txt_img_cat.list   text_id<TAB>image_id<TAB>class (1..10)
    categories.list                                        line i = name of class i
    texts/<text_id>.xml                                    <document id= name= cat=><text>…</text>
    categories_originalids.list     (optional)             the 29 original categories of ``cat``
    images/**/<image_id>.jpg        (source "raw")         any depth, e.g. images/art/<id>.jpg
    features/wikiData*.mat          (source "features")    I_tr, I_te (128-d SIFT BoVW),
      or features/raw_features.mat                         T_tr, T_te (10-d LDA), opt. L_tr, L_te

``source``:
    ``"raw"`` — images and texts, encoded by the run's encoders;
    ``"features"`` — the published SIFT/LDA features (pooled-only: a set of one feature per
    sample; 128-d images, 10-d texts), rows in list-file order; the article texts are attached
    when ``texts/`` is there (for ``gcrdp inspect``); ``"auto"`` (default) — ``raw`` when an
    ``images`` folder exists, else ``features``.

Checks (each disagreement is a problem of that sample, see :mod:`gcrdp.data.problems`): the
class in the list files is in 1..n_classes; the ``.mat`` labels ``L_tr``/``L_te`` equal it; the
XML ``cat`` maps to it (original category whose first word is the class name, from
``categories_originalids.list``); the XML ``id`` equals the text id; the text is valid UTF-8
with a ``<text>`` body; the image file exists (raw). The articles are not well-formed XML (bare
``&``, HTML entities), so they are read with a tolerant parser and entities are unescaped.

Sample ids are the text ids; class names come from ``categories.list``; the seen/unseen split
is the shipped ``wikipedia`` split (5/5).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError
from ..features import FeatureSet, ModalityFeatures
from ..problems import Problem, Problems
from ..registry import load_dataset, register_reader
from ..types import Dataset, Sample
from .arrays import as_label_vector, pick, read_arrays
from .build import RawDataset, index_images, read_utf8

LIST_FILES = {"train": "trainset_txt_img_cat.list", "test": "testset_txt_img_cat.list"}
SOURCES = ("auto", "raw", "features")
FEATURE_FILES = (
    "features/wikiData_with_labels.mat",
    "features/wikiData.mat",
    "features/raw_features.mat",
    "wikiData_with_labels.mat",
    "wikiData.mat",
    "raw_features.mat",
)
_SPLIT_SUFFIX = {"train": "tr", "test": "te"}

_HEAD = re.compile(r"<document\b([^>]*)>", re.S)
_ATTR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_BODY = re.compile(r"<text>(.*?)</text>", re.S)


def read_article(path: Path) -> tuple[dict[str, str], str | None, str | None]:
    """``(attributes, text, problem)`` of one Wikipedia XML article."""
    raw, why = read_utf8(path)
    if raw is None:
        return {}, None, why
    head = _HEAD.search(raw)
    attrs = {k: html.unescape(v) for k, v in _ATTR.findall(head.group(1))} if head else {}
    body = _BODY.search(raw)
    if head is None or body is None:
        return attrs, None, f"{path} has no <document …><text>…</text> structure"
    text = html.unescape(body.group(1)).strip()
    if not text:
        return attrs, None, f"{path} has an empty <text> body"
    return attrs, text, None


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"Wikipedia: {what} not found: {path}")
    raw, why = read_utf8(path)
    if raw is None:
        raise DataError(f"Wikipedia: {why}")
    return raw.splitlines()


def _original_map(root: Path, classes: list[str]) -> dict[str, int] | None:
    """Original category id (string) → class index (1-based), by the first word of the name."""
    path = root / "categories_originalids.list"
    if not path.is_file():
        return None
    out = {}
    for i, line in enumerate(_read_lines(path, "categories_originalids.list"), start=1):
        first = re.split(r"[\s,]+", line.strip().lower(), maxsplit=1)[0] if line.strip() else ""
        if first in classes:
            out[str(i)] = classes.index(first) + 1
    return out


#: One line of a list file: (split, text id, image id, class 1.. or 0 when unusable, where).
_Row = tuple[str, str, str, int, str]


@register_reader("wikipedia")
def read_wikipedia(
    root: str | Path,
    *,
    source: str = "auto",
    features_file: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> RawDataset:
    """Read Wikipedia from ``root`` (layout and checks in the module docstring).

    Args:
        root: the dataset folder.
        source: ``"auto"``, ``"raw"`` or ``"features"``.
        features_file: the ``.mat`` file (default: the first of :data:`FEATURE_FILES` under root).
        images_dir: where the images are (default ``root/images``).

    ``load_dataset`` adds ``class_split`` (default: the shipped ``wikipedia`` split),
    ``split_seed`` (seed of a generated split, only when the classes differ from the shipped)
    and ``skip_bad`` (leave bad samples out, listed in ``meta["skipped"]``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Wikipedia folder not found: {root}")
    if source not in SOURCES:
        raise ConfigError(f"Wikipedia source must be one of {', '.join(SOURCES)}, got {source!r}.")
    images_dir = Path(images_dir).expanduser() if images_dir is not None else root / "images"
    if source == "auto":
        source = "raw" if images_dir.is_dir() else "features"
    classes = [c.strip() for c in _read_lines(root / "categories.list", "categories.list") if c.strip()]
    if len(set(classes)) != len(classes):
        raise DataError(f"Wikipedia: {root / 'categories.list'} lists a class twice.")
    problems = Problems(f"Wikipedia ({root})")
    rows = _list_rows(root, len(classes), problems)
    meta: dict = {"source": str(root.resolve()), "format": source}
    feats = None
    if source == "features":
        fpath = _find_features(root, features_file)
        meta["features_file"] = str(fpath.resolve())
        feats = _features(fpath, rows, len(classes), problems)
    texts = _texts(root, rows, classes, problems, need=source == "raw")
    images = _images(images_dir, rows, problems) if source == "raw" else {}
    samples = []
    for split, tid, _, c, _ in rows:
        label = classes[c - 1] if 1 <= c <= len(classes) else classes[0]
        samples.append(Sample(id=tid, text=texts.get(tid), labels=(label,), split=split, image=images.get(tid)))
    meta["texts"] = "attached" if texts else "absent"
    return RawDataset("wikipedia", samples, classes, problems, features=feats, shipped_split="wikipedia", meta=meta)


def load_wikipedia(root: str | Path, **options: Any) -> Dataset:
    """``load_dataset("wikipedia", root=root, **options)``: :func:`read_wikipedia`, finished."""
    return load_dataset("wikipedia", root=root, **options)


def _list_rows(root: Path, n_classes: int, problems: Problems) -> list[_Row]:
    """The pairs of both list files, train then test; a bad line is kept (class 0) so that the
    feature rows stay aligned with the lines, and is a problem."""
    rows: list[_Row] = []
    for split, fname in LIST_FILES.items():
        for ln, line in enumerate(_read_lines(root / fname, fname), start=1):
            if line.strip():
                rows.append(_list_row(line, split, f"{fname} line {ln}", n_classes, problems))
    seen: dict[str, str] = {}
    for _, tid, _, _, where in rows:
        if tid in seen:
            problems.add(where, f"text id {tid!r} listed twice (first: {seen[tid]})", None)
        seen.setdefault(tid, where)
    return rows


def _list_row(line: str, split: str, where: str, n_classes: int, problems: Problems) -> _Row:
    parts = line.split("\t") if "\t" in line else line.split()
    if len(parts) != 3:
        problems.add(where, f"expected 'text_id<TAB>image_id<TAB>class', got {line[:80]!r}", parts[0].strip() if parts else None)
        return (split, parts[0].strip(), parts[1].strip() if len(parts) > 1 else "", 0, where)
    tid, iid, cls = (p.strip() for p in parts)
    try:
        c = int(cls)
    except ValueError:
        c = 0
    if not 1 <= c <= n_classes:
        problems.add(where, f"class {cls!r} is not in 1..{n_classes} (categories.list)", tid)
    return (split, tid, iid, c, where)


def _features(fpath: Path, rows: list[_Row], n_classes: int, problems: Problems) -> FeatureSet:
    """The published features of ``fpath``, rows in list-file order (train, then test)."""
    arrays = read_arrays(fpath)
    split_arrays = {split: _split_features(arrays, fpath, split, rows, n_classes, problems) for split in ("train", "test")}
    if (
        split_arrays["train"][0].shape[1] != split_arrays["test"][0].shape[1]
        or split_arrays["train"][1].shape[1] != split_arrays["test"][1].shape[1]
    ):
        raise DataError(f"Wikipedia: {fpath}: train and test feature dimensions differ.")
    img = np.concatenate([split_arrays["train"][0], split_arrays["test"][0]])
    txt = np.concatenate([split_arrays["train"][1], split_arrays["test"][1]])
    order = [r for s in ("train", "test") for r in rows if r[0] == s]
    if [r[1] for r in order] != [r[1] for r in rows]:  # rows are train then test already
        raise DataError("internal: Wikipedia rows out of order")  # pragma: no cover
    return FeatureSet(
        ModalityFeatures.from_array(img, name="Wikipedia image features"),
        ModalityFeatures.from_array(txt, name="Wikipedia text features"),
        tuple(r[1] for r in rows),
        {"source": str(fpath.resolve())},
    )


def _split_features(
    arrays: dict[str, np.ndarray], fpath: Path, split: str, rows: list[_Row], n_classes: int, problems: Problems
) -> tuple[np.ndarray, np.ndarray]:
    """(image, text) features of one split; labels ``L_tr``/``L_te``, when there, must equal the
    list file's classes."""
    suf = _SPLIT_SUFFIX[split]
    n_rows = sum(r[0] == split for r in rows)
    _, img = pick(arrays, [f"I_{suf}"], fpath, f"{split} image (I_{suf})")
    _, txt = pick(arrays, [f"T_{suf}"], fpath, f"{split} text (T_{suf})")
    lab = pick(arrays, [f"L_{suf}"], fpath, f"{split} label (L_{suf})", required=False)
    for key, arr in ((f"I_{suf}", img), (f"T_{suf}", txt)):
        if arr.ndim != 2 or arr.shape[0] != n_rows:
            raise DataError(
                f"Wikipedia: {fpath} {key} has shape {arr.shape} but {LIST_FILES[split]} "
                f"lists {n_rows} pairs; the rows must follow the list file."
            )
    if lab is not None:
        lv = as_label_vector(lab[1], fpath, lab[0])
        if lv.shape[0] != n_rows:
            raise DataError(f"Wikipedia: {fpath} {lab[0]} has {lv.shape[0]} labels but {LIST_FILES[split]} lists {n_rows} pairs.")
        for r, v in zip([r for r in rows if r[0] == split], lv):
            if int(v) != r[3] and 1 <= r[3] <= n_classes:  # a bad class is a problem already
                problems.add(r[4], f"class {r[3]} in the list file but {int(v)} in {fpath.name} {lab[0]}", r[1])
    return img, txt


def _texts(root: Path, rows: list[_Row], classes: list[str], problems: Problems, *, need: bool) -> dict[str, str | None]:
    """Text id → article text (``None`` when unreadable: a problem), when ``texts/`` is there."""
    texts_dir = root / "texts"
    if not texts_dir.is_dir():
        if need:
            raise DataError(f"Wikipedia source 'raw' needs the articles in {texts_dir} (texts/<text_id>.xml).")
        return {}
    orig = _original_map(root, classes)
    texts: dict[str, str | None] = {}
    for _, tid, _, c, where in rows:
        attrs, text, why = read_article(texts_dir / f"{tid}.xml")
        if why is not None:
            problems.add(where, why, tid)
        else:
            _check_article(attrs, tid, c, where, orig, len(classes), problems)
        texts[tid] = text
    return texts


def _check_article(
    attrs: dict[str, str], tid: str, c: int, where: str, orig: dict[str, int] | None, n_classes: int, problems: Problems
) -> None:
    """The XML's document id is the text id; its category maps to the list file's class."""
    if attrs.get("id") not in (None, tid):
        problems.add(where, f"{tid}.xml has document id {attrs.get('id')!r}", tid)
    if orig is not None and "cat" in attrs and orig.get(attrs["cat"]) != c and 1 <= c <= n_classes:  # a bad class is a problem already
        got = orig.get(attrs["cat"])
        problems.add(
            where,
            f"class {c} in the list file but the XML category {attrs['cat']!r} maps to {got if got is not None else 'no class'}",
            tid,
        )


def _images(images_dir: Path, rows: list[_Row], problems: Problems) -> dict[str, Path | None]:
    """Text id → image file (source ``raw``); the missing ones are problems."""
    if not images_dir.is_dir():
        raise DataError(f"Wikipedia source 'raw' needs the images in {images_dir} (any depth, <image_id>.jpg).")
    found = index_images(images_dir)
    images: dict[str, Path | None] = {}
    missing = []
    for _, tid, iid, _, where in rows:
        images[tid] = found.get(iid)
        if images[tid] is None:
            missing.append(Problem(where, tid, f"image {iid!r} not found"))
    problems.add_group(f"missing image files under {images_dir}", missing)
    return images


def _find_features(root: Path, features_file: str | Path | None) -> Path:
    if features_file is not None:
        p = Path(features_file).expanduser()
        p = p if p.is_absolute() or p.exists() else root / p
        if not p.is_file():
            raise DataError(f"Wikipedia features file not found: {p}")
        return p
    for rel in FEATURE_FILES:
        if (root / rel).is_file():
            return root / rel
    raise DataError(
        f"Wikipedia source 'features' needs a features file; none of "
        f"{', '.join(FEATURE_FILES)} is under {root}. Pass features_file=, or use "
        "source 'raw' with an images folder."
    )
