"""The dataset registry: name → loader ``load(**options) -> Dataset``.

Built-in datasets register themselves when their module is imported (``gcrdp.data`` imports
them); a new dataset module adds ``@DATASETS.register("name")`` on its loader and its module
name to :data:`BUILTIN_MODULES`. Users can register their own loaders the same way.

>>> from gcrdp.data import load_dataset, list_datasets
>>> "twemoji" in list_datasets()
True
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from ..errors import ConfigError
from ..registry import Registry
from .types import Dataset

DatasetLoader = Callable[..., Dataset]

DATASETS: Registry[DatasetLoader] = Registry("dataset")

#: Modules of ``gcrdp.data.formats`` whose import registers a built-in dataset.
BUILTIN_MODULES: tuple[str, ...] = (
    "twemoji",
    "manifest",
    "wikipedia",
    "dscmr",
    "pascal",
    "featurefiles",
    "folder",
    "clip_retrieval",
    "nuswide",
    "xmedianet",
)


def _ensure_builtins() -> None:
    for mod in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.formats.{mod}")


def list_datasets() -> list[str]:
    """Sorted names of the registered datasets."""
    _ensure_builtins()
    return DATASETS.names()


def dataset_options(name: str, /) -> dict[str, object]:
    """The options a dataset's loader accepts, with their defaults (``inspect.Parameter.empty``
    for required ones)."""
    _ensure_builtins()
    sig = inspect.signature(DATASETS.get(name))
    return {p.name: p.default for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def load_dataset(name: str, /, **options: object) -> Dataset:
    """Load dataset ``name`` with loader options, e.g. ``load_dataset("manifest", path=...)``.

    Raises:
        ConfigError: unknown dataset (the message lists the known ones), an unknown option or
            a missing required option (the message lists the accepted options).
    """
    _ensure_builtins()
    loader = DATASETS.get(name)
    sig = inspect.signature(loader)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    known = dataset_options(name)
    if not accepts_any:
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"Dataset {name!r} does not accept option(s) {', '.join(map(repr, unknown))}. Accepted options: {_describe(known)}."
            )
    missing = sorted(k for k, v in known.items() if v is inspect.Parameter.empty and k not in options)
    if missing:
        raise ConfigError(
            f"Dataset {name!r} needs option(s) {', '.join(map(repr, missing))}. "
            f"Accepted options: {_describe(known)}. On the command line: --root DIR for "
            "'root', --dataset-option KEY=VALUE for the others; 'gcrdp datasets "
            f"{name}' describes them."
        )
    return loader(**options)


def _describe(options: dict[str, object]) -> str:
    if not options:
        return "(none)"
    return ", ".join(f"{k} (required)" if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in options.items())
