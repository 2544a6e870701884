"""GCRDP losses: multi-positive InfoNCE, cross-modal regulariser, RDP, combined objective.

Each fast (masked, vectorised) loss is compared with a plain per-anchor / per-row loop in
float64, values and gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcrdp.errors import ConfigError, DataError
from gcrdp.losses import (
    RDP_VARIANTS,
    LossWeights,
    combine_losses,
    cross_modal_regularizer,
    multi_positive_infonce,
    rdp_loss,
    symmetric_infonce,
)

F64 = torch.float64


def _views(b: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, k, d, generator=g, dtype=F64), dim=-1)
    txt = F.normalize(torch.randn(b, k, d, generator=g, dtype=F64), dim=-1)
    return img, txt


def _labels(b: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lab = (torch.rand(b, c, generator=g) < 0.3).to(F64)
    lab[torch.arange(b), torch.randint(0, c, (b,), generator=g)] = 1.0  # every row has a class
    return lab


# ---------------------------------------------------------------------------------------------
# multi-positive InfoNCE


def naive_multi_positive(img, txt, tau, labels=None, class_positives=False, intra=False):
    """Per-anchor loop: candidate set, positives, -mean log softmax over positives."""
    b, k, _ = img.shape
    views = [(m, i, j) for m in (0, 1) for i in range(b) for j in range(k)]
    vec = {(0, i, j): img[i, j] for i in range(b) for j in range(k)}
    vec.update({(1, i, j): txt[i, j] for i in range(b) for j in range(k)})

    def share(i, j):
        if i == j:
            return True
        return class_positives and bool((labels[i] * labels[j]).sum() > 0)

    per_mod = {0: [], 1: []}
    for a in views:
        cands = [c for c in views if c != a and (c[0] != a[0] or c[1] == a[1] or intra)]
        pos = [c for c in cands if share(a[1], c[1])]
        logits = torch.stack([vec[a] @ vec[c] / tau for c in cands])
        lse = torch.logsumexp(logits, dim=0)
        per_mod[a[0]].append(-torch.stack([vec[a] @ vec[p] / tau - lse for p in pos]).mean())
    return 0.5 * (torch.stack(per_mod[0]).mean() + torch.stack(per_mod[1]).mean())


def test_multi_positive_k1_equals_clip_loss():
    img, txt = _views(9, 1, 6, seed=0)
    for tau in (0.05, 0.1, 1.0):
        got = multi_positive_infonce(img, txt, tau)
        want = symmetric_infonce(img[:, 0], txt[:, 0], tau)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_multi_positive_k1_with_tensor_temperature_and_gradient():
    img, txt = _views(5, 1, 4, seed=1)
    tau = torch.tensor(0.2, dtype=F64, requires_grad=True)
    a = img.clone().requires_grad_(True)
    got = multi_positive_infonce(a, txt, tau)
    want = symmetric_infonce(a[:, 0], txt[:, 0], tau)
    g_got = torch.autograd.grad(got, (a, tau))
    g_want = torch.autograd.grad(want, (a, tau))
    for x, y in zip(g_got, g_want):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("class_positives", [False, True])
@pytest.mark.parametrize("intra", [False, True])
def test_multi_positive_matches_loop_values_and_gradients(class_positives, intra):
    img, txt = _views(4, 3, 5, seed=2)
    labels = _labels(4, 3, seed=3)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    kw = {"class_positives": class_positives, "intra_modal_negatives": intra}
    got = multi_positive_infonce(img, txt, 0.3, labels, **kw)
    want = naive_multi_positive(img, txt, 0.3, labels, class_positives, intra)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
    g_got = torch.autograd.grad(got, (img, txt))
    g_want = torch.autograd.grad(want, (img, txt))
    for x, y in zip(g_got, g_want):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("b", [1, 2, 7])
def test_multi_positive_fast_path_equals_dense_path(b, k):
    """The default (own-pair positives, cross-modal negatives) skips the dense (2BK, 2BK)
    matrix; it must equal the dense implementation, values and gradients."""
    from gcrdp.losses.multi_positive import _dense_multi_positive_infonce

    img, txt = _views(b, k, 6, seed=10 + k)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    got = multi_positive_infonce(img, txt, 0.2)
    want = _dense_multi_positive_infonce(img, txt, 0.2, None, class_positives=False, intra_modal_negatives=False)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    for x, y in zip(torch.autograd.grad(got, (img, txt)), torch.autograd.grad(want, (img, txt))):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


def test_multi_positive_class_positives_change_the_loss_and_accept_class_ids():
    img, txt = _views(6, 2, 5, seed=4)
    ids = torch.tensor([0, 1, 0, 2, 1, 0])
    hot = F.one_hot(ids, 3).to(F64)
    base = multi_positive_infonce(img, txt, 0.2)
    with_ids = multi_positive_infonce(img, txt, 0.2, ids, class_positives=True)
    with_hot = multi_positive_infonce(img, txt, 0.2, hot, class_positives=True)
    assert torch.allclose(with_ids, with_hot, rtol=1e-12)
    assert not torch.isclose(base, with_hot)
    # labels without class_positives are ignored
    assert torch.equal(multi_positive_infonce(img, txt, 0.2, hot), base)
    # all-distinct classes reduce to the plain loss
    distinct = multi_positive_infonce(img, txt, 0.2, torch.arange(6), class_positives=True)
    assert torch.allclose(distinct, base, rtol=1e-12)


def test_multi_positive_invariant_to_permuting_batch_and_views():
    img, txt = _views(5, 3, 4, seed=5)
    labels = _labels(5, 3, seed=6)
    kw = {"class_positives": True, "intra_modal_negatives": True}
    ref = multi_positive_infonce(img, txt, 0.1, labels, **kw)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(multi_positive_infonce(img[perm], txt[perm], 0.1, labels[perm], **kw), ref)
    vperm = torch.tensor([2, 0, 1])
    assert torch.allclose(multi_positive_infonce(img[:, vperm], txt, 0.1, labels, **kw), ref)


def test_multi_positive_lower_for_aligned_views():
    img, txt = _views(8, 3, 16, seed=7)
    # aligned: all views of a pair, in both modalities, are small perturbations of one centre
    g = torch.Generator().manual_seed(8)
    centre = torch.randn(8, 1, 16, generator=g, dtype=F64)
    near_i = F.normalize(centre + 0.05 * torch.randn(8, 3, 16, generator=g, dtype=F64), dim=-1)
    near_t = F.normalize(centre + 0.05 * torch.randn(8, 3, 16, generator=g, dtype=F64), dim=-1)
    aligned = multi_positive_infonce(near_i, near_t, 0.1)
    assert aligned < 0.5 * multi_positive_infonce(img, txt, 0.1)
    # and lower than when the texts are shuffled across pairs
    assert aligned < multi_positive_infonce(near_i, near_t[torch.roll(torch.arange(8), 1)], 0.1)


@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan"), float("inf"), "x"])
def test_multi_positive_rejects_bad_temperature(tau):
    img, txt = _views(2, 2, 3, seed=9)
    with pytest.raises(ConfigError, match="temperature"):
        multi_positive_infonce(img, txt, tau)


def test_multi_positive_rejects_bad_inputs():
    img, txt = _views(2, 2, 3, seed=10)
    with pytest.raises(ConfigError, match="temperature must be a scalar"):
        multi_positive_infonce(img, txt, torch.tensor([0.1, 0.2]))
    with pytest.raises(DataError, match=r"\(batch, K, dim\)"):
        multi_positive_infonce(img, txt[:, :1], 0.1)
    with pytest.raises(ConfigError, match="class_positives=True needs labels"):
        multi_positive_infonce(img, txt, 0.1, class_positives=True)
    with pytest.raises(DataError, match="labels must have shape"):
        multi_positive_infonce(img, txt, 0.1, torch.ones(3, 2), class_positives=True)


# ---------------------------------------------------------------------------------------------
# cross-modal regulariser


def test_regularizer_zero_invariance_when_equal_and_parts_keys():
    img, _ = _views(6, 1, 5, seed=11)
    total, parts = cross_modal_regularizer(img[:, 0], img[:, 0])
    assert set(parts) == {"invariance", "label"}
    assert total.item() == 0.0 and parts == {"invariance": 0.0, "label": 0.0}


def test_regularizer_matches_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    txt = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)
    li = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]], dtype=F64)
    lt = torch.tensor([[-1.0, 0.0, 1.0], [1.5, 2.0, 0.0]], dtype=F64)
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=F64)

    def bce(x, t):
        s = 1.0 / (1.0 + math.exp(-x))
        return -(t * math.log(s) + (1 - t) * math.log(1 - s))

    inv = (2.0 + 0.0) / 2  # ||(1,-1)||² = 2 and 0
    lab_i = np.mean([bce(li[r, c].item(), y[r, c].item()) for r in range(2) for c in range(3)])
    lab_t = np.mean([bce(lt[r, c].item(), y[r, c].item()) for r in range(2) for c in range(3)])
    label = 0.5 * (lab_i + lab_t)
    total, parts = cross_modal_regularizer(img, txt, li, lt, y, label_weight=0.7)
    assert parts["invariance"] == pytest.approx(inv, rel=1e-12)
    assert parts["label"] == pytest.approx(label, rel=1e-12)
    assert total.item() == pytest.approx(inv + 0.7 * label, rel=1e-12)
    # one modality's logits only: the label term is that modality's BCE
    _, parts_i = cross_modal_regularizer(img, txt, li, None, y)
    assert parts_i["label"] == pytest.approx(lab_i, rel=1e-12)


def test_regularizer_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="labels=None"):
        cross_modal_regularizer(x, x, torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="label_weight"):
        cross_modal_regularizer(x, x, label_weight=-1.0)
    with pytest.raises(DataError, match="same shape"):
        cross_modal_regularizer(x, x, torch.zeros(2, 4), None, torch.zeros(2, 5))
    with pytest.raises(DataError, match=r"\(batch, dim\)"):
        cross_modal_regularizer(x, torch.zeros(3, 3))


# ---------------------------------------------------------------------------------------------
# relative distance preservation


def _clustered(b: int, d: int, seed: int, spread: float = 0.8) -> torch.Tensor:
    """Normalised vectors around a common direction, so many similarities exceed 0.5."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=F64) * spread
    x[:, 0] += 1.0
    return F.normalize(x, dim=-1)


