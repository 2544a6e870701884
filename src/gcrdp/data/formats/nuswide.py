"""NUS-WIDE (Chua et al., CIVR 2009): dataset ``nus-wide``.

269,648 Flickr images with their user tags and ground truth for 81 concepts, split by the
release into 161,789 train and 107,859 test images. The lists, labels and tags are on the NUS
LMS page (``lms.comp.nus.edu.sg`` → NUS-WIDE: ``ImageList.zip``, ``Groundtruth.zip``,
``ConceptsList.zip``, ``NUS_WID_Tags.zip``; also ``NExTplusplus/NUS-WIDE``); the images are
sent on request (the ``Flickr/<concept folder>/<nnnn>_<photo id>.jpg`` tree). Cross-modal
retrieval code shares pre-extracted features instead (DCMH, DSCMR, Hu et al.).

``subset`` (how the classes and pairs are chosen; recorded in ``meta["concepts"]``,
``meta["concept_counts"]`` and ``meta["concept_selection"]``):
    ``"10"`` (default) — single-label: the 10 concepts with the most images (over every listed
    image, train and test; ties by concept-list order), keeping only the images that carry
    exactly one of them; ``"21"`` / ``"81"`` — multi-label: the 21 (the common NUS-WIDE-21
    benchmark) or all 81 concepts, keeping the images with at least one of them (relevance =
    at least one shared label, from the multi-hot label matrix); ``"multi"`` — multi-label
    over every concept of the source. ``concepts=`` (a list, or ``"sky,clouds,…"``) replaces
    the top-N choice; ``subset`` then only says single- or multi-label.

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
    ``\\r\\n``. A sample's text is its tags joined by spaces; its image is
    ``images_dir/<folder>/<file>`` or, failing that, the file with that stem at any depth. Tag
    lines that are not UTF-8 are read as Latin-1 (counted in ``meta["tag_lines_not_utf8"]``).
    Sample ids are the list paths without extension (``actor/0001_2124494179``).

``source="features"`` — feature files (``features_file=``, or found under ``root`` /
``root/features``; the readers of :mod:`gcrdp.data.xmedianet`):

    * DCMH files: ``nus-wide-tc10-xall-vgg.mat`` (``XAll``, image features),
      ``nus-wide-tc10-yall.mat`` (``YAll``, 1000-d tag BoW; often v7.3),
      ``nus-wide-tc10-lall.mat`` (``LAll``, (n, C) multi-hot), or their ``tc21`` versions
      (the files of the ``subset`` are taken; ``*iall*`` raw-image files are ignored). They
      hold all pairs in one set: a split array (``split`` strings, ``is_test``/``is_train``
      0/1, or ``train_idx``/``test_idx``) or ``test_size=N`` (the last N rows are test, the
      DSCMR convention: 2100) gives the split;
    * Hu et al. Doc2Vec HDF5 (``nus_wide_deep_doc2vec_data_42941.h5py``,
      ``nus_wide_deep_doc2vec-corr-ae.h5py``): ``{split}_imgs_deep``, ``{split}_text(s)``,
      ``{split}_imgs_labels`` (class ids), ``{split}_texts_labels``;
    * a DSCMR folder (``train_img.mat``, ``train_txt.mat``, ``train_img_lab.mat``, ``test_…``);
    * any ``.mat``/``.h5`` with split keys (``I_tr``/``I_te``/``T_tr``/``T_te``/``L_tr``/
      ``L_te``, ``train_img``/``test_img``, ``img_train``, …) — or name them with ``keys=``.

    Labels are class ids (``label_base``) or (n, C) multi-hot. Class names: ``class_names=``,
    a names array in the file, ``Concepts81.txt`` when the labels have 81 columns, else the
    0-based ids as strings. ``text``/``image`` are ``None``.

``source="auto"`` (default): ``raw`` when the images folder exists, else ``features``.

Checks (per sample unless said; listed together, or left out with ``skip_bad=True``): a label
value that is not 0/1 (or not a class id), image and text labels that disagree, an image with
no tags (raw) or an all-zero text feature row (features), an All_Tags line whose photo id is
not that of the Imagelist line, an image in neither split list, a missing image file (one
grouped problem with the first few and a count). A label, tag or list file whose length
disagrees with its image list, a list entry that Imagelist.txt does not hold, a missing file:
an error naming the files. The seen/unseen split is generated from the class names
(``split_seed``) unless a ``nus-wide`` split ships or ``class_split`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError, format_list
from ..problems import Problem, Problems
from ..registry import DATASETS
from ..types import ClassSplit, Dataset, Sample
from .build import check_skip_bad, finish_dataset, index_images
from .featurearrays import (
    collect_arrays,
    decode_rows,
    feature_set,
    find_feature_files,
    pairing_hint,
    read_class_names,
    read_parts,
)

SOURCES = ("auto", "raw", "features")
SUBSETS = {"10": ("single", 10), "21": ("multi", 21), "81": ("multi", 81), "multi": ("multi", None)}
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


# =============================================================================== options
def _parse_subset(subset: object) -> tuple[str, int | None, str]:
    key = str(subset).strip().lower().replace("tc-", "").replace("tc", "") if not isinstance(subset, bool) else ""
    if key not in SUBSETS:
        raise ConfigError(
            f"NUS-WIDE subset must be one of {', '.join(map(repr, SUBSETS))} "
            f"('10': single-label top-10 concepts; '21'/'81': multi-label top-21 / "
            f"all 81; 'multi': multi-label over every concept), got {subset!r}."
        )
    mode, top = SUBSETS[key]
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
    subset: str | int = "10",
    concepts: Sequence[str] | str | None = None,
    features_file: str | Path | Sequence[str | Path] | None = None,
    keys: Mapping[str, str] | None = None,
    class_names: Sequence[str] | str | Path | None = None,
    test_size: int | None = None,
    label_base: int | str = "auto",
    valid_split: str = "train",
    tags_file: str | Path | None = None,
    images_dir: str | Path | None = None,
    class_split: str | Path | ClassSplit | None = None,
    split_seed: int = 0,
    skip_bad: bool = False,
) -> Dataset:
    """Load NUS-WIDE from ``root`` (sources, subsets, layouts and checks in the module doc).

    Args:
        root: the NUS-WIDE folder (raw release and/or feature files).
        source: ``"auto"``, ``"raw"`` or ``"features"``.
        subset: ``"10"`` (single-label), ``"21"``, ``"81"`` or ``"multi"`` (multi-label).
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
    if images_dir is not None:
        img_dir = Path(images_dir).expanduser()
    else:
        img_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])
    if source == "auto":
        source = "raw" if img_dir.is_dir() else "features"
    common = dict(
        mode=mode, top=top, subset_key=subset_key, wanted=wanted, class_split=class_split, split_seed=split_seed, skip_bad=skip_bad
    )
    if source == "raw":
        return _load_raw(root, img_dir, tags_file, **common)
    return _load_features(root, features_file, keys, class_names, test_size, label_base, valid_split, **common)


