"""Training: configs, seeded batching with oversampling, the shared loop."""

from .config import TrainConfig
from .loop import fit_loop

__all__ = ["TrainConfig", "fit_loop"]
