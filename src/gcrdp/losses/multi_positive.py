"""Multi-positive cross-modal InfoNCE over the K GMM views of each sample (SPEC §3.3).

Every view of every sample is an anchor. An anchor's positives are the other views of its own
pair, in both modalities; the views of the other pairs are negatives. The per-anchor loss is the
SupCon "L_out" form: the mean over the anchor's positives of ``-log softmax`` over the anchor's
candidate set. With one view per sample (K = 1) and no class positives this is exactly the
symmetric CLIP loss :func:`gcrdp.losses.symmetric_infonce`.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, DataError

VIEW_POSITIVES = ("all", "cross")


def validate_temperature(temperature: float | torch.Tensor) -> None:
    """Raise :class:`ConfigError` unless ``temperature`` is a finite positive scalar."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ConfigError(f"temperature must be a scalar, got a tensor of shape {tuple(temperature.shape)}.")
        value = float(temperature.detach())
    else:
        try:
            value = float(temperature)
        except (TypeError, ValueError):
            raise ConfigError(f"temperature must be a positive number, got {temperature!r}.") from None
    if not (math.isfinite(value) and value > 0.0):
        raise ConfigError(f"temperature must be a finite number > 0 (e.g. 0.07), got {value!r}.")


def _class_share(labels: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch, batch) bool: pairs i and j share at least one class.

    ``labels`` is (batch, classes) multi-hot (any dtype; > 0 means the class is present) or
    (batch,) integer class ids.
    """
    if labels.shape[0] != batch or labels.dim() not in (1, 2):
        raise DataError(
            f"labels must have shape (batch={batch}, classes) multi-hot or (batch={batch},) class ids, got {tuple(labels.shape)}."
        )
    if labels.dim() == 1:
        return labels[:, None] == labels[None, :]  # (B, B)
    hot = (labels > 0).to(torch.float32)  # (B, C)
    return (hot @ hot.T) > 0  # (B, B)


def multi_positive_infonce(
    image_views: torch.Tensor,
    text_views: torch.Tensor,
    temperature: float | torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    class_positives: bool = False,
    intra_modal_negatives: bool = False,
    view_positives: str = "all",
    image_weights: torch.Tensor | None = None,
    text_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE over K views per sample.

    Args:
        image_views: (B, K, D) L2-normalised image views; ``image_views[i]`` is paired with
            ``text_views[i]``.
        text_views: (B, K, D) L2-normalised text views.
        temperature: τ > 0 (number or scalar tensor); logits are cosine similarities / τ.
        labels: (B, C) multi-hot (or (B,) integer class ids); used only with ``class_positives``.
        class_positives: also count as positives every candidate view of a pair that shares a
            class with the anchor's pair.
        intra_modal_negatives: also put the same-modality views of the other pairs in the
            candidate set (as negatives, or as positives under ``class_positives``).
        view_positives: ``"all"`` (SPEC: the other views of the anchor's own pair in *both*
            modalities are positives) or ``"cross"`` (only the other modality's views are; the
            anchor's own-modality views of its pair are then not candidates at all, so one
            sample's views are neither pulled together nor pushed apart).
        image_weights, text_weights: optional (B, K) non-negative view weights (e.g. the
            mixture weights π, detached). A positive counts with its view's weight in the
            anchor's mean over positives, and an anchor with its own weight in the mean over
            anchors (per modality). None = every view weighs 1.

    Candidate set of an image view (i, k): all B·K text views, the other K − 1 image views of
    pair i, and — with ``intra_modal_negatives`` — the image views of the other pairs. The anchor
    itself is never a candidate. Positives: the K text views of pair i and the other K − 1 image
    views of pair i (plus class positives). Text anchors are symmetric.

    Loss of an anchor a with positives P(a) and candidates A(a)::

        ℓ(a) = −1/|P(a)| · Σ_{p∈P(a)} log( exp(s_ap/τ) / Σ_{c∈A(a)} exp(s_ac/τ) )

    Returns:
        Scalar: ½·(mean of ℓ over the B·K image anchors + mean over the B·K text anchors).
    """
    validate_temperature(temperature)
    if image_views.dim() != 3 or image_views.shape != text_views.shape:
        raise DataError(
            "image_views and text_views must both have shape (batch, K, dim), got "
            f"{tuple(image_views.shape)} and {tuple(text_views.shape)}."
        )
    if class_positives and labels is None:
        raise ConfigError("class_positives=True needs labels of shape (batch, classes); got None.")
    if view_positives not in VIEW_POSITIVES:
        raise ConfigError(f"view_positives must be one of {VIEW_POSITIVES}, got {view_positives!r}.")
    weighted = image_weights is not None or text_weights is not None
    if weighted:
        b, k = image_views.shape[:2]
        for name, w in (("image_weights", image_weights), ("text_weights", text_weights)):
            if w is None or tuple(w.shape) != (b, k):
                raise DataError(
                    f"{name} must have shape (batch, K) = {(b, k)} when view weights are used, got {None if w is None else tuple(w.shape)}."
                )
    if not class_positives and not intra_modal_negatives and not weighted:
        if view_positives == "cross":
            return _cross_pair_infonce(image_views, text_views, temperature)
        return _own_pair_infonce(image_views, text_views, temperature)
    return _dense_multi_positive_infonce(
        image_views,
        text_views,
        temperature,
        labels,
        class_positives=class_positives,
        intra_modal_negatives=intra_modal_negatives,
        view_positives=view_positives,
        image_weights=image_weights,
        text_weights=text_weights,
    )


