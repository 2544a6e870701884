"""Tests of the GMM/EM module (gcrdp.model.gmm): against sklearn, masks, gradients, edge cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from gcrdp.errors import ConfigError, DataError
from gcrdp.model import (
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

F64 = torch.float64
# sklearn adds 10 * eps to every soft count N_k (in the means, the covariances and the weights);
# our mass_floor is the same pseudo-count (plus a prior at the previous parameters whose effect is
# eps * |μ_prev| / N_k ~ 1e-15 here), so with this value the updates agree to round-off.
SKLEARN_MASS_FLOOR = 10 * np.finfo(np.float64).eps
TOL = 1e-10


def _clusters(n: int, d: int, k: int, gen: torch.Generator, spread: float = 3.0) -> torch.Tensor:
    """n points of dim d from k Gaussian clusters (float64)."""
    centres = spread * torch.randn(k, d, generator=gen, dtype=F64)
    labels = torch.arange(n) % k
    return centres[labels] + torch.randn(n, d, generator=gen, dtype=F64)


def _sklearn_fit(points, weights, means, variances, cfg, covariance_type="diag"):
    precisions = 1.0 / variances
    if covariance_type == "spherical":
        precisions = precisions[:, 0]
    gm = GaussianMixture(
        n_components=cfg.n_components,
        covariance_type=covariance_type,
        max_iter=cfg.n_iter,
        tol=0.0,  # |change| < 0 never holds: exactly max_iter iterations
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        reg_covar=cfg.var_floor,
        init_params="random",
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached "without converging"
        gm.fit(points)
    return gm


def _padded_batch(gen, sizes, n_max, d, k, pad_value=float("nan")):
    x = torch.full((len(sizes), n_max, d), pad_value, dtype=F64)
    mask = torch.zeros(len(sizes), n_max, dtype=torch.bool)
    for b, n in enumerate(sizes):
        x[b, :n] = _clusters(n, d, k, gen)
        mask[b, :n] = True
    return x, mask


# ----------------------------------------------------------------------------- sklearn reference
@pytest.mark.parametrize("n_iter", [1, 3])
@pytest.mark.parametrize("covariance", ["diag", "isotropic"])
def test_em_matches_sklearn_per_sample(n_iter, covariance):
    """sklearn's fit(max_iter=T) = E-step with the init parameters + M-step, T times, then its
    parameters; predict_proba / score = one more E-step. Same as fit_gmm, per sample."""
    gen = torch.Generator().manual_seed(0)
    k, d, sizes = 3, 5, [20, 9, 14, 30]
    x, mask = _padded_batch(gen, sizes, 30, d, k, pad_value=1e30)
    b = len(sizes)
    init_w = torch.rand(b, k, generator=gen, dtype=F64) + 0.2
    init_w = init_w / init_w.sum(-1, keepdim=True)
    init_m = 2.0 * torch.randn(b, k, d, generator=gen, dtype=F64)
    init_v = torch.rand(b, k, d, generator=gen, dtype=F64) + 0.5
    if covariance == "isotropic":
        init_v = init_v.mean(-1, keepdim=True).expand(b, k, d).clone()
    cfg = GMMConfig(n_components=k, n_iter=n_iter, covariance=covariance, var_floor=1e-3, mass_floor=SKLEARN_MASS_FLOOR)
    res = fit_gmm(x, mask, init_m, cfg, init_weights=init_w, init_variances=init_v)
    sk_type = "diag" if covariance == "diag" else "spherical"
    for i, n in enumerate(sizes):
        pts = x[i, :n].numpy()
        gm = _sklearn_fit(pts, init_w[i].numpy(), init_m[i].numpy(), init_v[i].numpy(), cfg, sk_type)
        cov = gm.covariances_ if sk_type == "diag" else np.repeat(gm.covariances_[:, None], d, 1)
        np.testing.assert_allclose(res.weights[i].numpy(), gm.weights_, rtol=0, atol=TOL)
        np.testing.assert_allclose(res.means[i].numpy(), gm.means_, rtol=0, atol=TOL)
        np.testing.assert_allclose(res.variances[i].numpy(), cov, rtol=0, atol=TOL)
        np.testing.assert_allclose(res.resp[i, :n].numpy(), gm.predict_proba(pts), rtol=0, atol=TOL)
        assert res.log_likelihood[i].item() == pytest.approx(gm.score(pts), abs=TOL)
        assert torch.all(res.resp[i, n:] == 0)


def test_single_steps_match_sklearn_functions():
    from sklearn.mixture._gaussian_mixture import (  # private: the reference math
        _estimate_gaussian_parameters,
        _estimate_log_gaussian_prob,
    )

    gen = torch.Generator().manual_seed(1)
    k, d, n = 3, 4, 25
    x = _clusters(n, d, k, gen)
    means = torch.randn(k, d, generator=gen, dtype=F64)
    var = torch.rand(k, d, generator=gen, dtype=F64) + 0.3
    ours = estimate_log_gaussian_prob(x[None], means[None], var[None])[0]
    ref = _estimate_log_gaussian_prob(x.numpy(), means.numpy(), 1 / np.sqrt(var.numpy()), "diag")
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-10)
    # naive broadcast formula too
    naive = -0.5 * (((x[:, None] - means) ** 2 / var).sum(-1) + var.log().sum(-1) + d * math.log(2 * math.pi))
    np.testing.assert_allclose(ours.numpy(), naive.numpy(), rtol=0, atol=1e-10)

    resp = torch.softmax(torch.randn(n, k, generator=gen, dtype=F64), -1)
    cfg = GMMConfig(n_components=k, mass_floor=SKLEARN_MASS_FLOOR, var_floor=1e-4)
    w, m, v = m_step(x[None], None, resp[None], cfg)
    nk, m_ref, v_ref = _estimate_gaussian_parameters(x.numpy(), resp.numpy(), 1e-4, "diag")
    np.testing.assert_allclose(w[0].numpy(), nk / nk.sum(), rtol=0, atol=TOL)
    np.testing.assert_allclose(m[0].numpy(), m_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(v[0].numpy(), v_ref, rtol=0, atol=TOL)


def test_e_step_matches_sklearn_and_ignores_padding():
    gen = torch.Generator().manual_seed(10)
    k, d, n = 3, 4, 15
    pts = _clusters(n, d, k, gen)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    means = torch.randn(k, d, generator=gen, dtype=F64)
    var = torch.rand(k, d, generator=gen, dtype=F64) + 0.3
    gm = GaussianMixture(k, covariance_type="diag").fit(pts.numpy())  # then overwrite its state
    gm.weights_, gm.means_, gm.covariances_ = w.numpy(), means.numpy(), var.numpy()
    gm.precisions_cholesky_ = 1 / np.sqrt(var.numpy())
    x = torch.cat([pts, torch.full((4, d), float("nan"), dtype=F64)])[None]  # 4 padded slots
    mask = torch.arange(n + 4)[None] < n
    resp, ll = e_step(x, mask, w[None], means[None], var[None])
    np.testing.assert_allclose(resp[0, :n].numpy(), gm.predict_proba(pts.numpy()), rtol=0, atol=TOL)
    assert torch.all(resp[0, n:] == 0)
    assert ll.item() == pytest.approx(gm.score(pts.numpy()), abs=TOL)


def test_isotropic_is_mean_of_diag():
    gen = torch.Generator().manual_seed(2)
    x = _clusters(12, 6, 2, gen)[None]
    resp = torch.softmax(torch.randn(1, 12, 2, generator=gen, dtype=F64), -1)
    _, _, v_diag = m_step(x, None, resp, GMMConfig(n_components=2, covariance="diag"))
    *_, v_iso = m_step(x, None, resp, GMMConfig(n_components=2, covariance="isotropic"))
    assert torch.equal(v_iso, v_iso[..., :1].expand_as(v_iso))  # equal across D
    torch.testing.assert_close(v_iso[..., 0], v_diag.mean(-1), rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- masks and padding
def test_responsibilities_and_padding():
    gen = torch.Generator().manual_seed(3)
    x, mask = _padded_batch(gen, [7, 1, 4], 7, 3, 3, pad_value=1e30)
    res = fit_gmm(x, mask, torch.randn(3, 3, generator=gen, dtype=F64), GMMConfig())
    torch.testing.assert_close(res.resp.sum(-1)[mask], torch.ones(int(mask.sum()), dtype=F64))
    assert torch.all(res.resp[~mask] == 0)
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(3, dtype=F64))
    assert torch.all(res.weights > 0)


@pytest.mark.parametrize("pad_value", [0.0, 1e30, float("inf"), float("nan")])
def test_masked_points_have_no_effect(pad_value):
    """Same set with 0, 3 and 10 padded slots (any padding value) -> same fit and gradients."""
    gen = torch.Generator().manual_seed(4)
    pts = _clusters(8, 4, 3, gen)
    init = torch.randn(3, 4, generator=gen, dtype=F64)
    cfg = GMMConfig(n_iter=3)
    results, grads = [], []
    for n_pad in (0, 3, 10):
        x = torch.cat([pts, torch.full((n_pad, 4), pad_value, dtype=F64)])[None].requires_grad_()
        mask = torch.arange(8 + n_pad)[None] < 8
        res = fit_gmm(x, mask, init, cfg)
        views, glob = gmm_views(res)
        (glob.sum() + res.log_likelihood.sum() + views[:, 1].sum()).backward()
        results.append(res)
        grads.append(x.grad[0])
        assert torch.all(x.grad[0, 8:] == 0)
    ref = results[0]
    for res, g in zip(results[1:], grads[1:]):
        for name in ("weights", "means", "variances", "log_likelihood"):
            torch.testing.assert_close(getattr(res, name), getattr(ref, name), rtol=0, atol=1e-12)
        torch.testing.assert_close(res.resp[:, :8], ref.resp, rtol=0, atol=1e-12)
        assert torch.all(res.resp[:, 8:] == 0)
        torch.testing.assert_close(g[:8], grads[0], rtol=0, atol=1e-12)


def test_mask_none_means_all_valid():
    gen = torch.Generator().manual_seed(5)
    x = _clusters(6, 3, 2, gen)[None]
    init = torch.randn(2, 3, generator=gen, dtype=F64)
    cfg = GMMConfig(n_components=2)
    a = fit_gmm(x, None, init, cfg)
    b = fit_gmm(x, torch.ones(1, 6, dtype=torch.bool), init, cfg)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


# ----------------------------------------------------------------------------- gradients
def test_gradcheck_fit_gmm():
    gen = torch.Generator().manual_seed(6)
    x = _clusters(5, 3, 2, gen).reshape(1, 5, 3).repeat(2, 1, 1)
    x[1] += 0.3 * torch.randn(5, 3, generator=gen, dtype=F64)
    mask = torch.tensor([[True] * 5, [True, True, True, True, False]])
    x.requires_grad_()
    init = torch.randn(2, 3, generator=gen, dtype=F64, requires_grad=True)
    cfg = GMMConfig(n_components=2, n_iter=2)

    def fn(x_, init_):
        r = fit_gmm(x_, mask, init_, cfg)
        return r.weights, r.means, r.variances, r.resp, r.log_likelihood

    assert torch.autograd.gradcheck(fn, (x, init), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_relative_anchors_with_padding():
    """The centring constant is detached inside fit_gmm (EM is translation-equivariant, so its
    gradient contribution is exactly zero); with relative anchors (GMMLayer's default) the
    initial means depend on x too. gradcheck against finite differences in float64."""
    gen = torch.Generator().manual_seed(11)
    x = (_clusters(6, 3, 2, gen).reshape(1, 6, 3).repeat(2, 1, 1) + 2.0).requires_grad_()
    mask = torch.tensor([[True] * 6, [True, True, True, False, True, False]])
    anchors = torch.randn(2, 3, generator=gen, dtype=F64, requires_grad=True)
    cfg = GMMConfig(n_components=2, n_iter=2)

    def fn(x_, anchors_):
        w = mask.unsqueeze(-1).to(F64)
        centre = (x_ * w).sum(1) / w.sum(1)  # (B, D), as GMMLayer.initial_means
        return fit_gmm(x_, mask, centre.unsqueeze(1) + anchors_, cfg)[:3]

    layer = GMMLayer(3, cfg).double()
    with torch.no_grad():
        layer.anchors.copy_(anchors)
        w = mask.unsqueeze(-1).to(F64)
        torch.testing.assert_close(layer.initial_means(x, mask), ((x * w).sum(1) / w.sum(1)).unsqueeze(1) + anchors)
    assert torch.autograd.gradcheck(fn, (x, anchors), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_small_k_products_gradcheck():
    from gcrdp.model.gmm import _KDxND, _KNxND

    gen = torch.Generator().manual_seed(12)
    a = torch.randn(2, 3, 4, generator=gen, dtype=F64, requires_grad=True)  # (B, K, D)
    r = torch.randn(2, 3, 5, generator=gen, dtype=F64, requires_grad=True)  # (B, K, N)
    x = torch.randn(2, 5, 4, generator=gen, dtype=F64, requires_grad=True)  # (B, N, D)
    torch.testing.assert_close(_KDxND.apply(a, x), a @ x.transpose(1, 2), rtol=0, atol=1e-14)
    torch.testing.assert_close(_KNxND.apply(r, x), r @ x, rtol=0, atol=1e-14)
    assert torch.autograd.gradcheck(_KDxND.apply, (a, x))
    assert torch.autograd.gradcheck(_KNxND.apply, (r, x))
    # first-order only: a second derivative is refused, not silently wrong
    (g,) = torch.autograd.grad(_KDxND.apply(a, x).pow(2).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_m_step_gradcheck_in_resp():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 5, 3, generator=gen, dtype=F64)
    resp = torch.softmax(torch.randn(2, 5, 2, generator=gen, dtype=F64), -1).requires_grad_()
    cfg = GMMConfig(n_components=2)
    assert torch.autograd.gradcheck(lambda r: m_step(x, None, r, cfg), (resp,))


def test_final_e_step_false_keeps_the_parameters_and_drops_resp():
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(3, 7, 4, generator=gen, dtype=F64)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    init = torch.randn(2, 4, generator=gen, dtype=F64)
    cfg = GMMConfig(n_components=2)
    full = fit_gmm(x, mask, init, cfg)
    lean = fit_gmm(x, mask, init, cfg, final_e_step=False)
    assert lean.resp is None and lean.log_likelihood is None
    for a, b in zip(full[:3], lean[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    layer = GMMLayer(4, cfg).double()
    assert layer(x, mask, final_e_step=False).resp is None


def test_gradients_reach_the_anchors_and_x():
    torch.manual_seed(0)
    layer = GMMLayer(4, GMMConfig(n_components=3))
    x = torch.randn(2, 6, 4, requires_grad=True)
    views, glob = gmm_views(layer(x, torch.ones(2, 6, dtype=torch.bool)))
    (views[:, 0] * torch.randn_like(views[:, 0])).sum().add(glob.sum()).backward()
    assert layer.anchors.grad is not None and torch.isfinite(layer.anchors.grad).all()
    assert layer.anchors.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- edge cases
def _check_finite(res: GMMResult, *leaves: torch.Tensor) -> None:
    for t in res:
        assert torch.isfinite(t).all(), t
    views, glob = gmm_views(res)
    loss = views.sum() + glob.pow(2).sum() + res.log_likelihood.sum() + mixture_entropy(res.weights).sum()
    grads = torch.autograd.grad(loss, leaves)
    for g in grads:
        assert torch.isfinite(g).all(), g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("anchor_mode", ["relative", "absolute"])
@pytest.mark.parametrize("case", ["one_point", "fewer_than_k", "identical_points"])
def test_small_and_degenerate_sets_are_finite(case, anchor_mode, dtype):
    torch.manual_seed(0)
    layer = GMMLayer(8, GMMConfig(n_components=3, anchor_mode=anchor_mode)).to(dtype)
    if case == "one_point":  # a pooled feature
        x, mask = torch.randn(4, 1, 8, dtype=dtype), torch.ones(4, 1, dtype=torch.bool)
    elif case == "fewer_than_k":
        x, mask = torch.randn(4, 5, 8, dtype=dtype), torch.arange(5)[None].repeat(4, 1) < 2
    else:
        x = torch.randn(4, 1, 8, dtype=dtype).repeat(1, 6, 1)
        mask = torch.ones(4, 6, dtype=torch.bool)
    x.requires_grad_()
    res = layer(x, mask)
    _check_finite(res, x, layer.anchors)
    if case != "fewer_than_k":  # every component with mass sits on the point(s), variance = floor
        point = x[:, :1].detach()  # (B, 1, D)
        has_mass = res.weights > 1e-3  # (B, K)
        assert has_mass.any(-1).all()
        err = (res.means.detach() - point).abs().amax(-1)[has_mass]
        assert err.max() < 1e-4
        v = res.variances.detach().amax(-1)[has_mass]
        assert v.max() < 2e-3
    if case == "one_point" and anchor_mode == "relative":  # orthonormal anchors: K equal views
        views, _ = gmm_views(res)
        torch.testing.assert_close(views.detach(), torch.nn.functional.normalize(x.detach(), dim=-1).expand_as(views), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_component_keeps_its_initial_parameters(dtype):
    """A component far from every point gets no mass: tiny weight, finite everything, and its mean
    and variance stay at the initial ones (the anchor and init_var)."""
    gen = torch.Generator().manual_seed(7)
    x = _clusters(10, 4, 2, gen).to(dtype)[None].requires_grad_()
    init = torch.cat([x.detach()[0, :2], torch.full((1, 4), 1e3, dtype=dtype)]).requires_grad_()
    cfg = GMMConfig(n_components=3, n_iter=3, init_var=1.0)
    res = fit_gmm(x, None, init, cfg)
    _check_finite(res, x, init)
    assert res.weights[0, 2] < 1e-6
    torch.testing.assert_close(res.means[0, 2].detach(), init[2].detach(), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(res.variances[0, 2].detach(), torch.ones(4, dtype=dtype), rtol=0, atol=1e-5)
    assert torch.all(res.resp[0, :, 2] < 1e-12)


def test_row_without_valid_points_gives_the_initial_parameters():
    x = torch.randn(2, 3, 2, dtype=F64)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    init = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64)
    res = fit_gmm(x, mask, init, GMMConfig(n_components=2, init_var=0.5))
    assert all(torch.isfinite(t).all() for t in res)
    torch.testing.assert_close(res.means[1], init)
    torch.testing.assert_close(res.variances[1], torch.full((2, 2), 0.5, dtype=F64))
    torch.testing.assert_close(res.weights[1], torch.full((2,), 0.5, dtype=F64))
    assert torch.all(res.resp[1] == 0) and res.log_likelihood[1] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_upcast(dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 4).to(dtype)
    mask = torch.ones(3, 7, dtype=torch.bool)
    init = torch.randn(3, 4)
    res = fit_gmm(x, mask, init.to(dtype), GMMConfig())
    ref = fit_gmm(x.float(), mask, init.to(dtype).float(), GMMConfig())
    for a, b in zip(res, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def test_no_n_k_d_temporaries():
    """Forward and backward never materialise a (B, N, K, D)-sized tensor."""
    dispatch = pytest.importorskip("torch.utils._python_dispatch")

    class MaxNumel(dispatch.TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.max = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.max = max(self.max, t.numel())
            return out

    b, n, d, k = 4, 11, 13, 3
    layer = GMMLayer(d, GMMConfig(n_components=k))
    x = torch.randn(b, n, d, requires_grad=True)
    with MaxNumel() as mode:
        views, glob = gmm_views(layer(x, torch.ones(b, n, dtype=torch.bool)))
        (views.sum() + glob.sum()).backward()
    assert mode.max <= b * n * d < b * n * k * d  # the largest tensors are x-sized


# ----------------------------------------------------------------------------- EM property
def test_log_likelihood_does_not_decrease_over_iterations():
    gen = torch.Generator().manual_seed(8)
    x = torch.stack([_clusters(60, 5, 3, gen, spread=4.0) for _ in range(4)])  # (4, 60, 5)
    init = torch.randn(4, 3, 5, generator=gen, dtype=F64)
    lls = torch.stack([fit_gmm(x, None, init, GMMConfig(n_iter=t)).log_likelihood for t in range(8)])
    diffs = lls[1:] - lls[:-1]  # (7, 4)
    assert torch.all(diffs > -1e-9), diffs
    assert torch.all(lls[-1] > lls[0] + 0.5)  # and it actually improves


# ----------------------------------------------------------------------------- views, entropy
def test_views_and_global_embedding():
    gen = torch.Generator().manual_seed(9)
    res = fit_gmm(_clusters(9, 4, 3, gen)[None], None, torch.randn(3, 4, generator=gen, dtype=F64), GMMConfig())
    views, glob = gmm_views(res)
    torch.testing.assert_close(views.norm(dim=-1), torch.ones(1, 3, dtype=F64))
    expected = (res.weights[..., None] * res.means / res.means.norm(dim=-1, keepdim=True)).sum(1)
    torch.testing.assert_close(glob, expected / expected.norm(dim=-1, keepdim=True))


def test_mixture_entropy():
    w = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], requires_grad=True)
    h = mixture_entropy(w)
    torch.testing.assert_close(h.detach(), torch.tensor([math.log(3), 0.0, math.log(2)]))
    h.sum().backward()
    assert torch.isfinite(w.grad).all()


# ----------------------------------------------------------------------------- module
def test_layer_init_is_deterministic_and_orthonormal():
    torch.manual_seed(123)
    a = GMMLayer(16, GMMConfig(n_components=3))
    torch.manual_seed(123)
    b = GMMLayer(16, GMMConfig(n_components=3))
    assert torch.equal(a.anchors, b.anchors) and a.anchors.shape == (3, 16)
    torch.testing.assert_close(a.anchors @ a.anchors.T, torch.eye(3), rtol=0, atol=1e-5)
    assert "n_components=3" in repr(a)


def test_layer_initial_means():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    rel = GMMLayer(5, GMMConfig(n_components=2))
    centre = torch.stack([x[0, :2].mean(0), x[1].mean(0)])
    torch.testing.assert_close(rel.initial_means(x, mask), centre[:, None] + rel.anchors.detach())
    ab = GMMLayer(5, GMMConfig(n_components=2, anchor_mode="absolute"))
    torch.testing.assert_close(ab.initial_means(x, mask), ab.anchors.detach())
    res = rel(x, mask)
    assert res.means.shape == (2, 2, 5) and res.resp.shape == (2, 4, 2) and res.log_likelihood.shape == (2,)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_components": 0}, r"GMMConfig\.n_components must be an integer >= 1, got 0"),
        ({"n_components": 2.0}, r"n_components must be an integer >= 1, got 2\.0"),
        ({"n_components": True}, r"n_components must be an integer >= 1, got True"),
        ({"n_iter": -1}, r"GMMConfig\.n_iter must be an integer >= 0, got -1"),
        ({"covariance": "full"}, r"GMMConfig\.covariance must be one of \('diag', 'isotropic'\), got 'full'"),
        ({"var_floor": 0.0}, r"GMMConfig\.var_floor must be a finite number > 0, got 0\.0.*reg_covar"),
        ({"var_floor": float("nan")}, r"var_floor must be a finite number > 0, got nan"),
        ({"mass_floor": -1e-6}, r"GMMConfig\.mass_floor must be a finite number > 0, got -1e-06"),
        ({"init_var": float("inf")}, r"GMMConfig\.init_var must be a finite number > 0, got inf"),
        ({"anchor_mode": "random"}, r"GMMConfig\.anchor_mode must be one of \('relative', 'absolute'\)"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GMMConfig(**kwargs)


def test_shape_errors():
    x = torch.randn(2, 4, 3)
    with pytest.raises(DataError, match=r"init_means must have shape \(2, 3\) \(shared\) or \(2, 2, 3\)"):
        fit_gmm(x, None, torch.randn(3, 3), GMMConfig(n_components=2))
    with pytest.raises(DataError, match=r"mask must have shape \(batch, n_points\) = \(2, 4\)"):
        fit_gmm(x, torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 3), GMMConfig(n_components=2))
    with pytest.raises(DataError, match=r"x must have shape \(batch, n_points, dim\)"):
        fit_gmm(x[0], None, torch.randn(2, 3), GMMConfig(n_components=2))
    with pytest.raises(DataError, match=r"GMMLayer expects x of shape \(batch, n_points, 5\)"):
        GMMLayer(5)(x, None)
    with pytest.raises(ConfigError, match=r"GMMLayer dim must be an integer >= 1"):
        GMMLayer(0)
    with pytest.raises(ConfigError, match=r"cfg must be a GMMConfig"):
        fit_gmm(x, None, torch.randn(2, 3), {"n_components": 2})


def test_a_set_of_one_gives_every_component_that_feature():
    """Pooled-only features (one local feature per sample): every component's mean is the
    feature itself, so GCRDP's K views coincide with the (projected) pooled feature."""
    import torch

    from gcrdp.model.gmm import GMMLayer

    torch.manual_seed(0)
    x = torch.randn(5, 1, 7)
    res = GMMLayer(7)(x, torch.ones(5, 1, dtype=torch.bool))
    torch.testing.assert_close(res.means, x.expand(5, 3, 7), rtol=0, atol=1e-6)
