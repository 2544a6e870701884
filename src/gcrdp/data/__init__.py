"""Datasets, class splits, few-shot protocol and the sample/feature types.

Importing this package registers the built-in datasets: ``twemoji`` (default), the
benchmarks ``wikipedia``, ``pascal-sentence``, ``nus-wide``, ``xmedianet``, DSCMR-style feature
folders ``dscmr``, and users' own data: ``manifest``, ``folder``, ``features``,
``clip-retrieval``. ``gcrdp datasets`` lists them with their layouts.
"""

from .clip_retrieval import export_clip_retrieval, load_clip_retrieval
from .dscmr import load_dscmr
from .featurefiles import load_feature_files
from .features import FeatureSet, ModalityFeatures
from .folder import load_folder
from .manifest import load_manifest
from .nuswide import load_nuswide
from .pascal import load_pascal_sentence
from .protocol import PROTOCOLS, ProtocolSplit, make_split
from .registry import DATASETS, dataset_options, list_datasets, load_dataset
from .splits import generate_class_split, list_class_splits, load_class_split
from .twemoji import load_twemoji
from .types import ClassSplit, Dataset, Sample
from .wikipedia import load_wikipedia
from .xmedianet import load_xmedianet

__all__ = [
    "Sample", "Dataset", "ClassSplit", "ModalityFeatures", "FeatureSet",
    "DATASETS", "load_dataset", "list_datasets", "dataset_options",
    "load_class_split", "generate_class_split", "list_class_splits",
    "PROTOCOLS", "ProtocolSplit", "make_split",
    "load_twemoji", "load_manifest", "load_wikipedia", "load_pascal_sentence", "load_dscmr",
    "load_feature_files", "load_folder", "load_clip_retrieval", "export_clip_retrieval",
    "load_nuswide", "load_xmedianet",
]