def _cross_pair_infonce(image_views: torch.Tensor, text_views: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """``view_positives="cross"`` without class positives: an image view's candidates are the
    B·K text views and its positives the K text views of its pair (and symmetrically)."""
    b, k, d = image_views.shape
    cross = image_views.reshape(b * k, d) @ text_views.reshape(b * k, d).T / temperature  # (BK, BK)
    own = torch.bmm(image_views, text_views.transpose(1, 2)) / temperature  # (B, K, K)
    per_img = torch.logsumexp(cross, dim=1).view(b, k) - own.mean(2)  # (B, K)
    per_txt = torch.logsumexp(cross, dim=0).view(b, k) - own.mean(1)  # (B, K)
    return 0.5 * (per_img.mean() + per_txt.mean())


def _own_pair_infonce(image_views: torch.Tensor, text_views: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """The default case (positives = own pair, cross-modal negatives) without the dense
    (2BK, 2BK) logit matrix: the candidates of an image view (i, k) are the B·K text views —
    one row of the (BK, BK) cross-modal matrix — and the K − 1 other image views of pair i —
    one row of pair i's (K, K) block; the two log-sum-exps are combined with ``logaddexp``.
    Equal to :func:`_dense_multi_positive_infonce` to round-off (tested); about 4× fewer
    logits, and no (2BK, 2BK) masks."""
    b, k, d = image_views.shape
    bk = b * k
    cross = image_views.reshape(bk, d) @ text_views.reshape(bk, d).T / temperature  # (BK, BK) img→txt
    # own-pair cross logits: block i of the block diagonal, (B, K, K) [image view, text view]
    own = torch.bmm(image_views, text_views.transpose(1, 2)) / temperature  # (B, K, K)
    lse_img = torch.logsumexp(cross, dim=1).view(b, k)  # (B, K) over all text views
    lse_txt = torch.logsumexp(cross, dim=0).view(b, k)  # (B, K) over all image views
    pos_img = own.sum(2)  # (B, K) Σ over the K text views of the pair
    pos_txt = own.sum(1)  # (B, K)
    n_pos = 2 * k - 1
    if k > 1:
        off = ~torch.eye(k, dtype=torch.bool, device=image_views.device)  # (K, K)
        neg_inf = torch.finfo(cross.dtype).min
        terms = []
        for views, lse, pos in ((image_views, lse_img, pos_img), (text_views, lse_txt, pos_txt)):
            intra = torch.bmm(views, views.transpose(1, 2)) / temperature  # (B, K, K) same pair, same modality
            lse_intra = torch.logsumexp(intra.masked_fill(~off, neg_inf), dim=2)  # (B, K)
            pos_all = pos + torch.where(off, intra, torch.zeros_like(intra)).sum(2)  # (B, K)
            terms.append(torch.logaddexp(lse, lse_intra) - pos_all / n_pos)  # (B, K) per anchor
        per_img, per_txt = terms
    else:
        per_img, per_txt = lse_img - pos_img, lse_txt - pos_txt
    return 0.5 * (per_img.mean() + per_txt.mean())


def _dense_multi_positive_infonce(
    image_views: torch.Tensor,
    text_views: torch.Tensor,
    temperature: float | torch.Tensor,
    labels: torch.Tensor | None,
    *,
    class_positives: bool,
    intra_modal_negatives: bool,
    view_positives: str = "all",
    image_weights: torch.Tensor | None = None,
    text_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every case, over the dense (2BK, 2BK) logit matrix (inputs already validated)."""
    b, k, d = image_views.shape
    bk = b * k
    n = 2 * bk
    device = image_views.device

    # Row order: image views of pair 0 (k = 0..K-1), pair 1, ..., then the text views likewise.
    z = torch.cat([image_views.reshape(bk, d), text_views.reshape(bk, d)], dim=0)  # (2BK, D)
    logits = (z @ z.T) / temperature  # (2BK, 2BK)

    idx = torch.arange(n, device=device)  # (2BK,)
    modality = idx // bk  # (2BK,) 0 = image, 1 = text
    pair = (idx % bk) // k  # (2BK,) pair index in [0, B)
    same_mod = modality[:, None] == modality[None, :]  # (2BK, 2BK)
    same_pair = pair[:, None] == pair[None, :]  # (2BK, 2BK)
    not_self = ~torch.eye(n, dtype=torch.bool, device=device)  # (2BK, 2BK)

    own_views = same_pair & not_self if view_positives == "all" else same_pair & ~same_mod
    if intra_modal_negatives:
        candidates = not_self if view_positives == "all" else not_self & ~(same_pair & same_mod)
    else:
        candidates = ~same_mod | own_views  # (2BK, 2BK)
    positives = own_views  # (2BK, 2BK) own pair (both modalities, or the other one)
    if class_positives:
        assert labels is not None  # validated: class_positives needs labels
        share = _class_share(labels.to(device), b)  # (B, B)
        positives = positives | (share[pair][:, pair] & not_self)  # (2BK, 2BK)
    positives = positives & candidates

    neg_inf = torch.finfo(logits.dtype).min
    lse = torch.logsumexp(logits.masked_fill(~candidates, neg_inf), dim=1, keepdim=True)  # (2BK, 1)
    log_prob = logits - lse  # (2BK, 2BK)
    if image_weights is None and text_weights is None:
        n_pos = positives.sum(dim=1).clamp(min=1)  # (2BK,) ≥ K ≥ 1 by construction
        per_anchor = -torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / n_pos  # (2BK,)
        return 0.5 * (per_anchor[:bk].mean() + per_anchor[bk:].mean())
    assert image_weights is not None and text_weights is not None  # validated: both or neither
    w = torch.cat([image_weights.reshape(bk), text_weights.reshape(bk)]).to(logits.dtype)  # (2BK,)
    pos_w = torch.where(positives, w[None, :].expand(n, n), torch.zeros_like(log_prob))  # (2BK, 2BK)
    tiny = torch.finfo(logits.dtype).tiny
    per_anchor = -(pos_w * log_prob).sum(dim=1) / pos_w.sum(dim=1).clamp_min(tiny)  # (2BK,)
    halves = [(per_anchor[sl] * w[sl]).sum() / w[sl].sum().clamp_min(tiny) for sl in (slice(0, bk), slice(bk, n))]
    return 0.5 * (halves[0] + halves[1])
