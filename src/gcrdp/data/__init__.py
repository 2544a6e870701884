"""Datasets, class splits, few-shot protocol and the sample/feature types."""

from .features import FeatureSet, ModalityFeatures
from .types import ClassSplit, Dataset, Sample

__all__ = ["Sample", "Dataset", "ClassSplit", "ModalityFeatures", "FeatureSet"]
