"""Retrieval methods behind one interface, registered by name in :data:`METHODS`."""

from . import contrastive, gcrdp  # noqa: F401  (register "gap-infonce", "gcrdp")
from .base import METHODS, FitData, FitReport, RetrievalMethod, build_method

__all__ = ["METHODS", "FitData", "FitReport", "RetrievalMethod", "build_method"]
