"""Exporting what a model embeds: every sample of a dataset, in the clip-retrieval layout (for
FAISS/autofaiss, vector databases), beside the search indexes of :mod:`gcrdp.search`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data.features import FeatureSet
from ..data.formats.clip_retrieval import export_clip_retrieval
from ..data.types import Dataset
from ..errors import ConfigError, DataError, format_list
from ..experiments.saved import RestoredRun, restore_run


def export_embeddings(method: Any, dataset: Dataset, features: FeatureSet | None, out_dir: str | Path, **kw: Any) -> Path:
    """Embed every sample of ``dataset`` with a fitted ``method`` and export the embeddings
    with :func:`export_clip_retrieval` (``kw``: e.g. ``part_size``).

    ``features`` are the dataset's features, rows in sample order (default
    ``dataset.features``). The metadata columns are ``id``, ``caption`` (the text or ``""``),
    ``image_path`` (the image file or ``""``), ``label`` (the labels joined with ``"|"``) and
    ``split``; ``load_dataset("clip-retrieval", root=out_dir)`` gives back the same ids,
    labels, split and embeddings.
    """
    feats = features if features is not None else dataset.features
    if feats is None:
        raise ConfigError(
            f"Dataset {dataset.name!r} has no pre-extracted features; pass the "
            "features the method was fitted on (e.g. from the run's extraction)."
        )
    if tuple(feats.sample_ids) != tuple(s.id for s in dataset.samples):
        raise DataError(
            f"The features' sample ids differ from dataset {dataset.name!r}'s samples "
            f"({len(feats)} rows for {len(dataset)} samples); pass the features of "
            "this dataset, in sample order."
        )
    joined = [s for s in dataset.samples if any("|" in lab for lab in s.labels)]
    if joined:
        raise DataError(
            f"Labels containing '|' cannot be exported (the label column joins "
            f"labels with '|'): samples {format_list([s.id for s in joined])}."
        )
    img = np.asarray(method.embed_images(feats.image), dtype=np.float32)
    txt = np.asarray(method.embed_texts(feats.text), dtype=np.float32)
    metadata = {
        "id": [s.id for s in dataset.samples],
        "caption": [s.text or "" for s in dataset.samples],
        "image_path": [str(s.image) if s.image is not None else "" for s in dataset.samples],
        "label": ["|".join(s.labels) for s in dataset.samples],
        "split": [s.split for s in dataset.samples],
    }
    return export_clip_retrieval(out_dir, img, txt, metadata, **kw)


def export_run(
    checkpoint: str | Path,
    output: str | Path,
    *,
    part_size: int | None = None,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> tuple[Path, RestoredRun]:
    """Embed every sample of a saved run's dataset and write them in the clip-retrieval layout
    (:func:`export_embeddings`); returns (the folder, the restored run)."""
    r = restore_run(checkpoint, cache_dir=cache_dir, device=device, progress=progress)
    return export_embeddings(r.method, r.dataset, r.features, output, part_size=part_size), r
