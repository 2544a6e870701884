"""NUS-WIDE (Chua et al., CIVR 2009): dataset ``nus-wide``.

269,648 Flickr images with their user tags and ground truth for 81 concepts, split by the
release into 161,789 train and 107,859 test images. The lists, labels, tags and low-level
features are on the NUS LMS page (``lms.comp.nus.edu.sg`` → NUS-WIDE: ``ImageList.zip``,
``Groundtruth.zip``, ``ConceptsList.zip``, ``NUS_WID_Tags.zip``, ``Low_Level_Features.rar``;
also ``NExTplusplus/NUS-WIDE``); the images are sent on request (the ``Flickr/<concept
folder>/<nnnn>_<photo id>.jpg`` tree) or downloaded from Flickr by photo id. Cross-modal
retrieval code shares pre-extracted features instead (DCMH, DSCMR, Hu et al.).

``subset`` (how the classes and pairs are chosen; recorded in ``meta["subset"]``,
``meta["concepts"]``, ``meta["concept_counts"]`` and ``meta["concept_selection"]``):
    ``"10"`` — single-label: the 10 concepts with the most images (over every listed image,
    train and test; ties by concept-list order), keeping only the images that carry exactly
    one of them; ``"tc10"`` / ``"tc21"`` (also ``"21"``) — multi-label NUS-WIDE-TC-10 /
    TC-21 (DCMH, DJSRH, UCCH): the 10 / 21 concepts with the most images, keeping every image
    with at least one of them (relevance = at least one shared label); ``"81"`` — multi-label
    over all 81; ``"multi"`` — multi-label over every concept of the source. ``concepts=`` (a
    list, or ``"sky,clouds,…"``) replaces the top-N choice; ``subset`` then only says single-
    or multi-label.

    Unset (``None``, the default), it follows the source: ``"10"`` for the raw release and the
    low-level features; for feature files, the published benchmark the files are — DCMH
    ``nus-wide-tcNN-*`` files read as ``"tcNN"`` (every row, multi-label, as published), other
    files over all their label columns. ``subset="10"`` on multi-label feature files keeps the
    single-label rows only and warns that this is not the published TC-N benchmark.

``source="raw"`` — the official release under ``root``::

    ImageList/Imagelist.txt            one image a line, e.g. ``actor\\0001_2124494179.jpg``
    ImageList/TrainImagelist.txt       the train images (same form); TestImagelist.txt: test
    ConceptsList/Concepts81.txt        the 81 concept names (or Concepts81.txt in root; else
                                       the names of the label files)
    Groundtruth/AllLabels/Labels_<concept>.txt            one 0/1 a line, rows = Imagelist
      or Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt / _Test.txt
                                       rows = TrainImagelist / TestImagelist (AllLabels wins
                                       when both exist: TrainTestLabels has a known bad value,
                                       ``Labels_lake_Train.txt`` line 78372 = -1130179)
    NUS_WID_Tags/All_Tags.txt          ``<photo id> tag tag …`` a line, rows = Imagelist
                                       (or All_Tags.txt in root, or ``tags_file=``)
    Flickr/ or images/                 the images, any depth (``images_dir=``)

    Paths are compared by their last two parts with ``\\`` read as ``/`` (so a
    ``C:\\ImageData\\Flickr\\actor\\x.jpg`` entry matches ``actor\\x.jpg``); lines may end in
    ``\\r\\n``. A sample's text is its tags joined by spaces. Its image is, in this order,
    ``images_dir/<folder>/<file>``; the file with that stem at any depth (another extension);
    the file named by its photo id (``<photo id>.jpg``, ``<n>_<photo id>_<secret>[_m].jpg``,
    ``<photo id>_<secret>[_m].jpg`` as Flickr downloaders save them; ``meta["images_found_by"]``
    counts each way). Tag lines start with the photo id (checked against the list); a
    ``tags_file=`` whose lines hold tags only is read as such, one whose ids match none of the
    list's is refused. An image whose tag line has its photo id but no tags has no text: it is
    left out and counted (``meta["n_without_tags"]``, the first ids in ``meta["without_tags"]``),
    as the cross-modal benchmarks leave out untagged images. Tag lines that are not UTF-8 are
    read as Latin-1 (counted in ``meta["tag_lines_not_utf8"]``). Sample ids are the list paths
    without extension (``actor/0001_2124494179``).

``source="lowlevel"`` — the release's own features, with the lists and labels above::

    Low_Level_Features/<name>.dat      one image a line, numbers separated by spaces, rows =
                                       Imagelist (``Normalized_CH.dat`` 64-d colour
                                       histogram, ``Normalized_CORR.dat`` 144-d correlogram,
                                       ``Normalized_EDH.dat`` 73-d edge histogram,
                                       ``Normalized_WT.dat`` 128-d wavelet texture,
                                       ``Normalized_CM55.dat`` 225-d colour moments,
                                       ``BoW_int.dat`` 500-d SIFT bag of words); or
                                       ``Train_<name>.dat`` + ``Test_<name>.dat`` (the BoW
                                       as ``BoW_Train_int.dat`` + ``BoW_Test_int.dat``), rows
                                       = TrainImagelist / TestImagelist
    NUS_WID_Tags/AllTags1k.txt         the 1000-d tag vectors, rows = Imagelist (or
                                       ``Train_Tags1k.dat`` + ``Test_Tags1k.dat``)

    The image features are the ``.dat`` files named by ``low_level=`` (``"BoW_int"``,
    ``["CH", "EDH"]`` …; default every one present), joined in the order above; the text
    features are the tag vectors. An all-zero tag vector is an image without tags: left out
    and counted, as for the raw source.

``source="features"`` — feature files (``features_file=``, or found under ``root`` /
``root/features``; the reader of :mod:`gcrdp.data.formats.featurearrays`):

    * DCMH files: ``nus-wide-tc10-xall-vgg.mat`` (``XAll``, image features),
      ``nus-wide-tc10-yall.mat`` (``YAll``, 1000-d tag BoW; often v7.3),
      ``nus-wide-tc10-lall.mat`` (``LAll``, (n, C) multi-hot), or their ``tc21`` versions
      (the files of the ``subset`` are taken; ``*iall*`` raw-image files are ignored; a
      ``-clean`` set beside the plain one must be chosen with ``features_file=``). They hold
      all pairs in one set: a split array (``split`` strings, ``is_test``/``is_train`` 0/1, or
      ``train_idx``/``test_idx``) or ``test_size=N`` (the last N rows are test, the
      DCMH/DSCMR convention: 2100) gives the split;
    * Hu et al. Doc2Vec HDF5 (``nus_wide_deep_doc2vec_data_42941.h5py``,
      ``nus_wide_deep_doc2vec-corr-ae.h5py``): ``{split}_imgs_deep``, ``{split}_text(s)``,
      ``{split}_imgs_labels`` (class ids), ``{split}_texts_labels``;
    * a DSCMR folder (``train_img.mat``, ``train_txt.mat``, ``train_img_lab.mat``, ``test_…``);
    * any ``.mat``/``.h5`` with split keys (``I_tr``/``I_te``/``T_tr``/``T_te``/``L_tr``/
      ``L_te``, ``train_img``/``test_img``, ``img_train``, …) — or name them with ``keys=``.

    Labels are class ids (``label_base``) or (n, C) multi-hot. Class names: ``class_names=``,
    a names array in the file, a concept list beside the files with one name per label column
    (``Concepts81.txt`` for 81 columns, any ``*concept*.txt``), else the 0-based column numbers
    as strings (DCMH's TC-10/TC-21 files carry no names: pass ``class_names=`` in the files'
    column order). ``text``/``image`` are ``None``.

``source="auto"`` (default): the source of the options given when only one source reads them
(``features_file``/``keys``/``test_size``/… → ``features``, ``low_level`` → ``lowlevel``,
``tags_file``/``images_dir`` → ``raw``); else ``raw`` when the images folder exists, else
``lowlevel`` when ``Low_Level_Features/`` holds ``.dat`` files and there are no feature files,
else ``features``. An option the chosen source does not read is an error that names its source.

Checks (per sample unless said; listed together, or left out with ``skip_bad=True``): a label
value that is not 0/1 (or not a class id), image and text labels that disagree, an all-zero
text feature row (feature files), an All_Tags line whose photo id is not that of the Imagelist
line, an image in neither split list, a missing image file (one grouped problem with the first
few and a count). A label, tag, feature or list file whose length disagrees with its image
list, a list entry that Imagelist.txt does not hold, a missing file: an error naming the
files. The seen/unseen split is generated from the class names (``split_seed``) unless a
``nus-wide`` split ships or ``class_split`` is given.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, format_list
from ..features import FeatureSet, ModalityFeatures
from ..problems import Problem, Problems
from ..registry import DATASETS
from ..types import ClassSplit, Dataset, Sample
from .build import IMAGE_EXTENSIONS, check_skip_bad, finish_dataset, index_images
from .featurearrays import (
    collect_arrays,
    decode_rows,
    describe_form,
    feature_set,
    find_feature_files,
    pairing_hint,
    read_class_names,
    read_parts,
)

SOURCES = ("auto", "raw", "lowlevel", "features")
#: subset key → (label mode, top-N concepts or None for all, what it is)
SUBSETS: dict[str, tuple[str, int | None, str]] = {
    "10": ("single", 10, "single-label top-10 concepts"),
    "tc10": ("multi", 10, "NUS-WIDE-TC-10: multi-label, top-10 concepts"),
    "21": ("multi", 21, "NUS-WIDE-TC-21: multi-label, top-21 concepts"),
    "tc21": ("multi", 21, "NUS-WIDE-TC-21: multi-label, top-21 concepts"),
    "81": ("multi", 81, "multi-label, all 81 concepts"),
    "multi": ("multi", None, "multi-label, every concept of the source"),
}
IMAGE_LISTS = {
    "all": ("ImageList/Imagelist.txt", "Imagelist.txt"),
    "train": ("ImageList/TrainImagelist.txt", "TrainImagelist.txt"),
    "test": ("ImageList/TestImagelist.txt", "TestImagelist.txt"),
}
CONCEPT_FILES = ("ConceptsList/Concepts81.txt", "Concepts81.txt", "Groundtruth/Concepts81.txt")
TAG_FILES = ("NUS_WID_Tags/All_Tags.txt", "All_Tags.txt", "Tags/All_Tags.txt")
IMAGE_DIRS = ("Flickr", "images")
ALL_LABELS = "Groundtruth/AllLabels"
TRAIN_TEST_LABELS = "Groundtruth/TrainTestLabels"
LOW_LEVEL_DIRS = ("Low_Level_Features", "LowLevelFeatures", "Low_Level_Features/Low_Level_Features")
#: the low-level features in the release's order (name → dimension), as ``low_level=`` names them
LOW_LEVEL = {"CH": 64, "CORR": 144, "EDH": 73, "WT": 128, "CM55": 225, "BoW_int": 500}
TAG_VECTORS = ("NUS_WID_Tags/AllTags1k.txt", "AllTags1k.txt", "Tags/AllTags1k.txt")
TAG_VECTORS_SPLIT = {
    "train": ("NUS_WID_Tags/Train_Tags1k.dat", "Train_Tags1k.dat", "Tags/Train_Tags1k.dat"),
    "test": ("NUS_WID_Tags/Test_Tags1k.dat", "Test_Tags1k.dat", "Tags/Test_Tags1k.dat"),
}
KNOWN_FILES = (
    "nus_wide_deep_doc2vec_data_42941.h5py",
    "nus_wide_deep_doc2vec-corr-ae.h5py",
    "nus_wide_deep_doc2vec_data.h5py",
    "nus-wide.mat",
    "nuswide.mat",
    "nus_wide.mat",
    "nus-wide.h5",
    "nuswide.h5",
    "nus-wide.npz",
)
#: one-file versions of the DCMH subsets with split keys (``img_train``, ``txt_val``, ``train_labs`` …)
TC_FILES = {"10": "nus-wide-tc10.mat", "21": "nus-wide-tc21.mat"}
_TC_FILE = re.compile(r"tc-?(\d+)", re.I)
# Flickr file names of downloaded images: <id>, <id>_<secret>[_<size>], <n>_<id>_<secret>[_<size>],
# <nnnn>_<id>: parts of digits and hex, an optional one-letter size suffix
_DOWNLOADED = re.compile(r"^[0-9a-f]+(?:_[0-9a-f]+)*(?:_[a-z])?$", re.I)


# =============================================================================== options
def _parse_subset(subset: object) -> tuple[str, int | None, str]:
    if subset is None:
        return "auto", None, "auto"
    key = str(subset).strip().lower().replace("-", "").replace("_", "") if not isinstance(subset, bool) else ""
    if key not in SUBSETS:
        raise ConfigError(
            f"NUS-WIDE subset must be one of {', '.join(map(repr, SUBSETS))} or unset ("
            + "; ".join(f"{k!r}: {v[2]}" for k, v in SUBSETS.items())
            + f"; unset: what the source is), got {subset!r}."
        )
    mode, top, _ = SUBSETS[key]
    return mode, top, key


def _parse_concepts(concepts: object) -> list[str] | None:
    if concepts is None:
        return None
    if isinstance(concepts, str):
        items = [c.strip() for c in concepts.split(",")]
    elif isinstance(concepts, Sequence) and all(isinstance(c, str) for c in concepts):
        items = [c.strip() for c in concepts]
    else:
        raise ConfigError(f"NUS-WIDE concepts must be a list of concept names or 'a,b,c', got {concepts!r}.")
    items = [c for c in items if c]
    if len(items) < 2:
        raise ConfigError(f"NUS-WIDE concepts needs at least two concepts, got {items}.")
    dup = sorted({c for c in items if items.count(c) > 1})
    if dup:
        raise ConfigError(f"NUS-WIDE concepts lists {format_list(dup)} twice.")
    return items


def _parse_low_level(low_level: object) -> list[str] | None:
    if low_level is None:
        return None
    items = [c.strip() for c in low_level.split(",")] if isinstance(low_level, str) else low_level
    if not isinstance(items, Sequence) or not items or not all(isinstance(c, str) and c for c in items):
        raise ConfigError(f"NUS-WIDE low_level must name low-level features ({', '.join(LOW_LEVEL)}), got {low_level!r}.")
    return list(items)


def _select(names: list[str], counts: np.ndarray, wanted: list[str] | None, top: int | None, over: str) -> tuple[list[int], str]:
    """Column indices of the chosen concepts (in ``names`` order unless given) and how."""
    if wanted is not None:
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise ConfigError(f"NUS-WIDE: unknown concept(s) {format_list(unknown)}; the concepts are {format_list(names, limit=81)}.")
        return [names.index(c) for c in wanted], "given (concepts=)"
    if top is None:
        return list(range(len(names))), f"all {len(names)} concepts"
    if top > len(names):
        raise DataError(
            f"NUS-WIDE: subset {top} needs {top} concepts but {over} has {len(names)}; "
            "use subset='multi' (all of them) or a smaller subset."
        )
    order = sorted(range(len(names)), key=lambda j: (-int(counts[j]), j))
    return sorted(order[:top]), f"the {top} concepts with the most images ({over})"


def _filter(pos: np.ndarray, uncertain: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, maybe)``: rows in the subset, and rows kept only as problems because a label
    value could not be read (they might be in the subset)."""
    n_pos = pos.sum(axis=1)
    if mode == "single":
        clean = (n_pos == 1) & (uncertain == 0)
        maybe = (uncertain > 0) & (n_pos <= 1) & (n_pos + uncertain >= 1)
    else:
        clean = (n_pos >= 1) & (uncertain == 0)
        maybe = uncertain > 0
    return clean | maybe, maybe