def naive_rdp(img, txt, theta, variant, confidence="either", temperature=0.1):
    sv, st = img @ img.T, txt @ txt.T
    b = sv.shape[0]
    rule = {
        "either": lambda v, t: v > theta or t > theta,
        "both": lambda v, t: v > theta and t > theta,
        "image": lambda v, t: v > theta,
        "text": lambda v, t: t > theta,
    }[confidence]
    sel = [[j for j in range(b) if j != i and rule(sv[i, j], st[i, j])] for i in range(b)]
    if variant == "value":
        vals = [(sv[i, j] - st[i, j]) ** 2 for i in range(b) for j in sel[i]]
        return float(np.mean(vals)) if vals else 0.0
    divs = []
    for i in range(b):
        if len(sel[i]) < 2:
            continue
        p = np.exp(sv[i, sel[i]] / temperature)
        p /= p.sum()
        q = np.exp(st[i, sel[i]] / temperature)
        q /= q.sum()
        divs.append(0.5 * (np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p))))
    return float(np.mean(divs)) if divs else 0.0


@pytest.mark.parametrize("variant", RDP_VARIANTS)
@pytest.mark.parametrize("confidence", ["either", "both", "image", "text"])
def test_rdp_matches_loop(variant, confidence):
    img, txt = _clustered(10, 5, seed=12), _clustered(10, 5, seed=13)
    loss, parts = rdp_loss(img, txt, 0.5, variant=variant, confidence=confidence, temperature=0.2)
    want = naive_rdp(img.numpy(), txt.numpy(), 0.5, variant, confidence, 0.2)
    assert want > 0
    assert loss.item() == pytest.approx(want, rel=1e-10)
    assert parts["rdp"] == pytest.approx(want, rel=1e-10)
    assert 0 < parts["rdp_pairs"] <= 1


