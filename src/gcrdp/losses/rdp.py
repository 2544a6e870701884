"""Relative distance preservation on high-confidence pairs (SPEC §3.5).

``S_v = G_v G_vᵀ`` and ``S_t = G_t G_tᵀ`` are the (B, B) cosine-similarity matrices of the image
and of the text global embeddings of a batch. If image A is closer to image B than to image C,
text A should be closer to text B than to text C. Only **high-confidence** pairs count: the
off-diagonal (i, j) whose similarity exceeds the threshold θ in the modality (or modalities)
chosen by ``confidence``. The selection mask carries no gradient; the loss is differentiable in
both ``S_v`` and ``S_t`` (neither side is detached, so both modalities move towards each other).

Variants (:data:`RDP_VARIANTS`):

* ``"distribution"`` — for each row i with at least **two** confident entries M_i,
  ``p = softmax(S_v[i, M_i] / T)`` and ``q = softmax(S_t[i, M_i] / T)`` are compared with the
  symmetric KL divergence ``½·(KL(p‖q) + KL(q‖p)) = ½·Σ (p − q)(log p − log q)``; the loss is
  the mean over qualifying rows. A row with a single confident entry is skipped, because a softmax
  over one entry is 1 whatever the similarities, so it carries no ordering information.
  Symmetric KL rather than Jensen–Shannon: it is closed form in the log-probabilities (no mixture
  log), its gradient does not saturate when the distributions differ, and it is zero exactly
  when the two rankings' softmax distributions agree. Only relative values within a row matter
  (softmax is shift invariant), which matches "relative" distance preservation.
* ``"value"`` — the mean over confident entries of ``(S_v − S_t)²``: preserves the values
  themselves, a stronger constraint.

Both are 0 with a finite, zero gradient when nothing qualifies.
"""

from __future__ import annotations

import math
import numbers
from typing import cast

import torch

from ..errors import ConfigError, DataError, format_list

RDP_VARIANTS = ("distribution", "value")
RDP_CONFIDENCE = ("either", "both", "image", "text")


def _is_number(x: object) -> bool:
    """A real number (Python or NumPy scalar), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def confident_mask(sim_image: torch.Tensor, sim_text: torch.Tensor, threshold: float, confidence: str = "either") -> torch.Tensor:
    """(B, B) bool mask of off-diagonal high-confidence pairs; computed without gradient."""
    if confidence not in RDP_CONFIDENCE:
        raise ConfigError(f"Unknown RDP confidence rule {confidence!r}; known: {format_list(RDP_CONFIDENCE)}.")
    with torch.no_grad():
        hi_v = sim_image > threshold  # (B, B)
        hi_t = sim_text > threshold  # (B, B)
        mask = {
            "either": lambda: hi_v | hi_t,
            "both": lambda: hi_v & hi_t,
            "image": lambda: hi_v,
            "text": lambda: hi_t,
        }[confidence]()
        off_diag = ~torch.eye(mask.shape[0], dtype=torch.bool, device=mask.device)
        return mask & off_diag  # (B, B)


def rdp_distribution(sim_image: torch.Tensor, sim_text: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows with ≥ 2 mask entries of the symmetric KL between the masked row softmaxes.

    ``sim_image``, ``sim_text``: (B, B); ``mask``: (B, B) bool. Scalar (0 if no row qualifies).
    """
    fill = torch.finfo(sim_image.dtype).min  # finite, so empty rows give no NaN anywhere
    zeros = torch.zeros_like(sim_image)
    log_p = torch.log_softmax(torch.where(mask, sim_image / temperature, fill), dim=1)  # (B, B)
    log_q = torch.log_softmax(torch.where(mask, sim_text / temperature, fill), dim=1)  # (B, B)
    terms = torch.where(mask, (log_p.exp() - log_q.exp()) * (log_p - log_q), zeros)  # (B, B)
    row_div = 0.5 * terms.sum(dim=1)  # (B,)
    rows = (mask.sum(dim=1) >= 2).to(sim_image.dtype)  # (B,) rows that qualify
    return (row_div * rows).sum() / rows.sum().clamp(min=1)