# =============================================================================== loader
@DATASETS.register("nus-wide")
def load_nuswide(
    root: str | Path,
    *,
    source: str = "auto",
    subset: str | int | None = None,
    concepts: Sequence[str] | str | None = None,
    features_file: str | Path | Sequence[str | Path] | None = None,
    keys: Mapping[str, str] | None = None,
    class_names: Sequence[str] | str | Path | None = None,
    test_size: int | None = None,
    label_base: int | str = "auto",
    valid_split: str = "train",
    tags_file: str | Path | None = None,
    images_dir: str | Path | None = None,
    low_level: Sequence[str] | str | None = None,
    class_split: str | Path | ClassSplit | None = None,
    split_seed: int = 0,
    skip_bad: bool = False,
) -> Dataset:
    """Load NUS-WIDE from ``root`` (sources, subsets, layouts and checks in the module doc).

    Args:
        root: the NUS-WIDE folder (raw release, low-level features and/or feature files).
        source: ``"auto"``, ``"raw"``, ``"lowlevel"`` or ``"features"``.
        subset: ``"10"`` (single-label), ``"tc10"``, ``"tc21"``/``"21"``, ``"81"`` or
            ``"multi"`` (multi-label); unset: what the source is (see the module doc).
        concepts: the concepts to use instead of the top-N (a list or ``"a,b,c"``).
        features_file: feature file, folder or list of files (features source).
        keys: array keys by role (``image``, ``text``, ``label``, ``split`` or
            ``train_image``, ``test_label``, …) when auto-detection does not fit.
        class_names: class names of feature labels (list, or a text file one a line).
        test_size: for one-set feature files without a split array: the last N rows are test.
        label_base: ``"auto"``, 0 or 1 — the id of the first class in feature files.
        valid_split: where a ``valid`` split of feature files goes (train/test/drop).
        tags_file: All_Tags.txt (raw; default under root).
        images_dir: the image folder (raw; default ``root/Flickr`` or ``root/images``).
        low_level: the low-level features to join (lowlevel; default all present).
        class_split: seen/unseen split (default: generated from the class names).
        split_seed: seed of a generated split.
        skip_bad: leave bad samples out (listed in ``meta["skipped"]``) instead of failing.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"NUS-WIDE folder not found: {root}")
    if source not in SOURCES:
        raise ConfigError(f"NUS-WIDE source must be one of {', '.join(SOURCES)}, got {source!r}.")
    check_skip_bad(skip_bad)
    mode, top, subset_key = _parse_subset(subset)
    wanted = _parse_concepts(concepts)
    wanted_low = _parse_low_level(low_level)
    if images_dir is not None:
        img_dir = Path(images_dir).expanduser()
    else:
        img_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])
    low_dirs = [root / d for d in LOW_LEVEL_DIRS if (root / d).is_dir()]
    low_dir = next((d for d in low_dirs if any(p.suffix.lower() == ".dat" for p in d.iterdir())), low_dirs[0] if low_dirs else None)
    given = {
        "raw": [k for k, v in (("tags_file", tags_file), ("images_dir", images_dir)) if v is not None],
        "lowlevel": ["low_level"] if low_level is not None else [],
        "features": [
            k
            for k, v, default in (
                ("features_file", features_file, None),
                ("keys", keys, None),
                ("class_names", class_names, None),
                ("test_size", test_size, None),
                ("label_base", label_base, "auto"),
                ("valid_split", valid_split, "train"),
            )
            if v != default
        ],
    }
    asked = [src for src, names in given.items() if names]
    auto = source == "auto"
    if source == "auto" and len(asked) == 1:
        source = asked[0]  # an option only one source reads says which
    elif source == "auto":
        if img_dir.is_dir():
            source = "raw"
        elif low_dir is not None and not _has_feature_files(root):
            source = "lowlevel"
        else:
            source = "features"
    unused = [name for src, names in given.items() if src != source for name in names]
    if unused:
        readers = "; ".join(f"{', '.join(names)}: source={src!r}" for src, names in given.items() if names and src != source)
        raise ConfigError(f"NUS-WIDE source {source!r} does not read {', '.join(unused)} ({readers}).")
    common: dict[str, Any] = dict(
        mode=mode, top=top, subset_key=subset_key, wanted=wanted, class_split=class_split, split_seed=split_seed, skip_bad=skip_bad
    )
    if source in ("raw", "lowlevel") and subset_key == "auto":
        common.update(mode="single", top=10, subset_key="10")
    if source == "raw":
        return _load_raw(root, img_dir, tags_file, **common)
    if source == "lowlevel":
        if low_dir is None:
            raise DataError(
                f"NUS-WIDE source 'lowlevel' needs the release's low-level features: none of "
                f"{', '.join(str(root / d) for d in LOW_LEVEL_DIRS[:2])} exists (unpack Low_Level_Features.rar there)."
            )
        return _load_lowlevel(root, low_dir, wanted_low, **common)
    try:
        return _load_features(root, features_file, keys, class_names, test_size, label_base, valid_split, **common)
    except DataError as exc:
        if not (auto and "no feature files under" in str(exc)):
            raise
        raise DataError(
            f"{exc} Nor is there an images folder ({img_dir}; images_dir= names another, for source='raw') or a "
            f"Low_Level_Features/ folder with .dat files (source='lowlevel')."
        ) from None


def _has_feature_files(root: Path) -> bool:
    try:
        find_feature_files(root, None, known=list(TC_FILES.values()) + list(KNOWN_FILES), dataset="NUS-WIDE")
    except DataError as exc:
        return "no feature files under" not in str(exc)
    return True


# =============================================================================== the release
def _find(root: Path, candidates: Sequence[str], what: str, source: str = "raw") -> Path:
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise DataError(f"NUS-WIDE source {source!r} needs {what}: none of {', '.join(str(root / c) for c in candidates)} exists.")


def _lines(path: Path, fallback: bool = False) -> tuple[list[str], int]:
    """Lines of a text file (``\\r\\n`` or ``\\n``; trailing empty lines dropped) and how many
    were read as Latin-1 because they are not UTF-8 (``fallback``; else such a file is an
    error)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"NUS-WIDE: cannot read {path}: {exc}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    n_latin1 = 0
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        if not fallback:
            raise DataError(f"NUS-WIDE: {path} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}).") from None
        lines = []
        for b in raw.split(b"\n"):
            try:
                lines.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(b.decode("latin-1"))
                n_latin1 += 1
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines, n_latin1


