"""Search what you trained: an index over a collection (FAISS, embedded), queried by text or by
image with the model that built it (:class:`Retriever`; ``gcrdp index`` / ``gcrdp search``)."""

from __future__ import annotations

from .backends import FaissBackend, recall_at_k, resolve_index_type
from .model import SearchModel
from .retriever import (
    Hit,
    Item,
    Retriever,
    format_hits,
    items_from_dataset,
    items_from_features,
    items_from_images,
    items_from_manifest,
    items_from_text_file,
)
from .shards import merge_indexes
from .streaming import EmbeddingSpool

__all__ = [
    "EmbeddingSpool",
    "FaissBackend",
    "Hit",
    "Item",
    "Retriever",
    "SearchModel",
    "format_hits",
    "items_from_dataset",
    "items_from_features",
    "items_from_images",
    "items_from_manifest",
    "items_from_text_file",
    "merge_indexes",
    "recall_at_k",
    "resolve_index_type",
]
