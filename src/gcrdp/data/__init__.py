"""Datasets, class splits, few-shot protocol and the sample/feature types.

Importing this package registers the built-in datasets: ``twemoji`` (default), the
benchmarks ``wikipedia``, ``pascal-sentence``, ``nus-wide``, ``xmedianet``, DSCMR-style feature
folders ``dscmr``, and users' own data: ``manifest``, ``folder``, ``features``,
``clip-retrieval``. ``gcrdp datasets`` lists them with their layouts.

The data path: a reader (``@register_reader("name")``) returns what it read, a
:class:`RawDataset`; :func:`load_dataset` applies ``class_split``, ``split_seed`` and
``skip_bad`` and finishes the :class:`Dataset`.
"""

from .features import FeatureSet, ModalityFeatures
from .formats.build import RawDataset, SeededSplit
from .formats.clip_retrieval import export_clip_retrieval, load_clip_retrieval
from .formats.dscmr import load_dscmr
from .formats.featurefiles import load_feature_files
from .formats.folder import load_folder
from .formats.manifest import load_manifest
from .formats.nuswide import load_nuswide
from .formats.pascal import load_pascal_sentence
from .formats.twemoji import load_twemoji
from .formats.wikipedia import load_wikipedia
from .formats.xmedianet import load_xmedianet
from .protocol import PROTOCOLS, ProtocolSplit, make_split
from .registry import DATASETS, dataset_options, list_datasets, load_dataset, register_reader
from .splits import generate_class_split, list_class_splits, load_class_split
from .types import ClassSplit, Dataset, Sample

__all__ = [
    "Sample",
    "Dataset",
    "ClassSplit",
    "ModalityFeatures",
    "FeatureSet",
    "DATASETS",
    "RawDataset",
    "SeededSplit",
    "register_reader",
    "load_dataset",
    "list_datasets",
    "dataset_options",
    "load_class_split",
    "generate_class_split",
    "list_class_splits",
    "PROTOCOLS",
    "ProtocolSplit",
    "make_split",
    "load_twemoji",
    "load_manifest",
    "load_wikipedia",
    "load_pascal_sentence",
    "load_dscmr",
    "load_feature_files",
    "load_folder",
    "load_clip_retrieval",
    "export_clip_retrieval",
    "load_nuswide",
    "load_xmedianet",
]
