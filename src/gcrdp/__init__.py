"""gcrdp: few-shot cross-modal retrieval (GCRDP, baselines, protocol, tools)."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ConfigError, DataError, GcrdpError, MissingDependencyError

__all__ = ["__version__", "GcrdpError", "ConfigError", "DataError", "MissingDependencyError"]
