"""Runs over shots × seeds × methods, their results files and tables.

``RunConfig`` and the tables import nothing heavy; ``run_experiment`` and ``summarize`` load the
runner (and with it torch and the methods) on first use, so that a command line that only
builds and checks a config — and reports a mistake in it — answers at once.
"""

from typing import Any

from .config import RunConfig
from .table import format_instance_table, format_table

__all__ = ["RunConfig", "run_experiment", "summarize", "format_table", "format_instance_table"]

_LAZY = {"run_experiment", "summarize"}


def __getattr__(name: str) -> Any:  # PEP 562: the runner on first use
    if name in _LAZY:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
