"""Your own data as folders of images and texts: dataset ``folder`` (option ``root``).

Each sample is an image file and a text file with the same stem, side by side in the folder
of its class. Two layouts are read:

*Class folders* — the train/test split is made by the loader::

    root/<class>/<name>.jpg     (any of .jpg .jpeg .png .bmp .gif .webp .tif .tiff, any case)
    root/<class>/<name>.txt     the text of that image (UTF-8; ``text_ext`` changes ``.txt``)

*Split folders* — the split comes from the folders::

    root/train/<class>/<name>.jpg + <name>.txt
    root/test/<class>/<name>.jpg  + <name>.txt

The split layout is used when ``root`` holds a ``train`` or a ``test`` folder; it needs both,
and no other (class) folder beside them. A class may appear in one split only.

**Sample ids** are ``<class>/<name>`` (class folders) or ``<split>/<class>/<name>`` (split
folders); **labels**: one per sample, the class folder's name; **classes**: the sorted class
folder names.

**Generated split** (class folders): for each class separately, its samples are ordered by
``sha256(f"{split_seed}\\0{class}\\0{name}")`` (hex digest) and the first
``k = floor(test_fraction * n + 0.5)`` go to ``test``, the rest to ``train`` — with
``k >= 1`` when the class has ``n >= 2`` samples, and ``k <= n - 1`` so that every class
keeps a training sample (a class of one sample is ``train``). Only the samples that are
kept count (``n`` is taken after ``skip_bad`` has left the bad ones out), so the split
depends only on the seed, the class name and the stems of its good samples — not on file
order, other classes or the platform. :func:`per_class_test_split` implements it (the
``clip-retrieval`` loader uses it too).

**Checks** (each one a problem of that sample, see :mod:`gcrdp.data.problems`; every problem
names the file): an image without a text file, a text file without an image, two images with
the same stem, a text that is not valid UTF-8, an empty text. An empty class folder (no
sample) is an error too; with ``skip_bad=True`` it is dropped and listed in
``meta["empty_class_folders"]``. A ``root`` without class folders is a :class:`DataError`
that shows the expected layout.

Hidden files and folders (name starting with ``.``) are ignored everywhere. Other files (a
``README``, ``.json`` sidecars, files directly under ``root`` or ``root/train``) and folders
nested inside a class folder are not read; ``meta["ignored"]`` lists them (first 20) and
``meta["n_ignored"]`` counts them.

The seen/unseen class split comes from ``class_split=`` or is generated from the class names
(``seed=split_seed``, see :mod:`gcrdp.data.splits`). The images are encoded by the run's
encoders (nothing is pre-extracted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError, format_list
from ..problems import Problems
from ..registry import load_dataset, register_reader
from ..types import SPLITS, Dataset, Sample
from .build import (  # noqa: F401  (n_test_of, per_class_test_split: re-exported)
    IMAGE_EXTENSIONS,
    RawDataset,
    SeededSplit,
    check_test_fraction,
    n_test_of,
    per_class_test_split,
    read_utf8,
)

MAX_IGNORED_SHOWN = 20

LAYOUT_HELP = (
    "Expected either class folders:\n"
    "    root/<class>/<name>.jpg  and  root/<class>/<name>.txt  (same stem)\n"
    "or split folders:\n"
    "    root/train/<class>/<name>.jpg + .txt   and   root/test/<class>/<name>.jpg + .txt"
)


# --------------------------------------------------------------------------- generated split
# --------------------------------------------------------------------------- folder walking
def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if _visible(p))
    except OSError as exc:
        raise DataError(f"Cannot list folder {folder}: {exc}") from None


def _norm_ext(text_ext: object) -> str:
    if not isinstance(text_ext, str) or not text_ext.strip(". ") or "/" in text_ext:
        raise ConfigError(f"text_ext must be a file extension such as '.txt', got {text_ext!r}.")
    ext = text_ext.strip()
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() in IMAGE_EXTENSIONS:
        raise ConfigError(f"text_ext {text_ext!r} is an image extension.")
    return ext.lower()


@register_reader("folder")
def read_folder(
    root: str | Path,
    *,
    test_fraction: float = 0.2,
    text_ext: str = ".txt",
    name: str | None = None,
) -> RawDataset:
    """Read image–text pairs from class folders (layout and checks in the module docstring).

    Args:
        root: the folder holding the class folders (or ``train``/``test`` folders of them).
        test_fraction: share of each class that goes to test when the split is generated
            (class-folder layout only; ignored with split folders).
        text_ext: extension of the text files (default ``.txt``; compared case-insensitively).
        name: the dataset's name in results (default: the name of ``root``).

    ``load_dataset`` adds ``split_seed`` (seed of the generated train/test split and of a
    generated class split), ``class_split`` (default generated from the class names) and
    ``skip_bad`` (leave bad samples and empty class folders out, listed in ``meta["skipped"]`` /
    ``meta["empty_class_folders"]``, instead of failing).

    Raises:
        DataError: ``root`` is missing or has no class folders.
        ConfigError: an invalid option value.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"Folder dataset: {root} is not a folder.\n{LAYOUT_HELP}")
    test_fraction = check_test_fraction(test_fraction)
    ext = _norm_ext(text_ext)
    ds_name = str(name) if name is not None else (root.resolve().name or "folder")
    problems = Problems(f"Folder dataset {root}")
    ignored: list[Path] = []
    class_dirs, layout = _class_dirs(root, ignored)
    samples: list[Sample] = []
    empty: list[str] = []
    for split, cdir in class_dirs:
        got = _class_samples(split, cdir, ext, problems, ignored)
        if not got:
            empty.append(str(cdir))
            problems.add_unless_skipping(str(cdir), f"empty class folder: no image/{ext} pairs in it")
        samples += got
    meta: dict = {
        "source": str(root.resolve()),
        "format": "folder",
        "layout": layout,
        "split_source": "folders",
        "split_generated": layout == "class folders",
        "n_ignored": len(ignored),
        "ignored": [str(p) for p in ignored[:MAX_IGNORED_SHOWN]],
    }
    if empty:
        meta["empty_class_folders"] = empty
    raw = RawDataset(ds_name, samples, sorted({s.labels[0] for s in samples}), problems, meta=meta)
    if not samples:
        raw.unusable = f"Folder dataset {root}: every class folder is empty.\n{LAYOUT_HELP}"
    elif layout == "class folders":
        bad = problems.bad_samples
        keys = [None if s.id in bad else (s.labels[0], s.id.split("/", 1)[1]) for s in samples]
        raw.seeded_split = SeededSplit(keys, test_fraction=test_fraction, notes=("split_source",))
        meta["split_source"] = (
            f"generated (seed {{seed}}, test_fraction {test_fraction}): per class, "
            "sha256-ordered stems, the first floor(f*n+0.5) (at least 1, at most n-1) to test"
        )
    return raw


