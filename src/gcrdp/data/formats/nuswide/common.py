"""NUS-WIDE: the names of the release's files, the subsets, and choosing concepts and rows."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ....errors import ConfigError, DataError, format_list

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
TC_FILE_TAG = re.compile(r"tc-?(\d+)", re.I)


# =============================================================================== options
@dataclass(frozen=True)
class Subset:
    """The subset asked for: label ``mode`` (``single``/``multi``), the ``top`` concepts (``None``:
    all), its ``key`` (``auto`` when unset) and the concepts ``wanted`` instead of the top ones."""

    mode: str
    top: int | None
    key: str
    wanted: list[str] | None = None


def parse_subset(subset: object) -> tuple[str, int | None, str]:
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


def parse_concepts(concepts: object) -> list[str] | None:
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


def parse_low_level(low_level: object) -> list[str] | None:
    if low_level is None:
        return None
    items = [c.strip() for c in low_level.split(",")] if isinstance(low_level, str) else low_level
    if not isinstance(items, Sequence) or not items or not all(isinstance(c, str) and c for c in items):
        raise ConfigError(f"NUS-WIDE low_level must name low-level features ({', '.join(LOW_LEVEL)}), got {low_level!r}.")
    return list(items)


def select_concepts(names: list[str], counts: np.ndarray, wanted: list[str] | None, top: int | None, over: str) -> tuple[list[int], str]:
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


def filter_rows(pos: np.ndarray, uncertain: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
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
