"""The interface shared by GCRDP, its ablations and the baselines.

A method is fitted on the training pairs of one protocol split (with the validation pairs
for early stopping and model selection) and then embeds images and texts into a common
space where retrieval is cosine similarity.

Checkpoint contract
-------------------
A trainable method is *checkpointable* (``gcrdp train``, :func:`gcrdp.methods.persistence.
save_method` / ``load_method``, resume after an interruption) when it provides, on top of
:class:`RetrievalMethod` (see :class:`CheckpointableMethod`):

1. ``name`` registered in :data:`METHODS`, and ``config_dict()`` that round-trips:
   ``build_method(name, {k: v for k, v in config_dict().items() if k != "method"})`` rebuilds an
   equivalent unfitted method. Values must be JSON-ready (they go into ``state.json``).
2. ``init_model(**dims) -> nn.Module``: builds the untrained module from the config and the
   input dims only (keyword arguments, e.g. ``image_dim``, ``text_dim``, and ``n_classes``
   for a label-space term), sets ``self.model_`` to it and ``self.input_dims_`` to ``dims``
   (a dict of ints) and returns it. Loading = ``init_model(**stored dims)`` + the weights.
3. ``model_``: the ``nn.Module`` whose ``state_dict()`` holds *all* fitted state (use
   registered buffers for non-trainable state). Embedding depends only on ``model_`` and the
   config, so a loaded method embeds exactly like the fitted one.
4. ``fit(data, *, seed, checkpoint_dir=None, resume=True)``: inside
   ``torch.random.fork_rng(devices=[])``, ``torch.manual_seed(seed)``, ``init_model(...)``,
   then :func:`gcrdp.training.fit_loop` with ``checkpoint_dir``, ``resume`` and
   ``method_info=gcrdp.methods.persistence.method_info(self)``. The loop saves and restores
   the weights, optimizer, counters and the torch RNG (dropout), so a resumed fit ends
   bit-identical to an uninterrupted one. Randomness outside the torch global RNG (inside
   the fork) and ``numpy_rng(seed, epoch)`` would break that.
5. Optionally ``save(path, **kw)`` / ``load(path, device)`` delegating to
   :func:`~gcrdp.methods.persistence.save_method` / ``load_method`` (see
   :class:`gcrdp.methods.contrastive.ContrastiveHeadsMethod`).
6. ``tags()`` returning :class:`MethodTags` with ``checkpointable=True`` (and ``resumable=True``
   when ``fit`` goes through ``fit_loop`` epoch by epoch).

Capabilities
------------
What a method can do or needs beyond the protocol is declared, not probed: ``tags()`` returns a
frozen :class:`MethodTags` (like scikit-learn's estimator tags), read through
:func:`method_tags`, which gives a method without ``tags()`` the defaults.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..data.features import ModalityFeatures
from ..registry import Registry
from ..training.fit import FitData, FitReport
from ..utils.options import flatten_options

__all__ = [
    "METHODS",
    "CheckpointableMethod",
    "FitData",
    "FitReport",
    "MethodTags",
    "RetrievalMethod",
    "build_method",
    "check_fitted",
    "flatten_options",
    "method_tags",
    "normalize_options",
]


@dataclass(frozen=True)
class MethodTags:
    """What a method declares about itself; the runner reads these instead of probing attributes.

    Attributes:
        needs_class_name_features: ``fit`` needs ``FitData.class_name_features`` (the runner
            embeds the class names once, with the run's text encoder, for the methods that say so).
        refit: the method has ``refit_options(report)``: the options that refit it without
            validation pairs (``RunConfig.refit``).
        checkpointable: it follows the checkpoint contract (module docstring): ``gcrdp train``,
            save/load.
        resumable: its ``fit`` checkpoints every epoch to ``checkpoint_dir`` and an interrupted
            fit resumes bit-identical (the trainable methods; not the closed-form ones).
        score_metric: how two of its embeddings are scored (``cosine``, ``set-max:K``; see
            :func:`gcrdp.evaluation.retrieval_metrics`).
        renamed_options: old option names it still takes (with a warning) → their new dotted
            key (FLEX-CLIP's ``gen_lr`` → ``generator.lr``).
    """

    needs_class_name_features: bool = False
    refit: bool = False
    checkpointable: bool = False
    resumable: bool = False
    score_metric: str = "cosine"
    renamed_options: Mapping[str, str] = field(default_factory=dict)


#: a method without ``tags()``: none of the capabilities, scored by cosine
DEFAULT_TAGS = MethodTags()


def method_tags(method: Any) -> MethodTags:
    """``method.tags()`` — the method's declared capabilities — or :data:`DEFAULT_TAGS` for a
    method that declares none."""
    tags = getattr(method, "tags", None)
    return tags() if callable(tags) else DEFAULT_TAGS


def normalize_options(method: str, options: Mapping[str, Any], renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A method's options with every dotted key nested (``{"generator.lr": 1e-3}`` →
    ``{"generator": {"lr": 1e-3}}``) and every old name of ``renamed`` (old → new dotted key)
    moved to its new key with a :class:`FutureWarning`. A key given twice (under its old and new
    name, or as a value and a group) is a :class:`~gcrdp.errors.ConfigError`."""
    from ..errors import ConfigError

    renamed = renamed or {}
    old = [k for k in options if k in renamed]
    if old:
        warnings.warn(
            f"{method} option(s) {', '.join(map(repr, old))} are deprecated; use {', '.join(repr(renamed[k]) for k in old)} "
            f"(in a config a group: {{{renamed[old[0]].split('.')[0]!r}: {{...}}}}; on the command line "
            f"--option {method}.{renamed[old[0]]}=VALUE). The old names still work.",
            FutureWarning,
            stacklevel=5,  # the caller of build_method
        )
    out: dict[str, Any] = {}
    for given, value in options.items():
        key = renamed.get(given, given)
        for dotted, leaf_value in flatten_options({key: value}).items():  # a group given as a dict too
            *groups, leaf = dotted.split(".")
            node = out
            for group in groups:
                node = node.setdefault(group, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{method} option {group!r} is given both as a value and as a group of options ({dotted!r}).")
            if leaf in node:
                raise ConfigError(f"{method} option {dotted!r} is given twice (under its old and its new name, or as a value and a group).")
            node[leaf] = leaf_value
    return out


@runtime_checkable
class RetrievalMethod(Protocol):
    """A fitted method maps each modality's features to (n, dim) float32 embeddings."""

    name: str

    def fit(self, data: FitData, *, seed: int) -> FitReport: ...

    def embed_images(self, features: ModalityFeatures) -> np.ndarray: ...

    def embed_texts(self, features: ModalityFeatures) -> np.ndarray: ...

    def config_dict(self) -> dict[str, Any]: ...


# A method may also define ``tags() -> MethodTags`` (module docstring, *Capabilities*); it is not
# part of the protocol so that a method written before it still is one (read via method_tags).


@runtime_checkable
class CheckpointableMethod(RetrievalMethod, Protocol):
    """A trainable method that can be saved, loaded and resumed (module docstring, *Checkpoint
    contract*). ``model_`` is an ``nn.Module`` (None before fit); ``input_dims_`` the keyword
    arguments ``init_model`` was called with."""

    model_: Any
    input_dims_: dict[str, int] | None

    def init_model(self, **dims: int) -> Any: ...

    def tags(self) -> MethodTags: ...

    def fit(self, data: FitData, *, seed: int, checkpoint_dir: str | Path | None = None, resume: bool = True) -> FitReport: ...


#: name -> factory ``(options: dict, device: str) -> RetrievalMethod``
METHODS: Registry = Registry("method")


def check_fitted(method: Any, attr: str = "model_") -> Any:
    """``method.<attr>`` (the fitted model); :class:`~gcrdp.errors.NotFittedError` naming the
    method when it is still ``None``."""
    from ..errors import NotFittedError

    model = getattr(method, attr, None)
    if model is None:
        raise NotFittedError(f"{getattr(method, 'name', type(method).__name__)}: call fit() before embedding")
    return model


def build_method(name: str, options: dict[str, Any] | None = None, device: str = "cpu") -> RetrievalMethod:
    """Instantiate the registered method ``name`` with its options (validated by the method)."""
    factory = METHODS.get(name)
    return factory(dict(options or {}), device)
