"""Losses: functions on tensors (FLEX-CLIP's gradient penalty also calls its critic), grouped by
objective, a file holding one loss or the terms of one method. This package exports GCRDP's
(``combined``, ``infonce``, ``multi_positive``, ``rdp``, ``regularizer``); the baselines' terms
are imported from their files: ``dscmr`` (DSCMR), ``generative`` (FLEX-CLIP's stage 1) and
``prototype`` (CLIP4CMR)."""

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