def rdp_value(sim_image: torch.Tensor, sim_text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over mask entries of ``(S_v − S_t)²``; (B, B) inputs; scalar (0 if the mask is empty)."""
    sq = torch.where(mask, (sim_image - sim_text).pow(2), torch.zeros_like(sim_image))  # (B, B)
    return sq.sum() / mask.sum().clamp(min=1).to(sim_image.dtype)


def rdp_loss(
    image_global: torch.Tensor,
    text_global: torch.Tensor,
    threshold: float = 0.5,
    *,
    variant: str = "distribution",
    confidence: str = "either",
    temperature: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Relative distance preservation loss.

    Args:
        image_global: (B, D) L2-normalised image global embeddings.
        text_global: (B, D) L2-normalised text global embeddings; row i paired with image row i.
        threshold: θ in [−1, 1); a pair is confident when its similarity is > θ.
        variant: one of :data:`RDP_VARIANTS`.
        confidence: which similarity must exceed θ: ``"either"`` (S_v or S_t), ``"both"``,
            ``"image"`` or ``"text"``.
        temperature: T > 0 of the row softmax (``"distribution"`` only).

    Returns:
        ``(loss, {"rdp": float, "rdp_pairs": fraction of the B(B−1) off-diagonal pairs
        selected})``.
    """
    if variant not in RDP_VARIANTS:
        raise ConfigError(f"Unknown RDP variant {variant!r}; known: {format_list(RDP_VARIANTS)}.")
    if confidence not in RDP_CONFIDENCE:
        raise ConfigError(f"Unknown RDP confidence rule {confidence!r}; known: {format_list(RDP_CONFIDENCE)}.")
    if not (_is_number(threshold) and -1.0 <= float(threshold) < 1.0):
        raise ConfigError(f"RDP threshold must be a number in [-1, 1), got {threshold!r}.")
    if not (_is_number(temperature) and math.isfinite(float(temperature)) and float(temperature) > 0):
        raise ConfigError(f"RDP temperature must be a finite number > 0, got {temperature!r}.")
    threshold, temperature = float(threshold), float(temperature)
    if image_global.dim() != 2 or image_global.shape != text_global.shape:
        raise DataError(
            "image_global and text_global must both have shape (batch, dim), got "
            f"{tuple(image_global.shape)} and {tuple(text_global.shape)}."
        )
    b = image_global.shape[0]
    sim_image = image_global @ image_global.T  # (B, B)
    sim_text = text_global @ text_global.T  # (B, B)
    mask = confident_mask(sim_image, sim_text, threshold, confidence)  # (B, B)
    if variant == "distribution":
        loss = rdp_distribution(sim_image, sim_text, mask, temperature)
    else:
        loss = rdp_value(sim_image, sim_text, mask)
    pairs = float(mask.sum()) / (b * (b - 1)) if b > 1 else 0.0
    return loss, {"rdp": float(loss.detach()), "rdp_pairs": pairs}


# ----------------------------------------------------------------------------- with a teacher
RDP_TEACHERS = ("none", "own", "cross", "cross-modal", "all")


def _zscore_rows(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Standardise every row of ``s (B, B)`` over its ``mask`` entries (mean 0, std 1 there)."""
    m = mask.to(s.dtype)
    cnt = m.sum(1, keepdim=True).clamp_min(1.0)
    mean = (s * m).sum(1, keepdim=True) / cnt
    var = (((s - mean) * m) ** 2).sum(1, keepdim=True) / cnt
    return (s - mean) / (var + 1e-6).sqrt()


def _row_kl(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows with ≥ 2 mask entries of KL(softmax(z(teacher)/T) ‖ softmax(z(student)/T))
    over the masked entries of each row; z = per-row standardisation (scale-free)."""
    fill = torch.finfo(student.dtype).min
    log_p = torch.log_softmax(torch.where(mask, _zscore_rows(teacher, mask) / temperature, fill), dim=1)
    log_q = torch.log_softmax(torch.where(mask, _zscore_rows(student, mask) / temperature, fill), dim=1)
    terms = torch.where(mask, log_p.exp() * (log_p - log_q), torch.zeros_like(student))  # (B, B)
    rows = (mask.sum(1) >= 2).to(student.dtype)  # (B,)
    return (terms.sum(1) * rows).sum() / rows.sum().clamp(min=1)


def topk_mask(teacher: torch.Tensor, k: int) -> torch.Tensor:
    """(B, B) bool: the ``k`` largest off-diagonal entries of every row of ``teacher``."""
    b = teacher.shape[0]
    k = max(0, min(int(k), b - 1))
    eye = torch.eye(b, dtype=torch.bool, device=teacher.device)
    if k == 0:
        return torch.zeros_like(eye)
    idx = teacher.masked_fill(eye, float("-inf")).topk(k, dim=1).indices  # (B, k)
    return torch.zeros_like(eye).scatter_(1, idx, True)


def rdp_teacher_loss(
    image_global: torch.Tensor,
    text_global: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    *,
    mode: str = "cross",
    topk: int = 10,
    temperature: float = 0.5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Relative distance preservation against a frozen teacher: the pretrained encoders' own
    similarity structure, which knows about classes the heads never saw.

    The teacher similarities are the cosines of the frozen pretrained features
    (``T_v = norm(F_v) norm(F_v)ᵀ``, ``T_t`` likewise); the student's are those of the learned
    global embeddings (``S_v``, ``S_t``, and the cross-modal ``S_vt = G_v G_tᵀ``). For each row i
    the confident set is the ``topk`` nearest neighbours of i under the teacher (never i itself),
    and the student's row is fitted to the teacher's there with
    KL(softmax(z(T)/τ) ‖ softmax(z(S)/τ)), z = per-row standardisation: only the *relative*
    order and spacing of the neighbours is preserved, whatever the scale of either space.

    Modes (which student matrix preserves which teacher's distances):
        ``own``: S_v ← T_v, S_t ← T_t (each modality keeps its encoder's structure);
        ``cross``: S_v ← T_t, S_t ← T_v (each modality inherits the other's);
        ``cross-modal``: the rows of S_vt (I2T) and of S_vtᵀ (T2I) ← ½(T_v + T_t);
        ``all``: the mean of the three.

    Args:
        image_global, text_global: (B, D) L2-normalised learned embeddings, rows paired.
        teacher_image, teacher_text: (B, d_v), (B, d_t) frozen features (no gradient).
        topk: neighbours per row (clipped to B − 1).
        temperature: τ of the row softmax over standardised similarities.

    Returns:
        ``(loss, {"rdp": float, "rdp_pairs": fraction of off-diagonal pairs selected})``.
    """
    if mode not in RDP_TEACHERS or mode == "none":
        raise ConfigError(f"Unknown RDP teacher mode {mode!r}; known: {format_list(RDP_TEACHERS[1:])}.")
    if not (_is_number(temperature) and float(temperature) > 0):
        raise ConfigError(f"RDP temperature must be a number > 0, got {temperature!r}.")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"rdp_topk must be an integer >= 1, got {topk!r}.")
    b = image_global.shape[0]
    if teacher_image.shape[0] != b or teacher_text.shape[0] != b:
        raise DataError(
            f"teacher features must have {b} rows like the embeddings, got {teacher_image.shape[0]} and {teacher_text.shape[0]}."
        )
    with torch.no_grad():
        tv = torch.nn.functional.normalize(teacher_image.to(image_global.dtype), dim=-1)
        tt = torch.nn.functional.normalize(teacher_text.to(image_global.dtype), dim=-1)
        t_v, t_t = tv @ tv.T, tt @ tt.T  # (B, B)
        t_x = 0.5 * (t_v + t_t)
    terms: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []

    def add(student: torch.Tensor, teacher: torch.Tensor) -> None:
        m = topk_mask(teacher, topk)
        masks.append(m)
        terms.append(_row_kl(teacher, student, m, float(temperature)))

    if mode in ("own", "cross", "all"):
        s_v, s_t = image_global @ image_global.T, text_global @ text_global.T  # (B, B)
        pairs = [(s_v, t_v), (s_t, t_t)] if mode == "own" else [(s_v, t_t), (s_t, t_v)]
        if mode == "all":
            pairs = [(s_v, t_v), (s_t, t_t), (s_v, t_t), (s_t, t_v)]
        for s, t in pairs:
            add(s, t)
    if mode in ("cross-modal", "all"):
        s_x = image_global @ text_global.T  # (B, B) image i vs text j
        add(s_x, t_x)
        add(s_x.T, t_x)
    if mode == "all":  # the within-modality terms and the cross-modal ones count equally
        loss = cast(torch.Tensor, 0.5 * (sum(terms[:4]) / 4 + sum(terms[4:]) / 2))  # sums of tensors
    else:
        loss = cast(torch.Tensor, sum(terms) / len(terms))
    pairs_frac = float(masks[0].sum()) / (b * (b - 1)) if b > 1 else 0.0
    return loss, {"rdp": float(loss.detach()), "rdp_pairs": pairs_frac}
