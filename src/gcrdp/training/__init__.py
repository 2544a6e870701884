"""Training: configs, seeded batching with oversampling, the shared loop."""

from .config import TrainConfig
from .fit import FitData, FitReport
from .loop import fit_loop

__all__ = ["FitData", "FitReport", "TrainConfig", "fit_loop"]
