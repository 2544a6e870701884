"""The interface shared by GCRDP, its ablations and the baselines.

A method is fitted on the training pairs of one protocol split (with the validation pairs
for early stopping and model selection) and then embeds images and texts into a common
space where retrieval is cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..data.features import FeatureSet, ModalityFeatures
from ..registry import Registry


@dataclass
class FitData:
    """What a method is fitted on.

    Attributes:
        train: features of the training pairs.
        train_labels: (n_train, n_classes) bool multi-hot labels.
        oversample: (n_train,) bool, True for the few unseen-class pairs of an N-shot run.
        val: features of the validation pairs (or None: no early stopping).
        val_labels: (n_val, n_classes) bool.
        class_names: the dataset's class names (label column order).
    """

    train: FeatureSet
    train_labels: np.ndarray
    oversample: np.ndarray
    val: FeatureSet | None = None
    val_labels: np.ndarray | None = None
    class_names: tuple[str, ...] = ()


@dataclass
class FitReport:
    """What happened during fitting (written into the run record)."""

    epochs: int = 0
    best_epoch: int = 0
    best_val_map: float | None = None
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs, "best_epoch": self.best_epoch, "best_val_map": self.best_val_map,
            "seconds": round(self.seconds, 3), "history": self.history, **self.extra,
        }


@runtime_checkable
class RetrievalMethod(Protocol):
    """A fitted method maps each modality's features to (n, dim) float32 embeddings."""

    name: str

    def fit(self, data: FitData, *, seed: int) -> FitReport: ...

    def embed_images(self, features: ModalityFeatures) -> np.ndarray: ...

    def embed_texts(self, features: ModalityFeatures) -> np.ndarray: ...

    def config_dict(self) -> dict[str, Any]: ...


#: name -> factory ``(options: dict, device: str) -> RetrievalMethod``
METHODS: Registry = Registry("method")


def build_method(name: str, options: dict[str, Any] | None = None, device: str = "cpu") -> RetrievalMethod:
    """Instantiate the registered method ``name`` with its options (validated by the method)."""
    factory = METHODS.get(name)
    return factory(dict(options or {}), device)