def _norm(entry: str) -> str:
    parts = [p for p in entry.strip().replace("\\", "/").split("/") if p and p != "."]
    return "/".join(parts[-2:])


def _image_list(path: Path) -> list[str]:
    lines, _ = _lines(path)
    out = []
    for ln, line in enumerate(lines, start=1):
        e = _norm(line)
        if not e:
            raise DataError(
                f"NUS-WIDE: {path} line {ln} is empty; every line must name one image "
                "(the label and tag files follow the rows of this list)."
            )
        out.append(e)
    return out


def _label_file(path: Path, expected: int, list_path: Path) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``(0/1 int8 column, [(row, bad value), …])`` of one ``Labels_*.txt``."""
    if not path.is_file():
        raise DataError(f"NUS-WIDE: label file not found: {path}")
    lines, _ = _lines(path)
    if len(lines) != expected:
        raise DataError(
            f"NUS-WIDE: {path} has {len(lines)} lines but {list_path} lists {expected} "
            f"images; line i of {path.name} must be image i of {list_path.name}."
        )
    vals = np.array([ln.strip() for ln in lines], dtype=object)
    one = vals == "1"
    bad = np.flatnonzero(~(one | (vals == "0")))
    return one.astype(np.int8), [(int(i), str(vals[i])) for i in bad]


def _concept_names(root: Path) -> tuple[list[str], str]:
    for rel in CONCEPT_FILES:
        p = root / rel
        if p.is_file():
            names = [ln.strip() for ln in _lines(p)[0] if ln.strip()]
            dup = sorted({c for c in names if names.count(c) > 1})
            if dup or not names:
                raise DataError(f"NUS-WIDE: {p} lists {format_list(dup)} twice." if dup else f"NUS-WIDE: {p} is empty.")
            return names, str(p)
    for rel, suffix in ((ALL_LABELS, ".txt"), (TRAIN_TEST_LABELS, "_Train.txt")):
        d = root / rel
        if d.is_dir():
            names = sorted(p.name[len("Labels_") : -len(suffix)] for p in d.glob(f"Labels_*{suffix}"))
            if names:
                return names, f"label file names in {d}"
    raise DataError(
        f"NUS-WIDE source 'raw' needs the concept list: none of "
        f"{', '.join(str(root / c) for c in CONCEPT_FILES)} exists (and no label files "
        f"in {root / ALL_LABELS} or {root / TRAIN_TEST_LABELS})."
    )


@dataclass
class _Release:
    """The lists and labels of the official release, with the subset chosen."""

    all_path: Path
    entries: list[str]
    split_of: list[str]
    lists: dict[str, tuple[Path, list[int]]]
    names_from: str
    labels_from: str
    counts: dict[str, int]
    chosen_names: list[str]
    how: str
    pos: np.ndarray
    keep: np.ndarray
    bad_vals: dict[tuple[int, int], str]
    chosen: list[int]

    def sample_id(self, r: int) -> str:
        e = self.entries[r]
        return e.rsplit(".", 1)[0] if "." in e.rsplit("/", 1)[-1] else e

    def where(self, r: int) -> str:
        return f"{self.all_path.name} line {r + 1}"

    def row_problems(self, r: int, problems: Problems) -> bool:
        """Add row ``r``'s problems (unreadable label values, in neither split list); whether any."""
        sid, where = self.sample_id(r), self.where(r)
        found = False
        for j in self.chosen:
            if (r, j) in self.bad_vals:
                problems.add(where, self.bad_vals[(r, j)], sid)
                found = True
        if not self.split_of[r]:
            problems.add(where, f"{self.entries[r]!r} is in neither {self.lists['train'][0].name} nor {self.lists['test'][0].name}", sid)
            found = True
        return found

    def labels(self, r: int) -> tuple[str, ...]:
        got = tuple(self.chosen_names[k] for k in np.flatnonzero(self.pos[r]))
        return got or (self.chosen_names[0],)


