"""Pascal Sentence (Rashtchian et al., 2010): dataset ``pascal-sentence``.

1,000 PASCAL VOC 2008 images, 20 classes × 50, about five sentences each. Get the images and
sentences from the UIUC "Pascal Sentence Dataset" page (``vision.cs.uiuc.edu/pascal-sentences``),
or the DSCMR feature files from the DSCMR repository (``penghu-cs/DSCMR``). Point ``root`` at a
folder with one of:

``source="raw"`` — images + sentences, encoded by the run's encoders:
    captions: ``captions/pascal_sentences.json`` or ``pascal_sentences.json``
    (``{"2008_000716.jpg": {"category": "aeroplane", "captions": [...]}, ...}``), or the
    original folders ``sentence/<category>/<image stem>.txt`` (one sentence a line);
    images: ``images/`` (or ``images_dir``), any depth, found by file name stem.
    The text of a sample is its sentences joined by a space (``captions="first"``: the
    first one). There is no official split: per class, the images are ordered by
    ``sha256("<split_seed>\\0<file name>")`` and the first ``test_per_class`` (default 10, so
    800 train / 200 test) are test pairs.

``source="features"`` — a DSCMR-style folder (``root/dscmr`` or ``root`` itself; layout in
    :mod:`gcrdp.data.formats.dscmr`): ``train_img.mat``, ``train_txt.mat``, ``train_img_lab.mat``,
    ``test_*`` (VGG19 fc7 4096-d images, 300-d sentence-CNN texts, labels 0..19). Label id i is
    the i-th class of :data:`VOC_CLASSES` (the alphabetical PASCAL VOC order the DSCMR files
    use; ``class_names=`` overrides it). ``splits=["test"]`` loads a folder with only the test
    files (for ``gcrdp inspect``; training needs ``train``).

``source="auto"`` (default): ``features`` when a DSCMR folder is found, else ``raw``.
The seen/unseen split is the shipped ``pascal-sentence`` split (10/10).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError
from ..problems import Problem, Problems
from ..registry import load_dataset, register_reader
from ..types import Dataset, Sample
from .build import RawDataset, SeededSplit, index_images, read_utf8
from .dscmr import read_dscmr_folder

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
SOURCES = ("auto", "raw", "features")
CAPTION_FILES = ("captions/pascal_sentences.json", "pascal_sentences.json")


def _dscmr_dir(root: Path) -> Path | None:
    for d in (root / "dscmr", root):
        if any((d / f"{s}_img_lab.mat").is_file() or (d / f"{s}_img.mat").is_file() for s in ("train", "test")):
            return d
    return None


def _read_captions(root: Path, captions_file: Path | None, problems: Problems) -> dict[str, tuple[str, list[str], str]]:
    """``{image file name: (category, sentences, where)}``."""
    path = captions_file
    if path is None:
        path = next((root / c for c in CAPTION_FILES if (root / c).is_file()), None)
    if path is not None:
        if not path.is_file():
            raise DataError(f"Pascal Sentence captions file not found: {path}")
        raw, why = read_utf8(path)
        if raw is None:
            raise DataError(f"Pascal Sentence: {why}")
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"Pascal Sentence captions {path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise DataError(f"Pascal Sentence captions {path}: expected an object keyed by image file name.")
        out = {}
        for name, entry in doc.items():
            where = f"{path.name} entry {name!r}"
            if not isinstance(entry, dict) or not isinstance(entry.get("category"), str):
                problems.add(where, "expected {'category': str, 'captions': [str, ...]}", name)
                continue
            caps = entry.get("captions")
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                problems.add(where, "'captions' must be a list of strings", name)
                continue
            out[name] = (entry["category"], caps, where)
        return out
    sent = root / "sentence"
    if not sent.is_dir():
        raise DataError(
            f"Pascal Sentence source 'raw' needs the sentences: none of "
            f"{', '.join(CAPTION_FILES)} nor a sentence/<category>/ folder is under {root}."
        )
    out = {}
    for cat_dir in sorted(p for p in sent.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(cat_dir.glob("*.txt")):
            text, why = read_utf8(f)
            if text is None:
                assert why is not None  # read_utf8 gives a reason whenever it gives no text
                problems.add(str(f), why, f.stem + ".jpg")
                continue
            out[f.stem + ".jpg"] = (cat_dir.name, [ln.strip() for ln in text.splitlines() if ln.strip()], str(f))
    return out


@register_reader("pascal-sentence")
def read_pascal_sentence(
    root: str | Path,
    *,
    source: str = "auto",
    captions_file: str | Path | None = None,
    images_dir: str | Path | None = None,
    captions: str = "join",
    test_per_class: int = 10,
    class_names: Sequence[str] | str | None = None,
    splits: Sequence[str] = ("train", "test"),
    resplit: float | None = None,
) -> RawDataset:
    """Read Pascal Sentence from ``root`` (layouts in the module docstring).

    Args:
        root: the dataset folder.
        source: ``"auto"``, ``"raw"`` or ``"features"``.
        captions_file, images_dir: override where the sentences and images are (raw).
        captions: ``"join"`` (all sentences, space-separated) or ``"first"`` (raw).
        test_per_class: test pairs per class of the seeded split (raw).
        class_names: names of label ids 0.. (features; default :data:`VOC_CLASSES`).
        splits: the splits a DSCMR folder must have (features).
        resplit: (features) pool the loaded pairs and re-split them per class with this test
            share — e.g. ``splits=["test"], resplit=0.4`` to train and test on a folder that
            has only its 100 test pairs (not comparable with the official split).

    ``load_dataset`` adds ``class_split``, ``split_seed`` and ``skip_bad``, as for every dataset.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Pascal Sentence folder not found: {root}")
    if source not in SOURCES:
        raise ConfigError(f"Pascal Sentence source must be one of {', '.join(SOURCES)}, got {source!r}.")
    dscmr = _dscmr_dir(root)
    if source == "auto":
        source = "features" if dscmr is not None else "raw"
    if source == "features":
        if dscmr is None:
            raise DataError(
                f"Pascal Sentence source 'features' needs a DSCMR folder ({root}/dscmr or "
                f"{root} with train_img.mat, train_txt.mat, train_img_lab.mat, test_*.mat)."
            )
        raw = read_dscmr_folder(
            dscmr,
            name="pascal-sentence",
            class_names=list(VOC_CLASSES) if class_names is None else class_names,
            splits=splits,
            resplit=resplit,
        )
        raw.shipped_split = "pascal-sentence"
        raw.meta = {"dataset_format": "pascal-sentence dscmr", **raw.meta}
        return raw
    return _read_raw(root, captions_file, images_dir, captions, test_per_class)


