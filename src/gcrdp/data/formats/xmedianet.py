"""PKU XMediaNet (Peng et al.), its image and text media: dataset ``xmedianet``.

XMediaNet has 200 WordNet categories (48 animals, 152 artifacts) and five media (text,
image, video, audio, 3D). The image–text benchmark of DSCMR, MRL and their successors uses
about 40,000 image–text pairs, split into train, (valid) and test by the feature files
themselves. The media are released by
the MIPL lab of Peking University on request (``www.icst.pku.edu.cn/mipl`` → XMediaNet); this
loader reads the pre-extracted image and text features that cross-modal retrieval code shares
(4096-d VGG-19 fc7 images, 300-d Doc2Vec or BoW texts). Point ``root`` at the folder holding
one of the layouts below (or name the file(s) with ``features_file=``):

=========================================  ==================================================
DSCMR folder (``penghu-cs/DSCMR``)         ``train_img.mat`` ``train_txt.mat``
  in ``root`` or ``root/features``         ``train_img_lab.mat`` [``train_txt_lab.mat``] and
                                           the same for ``test`` (and ``valid``/``val``); one
                                           array per file, keyed by the file stem (any single
                                           key is accepted)
Hu et al. Doc2Vec HDF5 (MRL, ELRCMR, …)    ``xmedianet_deep_doc2vec_data.h5py``: keys
                                           ``{split}_imgs_deep``, ``{split}_imgs_labels``,
                                           ``{split}_text``, ``{split}_texts`` or ``{split}_texts_doc``,
                                           ``{split}_texts_labels``, split = train/valid/test
one ``.mat`` with split keys               ``xmedianet.mat``: ``img_train``, ``text_train``,
  (partial-label / noisy-label code)       ``label_train``, ``img_test``, …
split features, labels of all splits       ``XMediaNetFeatures.mat``: ``I_tr``, ``I_te``,
  in one array                             ``T_tr``, ``T_te`` and ``I_labs``/``T_labs``
                                           holding train then test rows (cut by the
                                           ``I_tr``/``I_te`` row counts; a length that is
                                           not their sum is an error)
five-view cells                            ``XMediaNet5View_Doc2Vec.mat`` (or the four-view
                                           ``XMediaNet4View_pairs.mat``): cell arrays
                                           ``train``/``valid``/``test`` (view 0 = image,
                                           view 1 = text) and ``train_labels``, …
any other file named ``*xmedianet*``       found when it is the only one in ``root`` (or
                                           ``root/features``); several: name one with
                                           ``features_file=``
=========================================  ==================================================

Any ``.mat`` (v5, or v7.3 read with h5py and transposed back), ``.h5``/``.hdf5``/``.h5py``,
``.npz`` or ``.npy`` works; key names are matched case-insensitively against the conventions
of :data:`SPLIT_KEYS` (``I_tr``/``T_te``/``L_tr``, ``train_img``, ``img_train``,
``train_imgs_deep``, ``train_texts_doc``, ``tr_img``, …). ``keys=`` names them explicitly, e.g.
``keys={"train_image": "I_tr", "test_image": "I_te", "train_text": ..., "train_label": ...}``
(roles ``{train,valid,test}_{image,text,label,text_label}``).

Labels: ``(n,)``/``(n, 1)``/``(1, n)`` class ids or ``(n, C)`` one-hot. Ids are 0- or 1-based
(``label_base="auto"``: 1-based when the smallest id is 1; pass 0 or 1 to say). Class names
come from ``class_names=`` (a list, or a text file with one name a line, line i = class i), a
string array ``class_names``/``classes``/``categories`` in the feature file, or
``classes.txt``/``class_names.txt``/``categories.txt`` next to the features; else they are
the 0-based ids as strings (``"0"`` … ``"199"``). A ``valid`` split is added to ``train`` by
default (``valid_split="train"``; ``"test"`` or ``"drop"``): the protocol carves its own
validation pairs out of ``train``.

Checks: image, text and label arrays of a split have the same number of rows and the splits
the same feature sizes (else an error naming the arrays); per pair — a label that is not a
valid class id or not one-hot, image and text labels that disagree, a text feature row that
is all zeros (an empty text) — is a problem of that sample (listed together, or left out with
``skip_bad=True``). Sample ids are ``{split}-{row:06d}`` (row within the file's split);
``text`` and ``image`` are ``None`` (features only). The seen/unseen split is generated from
the class names (``split_seed``) unless a ``xmedianet`` split ships or ``class_split`` is given.

The reading helpers (:func:`find_feature_files`, :func:`collect_arrays`, :func:`read_parts`,
:func:`decode_rows`) are shared with :mod:`gcrdp.data.formats.nuswide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ..problems import Problems
from ..registry import load_dataset, register_reader
from ..types import Dataset, Sample
from .build import RawDataset
from .featurearrays import collect_arrays, find_feature_files, read_parts
from .featurerows import Rows, decode_rows, describe_form, feature_set, pairing_hint, read_class_names

KNOWN_FILES = (
    "XMediaNetFeatures.mat",
    "XMediaNet4View_pairs.mat",
    "xmedianet_deep_doc2vec_data.h5py",
    "xmedianet_deep_doc2vec_data.h5",
    "xmedianet.mat",
    "XMediaNet5View_Doc2Vec.mat",
    "xmedianet_features.mat",
    "xmedianet.h5",
    "xmedianet.npz",
)


# =============================================================================== reader
@register_reader("xmedianet")
def read_xmedianet(
    root: str | Path,
    *,
    features_file: str | Path | Sequence[str | Path] | None = None,
    keys: Mapping[str, str] | None = None,
    class_names: Sequence[str] | str | Path | None = None,
    label_base: int | str = "auto",
    valid_split: str = "train",
) -> RawDataset:
    """Read XMediaNet's image–text features from ``root`` (layouts and checks in the module
    docstring).

    Args:
        root: the folder with the feature file(s).
        features_file: a file, a folder or a list of files (default: found under ``root``).
        keys: array keys by role (``train_image``, ``test_text``, ``train_label``, …).
        class_names: list of names or a text file (one a line, line i = class i).
        label_base: ``"auto"``, 0 or 1 — the id of the first class.
        valid_split: where a ``valid`` split goes: ``"train"`` (default), ``"test"``, ``"drop"``.

    ``load_dataset`` adds ``class_split`` (default: generated from the class names),
    ``split_seed`` (its seed) and ``skip_bad`` (leave bad pairs out, listed in
    ``meta["skipped"]``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"XMediaNet folder not found: {root}")
    files, found_as = find_feature_files(root, features_file, known=KNOWN_FILES, dataset="XMediaNet", name_hint="xmedianet")
    src = collect_arrays(files)
    parts, layout = read_parts(src, keys=keys, dataset="XMediaNet")
    folders = list(dict.fromkeys([root, files[0].parent]))
    names, names_from = read_class_names(class_names, src=src, folders=folders, dataset="XMediaNet")
    describe = f"XMediaNet {src.describe()}"
    rows = decode_rows(parts, describe=describe, n_names=len(names) if names else None, label_base=label_base, valid_split=valid_split)
    if rows.n_classes == 0:
        raise DataError(f"{describe}: no row has a valid class label.")
    classes_all = names if names is not None else [str(j) for j in range(rows.n_classes)]
    problems = Problems(describe)
    samples = _samples(rows, classes_all, problems)
    used = {s.labels[0] for s in samples}
    meta = {
        "source": str(root.resolve()),
        "format": "features",
        "layout": layout,
        "recognised": describe_form(src, layout, found_as, parts),
        "features_files": [str(p.resolve()) for p in files],
        "found_as": found_as,
        "arrays": {p.split: p.keys for p in parts},
        "class_names": names_from,
        "classes_without_pairs": [c for c in classes_all if c not in used],
        **rows.meta,
    }
    return RawDataset(
        "xmedianet",
        samples,
        [c for c in classes_all if c in used],
        problems,
        features=feature_set(rows, np.ones(len(samples), dtype=bool), "XMediaNet", src.describe()),
        shipped_split="xmedianet",
        meta=meta,
        hint=pairing_hint(rows),
    )


def _samples(rows: Rows, classes: list[str], problems: Problems) -> list[Sample]:
    """One sample a decoded row (XMediaNet is single-label: a row with no or several labels is a
    problem)."""
    samples = []
    for i, sid in enumerate(rows.ids):
        labs = rows.labels[i]
        for why in rows.reasons[i]:
            problems.add(rows.where[i], why, sid)
        if not rows.bad_label[i] and len(labs) != 1:
            problems.add(
                rows.where[i], "no label" if not labs else f"{len(labs)} labels {list(labs)}: XMediaNet is single-label (one-hot rows)", sid
            )
        samples.append(Sample(id=sid, text=None, labels=(classes[labs[0]] if labs else classes[0],), split=rows.splits[i]))
    return samples


def load_xmedianet(root: str | Path, **options: Any) -> Dataset:
    """``load_dataset("xmedianet", root=root, **options)``: :func:`read_xmedianet`, finished."""
    return load_dataset("xmedianet", root=root, **options)