def test_rdp_value_hand_computation():
    img = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=F64), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [1.0, 1.0]], dtype=F64), dim=-1)
    c = 1 / math.sqrt(2)
    # S_v off-diagonal: (0,1)=c (0,2)=0 (1,2)=c;  S_t: (0,1)=1/√1.04, (0,2)=c, (1,2)=1.2/√2.08
    t01, t02, t12 = 1 / math.sqrt(1.04), c, 1.2 / math.sqrt(2.08)
    # θ = 0.5, "either": all three pairs (both orders) are selected
    want = ((c - t01) ** 2 + (0 - t02) ** 2 + (c - t12) ** 2) / 3
    loss, parts = rdp_loss(img, txt, 0.5, variant="value")
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert parts["rdp_pairs"] == 1.0
    # "both": (0,2) drops out (S_v = 0)
    loss_b, parts_b = rdp_loss(img, txt, 0.5, variant="value", confidence="both")
    assert loss_b.item() == pytest.approx(((c - t01) ** 2 + (c - t12) ** 2) / 2, rel=1e-12)
    assert parts_b["rdp_pairs"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("variant", RDP_VARIANTS)
def test_rdp_zero_when_similarities_agree(variant):
    x = _clustered(8, 6, seed=14)
    loss, parts = rdp_loss(x, x, 0.5, variant=variant)
    assert loss.item() == 0.0 and parts["rdp_pairs"] > 0
    # a common rotation leaves the similarity matrices unchanged
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(15), dtype=F64))
    loss_r, parts_r = rdp_loss(x, x @ q, 0.5, variant=variant)
    assert abs(loss_r.item()) < 1e-12 and parts_r["rdp_pairs"] == parts["rdp_pairs"]