def _read_raw(
    root: Path, captions_file: str | Path | None, images_dir: str | Path | None, captions: str, test_per_class: int
) -> RawDataset:
    """Source ``raw``: the sentences and images; the test pairs are drawn per class with
    ``split_seed``."""
    if captions not in ("join", "first"):
        raise ConfigError(f"captions must be 'join' or 'first', got {captions!r}.")
    if isinstance(test_per_class, bool) or not isinstance(test_per_class, int) or test_per_class < 1:
        raise ConfigError(f"test_per_class must be a positive integer, got {test_per_class!r}.")
    problems = Problems(f"Pascal Sentence ({root})")
    entries = _read_captions(root, Path(captions_file).expanduser() if captions_file else None, problems)
    if not entries:
        raise DataError(f"Pascal Sentence ({root}): no captioned images found.")
    images_dir = Path(images_dir).expanduser() if images_dir is not None else root / "images"
    by_class: dict[str, list[str]] = {}
    for name, (cat, _, _) in entries.items():
        by_class.setdefault(cat, []).append(name)
    for cat, names in by_class.items():
        if len(names) <= test_per_class:  # one line per class, not one per image
            problems.add_group(
                f"class {cat!r} has {len(names)} images, not more than test_per_class={test_per_class}",
                [Problem(entries[n][2], n, "its class is too small for the test split") for n in sorted(names)],
            )
    samples = _samples(entries, images_dir, captions, problems)
    meta = {
        "source": str(root.resolve()),
        "format": "raw",
        "captions": captions,
        "test_per_class": test_per_class,
        "test_split": "sha256 order per class, seed {seed}",
    }
    seeded = SeededSplit([(s.labels[0], s.id) for s in samples], test_per_class=test_per_class, notes=("test_split",))
    return RawDataset(
        "pascal-sentence", samples, sorted(by_class), problems, shipped_split="pascal-sentence", meta=meta, seeded_split=seeded
    )


def _samples(entries: dict[str, tuple[str, list[str], str]], images_dir: Path, captions: str, problems: Problems) -> list[Sample]:
    """One sample an entry, in name order; no sentence and a missing image are problems."""
    found = index_images(images_dir) if images_dir.is_dir() else {}
    samples, missing = [], []
    for name in sorted(entries):
        cat, caps, where = entries[name]
        caps = [c.strip() for c in caps if c.strip()]
        if not caps:
            problems.add(where, "no sentence", name)
        text = (" ".join(caps) if captions == "join" else caps[0]) if caps else None
        img = found.get(Path(name).stem)
        if img is None:
            missing.append(Problem(where, name, f"image {name!r} not found"))
        samples.append(Sample(id=name, text=text, labels=(cat,), split="train", image=img))
    where_images = images_dir if images_dir.is_dir() else f"{images_dir} (the folder does not exist)"
    problems.add_group(f"missing image files under {where_images}", missing)
    return samples


def load_pascal_sentence(root: str | Path, **options: Any) -> Dataset:
    """``load_dataset("pascal-sentence", root=root, **options)``: :func:`read_pascal_sentence`, finished."""
    return load_dataset("pascal-sentence", root=root, **options)