def _read_release(root: Path, *, mode: str, top: int | None, wanted: list[str] | None, source: str) -> _Release:
    all_path = _find(root, IMAGE_LISTS["all"], "the image list (ImageList/Imagelist.txt)", source)
    entries = _image_list(all_path)
    n = len(entries)
    index: dict[str, int] = {}
    for r, e in enumerate(entries):
        if e in index:
            raise DataError(f"NUS-WIDE: {all_path} lists {e!r} twice (lines {index[e] + 1} and {r + 1}).")
        index[e] = r
    split_of = [""] * n
    lists: dict[str, tuple[Path, list[int]]] = {}
    for split in ("train", "test"):
        lp = _find(root, IMAGE_LISTS[split], f"the {split} image list (ImageList/{split.title()}Imagelist.txt)", source)
        rows: list[int] = []
        unknown: list[str] = []
        for ln, e in enumerate(_image_list(lp), start=1):
            row = index.get(e)
            if row is None:
                unknown.append(f"line {ln} {e!r}")
                continue
            if split_of[row]:
                other = lp.name if split_of[row] == split else lists["train"][0].name
                raise DataError(f"NUS-WIDE: {e!r} is listed twice: in {other} and in {lp.name}.")
            split_of[row] = split
            rows.append(row)
        if unknown:
            raise DataError(f"NUS-WIDE: {lp} lists {len(unknown)} image(s) that {all_path.name} does not: {format_list(unknown)}.")
        lists[split] = (lp, rows)

    names, names_from = _concept_names(root)
    if wanted is not None:
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise ConfigError(f"NUS-WIDE: unknown concept(s) {format_list(unknown)}; {names_from} lists {format_list(names, limit=81)}.")
    read = wanted if wanted is not None else names
    lab = np.zeros((n, len(read)), dtype=np.int8)
    bad_vals: dict[tuple[int, int], str] = {}
    if (root / ALL_LABELS).is_dir():
        labels_from = ALL_LABELS
        for j, c in enumerate(read):
            p = root / ALL_LABELS / f"Labels_{c}.txt"
            col, bad = _label_file(p, n, all_path)
            lab[:, j] = col
            for r, v in bad:
                bad_vals[(r, j)] = f"{p.name} line {r + 1}: {v!r} is not 0 or 1"
    elif (root / TRAIN_TEST_LABELS).is_dir():
        labels_from = TRAIN_TEST_LABELS
        for j, c in enumerate(read):
            for split in ("train", "test"):
                lp, rows = lists[split]
                p = root / TRAIN_TEST_LABELS / f"Labels_{c}_{split.title()}.txt"
                col, bad = _label_file(p, len(rows), lp)
                lab[rows, j] = col
                for i, v in bad:
                    bad_vals[(rows[i], j)] = f"{p.name} line {i + 1}: {v!r} is not 0 or 1"
    else:
        raise DataError(f"NUS-WIDE source {source!r} needs the labels: neither {root / ALL_LABELS} nor {root / TRAIN_TEST_LABELS} exists.")
    uncertain_all = np.zeros(lab.shape, dtype=bool)
    for r, j in bad_vals:
        uncertain_all[r, j] = True
    counts = (lab == 1).sum(axis=0)
    chosen, how = _select(read, counts, wanted, top, f"{len(entries)} images of {all_path.name}")
    if wanted is not None:
        how = "given (concepts=)"
    pos = lab[:, chosen] == 1
    uncertain = uncertain_all[:, chosen].sum(axis=1)
    keep, _ = _filter(pos, uncertain, mode)
    return _Release(
        all_path,
        entries,
        split_of,
        lists,
        names_from,
        labels_from,
        {read[j]: int(counts[j]) for j in chosen},
        [read[j] for j in chosen],
        how,
        pos,
        keep,
        bad_vals,
        chosen,
    )


