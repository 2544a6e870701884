"""Model building blocks: projection heads, pooling and the GMM/EM module."""

from .gmm import (
    GMMConfig,
    GMMLayer,
    GMMResult,
    e_step,
    estimate_log_gaussian_prob,
    fit_gmm,
    gmm_views,
    m_step,
    mixture_entropy,
)
from .heads import ProjectionHead
from .pooling import masked_mean

__all__ = [
    "GMMConfig",
    "GMMLayer",
    "GMMResult",
    "ProjectionHead",
    "e_step",
    "estimate_log_gaussian_prob",
    "fit_gmm",
    "gmm_views",
    "m_step",
    "masked_mean",
    "mixture_entropy",
]
