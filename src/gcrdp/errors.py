"""Exceptions raised for user-facing problems.

Every mistake a user can make (a wrong name, a missing file, bad data) raises a
:class:`GcrdpError` subclass whose message says what was expected, what came
and how to fix it. The command line prints the message and exits with status 2;
library users can catch :class:`GcrdpError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class GcrdpError(Exception):
    """Base class of every error caused by user input (exit status 2 in the CLI)."""


class ConfigError(GcrdpError, ValueError):
    """A parameter has an invalid value or an unknown name."""


class DataError(GcrdpError, ValueError):
    """Input data is missing, unreadable or inconsistent."""


class NotFittedError(RuntimeError):
    """A method asked to embed (or save) before ``fit()`` — a programming error, not a data one."""


class MissingDependencyError(GcrdpError, ImportError):
    """An optional dependency needed for the requested feature is not installed."""


def format_list(items: Sequence[object] | Iterable[object], limit: int = 5) -> str:
    """Format the first ``limit`` items and a count of the rest: ``'a', 'b' (and 3 more)``."""
    items = list(items)
    shown = ", ".join(repr(str(x)) for x in items[:limit])
    if len(items) > limit:
        shown += f" (and {len(items) - limit} more; {len(items)} in all)"
    return shown


def optional_import(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised through monkeypatching in tests
        raise MissingDependencyError(
            f"{purpose} needs the Python package providing {module!r}, which is not installed "
            f"({exc}). Install it with: pip install 'gcrdp[{extra}]'"
        ) from exc