def load_folder(root: str | Path, **options: Any) -> Dataset:
    """``load_dataset("folder", root=root, **options)``: :func:`read_folder`, finished."""
    return load_dataset("folder", root=root, **options)


def _class_dirs(root: Path, ignored: list[Path]) -> tuple[list[tuple[str | None, Path]], str]:
    """``([(split or None, class folder)], layout)``; files beside the folders go to ``ignored``."""
    top = _children(root)
    top_dirs = [p for p in top if p.is_dir()]
    ignored += [p for p in top if not p.is_dir()]
    split_dirs = [p for p in top_dirs if p.name in SPLITS]
    if not split_dirs:
        if not top_dirs:
            raise DataError(f"Folder dataset {root} has no class folders.\n{LAYOUT_HELP}")
        return [(None, p) for p in top_dirs], "class folders"
    have = {p.name for p in split_dirs}
    if have != set(SPLITS):
        missing = sorted(set(SPLITS) - have)
        raise DataError(
            f"Folder dataset {root}: it has a {'/'.join(sorted(have))} folder but no "
            f"{'/'.join(missing)} folder; the split layout needs both.\n{LAYOUT_HELP}"
        )
    others = [p.name for p in top_dirs if p.name not in SPLITS]
    if others:
        raise DataError(
            f"Folder dataset {root}: it has train/ and test/ folders and also the "
            f"folders {format_list(others)}; use either split folders or class "
            f"folders, not both.\n{LAYOUT_HELP}"
        )
    class_dirs: list[tuple[str | None, Path]] = []
    for split in SPLITS:
        sub = _children(root / split)
        class_dirs += [(split, p) for p in sub if p.is_dir()]
        ignored += [p for p in sub if not p.is_dir()]
    if not class_dirs:
        raise DataError(f"Folder dataset {root} has no class folders.\n{LAYOUT_HELP}")
    return class_dirs, "split folders"


def _class_samples(split: str | None, cdir: Path, ext: str, problems: Problems, ignored: list[Path]) -> list[Sample]:
    """The pairs of one class folder (with their problems); other files go to ``ignored``."""
    prefix = f"{split}/{cdir.name}" if split is not None else cdir.name
    images: dict[str, list[Path]] = {}
    texts: dict[str, Path] = {}
    for p in _children(cdir):
        suffix = p.suffix.lower()
        if p.is_dir():
            ignored.append(p)
        elif suffix in IMAGE_EXTENSIONS:
            images.setdefault(p.stem, []).append(p)
        elif suffix == ext:
            if p.stem in texts:  # x.txt and x.TXT
                problems.add(str(p), f"two text files for {p.stem!r}: {texts[p.stem].name} and {p.name}", f"{prefix}/{p.stem}")
            texts.setdefault(p.stem, p)
        else:
            ignored.append(p)
    return [
        _pair(f"{prefix}/{stem}", stem, cdir.name, split, images.get(stem, []), texts.get(stem), ext, problems)
        for stem in sorted(set(images) | set(texts))
    ]


def _pair(sid: str, stem: str, cls: str, split: str | None, imgs: list[Path], tpath: Path | None, ext: str, problems: Problems) -> Sample:
    """The sample of one stem: its image and text file (a missing or unreadable one is a problem)."""
    text: str | None = None
    if len(imgs) > 1:
        problems.add(str(imgs[1]), f"two images with the stem {stem!r}: {', '.join(p.name for p in imgs)}", sid)
    if not imgs:
        problems.add(str(tpath), f"text file without an image (no {stem}.<jpg|png|…> beside it)", sid)
    if tpath is None:
        problems.add(str(imgs[0]), f"image without a text file (no {stem}{ext} beside it)", sid)
    else:
        raw, why = read_utf8(tpath)
        if raw is None:
            problems.add(str(tpath), why or "unreadable", sid)
        elif not raw.strip():
            problems.add(str(tpath), "empty text file", sid)
        else:
            text = raw.strip()
    return Sample(id=sid, text=text, labels=(cls,), split=split or "train", image=imgs[0] if imgs else None)
