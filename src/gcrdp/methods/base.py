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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..data.features import ModalityFeatures
from ..registry import Registry
from ..training.fit import FitData, FitReport

__all__ = ["METHODS", "CheckpointableMethod", "FitData", "FitReport", "RetrievalMethod", "build_method", "check_fitted"]


@runtime_checkable
class RetrievalMethod(Protocol):
    """A fitted method maps each modality's features to (n, dim) float32 embeddings."""

    name: str

    def fit(self, data: FitData, *, seed: int) -> FitReport: ...

    def embed_images(self, features: ModalityFeatures) -> np.ndarray: ...

    def embed_texts(self, features: ModalityFeatures) -> np.ndarray: ...

    def config_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class CheckpointableMethod(RetrievalMethod, Protocol):
    """A trainable method that can be saved, loaded and resumed (module docstring, *Checkpoint
    contract*). ``model_`` is an ``nn.Module`` (None before fit); ``input_dims_`` the keyword
    arguments ``init_model`` was called with."""

    model_: Any
    input_dims_: dict[str, int] | None

    def init_model(self, **dims: int) -> Any: ...

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
