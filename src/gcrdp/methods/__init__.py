"""Retrieval methods behind one interface, registered by name in :data:`METHODS`."""

from . import contrastive  # noqa: F401  (registers "gap-infonce")
from .base import METHODS, FitData, FitReport, RetrievalMethod, build_method

__all__ = ["METHODS", "FitData", "FitReport", "RetrievalMethod", "build_method"]
