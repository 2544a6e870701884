"""Losses, one per file; each is a pure function on tensors."""

from .combined import LossWeights, combine_losses
from .infonce import symmetric_infonce
from .multi_positive import multi_positive_infonce
from .rdp import RDP_CONFIDENCE, RDP_TEACHERS, RDP_VARIANTS, rdp_loss, rdp_teacher_loss
from .regularizer import cross_modal_regularizer

__all__ = [
    "RDP_CONFIDENCE",
    "RDP_TEACHERS",
    "RDP_VARIANTS",
    "LossWeights",
    "combine_losses",
    "cross_modal_regularizer",
    "multi_positive_infonce",
    "rdp_loss",
    "rdp_teacher_loss",
    "symmetric_infonce",
]
