"""Cross-modal regularisation of the global embeddings (SPEC §3.4).

Two terms, in the spirit of DSCMR (Zhen et al., CVPR 2019):

* **modality invariance** — paired image and text global embeddings should coincide:
  ``mean_i ||g_v[i] − g_t[i]||²`` (DSCMR's J3 uses the Frobenius norm of the difference).
* **label space** — class structure shared across modalities: one linear classifier, owned by the
  model and shared by both modalities, maps each global embedding to class logits, which are
  fitted to the labels. DSCMR fits the classifier output to the one-hot labels with a squared
  (Frobenius) error; here we use binary cross-entropy with logits, averaged over the B × C
  entries, which is the proper likelihood for multi-hot (multi-label) targets and also works for
  single-label rows (a one-hot row is a special multi-hot row), so one form covers every dataset.
  A row of all zeros (no known class) pushes every logit down.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError


def modality_invariance(image_global: torch.Tensor, text_global: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of ``||g_v − g_t||²``; inputs (B, D), row i of each paired. Scalar."""
    return (image_global - text_global).pow(2).sum(dim=-1).mean()


def label_space_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits between (B, C) logits and (B, C) multi-hot labels, mean over entries."""
    if logits.shape != labels.shape:
        raise DataError(
            f"classifier logits and labels must have the same shape (batch, classes), got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def cross_modal_regularizer(
    image_global: torch.Tensor,
    text_global: torch.Tensor,
    image_logits: torch.Tensor | None = None,
    text_logits: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    label_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_reg = invariance + label_weight · label``.

    Args:
        image_global: (B, D) normalised image global embeddings.
        text_global: (B, D) normalised text global embeddings; row i paired with image row i.
        image_logits: (B, C) shared-classifier logits of the image embeddings, or None.
        text_logits: (B, C) shared-classifier logits of the text embeddings, or None.
        labels: (B, C) multi-hot labels; required when any logits are given.
        label_weight: weight ≥ 0 of the label-space term.

    The label term is the mean over the modalities whose logits are given of
    :func:`label_space_loss`; it is 0 (and skipped) when no logits are given.

    Returns:
        ``(total, {"invariance": float, "label": float})`` — the parts are unweighted values.
    """
    if not (math.isfinite(label_weight) and label_weight >= 0):
        raise ConfigError(f"label_weight must be a finite number >= 0, got {label_weight!r}.")
    if image_global.dim() != 2 or image_global.shape != text_global.shape:
        raise DataError(
            "image_global and text_global must both have shape (batch, dim), got "
            f"{tuple(image_global.shape)} and {tuple(text_global.shape)}."
        )
    invariance = modality_invariance(image_global, text_global)
    given = [x for x in (image_logits, text_logits) if x is not None]
    total = invariance
    label_value = 0.0
    if given:
        if labels is None:
            raise ConfigError(
                "cross_modal_regularizer got classifier logits but labels=None; pass the "
                "(batch, classes) multi-hot labels or drop the logits."
            )
        label = cast(torch.Tensor, sum(label_space_loss(x, labels) for x in given) / len(given))  # a sum of tensors
        total = total + label_weight * label
        label_value = float(label.detach())
    return total, {"invariance": float(invariance.detach()), "label": label_value}
