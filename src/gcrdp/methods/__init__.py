"""Retrieval methods behind one interface, registered by name in :data:`METHODS`."""

from . import cca, clip4cmr, contrastive, dscmr, flexclip, gcrdp, zeroshot  # noqa: F401  (register the methods)
from .base import METHODS, FitData, FitReport, RetrievalMethod, build_method

__all__ = ["METHODS", "FitData", "FitReport", "RetrievalMethod", "build_method"]
