"""Saving and loading fitted methods (the *final* checkpoints of ``gcrdp train``), on the
checkpoint file format of :mod:`gcrdp.training.checkpoint`; the contract a method follows is
in :mod:`gcrdp.methods.base`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, NotFittedError
from ..training.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    Checkpoint,
    load_weights,
    read_checkpoint,
    state_tensors,
    write_checkpoint,
)
from ..training.config import LATER_OPTION_DEFAULTS
from .base import RetrievalMethod, build_method


def method_info(method: Any) -> dict[str, Any]:
    """Name, ``config_dict()`` and input dims of a method built by ``init_model``."""
    check_checkpointable(method)
    dims = getattr(method, "input_dims_", None)
    return {"method": method.name, "method_config": method.config_dict(), "input_dims": dict(dims) if dims else None}


def check_checkpointable(method: Any) -> None:
    """Raise :class:`ConfigError` unless ``method`` follows the checkpoint contract of
    :mod:`gcrdp.methods.base` (``name``, ``config_dict``, ``init_model``, and a ``fit`` that
    takes ``checkpoint_dir`` and ``resume``)."""
    import inspect

    missing = [a for a in ("name", "config_dict", "init_model", "fit") if not hasattr(method, a)]
    if not missing:
        params = inspect.signature(method.fit).parameters
        missing = [f"fit(..., {p}=)" for p in ("checkpoint_dir", "resume") if p not in params]
    if missing:
        raise ConfigError(
            f"Method {getattr(method, 'name', type(method).__name__)!r} cannot be "
            f"checkpointed: it lacks {', '.join(missing)} (see the checkpoint contract "
            "in gcrdp.methods.base)."
        )


def method_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config_dict()`` minus its ``method`` key: the options that rebuild the method."""
    return {k: v for k, v in config.items() if k != "method"}


def stored_options(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The options that rebuild the method a checkpoint's ``config`` describes: an option added
    after it was written (:data:`~gcrdp.training.config.LATER_OPTION_DEFAULTS`) and absent from it
    takes the value every fit had before the option existed — not today's default, which may
    differ (``gcrdp``'s ``pca_dim``) and would rebuild another model."""
    options = method_options(config)
    missing = {k: v for k, v in LATER_OPTION_DEFAULTS.items() if k not in options}
    if missing:
        accepted = build_method(name).config_dict()
        options.update({k: v for k, v in missing.items() if k in accepted})
    return options


def save_method(method: Any, path: str | Path, *, run: Mapping[str, Any] | None = None, fit: Mapping[str, Any] | None = None) -> Path:
    """Write a fitted method as a *final* checkpoint folder at ``path`` (atomically).

    Args:
        method: a fitted checkpointable method (``model_`` set by ``init_model``/``fit``).
        run: the run info (``gcrdp train`` stores what ``evaluate --checkpoint`` needs).
        fit: the fit report (``FitReport.to_dict()``), kept for provenance.
    """
    info = method_info(method)
    model = getattr(method, "model_", None)
    if model is None:
        raise NotFittedError(f"{method.name}: call fit() (or init_model()) before saving")
    if not info["input_dims"]:
        raise ConfigError(
            f"{method.name}: init_model() did not record input_dims_, so the model "
            "could not be rebuilt on load (checkpoint contract, gcrdp.methods.base)."
        )
    state = {"kind": "final", **info, "fit": dict(fit) if fit else None, "run": dict(run) if run else None}
    write_checkpoint(path, state, {MODEL_FILE: (state_tensors(model), None)})
    return Path(path)


def load_method(source: str | Path | Checkpoint, device: str = "cpu", expect: type | None = None) -> RetrievalMethod:
    """Rebuild the method stored in a checkpoint (final, or training: then the last epoch's
    weights) on ``device``: ``build_method(name, options)``, ``init_model(**input_dims)``,
    then the weights.

    Raises:
        ConfigError: the stored method is not registered (the message lists the known ones),
            or is not an instance of ``expect``.
        DataError: a missing/corrupt checkpoint or weights that do not fit.
    """
    ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source)
    name, config = ckpt.state["method"], ckpt.state["method_config"]
    if not isinstance(config, dict) or not isinstance(ckpt.state["input_dims"], dict):
        raise DataError(f"Checkpoint {ckpt.path / STATE_FILE}: method_config and input_dims must be objects.")
    try:
        method = build_method(str(name), stored_options(str(name), config), device)
    except ConfigError as exc:
        raise ConfigError(f"Checkpoint {ckpt.path} holds method {name!r} which this gcrdp cannot rebuild: {exc}") from None
    if expect is not None and not isinstance(method, expect):
        raise ConfigError(f"Checkpoint {ckpt.path} holds method {name!r}, not a {expect.__name__}.")
    check_checkpointable(method)
    tensors = ckpt.tensors(MODEL_FILE, device)
    check_input_dims(ckpt.state["input_dims"], tensors, str(ckpt.path))
    try:
        model = method.init_model(**ckpt.state["input_dims"])  # type: ignore[attr-defined]  # checked above
    except TypeError as exc:
        raise DataError(f"Checkpoint {ckpt.path}: input dims {ckpt.state['input_dims']} do not fit {name}.init_model ({exc}).") from None
    load_weights(model, tensors, str(ckpt.path / MODEL_FILE))
    model.eval()
    return method


def check_input_dims(input_dims: Mapping[str, Any], tensors: Mapping[str, Any], where: str) -> None:
    """:class:`DataError` unless every input dim a checkpoint declares is a positive integer,
    and no feature dim (``image_dim``, ``text_dim``) is far larger (over 4× and over 1024) than
    every size of its stored weights — checked before the model is built, so a damaged
    ``state.json`` (``image_dim`` = 2,000,000) is refused before gigabytes of layers are
    allocated (a feature dim sizes the first layer that reads it). A smaller mismatch builds the
    model and gets :func:`load_weights`' tensor-by-tensor message. A method without weight
    matrices (``zero-shot``) has nothing to compare with."""
    shapes = [tuple(int(n) for n in getattr(t, "shape", ())) for t in tensors.values()]
    sizes = {n for shape in shapes for n in shape}
    for key, value in input_dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"Checkpoint {where}: input dim {key} = {value!r} is not a positive integer.")
        if (
            key in ("image_dim", "text_dim")
            and any(len(s) >= 2 for s in shapes)
            and value not in sizes
            and value > max(1024, 4 * max(sizes))
        ):
            raise DataError(
                f"Checkpoint {where}: it declares {key} = {value}, but none of its stored weights has a dimension of that "
                f"size (the largest is {max(sizes)}): its state.json does not match its weights. Train the model again."
            )
