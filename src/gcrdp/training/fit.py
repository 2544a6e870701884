"""What a fit takes and what it reports: the records shared by the training loop and the
methods (they live with training, so that training needs nothing from the methods)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.features import FeatureSet


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
        class_name_features: (n_classes, d) float32 embeddings of the class names by the run's
            text encoder (pooled output), rows in ``class_names`` order — given to methods whose
            ``needs_class_name_features`` is True (e.g. to condition a generator), else None.
    """

    train: FeatureSet
    train_labels: np.ndarray
    oversample: np.ndarray
    val: FeatureSet | None = None
    val_labels: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    class_name_features: np.ndarray | None = None


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
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "best_val_map": self.best_val_map,
            "seconds": round(self.seconds, 3),
            "history": self.history,
            **self.extra,
        }