def _release_meta(root: Path, rel: _Release, source: str, subset_key: str, mode: str, used: set[str]) -> dict[str, Any]:
    return {
        "source": str(root.resolve()),
        "format": source,
        "subset": subset_key,
        "label_mode": "single-label" if mode == "single" else "multi-label",
        "concepts": rel.chosen_names,
        "concept_selection": rel.how,
        "concept_counts": rel.counts,
        "concepts_without_images": [c for c in rel.chosen_names if c not in used],
        "concept_names": rel.names_from,
        "labels_from": rel.labels_from,
        "n_listed_images": len(rel.entries),
        "n_in_subset": int(rel.keep.sum()),
    }


# =============================================================================== raw
def _photo_ids(stem: str) -> list[str]:
    """The Flickr photo ids a downloaded image's file name may carry: every all-digit part of a
    name of the forms ``<id>``, ``<id>_<secret>[_<size>]``, ``<n>_<id>_<secret>[_<size>]`` or
    ``<nnnn>_<id>`` (which part is the id cannot be told from the name alone: an all-digit
    secret looks like an id; lookups are by a known photo id, so an extra candidate only
    matters if it is another image's id, and then both files are named as a problem)."""
    if not _DOWNLOADED.match(stem):
        return []
    parts = stem.split("_")
    if len(parts) > 1 and len(parts[-1]) == 1 and parts[-1].isalpha():
        parts = parts[:-1]
    return [p for p in parts if p.isdigit()]


