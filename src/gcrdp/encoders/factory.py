"""The one encoder factory: what names a pair of encoders (:class:`EncoderSettings`), one
encoder of it (:class:`EncoderSpec`), and the functions that build them. The experiment runner,
the search model and the Dask workers all build their encoders here, so equal settings give
equal encoders (and equal fingerprints: the feature cache's key) wherever they are built.

::

    settings = EncoderSettings.of(run_config)  # or EncoderSettings(image_encoder="clip", ...)
    image, text = build_image_encoder(settings), build_text_encoder(settings)
    names = class_name_features(["food-fruit", "animal_cat"], settings)
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from .base import MODALITIES, check_encoder, get_image_encoder, get_text_encoder

#: The encoders of a run that names none (``RunConfig``'s defaults).
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
DEFAULT_TEXT_ENCODER = "minilm-l6"
#: Storage dtypes of cached features (computation is float32).
FEATURE_DTYPES = ("float16", "float32")
#: Texts per batch when class names are embedded.
CLASS_NAME_BATCH = 64


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}.")
    return modality


def build_encoder(modality: str, name: str, options: Mapping[str, Any] | None = None) -> Any:
    """The ``modality`` encoder registered as ``name``, built with keyword ``options``; an option
    the encoder does not take is a :class:`ConfigError` naming the modality and the options."""
    factory = get_image_encoder if _check_modality(modality) == "image" else get_text_encoder
    kw = dict(options or {})
    try:
        return factory(name, **kw)
    except TypeError as exc:  # an option the encoder does not take
        raise ConfigError(f"The {modality} encoder {name!r} does not accept the options {sorted(kw)}: {exc}") from None


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder, as data (what a Dask worker gets instead of a live model): ``name`` is a
    registered encoder name (``"efficientnet-lite0"``) or an importable factory
    ``"package.module:callable"``; ``options`` are its keyword arguments (picklable values)."""

    modality: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """The encoder (checked against the :class:`~gcrdp.encoders.base.Encoder` protocol)."""
        if ":" in self.name:
            module, _, attr = self.name.partition(":")
            encoder = getattr(importlib.import_module(module), attr)(**self.options)
        else:
            encoder = build_encoder(self.modality, self.name, self.options)
        check_encoder(encoder, self.modality, f"{self.modality} encoder {self.name!r}")
        return encoder

    def cache_id(self) -> str:
        return repr((self.modality, self.name, sorted(self.options.items())))


@dataclass(frozen=True)
class EncoderSettings:
    """Everything that decides a run's features: the encoders' names and options, the image
    encoder's inference backend (``None``: the encoder's default) and the storage dtype. The
    fields are ``RunConfig``'s of the same names, with its defaults."""

    image_encoder: str = DEFAULT_IMAGE_ENCODER
    text_encoder: str = DEFAULT_TEXT_ENCODER
    image_encoder_options: Mapping[str, Any] = field(default_factory=dict)
    text_encoder_options: Mapping[str, Any] = field(default_factory=dict)
    encoder_backend: str | None = None
    feature_dtype: str = "float16"

    #: The field names, in the order of :meth:`to_dict`.
    FIELDS: ClassVar[tuple[str, ...]] = (
        "image_encoder",
        "text_encoder",
        "image_encoder_options",
        "text_encoder_options",
        "encoder_backend",
        "feature_dtype",
    )

    def __post_init__(self) -> None:
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ConfigError(f"feature_dtype must be 'float16' or 'float32', got {self.feature_dtype!r}.")
        # own copies: later changes to the caller's dicts do not reach built encoders
        object.__setattr__(self, "image_encoder_options", dict(self.image_encoder_options or {}))
        object.__setattr__(self, "text_encoder_options", dict(self.text_encoder_options or {}))

    @classmethod
    def of(cls, source: Any) -> EncoderSettings:
        """The settings of ``source``: an object with these attributes (a ``RunConfig``) or a
        mapping with these keys (a stored run config, a query-heads record); a missing one
        takes its default."""
        if isinstance(source, EncoderSettings):
            return source
        if isinstance(source, Mapping):
            return cls(**{k: source[k] for k in cls.FIELDS if k in source})
        return cls(**{k: getattr(source, k) for k in cls.FIELDS if hasattr(source, k)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, the keys of :attr:`FIELDS` (what :meth:`of` reads back)."""
        out = {k: getattr(self, k) for k in self.FIELDS}
        out["image_encoder_options"] = dict(self.image_encoder_options)
        out["text_encoder_options"] = dict(self.text_encoder_options)
        return out

    def name(self, modality: str) -> str:
        return self.image_encoder if _check_modality(modality) == "image" else self.text_encoder

    def options(self, modality: str) -> dict[str, Any]:
        """The keyword options the ``modality`` encoder is built with (a new dict): the image
        encoder's include ``backend`` when :attr:`encoder_backend` is set."""
        if _check_modality(modality) == "text":
            return dict(self.text_encoder_options)
        kw = dict(self.image_encoder_options)
        if self.encoder_backend:
            kw["backend"] = self.encoder_backend
        return kw

    def spec(self, modality: str) -> EncoderSpec:
        """The ``modality`` encoder as an :class:`EncoderSpec` (for Dask workers)."""
        return EncoderSpec(modality, self.name(modality), self.options(modality))

    def build(self, modality: str) -> Any:
        """The ``modality`` encoder (:func:`build_encoder`)."""
        return build_encoder(modality, self.name(modality), self.options(modality))


def build_image_encoder(settings: EncoderSettings) -> Any:
    """The image encoder of ``settings``."""
    return settings.build("image")


def build_text_encoder(settings: EncoderSettings) -> Any:
    """The text encoder of ``settings``."""
    return settings.build("text")


def class_name_texts(class_names: Iterable[Any]) -> list[str]:
    """The text a class name is embedded from: separators as spaces (``food-fruit`` → ``food fruit``)."""
    return [str(c).replace("-", " ").replace("_", " ").strip() or str(c) for c in class_names]


def class_name_features(class_names: Iterable[Any], settings: EncoderSettings) -> np.ndarray:
    """(n_classes, d) float32 pooled embeddings of the class names by the text encoder of
    ``settings`` (also for pre-extracted datasets: the names only condition a method, they
    need not share the features' space)."""
    feats = build_text_encoder(settings).encode(class_name_texts(class_names), batch_size=CLASS_NAME_BATCH, progress=False)
    return np.ascontiguousarray(feats.pooled, dtype=np.float32)
