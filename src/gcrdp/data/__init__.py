"""Datasets, class splits, few-shot protocol and the sample/feature types.

Importing this package registers the built-in datasets (``twemoji``, ``manifest``).
"""

from .features import FeatureSet, ModalityFeatures
from .manifest import load_manifest
from .protocol import PROTOCOLS, ProtocolSplit, make_split
from .registry import DATASETS, dataset_options, list_datasets, load_dataset
from .splits import generate_class_split, list_class_splits, load_class_split
from .twemoji import load_twemoji
from .types import ClassSplit, Dataset, Sample

__all__ = [
    "Sample", "Dataset", "ClassSplit", "ModalityFeatures", "FeatureSet",
    "DATASETS", "load_dataset", "list_datasets", "dataset_options",
    "load_class_split", "generate_class_split", "list_class_splits",
    "PROTOCOLS", "ProtocolSplit", "make_split",
    "load_twemoji", "load_manifest",
]