def _photo_index(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """``({photo id: path}, {photo id: [paths]})`` of the images under ``folder`` named by photo
    id; the second holds the ids that several files claim (left out of the first)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            for pid in dict.fromkeys(_photo_ids(p.stem)):
                found.setdefault(pid, []).append(p)
    return {k: v[0] for k, v in found.items() if len(v) == 1}, {k: v for k, v in found.items() if len(v) > 1}


def _load_raw(
    root: Path,
    img_dir: Path,
    tags_file: str | Path | None,
    *,
    mode: str,
    top: int | None,
    subset_key: str,
    wanted: list[str] | None,
    class_split: str | Path | ClassSplit | None,
    split_seed: int,
    skip_bad: bool,
) -> Dataset:
    rel = _read_release(root, mode=mode, top=top, wanted=wanted, source="raw")
    n = len(rel.entries)
    kept = np.flatnonzero(rel.keep)
    problems = Problems(f"NUS-WIDE ({root})")

    # ---------------------------------------------------------------- tags
    tpath = Path(tags_file).expanduser() if tags_file is not None else _find(root, TAG_FILES, "the tags (NUS_WID_Tags/All_Tags.txt)")
    if not tpath.is_file():
        raise DataError(f"NUS-WIDE: tags file not found: {tpath}")
    tag_lines, n_latin1 = _lines(tpath, fallback=True)
    if len(tag_lines) != n:
        raise DataError(
            f"NUS-WIDE: {tpath} has {len(tag_lines)} lines but {rel.all_path} lists {n} "
            f"images; line i of {tpath.name} must be the tags of image i of {rel.all_path.name}."
        )
    first = [ln.split(maxsplit=1)[0] if ln.strip() else "" for ln in tag_lines]
    photo = [Path(e).stem.rsplit("_", 1)[-1] for e in rel.entries]
    ids_match = sum(a == b for a, b in zip(first, photo))
    check_ids = ids_match > 0
    if not check_ids and any(first):
        numeric = [a for a in first if a]
        if all(a.isdigit() for a in numeric):
            r0 = next(i for i, a in enumerate(first) if a)
            raise DataError(
                f"NUS-WIDE: {tpath} starts its lines with photo ids, but none is the photo id of its {rel.all_path.name} line "
                f"(line {r0 + 1}: {first[r0]!r}, the image is photo {photo[r0]!r}): it is not the tags file of this image list."
            )
    # lines of tags only (no photo id first, e.g. a tags_file= written by other code): every token is a tag
    skip_first = 1 if check_ids else 0

    # ---------------------------------------------------------------- images
    if not img_dir.is_dir():
        raise DataError(f"NUS-WIDE source 'raw' needs the images in {img_dir} (any depth; or pass images_dir=).")
    by_stem: dict[str, Path] | None = None
    by_photo: tuple[dict[str, Path], dict[str, list[Path]]] | None = None
    found_by = {"list path": 0, "file stem": 0, "photo id": 0}
    missing: list[Problem] = []
    samples: list[Sample] = []
    without_tags: list[str] = []
    for r in kept.tolist():
        e = rel.entries[r]
        sid, where = rel.sample_id(r), rel.where(r)
        tokens = tag_lines[r].split()
        bad = rel.row_problems(r, problems)
        if check_ids and tokens and tokens[0] != photo[r]:
            problems.add(where, f"{tpath.name} line {r + 1} is photo {tokens[0]!r} but the image is photo {photo[r]!r}", sid)
            bad = True
        text = " ".join(tokens[skip_first:])
        if not text:
            if not bad:  # a sample with problems is reported (or skipped) as such, not counted twice
                without_tags.append(sid)
            continue
        path: Path | None = img_dir / e
        if path is not None and path.is_file():
            found_by["list path"] += 1
        else:
            if by_stem is None:
                by_stem = index_images(img_dir)
            path = by_stem.get(Path(e).stem)
            if path is not None:
                found_by["file stem"] += 1
            else:
                if by_photo is None:
                    by_photo = _photo_index(img_dir)
                path = by_photo[0].get(photo[r])
                if path is not None:
                    found_by["photo id"] += 1
                elif photo[r] in by_photo[1]:
                    names = ", ".join(str(p.relative_to(img_dir)) for p in by_photo[1][photo[r]][:3])
                    missing.append(Problem(where, sid, f"image {e!r}: several files are named by its photo id {photo[r]} ({names})"))
                else:
                    missing.append(Problem(where, sid, f"image {e!r} not found (nor a file named by its photo id {photo[r]})"))
        samples.append(Sample(id=sid, text=text, labels=rel.labels(r), split=rel.split_of[r] or "train", image=path))
    problems.add_group(f"missing image files under {img_dir}", missing)
    if not samples:
        raise DataError(
            f"NUS-WIDE: no image of {rel.all_path} is in the subset ({rel.how}: {format_list(rel.chosen_names)})"
            + (f" with tags ({len(without_tags)} have none)." if without_tags else ".")
        )
    used = {x for s in samples for x in s.labels}
    meta = _release_meta(root, rel, "raw", subset_key, mode, used)
    notes = []
    if without_tags:
        notes.append(f"{len(without_tags)} images of the subset have no tags (no text): left out, as the cross-modal benchmarks do")
    meta.update(
        {
            "recognised": (
                f"the official release: {rel.all_path.name} + {rel.labels_from} + {tpath.name}; images found by "
                + ", ".join(f"{k} {v}" for k, v in found_by.items() if v)
            ),
            "tags_file": str(tpath),
            "tag_lines_not_utf8": n_latin1,
            "tag_photo_ids_checked": check_ids,
            "n_without_tags": len(without_tags),
            "without_tags": without_tags[:20],
            "images_dir": str(img_dir),
            "images_found_by": found_by,
            "notes": notes,
        }
    )
    return finish_dataset(
        "nus-wide",
        samples,
        [c for c in rel.chosen_names if c in used],
        problems=problems,
        skip_bad=skip_bad,
        class_split=class_split,
        split_seed=split_seed,
        shipped_split="nus-wide",
        meta=meta,
    )


# =============================================================================== low-level features
_DAT_SPLIT = (
    re.compile(r"^(train|test)_(.+)$", re.I),  # Train_Normalized_CH
    re.compile(r"^(.+)_(train|test)$", re.I),  # Normalized_CH_Train
    re.compile(r"^(.+)_(train|test)_(.+)$", re.I),  # BoW_Train_int
)


def _feature_name(stem: str) -> str:
    """The low-level feature a file stem or a ``low_level=`` entry names: ``Normalized_CH`` and
    ``ch`` → ``CH``; an unknown name as given (without ``Normalized_``)."""
    stem = re.sub(r"^normalized_", "", stem.strip(), flags=re.I)
    canonical = {k.lower(): k for k in LOW_LEVEL}
    return canonical.get(stem.lower(), stem)


def _dat_name(path: Path) -> tuple[str, str | None]:
    """``(feature name, split or None)`` of a low-level ``.dat`` file: ``Normalized_CH.dat`` →
    ``("CH", None)``, ``Train_Normalized_EDH.dat`` → ``("EDH", "train")``, ``BoW_Train_int.dat``
    → ``("BoW_int", "train")``."""
    stem, split = path.stem, None
    if m := _DAT_SPLIT[0].match(stem):
        split, stem = m.group(1).lower(), m.group(2)
    elif m := _DAT_SPLIT[1].match(stem):
        stem, split = m.group(1), m.group(2).lower()
    elif m := _DAT_SPLIT[2].match(stem):
        stem, split = f"{m.group(1)}_{m.group(3)}", m.group(2).lower()
    return _feature_name(stem), split


def _read_matrix(path: Path, expected: int, list_path: Path) -> np.ndarray:
    """A text matrix of ``expected`` rows (one row a line, numbers separated by white space,
    ``\n`` or ``\r\n``; blank lines are not rows) as float32, parsed by numpy's C reader
    (``numpy.loadtxt``): a 1 GB file costs about its float32 result in memory
    (benchmarks/bench_lowlevel_read.py). A malformed line is named by its number."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": the row count says it
            m = np.loadtxt(path, dtype=np.float32, ndmin=2, comments=None, max_rows=expected + 1, encoding="utf-8-sig")
    except ValueError as exc:
        _bad_line(path)
        raise DataError(f"NUS-WIDE: {path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"NUS-WIDE: cannot read {path}: {exc}") from None
    if m.shape[0] != expected:
        has = f"more than {expected}" if m.shape[0] > expected else str(m.shape[0])
        raise DataError(
            f"NUS-WIDE: {path} has {has} lines but {list_path} lists {expected} "
            f"images; line i of {path.name} must be image i of {list_path.name}."
        )
    return m


def _bad_line(path: Path) -> None:
    """Raise a :class:`DataError` naming the first line of ``path`` whose numbers cannot be read
    or whose count differs from the first line's (the slow path, after the fast reader failed)."""
    width = None
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for ln, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens:
                continue
            width = len(tokens) if width is None else width
            if len(tokens) != width:
                raise DataError(
                    f"NUS-WIDE: {path} line {ln} has {len(tokens)} numbers but the first line has {width}; "
                    "every line must hold one image's vector."
                )
            for tok in tokens:
                try:
                    float(tok)
                except ValueError:
                    raise DataError(f"NUS-WIDE: {path} line {ln}: {tok[:20]!r} is not a number.") from None


def _release_matrix(whole: Path | None, parts: dict[str, Path], rel: _Release, what: str) -> tuple[np.ndarray, str]:
    """One matrix in Imagelist row order, from a whole-list file or from its train/test files."""
    n = len(rel.entries)
    if whole is not None:
        return _read_matrix(whole, n, rel.all_path), whole.name
    if set(parts) != {"train", "test"}:
        have = ", ".join(p.name for p in parts.values())
        raise DataError(f"NUS-WIDE: {what}: found {have} but not its {'test' if 'train' in parts else 'train'} part.")
    out: np.ndarray | None = None
    for split in ("train", "test"):
        lp, rows = rel.lists[split]
        m = _read_matrix(parts[split], len(rows), lp)
        if out is None:
            out = np.zeros((n, m.shape[1]), dtype=np.float32)
        elif m.shape[1] != out.shape[1]:
            raise DataError(f"NUS-WIDE: {parts['train'].name} has {out.shape[1]} columns but {parts['test'].name} has {m.shape[1]}.")
        out[rows] = m
    assert out is not None
    return out, f"{parts['train'].name} + {parts['test'].name}"


def _load_lowlevel(
    root: Path,
    low_dir: Path,
    wanted_low: list[str] | None,
    *,
    mode: str,
    top: int | None,
    subset_key: str,
    wanted: list[str] | None,
    class_split: str | Path | ClassSplit | None,
    split_seed: int,
    skip_bad: bool,
) -> Dataset:
    rel = _read_release(root, mode=mode, top=top, wanted=wanted, source="lowlevel")
    found: dict[str, dict[str | None, Path]] = {}
    for p in sorted(low_dir.iterdir()):
        if p.is_file() and p.suffix.lower() == ".dat":
            name, split = _dat_name(p)
            found.setdefault(name, {})[split] = p
    if not found:
        raise DataError(f"NUS-WIDE source 'lowlevel': {low_dir} holds no .dat feature file (e.g. Normalized_CH.dat, BoW_int.dat).")
    order = [k for k in LOW_LEVEL if k in found] + sorted(k for k in found if k not in LOW_LEVEL)
    if wanted_low is not None:
        lower = {k.lower(): k for k in found}
        unknown = [w for w in wanted_low if _feature_name(w).lower() not in lower]
        if unknown:
            raise ConfigError(f"NUS-WIDE low_level: {format_list(unknown)} not in {low_dir} (it has {', '.join(order)}).")
        order = [lower[_feature_name(w).lower()] for w in wanted_low]
    blocks, read_from = [], []
    for name in order:
        files = found[name]
        m, how = _release_matrix(files.get(None), {s: p for s, p in files.items() if s is not None}, rel, f"low-level feature {name}")
        blocks.append(m)
        read_from.append(how)
    whole = next((root / c for c in TAG_VECTORS if (root / c).is_file()), None)
    split_files = {s: next((root / c for c in cands if (root / c).is_file()), None) for s, cands in TAG_VECTORS_SPLIT.items()}
    split_tags = {s: p for s, p in split_files.items() if p is not None}
    if whole is None and not split_tags:
        raise DataError(
            f"NUS-WIDE source 'lowlevel' needs the tag vectors (the text features): none of "
            f"{', '.join(str(root / c) for c in TAG_VECTORS[:2])} or {root / TAG_VECTORS_SPLIT['train'][0]} + "
            f"{root / TAG_VECTORS_SPLIT['test'][0]} exists."
        )
    text, text_from = _release_matrix(whole, split_tags, rel, "the tag vectors")
    problems = Problems(f"NUS-WIDE ({low_dir})")
    samples: list[Sample] = []
    rows: list[int] = []
    without_tags: list[str] = []
    has_tags = np.asarray(text.any(axis=1))
    for r in np.flatnonzero(rel.keep).tolist():
        sid = rel.sample_id(r)
        bad = rel.row_problems(r, problems)
        if not has_tags[r]:
            if not bad:  # e.g. an image in neither split list has no row in the Train_/Test_ files: reported, not counted
                without_tags.append(sid)
            continue
        samples.append(Sample(id=sid, text=None, labels=rel.labels(r), split=rel.split_of[r] or "train"))
        rows.append(r)
    if not samples:
        raise DataError(f"NUS-WIDE: no image of {rel.all_path} is in the subset ({rel.how}: {format_list(rel.chosen_names)}) with tags.")
    idx = np.asarray(rows)
    widths = [b.shape[1] for b in blocks]
    image = np.empty((len(idx), sum(widths)), dtype=np.float32)  # the kept rows only: no full-size copy
    for k, b in enumerate(blocks):
        image[:, sum(widths[:k]) : sum(widths[: k + 1])] = b[idx]
    blocks.clear()
    feats = FeatureSet(
        ModalityFeatures.from_array(image, name="NUS-WIDE low-level image features"),
        ModalityFeatures.from_array(text[idx], name="NUS-WIDE tag vectors"),
        tuple(s.id for s in samples),
        {"source": str(low_dir)},
    )
    used = {x for s in samples for x in s.labels}
    meta = _release_meta(root, rel, "lowlevel", subset_key, mode, used)
    notes = []
    if without_tags:
        notes.append(f"{len(without_tags)} images of the subset have an all-zero tag vector (no text): left out")
    meta.update(
        {
            "recognised": (
                f"the official release with its low-level features: {rel.all_path.name} + {rel.labels_from}; image features "
                + " + ".join(f"{n} ({h}, {w}-d)" for n, h, w in zip(order, read_from, widths))
                + f"; text features {text_from} ({text.shape[1]}-d)"
            ),
            "low_level": order,
            "low_level_files": read_from,
            "tag_vectors": text_from,
            "n_without_tags": len(without_tags),
            "without_tags": without_tags[:20],
            "notes": notes,
        }
    )
    return finish_dataset(
        "nus-wide",
        samples,
        [c for c in rel.chosen_names if c in used],
        problems=problems,
        skip_bad=skip_bad,
        features=feats,
        class_split=class_split,
        split_seed=split_seed,
        shipped_split="nus-wide",
        meta=meta,
    )


# =============================================================================== features
def _concept_list(folders: Sequence[Path], n_classes: int) -> tuple[list[str] | None, str]:
    """Names from a concept list beside the files with one name per label column
    (``Concepts81.txt`` …, any ``*concept*.txt``), and where from (or why none)."""
    candidates: list[Path] = []
    for d in folders:
        candidates += [d / c for c in CONCEPT_FILES if (d / c).is_file()]
        if d.is_dir():
            candidates += sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".txt" and "concept" in p.name.lower())
    checked = []
    for p in dict.fromkeys(candidates):
        listed = [ln.strip() for ln in _lines(p)[0] if ln.strip()]
        if len(listed) == n_classes and len(set(listed)) == len(listed):
            return listed, f"file {p}"
        checked.append(f"{p.name} lists {len(listed)}")
    why = f" ({'; '.join(checked)}, not {n_classes})" if checked else ""
    return None, f"label column numbers: the files carry no class names{why}; pass class_names= in the files' column order"


def _load_features(
    root: Path,
    features_file: str | Path | Sequence[str | Path] | None,
    keys: Mapping[str, str] | None,
    class_names: Sequence[str] | str | Path | None,
    test_size: int | None,
    label_base: int | str,
    valid_split: str,
    *,
    mode: str,
    top: int | None,
    subset_key: str,
    wanted: list[str] | None,
    class_split: str | Path | ClassSplit | None,
    split_seed: int,
    skip_bad: bool,
) -> Dataset:
    given = list(features_file) if isinstance(features_file, (list, tuple)) else [features_file] if features_file is not None else []
    dat = [str(p) for p in given if str(p).lower().endswith(".dat")]
    if dat:
        raise DataError(
            f"NUS-WIDE: {format_list(dat)} are the release's low-level features (text .dat files): read them with "
            "source='lowlevel' (with the image lists and labels under root; low_level= picks the features), not features_file=."
        )
    tag = str(top) if top is not None else None
    if tag is None and features_file is None:
        present: dict[str, list[str]] = {}  # TC subset → its files (one-file versions and DCMH sets)
        for d in (root, root / "features"):
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    m = _TC_FILE.search(p.name)
                    if m and p.is_file() and (p.name in TC_FILES.values() or re.search(r"[xyl]all", p.name, re.I)):
                        present.setdefault(m.group(1), []).append(p.name)
        if len(present) > 1:
            raise DataError(
                f"NUS-WIDE: {root} holds the files of {len(present)} subsets ("
                + "; ".join(f"TC-{t}: {', '.join(v)}" for t, v in sorted(present.items(), key=lambda kv: int(kv[0])))
                + f"); say which to read with subset={' or '.join(repr(f'tc{t}') for t in sorted(present, key=int))} "
                "(or name the files with features_file=)."
            )
    others = [n for t, n in TC_FILES.items() if t != tag] if tag is not None else []
    known = ([TC_FILES[tag]] if tag in TC_FILES else list(TC_FILES.values()) if tag is None else []) + list(KNOWN_FILES)
    try:
        files, found_as = find_feature_files(root, features_file, known=known, dataset="NUS-WIDE", tag=tag)
    except DataError as exc:  # the other subset's one-file version, when nothing else is there
        if not others or features_file is not None or "no feature files under" not in str(exc):
            raise
        files, found_as = find_feature_files(root, None, known=others, dataset="NUS-WIDE")
    tags = sorted({m.group(1) for p in files if (m := _TC_FILE.search(p.name))})
    src = collect_arrays(files)
    parts, layout = read_parts(src, keys=keys, test_size=test_size, dataset="NUS-WIDE")
    folders = list(dict.fromkeys([root, files[0].parent]))
    names, names_from = read_class_names(class_names, src=src, folders=folders, dataset="NUS-WIDE")
    describe = f"NUS-WIDE {src.describe()}"
    rows = decode_rows(parts, describe=describe, n_names=len(names) if names else None, label_base=label_base, valid_split=valid_split)
    if rows.n_classes == 0:
        raise DataError(f"{describe}: no row has a valid class label.")
    if names is None:
        names, names_from = _concept_list(folders, rows.n_classes)
    names_all = names if names is not None else [str(j) for j in range(rows.n_classes)]
    n = len(rows.ids)
    matrix = np.zeros((n, rows.n_classes), dtype=bool)
    for i, labs in enumerate(rows.labels):
        matrix[i, list(labs)] = True
    counts = matrix.sum(axis=0)
    benchmark = f"NUS-WIDE-TC-{tags[0]}" if len(tags) == 1 else None
    notes: list[str] = []
    if subset_key == "auto":
        mode, top = "multi", None
        subset_key = f"tc{tags[0]}" if benchmark and wanted is None else "multi"
    elif benchmark and subset_key in ("tc10", "tc21", "21") and tags != [tag] and wanted is None:
        msg = (
            f"NUS-WIDE: subset={subset_key!r} asked for, but the files found are {benchmark} ({', '.join(p.name for p in files)}): "
            f"the {top} of their concepts with the most pairs are used, with their pairs and split — not the published "
            f"NUS-WIDE-TC-{tag} files."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(msg)
    chosen, how = _select(names_all, counts, wanted, top, f"{n} pairs of the feature files")
    if wanted is None and top is None:
        kind = "label columns" if rows.kind == "multi" else "classes"
        how = f"all {len(names_all)} {kind} of the files" + (
            f" (the published {benchmark} benchmark: every pair, multi-label)" if benchmark else ""
        )
    pos = matrix[:, chosen]
    keep, _ = _filter(pos, rows.bad_label.astype(int), mode)
    n_multi = int((matrix.sum(axis=1) > 1).sum())
    if mode == "single" and n_multi:
        what = benchmark or "multi-label"
        msg = (
            f"NUS-WIDE: subset={subset_key!r} keeps the {int(keep.sum())} of {n} pairs that carry exactly one of the chosen "
            f"concepts (single-label); {n_multi} pairs of these files carry several labels. The published {what} benchmark "
            f"(DCMH, DJSRH, UCCH) uses every pair, multi-label: leave subset unset"
            + (f" or pass subset='tc{tags[0]}'." if benchmark else " or pass subset='multi'.")
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(msg)
    chosen_names = [names_all[j] for j in chosen]
    problems = Problems(describe)
    samples = []
    for i in np.flatnonzero(keep).tolist():
        for why in rows.reasons[i]:
            problems.add(rows.where[i], why, rows.ids[i])
        labels = tuple(chosen_names[k] for k in np.flatnonzero(pos[i]))
        samples.append(Sample(id=rows.ids[i], text=None, labels=labels or (chosen_names[0],), split=rows.splits[i]))
    if not samples:
        raise DataError(f"{describe}: no pair is in the subset ({how}: {format_list(chosen_names)}).")
    feats = feature_set(rows, keep, "NUS-WIDE", src.describe())
    used = {x for s in samples for x in s.labels}
    recognised = describe_form(src, layout, found_as, parts)
    if benchmark:
        dcmh = any(re.search(r"[xyl]all", p.name, re.I) for p in files)
        recognised = f"{'DCMH ' if dcmh else ''}{benchmark} files; " + recognised
    meta = {
        "source": str(root.resolve()),
        "format": "features",
        "layout": layout,
        "recognised": recognised,
        "features_files": [str(p.resolve()) for p in files],
        "found_as": found_as,
        "arrays": {p.split: p.keys for p in parts},
        "subset": subset_key,
        "label_mode": "single-label" if mode == "single" else "multi-label",
        "concepts": chosen_names,
        "concept_selection": how,
        "concept_counts": {names_all[j]: int(counts[j]) for j in chosen},
        "concepts_without_pairs": [c for c in chosen_names if c not in used],
        "class_names": names_from,
        "n_pairs_in_files": n,
        "n_pairs_with_several_labels": n_multi,
        "n_in_subset": int(keep.sum()),
        "notes": notes,
        **rows.meta,
    }
    return finish_dataset(
        "nus-wide",
        samples,
        [c for c in chosen_names if c in used],
        problems=problems,
        skip_bad=skip_bad,
        features=feats,
        class_split=class_split,
        split_seed=split_seed,
        shipped_split="nus-wide",
        meta=meta,
        hint=pairing_hint(rows),
    )


load = load_nuswide
