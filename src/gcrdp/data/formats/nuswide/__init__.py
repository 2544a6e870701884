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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ....errors import ConfigError, DataError
from ...registry import load_dataset, register_reader
from ...types import Dataset
from ..build import RawDataset
from ..featurearrays import NoFeatureFiles, find_feature_files
from .common import IMAGE_DIRS, KNOWN_FILES, LOW_LEVEL_DIRS, SOURCES, TC_FILES, Subset, parse_concepts, parse_low_level, parse_subset
from .features import FeatureFiles, read_features
from .lowlevel import read_lowlevel
from .raw import read_raw


# =============================================================================== reader
@register_reader("nus-wide")
def read_nuswide(  # noqa: PLR0913 - keyword-only: the nuswide dataset's user options (gcrdp datasets nuswide)
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
) -> RawDataset:
    """Read NUS-WIDE from ``root`` (sources, subsets, layouts and checks in the module doc).

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

    ``load_dataset`` adds ``class_split`` (default: generated from the class names),
    ``split_seed`` (its seed) and ``skip_bad`` (leave bad samples out, listed in
    ``meta["skipped"]``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"NUS-WIDE folder not found: {root}")
    if source not in SOURCES:
        raise ConfigError(f"NUS-WIDE source must be one of {', '.join(SOURCES)}, got {source!r}.")
    mode, top, subset_key = parse_subset(subset)
    wanted = parse_concepts(concepts)
    wanted_low = parse_low_level(low_level)
    if images_dir is not None:
        img_dir = Path(images_dir).expanduser()
    else:
        img_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])
    low_dir = _low_level_dir(root)
    opts = FeatureFiles(features_file, keys, class_names, test_size, label_base, valid_split)
    given = {
        "raw": [k for k, v in (("tags_file", tags_file), ("images_dir", images_dir)) if v is not None],
        "lowlevel": ["low_level"] if low_level is not None else [],
        "features": [k for k, v in vars(opts).items() if v != getattr(_DEFAULT_FILES, k)],
    }
    chosen = _choose_source(source, given, img_dir, low_dir, root)
    sub = Subset(mode, top, subset_key, wanted)
    if chosen in ("raw", "lowlevel") and subset_key == "auto":
        sub = Subset("single", 10, "10", wanted)
    if chosen == "raw":
        return read_raw(root, img_dir, tags_file, sub)
    if chosen == "lowlevel":
        if low_dir is None:
            raise DataError(
                f"NUS-WIDE source 'lowlevel' needs the release's low-level features: none of "
                f"{', '.join(str(root / d) for d in LOW_LEVEL_DIRS[:2])} exists (unpack Low_Level_Features.rar there)."
            )
        return read_lowlevel(root, low_dir, wanted_low, sub)
    try:
        return read_features(root, opts, sub)
    except NoFeatureFiles as exc:
        if source != "auto":
            raise
        raise DataError(
            f"{exc} Nor is there an images folder ({img_dir}; images_dir= names another, for source='raw') or a "
            f"Low_Level_Features/ folder with .dat files (source='lowlevel')."
        ) from None


def load_nuswide(root: str | Path, **options: Any) -> Dataset:
    """``load_dataset("nus-wide", root=root, **options)``: :func:`read_nuswide`, finished."""
    return load_dataset("nus-wide", root=root, **options)


_DEFAULT_FILES = FeatureFiles()


def _low_level_dir(root: Path) -> Path | None:
    """The folder of the release's low-level features: the first with ``.dat`` files, else the
    first that exists."""
    low_dirs = [root / d for d in LOW_LEVEL_DIRS if (root / d).is_dir()]
    return next((d for d in low_dirs if any(p.suffix.lower() == ".dat" for p in d.iterdir())), low_dirs[0] if low_dirs else None)


def _choose_source(source: str, given: dict[str, list[str]], img_dir: Path, low_dir: Path | None, root: Path) -> str:
    """The source to read: ``source``, or for ``auto`` the one an option only it reads names,
    else what ``root`` holds; an option the chosen source does not read is an error."""
    asked = [src for src, names in given.items() if names]
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
    return source


def _has_feature_files(root: Path) -> bool:
    try:
        find_feature_files(root, None, known=list(TC_FILES.values()) + list(KNOWN_FILES), dataset="NUS-WIDE")
    except NoFeatureFiles:
        return False
    except DataError:  # feature files, but in a form that needs a choice: the features source says which
        return True
    return True