# =============================================================================== raw
def _find(root: Path, candidates: Sequence[str], what: str) -> Path:
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise DataError(f"NUS-WIDE source 'raw' needs {what}: none of {', '.join(str(root / c) for c in candidates)} exists.")


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


def _load_raw(
    root: Path,
    img_dir: Path,
    tags_file: str | Path | None,
    *,
    mode: str,
    top: int | None,
    subset_key: str,
    wanted: list[str] | None,
    class_split,
    split_seed: int,
    skip_bad: bool,
) -> Dataset:
    all_path = _find(root, IMAGE_LISTS["all"], "the image list (ImageList/Imagelist.txt)")
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
        lp = _find(root, IMAGE_LISTS[split], f"the {split} image list (ImageList/{split.title()}Imagelist.txt)")
        rows = []
        unknown = []
        for ln, e in enumerate(_image_list(lp), start=1):
            r = index.get(e)
            if r is None:
                unknown.append(f"line {ln} {e!r}")
                continue
            if split_of[r]:
                other = lp.name if split_of[r] == split else lists["train"][0].name
                raise DataError(f"NUS-WIDE: {e!r} is listed twice: in {other} and in {lp.name}.")
            split_of[r] = split
            rows.append(r)
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
        raise DataError(f"NUS-WIDE source 'raw' needs the labels: neither {root / ALL_LABELS} nor {root / TRAIN_TEST_LABELS} exists.")
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
    kept = np.flatnonzero(keep)
    chosen_names = [read[j] for j in chosen]
    problems = Problems(f"NUS-WIDE ({root})")

    # ---------------------------------------------------------------- tags
    tpath = Path(tags_file).expanduser() if tags_file is not None else _find(root, TAG_FILES, "the tags (NUS_WID_Tags/All_Tags.txt)")
    if not tpath.is_file():
        raise DataError(f"NUS-WIDE: tags file not found: {tpath}")
    tag_lines, n_latin1 = _lines(tpath, fallback=True)
    if len(tag_lines) != n:
        raise DataError(
            f"NUS-WIDE: {tpath} has {len(tag_lines)} lines but {all_path} lists {n} "
            f"images; line i of {tpath.name} must be the tags of image i of {all_path.name}."
        )
    first = [ln.split(maxsplit=1)[0] if ln.strip() else "" for ln in tag_lines]
    photo = [Path(e).stem.rsplit("_", 1)[-1] for e in entries]
    ids_match = sum(a == b for a, b in zip(first, photo))
    check_ids = ids_match > 0

    # ---------------------------------------------------------------- images
    if not img_dir.is_dir():
        raise DataError(f"NUS-WIDE source 'raw' needs the images in {img_dir} (any depth; or pass images_dir=).")
    by_stem: dict[str, Path] | None = None
    missing: list[Problem] = []
    samples: list[Sample] = []
    for r in kept.tolist():
        e = entries[r]
        sid = e.rsplit(".", 1)[0] if "." in e.rsplit("/", 1)[-1] else e
        where = f"{all_path.name} line {r + 1}"
        for j in chosen:
            if (r, j) in bad_vals:
                problems.add(where, bad_vals[(r, j)], sid)
        if not split_of[r]:
            problems.add(where, f"{e!r} is in neither {lists['train'][0].name} nor {lists['test'][0].name}", sid)
        tokens = tag_lines[r].split()
        if check_ids and (not tokens or tokens[0] != photo[r]):
            problems.add(
                where, f"{tpath.name} line {r + 1} is photo {tokens[0] if tokens else '(empty)'!r} but the image is photo {photo[r]!r}", sid
            )
        text = " ".join(tokens[1:]) if tokens else ""
        if not text:
            problems.add(where, f"no tags ({tpath.name} line {r + 1} is {tag_lines[r].strip()[:40]!r})", sid)
        path = img_dir / e
        if not path.is_file():
            if by_stem is None:
                by_stem = index_images(img_dir)
            path = by_stem.get(Path(e).stem)
            if path is None:
                missing.append(Problem(where, sid, f"image {e!r} not found"))
        labels = tuple(chosen_names[k] for k in np.flatnonzero(pos[r]))
        samples.append(Sample(id=sid, text=text or None, labels=labels or (chosen_names[0],), split=split_of[r] or "train", image=path))
    problems.add_group(f"missing image files under {img_dir}", missing)
    if not samples:
        raise DataError(f"NUS-WIDE: no image of {all_path} is in the subset ({how}: {format_list(chosen_names)}).")
    used = {x for s in samples for x in s.labels}
    meta = {
        "source": str(root.resolve()),
        "format": "raw",
        "subset": subset_key,
        "label_mode": "single-label" if mode == "single" else "multi-label",
        "concepts": chosen_names,
        "concept_selection": how,
        "concept_counts": {read[j]: int(counts[j]) for j in chosen},
        "concepts_without_images": [c for c in chosen_names if c not in used],
        "concept_names": names_from,
        "labels_from": labels_from,
        "n_listed_images": n,
        "n_in_subset": int(keep.sum()),
        "tags_file": str(tpath),
        "tag_lines_not_utf8": n_latin1,
        "tag_photo_ids_checked": check_ids,
        "images_dir": str(img_dir),
    }
    return finish_dataset(
        "nus-wide",
        samples,
        [c for c in chosen_names if c in used],
        problems=problems,
        skip_bad=skip_bad,
        class_split=class_split,
        split_seed=split_seed,
        shipped_split="nus-wide",
        meta=meta,
    )


