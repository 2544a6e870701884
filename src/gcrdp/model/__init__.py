"""Model building blocks: projection heads, pooling (and, later, the GMM module)."""

from .heads import ProjectionHead
from .pooling import masked_mean

__all__ = ["ProjectionHead", "masked_mean"]
