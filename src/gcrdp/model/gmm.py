"""Gaussian mixture over each sample's set of local features, fitted by EM unrolled in forward.

This is the GMM module of GCRDP (SPEC §3.2). For every sample ``b`` of a batch, a K-component
Gaussian mixture with diagonal (or isotropic) covariances is fitted to its valid local features
``x[b, mask[b]]`` by a fixed number T of EM iterations. Every operation is a differentiable
tensor operation, so gradients flow from the fitted parameters back into the features (and so
into the projection heads) and into the initial means (the learned anchors of
:class:`GMMLayer`).

Layout (after ``sklearn.mixture``): the math lives in small pure functions that tests call
directly — :func:`estimate_log_gaussian_prob`, :func:`e_step`, :func:`m_step`, :func:`fit_gmm`,
:func:`gmm_views`, :func:`mixture_entropy` — and :class:`GMMLayer` only holds the anchors and the
configuration.

Conventions (all functions):

* ``x``: ``(B, N, D)`` float32 or float64; float16 / bfloat16 (and integer) inputs are upcast to
  float32, and autocast is disabled inside the EM, so the EM never runs in lower precision. The
  outputs have this compute dtype.
* ``mask``: ``(B, N)`` bool, True = valid point. Padded points get responsibility 0, do not count
  in any sum, and their values do not matter (they are replaced by 0 before any arithmetic, so
  even inf / NaN padding is harmless and gets a zero gradient). A row with no valid point is
  allowed: it yields the initial parameters, zero responsibilities and log-likelihood 0.
* Variances are per dimension, ``(B, K, D)``; the isotropic variant repeats one value over D.

Numerical safety:

* The E-step works in log space: ``log π_k + log N(x | μ_k, σ²_k)``, normalised with
  log-sum-exp. The squared Mahalanobis distance is expanded as
  ``Σ_d x²/σ² − 2 Σ_d x μ/σ² + Σ_d μ²/σ²`` and computed with batched matrix products of ``x``
  and ``x²`` (as ``sklearn.mixture._estimate_log_gaussian_prob`` does); the M-step sums
  ``Σ_n γ x`` and ``Σ_n γ x²`` are batched matrix products too. No ``(B, N, K, D)`` temporary is
  ever formed (forward or backward: the largest tensor is ``(B, N, D)``); the distance is
  clamped at 0 against round-off.
  :func:`fit_gmm` first centres every set on the mean of its valid points (EM is exactly
  translation-equivariant, the means are shifted back at the end) which keeps the cancellation
  in that expansion small in float32.
* ``var_floor`` is added to every variance (sklearn's ``reg_covar``), so a component fitted to
  one point, or to identical points, has variance ``var_floor`` and a finite density.
* ``mass_floor`` (ε) is a pseudo-count: the M-step is the MAP update under a prior of ε points
  located at the component's previous parameters::

      N_k = Σ_n γ_nk                                          # soft count      (B, K)
      π_k = (N_k + ε) / Σ_j (N_j + ε)                         # ≥ ε / (n + Kε) > 0
      μ_k = (Σ_n γ_nk x_n + ε μ_k^prev) / (N_k + ε)
      σ²_k = (Σ_n γ_nk (x_n − μ_k)² + ε (σ²_k^prev − var_floor)₊) / (N_k + ε) + var_floor

  A component with mass (``N_k ≫ ε``) gets the ordinary maximum-likelihood update (to a relative
  ``ε / N_k``); an **empty component** (``N_k → 0``, e.g. a set of one point, a set smaller than
  K, or an anchor far from every point) keeps its previous mean and variance — so one that stays
  empty keeps its initial (anchor) mean and ``init_var`` — with a tiny but positive weight, so
  everything stays finite and smooth, gradients included. sklearn adds ``10 · eps`` to ``N_k``
  in the same place; with ``mass_floor = 10 · eps`` the two updates agree to round-off (tested).
  Called without previous parameters, :func:`m_step` uses a prior at the origin with variance
  ``var_floor``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..errors import ConfigError, DataError

COVARIANCE_TYPES = ("diag", "isotropic")
ANCHOR_MODES = ("relative", "absolute")
INIT_VAR_MODES = ("fixed", "data")
_LOG_2PI = math.log(2.0 * math.pi)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- configuration
def _is_int(minimum: int) -> Callable[[object], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_positive_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _is_one_of(options: tuple[str, ...]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, str) and v in options


# One declared table of constraints (like sklearn's ``_parameter_constraints``):
# field -> (check, what is expected, how to fix it).
_CONSTRAINTS: dict[str, tuple[Callable[[object], bool], str, str]] = {
    "n_components": (_is_int(1), "an integer >= 1", "It is the number K of mixture components (views) per sample, e.g. 3."),
    "n_iter": (
        _is_int(0),
        "an integer >= 0",
        ("It is the number T of EM iterations unrolled in forward, e.g. 3 (0 keeps the initial parameters)."),
    ),
    "covariance": (
        _is_one_of(COVARIANCE_TYPES),
        f"one of {COVARIANCE_TYPES}",
        "Use 'diag' (one variance per dimension) or 'isotropic' (one per component).",
    ),
    "var_floor": (_is_positive_number, "a finite number > 0", "It is added to every variance (like sklearn's reg_covar), e.g. 1e-3."),
    "mass_floor": (_is_positive_number, "a finite number > 0", "It is the pseudo-count that keeps empty components finite, e.g. 1e-6."),
    "init_var": (_is_positive_number, "a finite number > 0", "It is the initial variance of every component, e.g. 1.0."),
    "anchor_mode": (
        _is_one_of(ANCHOR_MODES),
        f"one of {ANCHOR_MODES}",
        "'relative' starts component k at (set mean + anchor k), 'absolute' at anchor k.",
    ),
    "temperature": (
        _is_positive_number,
        "a finite number > 0",
        "It divides the E-step's log densities (1 = standard EM; larger = softer responsibilities, as NetVLAD's soft assignment).",
    ),
    "init_var_mode": (
        _is_one_of(INIT_VAR_MODES),
        f"one of {INIT_VAR_MODES}",
        "'fixed' starts every variance at init_var; 'data' at the set's own "
        "per-dimension variance averaged over dimensions, times init_var.",
    ),
}


@dataclass(frozen=True)
class GMMConfig:
    """Settings of the per-sample Gaussian mixture (validated on construction).

    Attributes:
        n_components: K, the number of components (= views per sample).
        n_iter: T, the number of EM iterations (E-step then M-step) unrolled in forward; a last
            E-step then gives the returned responsibilities and log-likelihood. 0 = initial
            parameters only.
        covariance: ``"diag"`` (one variance per dimension and component) or ``"isotropic"``
            (one per component: the mean over D of the diagonal estimate, repeated over D).
        var_floor: added to every variance in the M-step (sklearn's ``reg_covar``).
        mass_floor: ε, the pseudo-count of the M-step's prior at the previous parameters: floors
            the weights (π_k ≥ ε / (n + Kε)) and keeps empty components at their previous mean
            and variance (see the module docstring).
        init_var: the initial variance of every component (every dimension).
        anchor_mode: how :class:`GMMLayer` turns its anchors into initial means:
            ``"relative"`` (default) = masked mean of the set + anchor k; ``"absolute"`` =
            anchor k. Not used by :func:`fit_gmm`, which takes the initial means.
        temperature: t > 0; the E-step uses ``γ ∝ exp((log π_k + log N(x | μ_k, σ²_k)) / t)``.
            1 is standard EM; in D dimensions the log densities of the components differ by
            O(D) nats, so responsibilities are nearly hard unless t is of the order of D.
        init_var_mode: ``"fixed"`` (every initial variance is ``init_var``) or ``"data"``
            (:class:`GMMLayer` starts each set's components at the set's own isotropic
            variance — the mean over dimensions of the per-dimension variance of its valid
            points — times ``init_var``; scale-free).
    """

    n_components: int = 3
    n_iter: int = 3
    covariance: str = "diag"
    var_floor: float = 1e-3
    mass_floor: float = 1e-6
    init_var: float = 1.0
    anchor_mode: str = "relative"
    temperature: float = 1.0
    init_var_mode: str = "fixed"

    def __post_init__(self) -> None:
        for f in fields(self):
            check, expected, hint = _CONSTRAINTS[f.name]
            value = getattr(self, f.name)
            if not check(value):
                raise ConfigError(f"GMMConfig.{f.name} must be {expected}, got {value!r}. {hint}")


class GMMResult(NamedTuple):
    """Fitted mixtures of a batch of sets (compute dtype: float32 or float64).

    Attributes:
        weights: ``(B, K)`` mixing weights π; rows sum to 1, every entry > 0.
        means: ``(B, K, D)`` component means μ.
        variances: ``(B, K, D)`` per-dimension variances σ² (≥ var_floor; isotropic: one value
            repeated over D).
        resp: ``(B, N, K)`` responsibilities γ under the returned parameters; rows of valid
            points sum to 1, padded points are 0.
        log_likelihood: ``(B,)`` mean over the valid points of ``log p(x_n)`` under the
            returned parameters (0 for a row without valid points).

        ``resp`` and ``log_likelihood`` are None when the fit ran with ``final_e_step=False``.
    """

    weights: Tensor
    means: Tensor
    variances: Tensor
    resp: Tensor | None
    log_likelihood: Tensor | None


# ----------------------------------------------------------------------------- input handling
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in _LOW_PRECISION or not dtype.is_floating_point:
        return torch.float32
    return dtype


def _prepare(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Check shapes, upcast, and zero the padded points. -> x (B, N, D), mask (B, N) bool."""
    if x.dim() != 3:
        raise DataError(f"x must have shape (batch, n_points, dim), got shape {tuple(x.shape)}")
    x = x.to(_compute_dtype(x.dtype))
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise DataError(f"mask must have shape (batch, n_points) = {tuple(x.shape[:2])} like x, got shape {tuple(mask.shape)}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    if not bool(mask.all()):  # (nothing to zero when no point is padded, e.g. image grids)
        x = torch.where(mask.unsqueeze(-1), x, x.new_zeros(()))  # (B, N, D); padding -> 0, grad 0
    return x, mask


def _broadcast(t: Tensor, shape: tuple[int, ...], name: str, like: Tensor) -> Tensor:
    """Expand a shared ``shape[1:]`` or per-sample ``shape`` tensor to ``shape``."""
    t = torch.as_tensor(t).to(device=like.device, dtype=like.dtype)
    if tuple(t.shape) not in (shape[1:], shape):
        raise DataError(f"{name} must have shape {shape[1:]} (shared) or {shape} (per sample), got shape {tuple(t.shape)}")
    return t.expand(shape)


def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sufficient statistics of every point: ``(x, x²)``, each (B, N, D)."""
    return x, x * x


# ----------------------------------------------------------------------------- small-K products
# The EM's matrix products all have K (3, say) as one of their dimensions. torch's ``bmm`` is
# several times slower when its *output* has K as the fastest-varying dimension, e.g.
# (B, N, D) @ (B, D, K), or when an operand is a transposed view — which is what autograd's
# default backward of ``bmm`` produces. The internal layout is therefore (B, K, N) for
# responsibilities and log densities, and these two products choose the layouts of their
# backward products explicitly (``benchmarks/bench_train_step.py --parts`` measures the
# difference). First-order gradients only (a second derivative raises).
class _KDxND(torch.autograd.Function):
    """``a (B, K, D) @ x (B, N, D)ᵀ -> (B, K, N)``."""

    @staticmethod
    def forward(ctx, a: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(a, x)
        return torch.bmm(a, x.transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # g (B, K, N)
        a, x = ctx.saved_tensors
        ga = torch.bmm(g, x) if ctx.needs_input_grad[0] else None  # (B, K, D)
        gx = torch.bmm(g.transpose(1, 2).contiguous(), a) if ctx.needs_input_grad[1] else None  # (B, N, D)
        return ga, gx


class _KNxND(torch.autograd.Function):
    """``r (B, K, N) @ x (B, N, D) -> (B, K, D)``."""

    @staticmethod
    def forward(ctx, r: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(r, x)
        return torch.bmm(r, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):  # g (B, K, D)
        r, x = ctx.saved_tensors
        gr = torch.bmm(g, x.transpose(1, 2)) if ctx.needs_input_grad[0] else None  # (B, K, N)
        gx = torch.bmm(r.transpose(1, 2).contiguous(), g) if ctx.needs_input_grad[1] else None  # (B, N, D)
        return gr, gx


def _kd_nd(a: Tensor, x: Tensor) -> Tensor:
    return _KDxND.apply(a, x)


def _kn_nd(r: Tensor, x: Tensor) -> Tensor:
    return _KNxND.apply(r, x)


# ----------------------------------------------------------------------------- the math
# Internal layout: responsibilities and log densities are (B, K, N); the public functions
# return them as (B, N, K).
def _log_gaussian_prob(stats: tuple[Tensor, Tensor], means: Tensor, variances: Tensor) -> Tensor:
    """Diagonal Gaussian log densities from the statistics (x, x²). -> (B, K, N)."""
    x, x_sq = stats  # (B, N, D) each
    d = means.shape[-1]
    prec = variances.reciprocal()  # (B, K, D)
    # Σ_d (x - μ)²/σ² = Σ x²/σ² - 2 Σ x μ/σ² + Σ μ²/σ²: two products (B,K,D) @ (B,N,D)ᵀ
    const = (means * means * prec).sum(-1, keepdim=True)  # (B, K, 1)
    maha = (_kd_nd(-2.0 * means * prec, x) + _kd_nd(prec, x_sq) + const).clamp_min(0.0)  # (B, K, N)
    log_det = variances.log().sum(-1, keepdim=True)  # (B, K, 1)
    return -0.5 * (maha + log_det + d * _LOG_2PI)


def _e_step(
    stats: tuple[Tensor, Tensor], mask: Tensor, weights: Tensor, means: Tensor, variances: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """-> resp (B, K, N) (padded points 0), log-likelihood (B,) (of the untempered mixture)."""
    log_prob = _log_gaussian_prob(stats, means, variances) + weights.log().unsqueeze(-1)  # (B, K, N)
    log_norm = torch.logsumexp(log_prob, dim=1)  # (B, N) = log p(x_n)
    if temperature == 1.0:
        resp = torch.exp(log_prob - log_norm.unsqueeze(1))  # (B, K, N)
    else:
        resp = torch.softmax(log_prob / temperature, dim=1)  # (B, K, N) tempered
    valid = mask.unsqueeze(1)  # (B, 1, N)
    resp = torch.where(valid, resp, resp.new_zeros(()))
    n_valid = mask.sum(1).clamp_min(1).to(log_norm.dtype)  # (B,)
    log_lik = torch.where(mask, log_norm, log_norm.new_zeros(())).sum(1) / n_valid  # (B,)
    return resp, log_lik


def _m_step(
    stats: tuple[Tensor, Tensor], resp: Tensor, cfg: GMMConfig, prior_means: Tensor | None, prior_variances: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """resp (B, K, N) -> weights (B, K), means (B, K, D), variances (B, K, D)."""
    eps = cfg.mass_floor
    nk = resp.sum(2)  # (B, K)
    nk_eps = (nk + eps).unsqueeze(-1)  # (B, K, 1)
    s1 = _kn_nd(resp, stats[0])  # Σ_n γ x,  (B, K, D)
    s2 = _kn_nd(resp, stats[1])  # Σ_n γ x², (B, K, D)
    weights = nk + eps
    weights = weights / weights.sum(-1, keepdim=True)  # (B, K)
    means = s1 if prior_means is None else s1 + eps * prior_means
    means = means / nk_eps  # (B, K, D)
    sq = s2 - 2.0 * means * s1 + nk.unsqueeze(-1) * means * means  # Σ γ (x - μ)², (B, K, D)
    if prior_variances is not None:
        sq = sq + eps * (prior_variances - cfg.var_floor).clamp_min(0.0)
    variances = (sq / nk_eps).clamp_min(0.0) + cfg.var_floor  # (B, K, D)
    if cfg.covariance == "isotropic":
        variances = variances.mean(-1, keepdim=True).expand_as(variances)
    return weights, means, variances


def estimate_log_gaussian_prob(x: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """Log density of every point under every diagonal Gaussian component.

    Args:
        x: ``(B, N, D)`` points (must be finite; padded slots are not special here).
        means: ``(B, K, D)``.
        variances: ``(B, K, D)``, positive.

    Returns:
        ``(B, N, K)``: ``log N(x_n | μ_k, diag σ²_k)``, computed with batched matrix products
        (no ``(B, N, K, D)`` temporary).
    """
    x = x.to(_compute_dtype(x.dtype))
    log_prob = _log_gaussian_prob(_stats(x), means.to(x.dtype), variances.to(x.dtype))  # (B, K, N)
    return log_prob.transpose(1, 2).contiguous()


def e_step(x: Tensor, mask: Tensor | None, weights: Tensor, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """E-step in log space.

    Args:
        x: ``(B, N, D)``; mask: ``(B, N)`` bool (None = all valid).
        weights: ``(B, K)`` positive, summing to 1; means, variances: ``(B, K, D)``.

    Returns:
        resp ``(B, N, K)`` (rows of valid points sum to 1, padded points 0) and
        log_likelihood ``(B,)``, the mean over the valid points of ``log p(x_n)``.
    """
    x, mask = _prepare(x, mask)
    resp, log_lik = _e_step(_stats(x), mask, weights.to(x.dtype), means.to(x.dtype), variances.to(x.dtype))
    return resp.transpose(1, 2).contiguous(), log_lik


def m_step(
    x: Tensor,
    mask: Tensor | None,
    resp: Tensor,
    cfg: GMMConfig,
    *,
    prior_means: Tensor | None = None,
    prior_variances: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """M-step with the floors of ``cfg`` (see the module docstring for the exact update).

    Args:
        x: ``(B, N, D)``; mask: ``(B, N)`` bool (None = all valid).
        resp: ``(B, N, K)`` responsibilities (padded points are ignored whatever their value).
        cfg: the floors and the covariance type.
        prior_means, prior_variances: ``(B, K, D)``, the previous parameters where empty
            components fall back (``mass_floor`` pseudo-points). None: a prior at the origin
            with variance ``var_floor``.

    Returns:
        weights ``(B, K)``, means ``(B, K, D)``, variances ``(B, K, D)`` (isotropic: the mean
        over D of the diagonal estimate, repeated over D).
    """
    x, mask = _prepare(x, mask)
    resp = torch.where(mask.unsqueeze(-1), resp.to(x.dtype), x.new_zeros(())).transpose(1, 2)  # (B, K, N)
    pm = None if prior_means is None else prior_means.to(x.dtype)
    pv = None if prior_variances is None else prior_variances.to(x.dtype)
    return _m_step(_stats(x), resp, cfg, pm, pv)


def fit_gmm(
    x: Tensor,
    mask: Tensor | None,
    init_means: Tensor,
    cfg: GMMConfig,
    init_weights: Tensor | None = None,
    init_variances: Tensor | None = None,
    *,
    final_e_step: bool = True,
) -> GMMResult:
    """Fit one K-component mixture per set by ``cfg.n_iter`` unrolled EM iterations.

    Exactly: starting from ``(π⁰, μ⁰, σ²⁰)``, each of the T iterations runs an E-step under the
    current parameters then an M-step (with the previous parameters as the ``mass_floor``
    prior); the returned weights/means/variances are those of the last M-step, and the returned
    ``resp`` and ``log_likelihood`` come from one more E-step under them (as sklearn's final
    E-step, so ``resp`` equals ``GaussianMixture(max_iter=T).predict_proba``). With T = 0 the
    initial parameters are returned with their E-step.

    Internally every set is centred on the mean of its valid points (exact, for float32
    robustness); the returned means are in the original coordinates. EM is exactly
    translation-equivariant (shifting the points and the initial means by c shifts the fitted
    means by c and changes nothing else), so the centre is treated as a constant by autograd:
    its gradient contribution is exactly zero, and not computing it saves a pass over x.

    Args:
        x: ``(B, N, D)`` float32/float64 (half precision is upcast to float32).
        mask: ``(B, N)`` bool, True = valid point (None = all valid).
        init_means: ``(K, D)`` shared or ``(B, K, D)`` per sample.
        cfg: the configuration (``cfg.n_components`` must equal K).
        init_weights: ``(K,)`` or ``(B, K)``, positive (normalised here); default uniform 1/K.
        init_variances: ``(K, D)`` or ``(B, K, D)``, positive; default ``cfg.init_var``
            everywhere. Isotropic: averaged over D.
        final_e_step: False skips the last E-step: ``resp`` and ``log_likelihood`` are then
            None (training needs only the weights and means: one E-step less per forward).

    Returns:
        :class:`GMMResult`, differentiable w.r.t. ``x`` and the initial parameters.
    """
    if not isinstance(cfg, GMMConfig):
        raise ConfigError(f"cfg must be a GMMConfig, got {type(cfg).__name__}")
    x, mask = _prepare(x, mask)
    return _fit_prepared(x, mask, init_means, cfg, init_weights, init_variances, final_e_step)


def _fit_prepared(
    x: Tensor,
    mask: Tensor,
    init_means: Tensor,
    cfg: GMMConfig,
    init_weights: Tensor | None,
    init_variances: Tensor | None,
    final_e_step: bool,
) -> GMMResult:
    """:func:`fit_gmm` on inputs that went through :func:`_prepare`."""
    b, _, d = x.shape
    k = cfg.n_components
    with torch.autocast(device_type=x.device.type, enabled=False):
        means = _broadcast(init_means, (b, k, d), "init_means", x)  # (B, K, D)
        if init_weights is None:
            weights = x.new_full((b, k), 1.0 / k)  # (B, K)
        else:
            weights = _broadcast(init_weights, (b, k), "init_weights", x)
            weights = weights / weights.sum(-1, keepdim=True)
        if init_variances is None:
            variances = x.new_full((b, k, d), cfg.init_var)  # (B, K, D)
        else:
            variances = _broadcast(init_variances, (b, k, d), "init_variances", x)
            if cfg.covariance == "isotropic":
                variances = variances.mean(-1, keepdim=True).expand_as(variances)

        n_valid = mask.sum(1).clamp_min(1).to(x.dtype).view(b, 1, 1)  # (B, 1, 1)
        # (B, 1, D); padded points are 0 here. A constant for autograd (see the docstring).
        centre = x.detach().sum(1, keepdim=True) / n_valid
        # (x, x²) (B, N, D) each; padded rows hold the finite -centre: γ = 0, they count nowhere
        stats = _stats(x - centre)
        means = means - centre
        resp: Tensor | None
        for _ in range(cfg.n_iter):
            resp, _ = _e_step(stats, mask, weights, means, variances, cfg.temperature)  # (B, K, N)
            weights, means, variances = _m_step(stats, resp, cfg, means, variances)
        resp = log_lik = None
        if final_e_step:
            resp, log_lik = _e_step(stats, mask, weights, means, variances, cfg.temperature)
            resp = resp.transpose(1, 2).contiguous()  # (B, N, K)
        means = means + centre
    return GMMResult(weights, means, variances, resp, log_lik)


def gmm_views(result: GMMResult) -> tuple[Tensor, Tensor]:
    """The sample's K views and its global embedding.

    Returns:
        views ``(B, K, D)``: the L2-normalised component means;
        global ``(B, D)``: the L2-normalised π-weighted mean of the views.
    """
    views = F.normalize(result.means, dim=-1)  # (B, K, D)
    pooled = (result.weights.unsqueeze(-1).to(views.dtype) * views).sum(1)  # (B, D)
    return views, F.normalize(pooled, dim=-1)


def set_variance(x: Tensor, mask: Tensor) -> Tensor:
    """``(B,)``: mean over dimensions of the per-dimension variance of each set's valid points
    (detached: a data-driven scale, not a path for gradients), floored at 1e-6."""
    x = x.detach()
    w = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
    n = w.sum(1).clamp_min(1.0)  # (B, 1)
    mean = (x * w).sum(1) / n  # (B, D)
    var = (((x - mean.unsqueeze(1)) * w) ** 2).sum(1) / n  # (B, D)
    return var.mean(-1).clamp_min(1e-6)


def mixture_entropy(weights: Tensor) -> Tensor:
    """Entropy ``-Σ_k π_k log π_k`` (nats) of each row of ``weights (B, K)`` -> ``(B,)``.

    ``log K`` for uniform weights, 0 when all the mass is in one component (collapse); the
    caller logs its mean over the batch. Zero weights count as 0 (finite gradient).
    """
    tiny = torch.finfo(weights.dtype).tiny
    return -(weights * weights.clamp_min(tiny).log()).sum(-1)


# ----------------------------------------------------------------------------- the module
class GMMLayer(nn.Module):
    """Per-sample Gaussian mixture over a set of D-dimensional features, with learned anchors.

    The layer holds K learned anchor vectors ``anchors (K, dim)`` and a :class:`GMMConfig`;
    ``forward`` computes the initial means from the anchors and calls :func:`fit_gmm`.

    Why anchors: EM is only locally optimal and the labels of its components are arbitrary.
    Starting every sample's component k from the *same* learned vector (uniform weights,
    variance ``init_var``) makes EM deterministic and makes component k mean the same thing in
    every sample — "the part of the set lying in direction a_k" — so view k of an image and view
    k of a text (with shared anchors) can be compared, and training can move the anchors to where
    useful components are. Random or k-means initialisation would give each sample its own
    arbitrary order of components.

    ``anchor_mode="relative"`` (default): μ⁰_k = (masked mean of the set) + a_k, so the
    components start around the set wherever it lies in feature space and split it by direction;
    a set of one point (a pooled feature) gives views equal to that point for every component
    that receives mass (all K while the anchors have equal norms, as initialised), and a
    component that receives no mass keeps a sample-dependent mean (set mean + a_k). ``"absolute"``: μ⁰_k = a_k; a component far
    from the set then stays at a_k, i.e. the same view for every sample.

    Anchors are initialised orthonormal (``nn.init.orthogonal_``, rows of unit norm when
    K ≤ dim; deterministic given torch's seed).
    """

    def __init__(self, dim: int, cfg: GMMConfig = GMMConfig()) -> None:
        super().__init__()
        if not _is_int(1)(dim):
            raise ConfigError(f"GMMLayer dim must be an integer >= 1 (the feature dimension D), got {dim!r}")
        if not isinstance(cfg, GMMConfig):
            raise ConfigError(f"GMMLayer cfg must be a GMMConfig, got {type(cfg).__name__}")
        self.dim = dim
        self.cfg = cfg
        self.anchors = nn.Parameter(torch.empty(cfg.n_components, dim))  # (K, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.anchors)

    def initial_means(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Initial means: ``(K, D)`` (absolute) or ``(B, K, D)`` (relative) in x's compute dtype."""
        x, mask = _prepare(x, mask)
        return self._initial_means(x, mask)

    def _initial_means(self, x: Tensor, mask: Tensor) -> Tensor:
        anchors = self.anchors.to(x.dtype)  # (K, D)
        if self.cfg.anchor_mode == "absolute":
            return anchors
        w = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
        centre = x.sum(1) / w.sum(1).clamp_min(1.0)  # (B, D)
        return centre.unsqueeze(1) + anchors  # (B, K, D)

    def forward(self, x: Tensor, mask: Tensor | None, *, final_e_step: bool = True) -> GMMResult:
        """x ``(B, N, dim)``, mask ``(B, N)`` bool -> :class:`GMMResult` (``final_e_step``:
        see :func:`fit_gmm`)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise DataError(f"GMMLayer expects x of shape (batch, n_points, {self.dim}), got shape {tuple(x.shape)}")
        x, mask = _prepare(x, mask)
        init_var = None
        if self.cfg.init_var_mode == "data":
            init_var = (
                (set_variance(x, mask) * self.cfg.init_var).view(-1, 1, 1).expand(x.shape[0], self.cfg.n_components, x.shape[2])
            )  # (B, K, D)
        return _fit_prepared(x, mask, self._initial_means(x, mask), self.cfg, None, init_var, final_e_step)

    def extra_repr(self) -> str:
        c = self.cfg
        return (
            f"dim={self.dim}, n_components={c.n_components}, n_iter={c.n_iter}, covariance={c.covariance!r}, anchor_mode={c.anchor_mode!r}"
        )
