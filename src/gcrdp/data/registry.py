"""The dataset registry: name → reader, and :func:`load_dataset`, the one place that
finishes a dataset.

The data path: a reader (``read(**options) -> RawDataset``) reads files and returns what it read
(:class:`~gcrdp.data.formats.build.RawDataset`); :func:`load_dataset` applies the options every
dataset shares — ``class_split``, ``split_seed``, ``skip_bad`` — with
:func:`~gcrdp.data.formats.build.finish`, which builds the :class:`Dataset`.

Built-in readers register themselves when their module is imported (``gcrdp.data`` imports
them): a new dataset module adds ``@register_reader("name")`` on its reader and its module name
to :data:`BUILTIN_MODULES`. Users can register their own readers the same way, or a loader that
returns a finished :class:`Dataset` with ``@DATASETS.register("name")`` (it receives every
option itself).

>>> from gcrdp.data import load_dataset, list_datasets
>>> "twemoji" in list_datasets()
True
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from ..errors import ConfigError
from ..registry import Registry
from .types import Dataset

if TYPE_CHECKING:
    from .formats.build import RawDataset

DatasetLoader = Callable[..., "Dataset | RawDataset"]

DATASETS: Registry[DatasetLoader] = Registry("dataset")

#: name → the shared options (``class_split``, ``split_seed``, ``skip_bad``) its reader takes.
_SHARED: dict[str, tuple[str, ...]] = {}

_ALL_SHARED = ("class_split", "split_seed", "skip_bad")

R = TypeVar("R", bound=DatasetLoader)


def register_reader(name: str, *, shared: Sequence[str] = _ALL_SHARED) -> Callable[[R], R]:
    """Register a reader that returns a :class:`~gcrdp.data.formats.build.RawDataset` under
    ``name``; :func:`load_dataset` accepts its own options and the ``shared`` ones
    (``class_split``, ``split_seed``, ``skip_bad``), which it applies itself."""
    unknown = sorted(set(shared) - set(_ALL_SHARED))
    if unknown:
        raise ValueError(f"register_reader({name!r}): shared options are among {_ALL_SHARED}, got {unknown}")

    def add(reader: R) -> R:
        DATASETS.register(name)(reader)
        _SHARED[name.lower()] = tuple(o for o in _ALL_SHARED if o in shared)
        return reader

    return add


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
    own = {p.name: p.default for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    from .formats.build import SHARED_OPTIONS

    return {**own, **{k: SHARED_OPTIONS[k] for k in _SHARED.get(str(name).lower(), ())}}


def load_dataset(name: str, /, **options: object) -> Dataset:
    """Load dataset ``name`` with its options, e.g. ``load_dataset("manifest", path=...)``.

    The reader gets its own options; the shared ones it was registered with (``class_split``,
    ``split_seed``, ``skip_bad``) are applied here, by :func:`~gcrdp.data.formats.build.finish`,
    to the :class:`~gcrdp.data.formats.build.RawDataset` it returns. A loader that returns a
    finished :class:`Dataset` (``@DATASETS.register``) gets every option and is returned as is.

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
    from .formats.build import RawDataset, check_skip_bad, finish

    shared = {k: options.pop(k) for k in _SHARED.get(str(name).lower(), ()) if k in options}
    if "skip_bad" in shared:
        check_skip_bad(shared["skip_bad"])
    got = loader(**options)
    if isinstance(got, RawDataset):
        return finish(got, **shared)  # type: ignore[arg-type]
    if not isinstance(got, Dataset):
        raise TypeError(f"The loader of dataset {name!r} returned {type(got).__name__}, not a Dataset or a RawDataset.")
    return got


def _describe(options: dict[str, object]) -> str:
    if not options:
        return "(none)"
    return ", ".join(f"{k} (required)" if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in options.items())