# =============================================================================== features
def _load_features(
    root: Path,
    features_file,
    keys,
    class_names,
    test_size,
    label_base,
    valid_split,
    *,
    mode: str,
    top: int | None,
    subset_key: str,
    wanted: list[str] | None,
    class_split,
    split_seed: int,
    skip_bad: bool,
) -> Dataset:
    files, found_as = find_feature_files(
        root, features_file, known=KNOWN_FILES, dataset="NUS-WIDE", tag=str(top) if top is not None else None
    )
    src = collect_arrays(files)
    parts, layout = read_parts(src, keys=keys, test_size=test_size, dataset="NUS-WIDE")
    folders = list(dict.fromkeys([root, files[0].parent]))
    names, names_from = read_class_names(class_names, src=src, folders=folders, dataset="NUS-WIDE")
    describe = f"NUS-WIDE {src.describe()}"
    rows = decode_rows(parts, describe=describe, n_names=len(names) if names else None, label_base=label_base, valid_split=valid_split)
    if rows.n_classes == 0:
        raise DataError(f"{describe}: no row has a valid class label.")
    if names is None:
        concept_file = next((root / c for c in CONCEPT_FILES if (root / c).is_file()), None)
        if concept_file is not None:
            listed = [ln.strip() for ln in _lines(concept_file)[0] if ln.strip()]
            if len(listed) == rows.n_classes and len(set(listed)) == len(listed):
                names, names_from = listed, f"file {concept_file}"
    names_all = names if names is not None else [str(j) for j in range(rows.n_classes)]
    n = len(rows.ids)
    matrix = np.zeros((n, rows.n_classes), dtype=bool)
    for i, labs in enumerate(rows.labels):
        matrix[i, list(labs)] = True
    counts = matrix.sum(axis=0)
    chosen, how = _select(names_all, counts, wanted, top, f"{n} pairs of the feature files")
    pos = matrix[:, chosen]
    keep, _ = _filter(pos, rows.bad_label.astype(int), mode)
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
    meta = {
        "source": str(root.resolve()),
        "format": "features",
        "layout": layout,
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
        "n_in_subset": int(keep.sum()),
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
