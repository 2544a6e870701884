"""Evaluating embeddings a user computed: ``.npz`` files with ``image`` (n, d), ``text`` (n, d)
and ``labels`` ((n,) class indices or names, or (n, C) multi-hot) — ``gcrdp evaluate FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .metrics import chance_map, cross_modal_metrics, instance_recall


def load_embeddings(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(f"Embeddings file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read embeddings file {path} as .npz: {exc}") from None
    missing = [k for k in ("image", "text", "labels") if k not in data]
    if missing:
        raise DataError(
            f"{path} lacks the array(s) {missing}; it must hold 'image' (n, d), 'text' (n, d) "
            f"and 'labels' ((n,) class ids or (n, C) multi-hot). It has {sorted(data)}."
        )
    n = {k: len(data[k]) for k in ("image", "text", "labels")}
    if len(set(n.values())) != 1:
        raise DataError(f"{path}: mismatched lengths {n}; image, text and labels must be paired row by row.")
    return data


def names_to_indices(q: dict[str, Any], g: dict[str, Any]) -> None:
    """1-D labels given as class names (strings) become indices into the names of queries and
    gallery together, in place (the same name is the same class on both sides)."""
    arrays = [d["labels"] for d in (q, g)]
    if not any(a.ndim == 1 and a.dtype.kind in "USO" for a in arrays):
        return
    if any(a.ndim != 1 or a.dtype.kind not in "USO" for a in arrays):
        raise ConfigError("Labels are class names in one file and not in the other; give both as names or both as indices.")
    names = [str(x) for x in np.concatenate([a.astype(str) for a in arrays])]
    vocab = {n: i for i, n in enumerate(sorted(set(names)))}
    q["labels"] = np.array([vocab[str(x)] for x in q["labels"]], dtype=np.int64)
    if g is not q:
        g["labels"] = np.array([vocab[str(x)] for x in g["labels"]], dtype=np.int64)


def evaluate_embedding_files(
    embeddings: str | Path, gallery: str | Path | None = None, ks: tuple[int, ...] | list[int] = ()
) -> dict[str, Any]:
    """Class-level metrics (I2T, T2I, mAP@all and @k) of the embeddings in ``embeddings``
    against ``gallery`` (default: themselves), the chance level, and — when the gallery is the
    queries — instance-level recall@1/5/10 of each row's own pair."""
    q = load_embeddings(Path(embeddings))
    g = load_embeddings(Path(gallery)) if gallery is not None else q
    names_to_indices(q, g)
    res = cross_modal_metrics(q["image"], q["text"], q["labels"], g["image"], g["text"], g["labels"], ks=ks)
    if gallery is None:  # row i's pair is row i
        pair = np.arange(len(q["image"]))
        res["instance"] = {"i2t": instance_recall(q["image"], q["text"], pair), "t2i": instance_recall(q["text"], q["image"], pair)}
    res["chance"] = chance_map(q["labels"], g["labels"])
    return res