@pytest.mark.parametrize("variant", RDP_VARIANTS)
def test_rdp_invariant_to_permuting_the_batch(variant):
    img, txt = _clustered(9, 5, seed=16), _clustered(9, 5, seed=17)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(18))
    a, pa = rdp_loss(img, txt, 0.5, variant=variant)
    b, pb = rdp_loss(img[perm], txt[perm], 0.5, variant=variant)
    assert torch.allclose(a, b, rtol=1e-12) and pa["rdp_pairs"] == pb["rdp_pairs"]


@pytest.mark.parametrize("variant", RDP_VARIANTS)
def test_rdp_threshold_above_all_similarities_gives_zero_and_finite_zero_gradient(variant):
    img, txt = _views(6, 1, 16, seed=19)
    img, txt = img[:, 0].requires_grad_(True), txt[:, 0].requires_grad_(True)
    off = ~torch.eye(6, dtype=torch.bool)
    assert (img @ img.T)[off].max() < 0.95 and (txt @ txt.T)[off].max() < 0.95
    loss, parts = rdp_loss(img, txt, 0.95, variant=variant)
    assert loss.item() == 0.0 and parts == {"rdp": 0.0, "rdp_pairs": 0.0}
    loss.backward()
    for g in (img.grad, txt.grad):
        assert torch.isfinite(g).all() and (g == 0).all()


def test_rdp_distribution_skips_rows_with_one_confident_entry():
    # only the pair (0, 1) is confident: each of rows 0 and 1 has one entry → no row qualifies
    img = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.3, 0.0], [0.0, 0.0, 1.0]], dtype=F64), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 1.0]], dtype=F64), dim=-1)
    loss, parts = rdp_loss(img, txt, 0.5, variant="distribution")
    assert loss.item() == 0.0 and parts["rdp_pairs"] == pytest.approx(2 / 6)
    assert rdp_loss(img, txt, 0.5, variant="value")[0].item() > 0


@pytest.mark.parametrize("variant", RDP_VARIANTS)
def test_rdp_gradcheck_with_stable_mask(variant):
    img = _clustered(5, 4, seed=20).clone().requires_grad_(True)
    txt = _clustered(5, 4, seed=21).clone().requires_grad_(True)
    theta = 0.5
    with torch.no_grad():
        sims = torch.cat([(img @ img.T).flatten(), (txt @ txt.T).flatten()])
        assert (sims - theta).abs().min() > 1e-3  # the mask does not flip under perturbation
    loss, _ = rdp_loss(img, txt, theta, variant=variant, temperature=0.3)
    assert loss.item() > 0
    assert torch.autograd.gradcheck(lambda a, b: rdp_loss(a, b, theta, variant=variant, temperature=0.3)[0], (img, txt))


def test_rdp_errors():
    x = _clustered(3, 3, seed=22)
    with pytest.raises(ConfigError, match=r"Unknown RDP variant 'rank'; known: 'distribution', 'value'"):
        rdp_loss(x, x, variant="rank")
    with pytest.raises(ConfigError, match="Unknown RDP confidence rule 'all'; known: 'either', 'both'"):
        rdp_loss(x, x, confidence="all")
    for bad in (1.0, -1.5, float("nan"), "0.5"):
        with pytest.raises(ConfigError, match=r"threshold must be a number in \[-1, 1\)"):
            rdp_loss(x, x, bad)
    with pytest.raises(ConfigError, match="temperature"):
        rdp_loss(x, x, temperature=0.0)
    with pytest.raises(DataError, match=r"\(batch, dim\)"):
        rdp_loss(x, x[:2])
    assert rdp_loss(x, x, -1.0)[1]["rdp_pairs"] > 0  # -1 is allowed
    assert rdp_loss(x, x, np.float32(0.5))[0].item() == 0.0  # NumPy scalars are fine


def test_rdp_single_sample_batch():
    x = _clustered(1, 3, seed=23)
    for variant in RDP_VARIANTS:
        loss, parts = rdp_loss(x, x, variant=variant)
        assert loss.item() == 0.0 and parts["rdp_pairs"] == 0.0


# ---------------------------------------------------------------------------------------------
# combined objective


def test_combine_losses_arithmetic():
    mpc = torch.tensor(2.0, requires_grad=True)
    reg = torch.tensor(3.0, requires_grad=True)
    rdp = torch.tensor(5.0, requires_grad=True)
    total, parts = combine_losses(mpc, reg, rdp, LossWeights(alpha=0.5, lam=0.2))
    assert total.item() == pytest.approx(2 + 1.5 + 1.0)
    assert parts == pytest.approx({"mpc": 2.0, "reg": 3.0, "rdp": 5.0, "total": 4.5})
    total.backward()
    assert (mpc.grad.item(), reg.grad.item(), rdp.grad.item()) == pytest.approx((1.0, 0.5, 0.2))
    total2, parts2 = combine_losses(mpc, None, None, LossWeights())
    assert total2.item() == 2.0
    assert parts2 == {"mpc": 2.0, "reg": 0.0, "rdp": 0.0, "total": 2.0}
    _, parts3 = combine_losses(mpc, None, rdp, LossWeights(lam=1.0))
    assert parts3["total"] == pytest.approx(7.0) and parts3["reg"] == 0.0


@pytest.mark.parametrize("field", ["alpha", "lam"])
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "1", True])
def test_loss_weights_validation(field, bad):
    with pytest.raises(ConfigError, match=rf"LossWeights\.{field} must be a finite number >= 0"):
        LossWeights(**{field: bad})


def test_loss_weights_defaults():
    w = LossWeights()
    assert (w.alpha, w.lam) == (0.1, 0.1)
    assert LossWeights(alpha=0, lam=0).alpha == 0
