"""``cca``: regularised canonical correlation analysis (Rasiwasia et al., ACM MM 2010; the
ridge form of Hardoon, Szedmak & Shawe-Taylor, 2004), the classic cross-modal baseline.

The method's notes — what it is, the choices made where the paper is silent, and how it is
tested — are in docs/methods/cca.md.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..data.features import FeatureSet, ModalityFeatures
from ..errors import ConfigError, DataError
from ..training.config import split_options
from .base import METHODS, FitData, FitReport, MethodTags, check_fitted
from .persistence import load_method, save_method

log = logging.getLogger(__name__)

INPUTS = ("pooled", "mean_local")
#: The grid ``reg="auto"`` searches on the validation pairs.
AUTO_REG_GRID = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0)
#: ``reg="auto"`` without validation pairs.
FALLBACK_REG = 0.3
#: The default cap on the number of canonical components.
MAX_COMPONENTS = 128
#: Relative eigenvalue floor of the inverse square roots (pseudo-inverse for reg = 0).
EIG_FLOOR = 1e-12


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass
class CCAConfig:
    """Settings of the ``cca`` method (module docstring for the math).

    Attributes:
        input: ``"pooled"`` (the encoder's global feature) or ``"mean_local"`` (masked mean of
            the local features).
        standardize: also scale each feature to unit (weighted) variance; centring is always done.
        reg: relative ridge (≥ 0), a list of candidates, or ``"auto"`` (:data:`AUTO_REG_GRID`),
            chosen on the validation mean mAP.
        n_components: canonical components kept (None: ``min(d_x, d_y, 128, n − 1)``).
        eig_power: embedding = projections × ρ^eig_power (≥ 0; 0 = unweighted).
        fewshot_weight: weight (> 0) of the few-shot pairs in the moments (1 = each pair once).
    """

    input: str = "pooled"
    standardize: bool = False
    reg: Any = "auto"
    n_components: int | None = None
    eig_power: float = 1.0
    fewshot_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ConfigError(f"cca option input must be one of {', '.join(map(repr, INPUTS))}, got {self.input!r}.")
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise ConfigError(f"cca option standardize must be true or false, got {self.standardize!r}.")
        self.standardize = bool(self.standardize)
        self.reg = _check_reg(self.reg)
        if self.n_components is not None:
            if not _is_number(self.n_components) or int(self.n_components) != self.n_components or self.n_components < 1:
                raise ConfigError(
                    f"cca option n_components must be an integer >= 1 or null (the "
                    f"default min(d_x, d_y, {MAX_COMPONENTS}, n - 1)), got "
                    f"{self.n_components!r}."
                )
            self.n_components = int(self.n_components)
        for name, ok, want in (("eig_power", lambda v: v >= 0, ">= 0"), ("fewshot_weight", lambda v: v > 0, "> 0")):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or not ok(v):
                raise ConfigError(f"cca option {name} must be a finite number {want}, got {v!r}.")
            setattr(self, name, float(v))

    def reg_candidates(self) -> list[float]:
        return list(AUTO_REG_GRID) if self.reg == "auto" else (list(self.reg) if isinstance(self.reg, list) else [self.reg])


def _check_reg(reg: Any) -> float | list[float] | str:
    want = (
        "cca option reg must be a number >= 0, a non-empty list of them, or 'auto' (choose "
        f"among {list(AUTO_REG_GRID)} on the validation pairs), got {reg!r}."
    )
    if isinstance(reg, str):
        if reg.strip().lower() != "auto":
            raise ConfigError(want)
        return "auto"
    if isinstance(reg, (list, tuple)):
        if not reg or not all(_is_number(r) and math.isfinite(r) and r >= 0 for r in reg):
            raise ConfigError(want)
        return [float(r) for r in reg]
    if not _is_number(reg) or not math.isfinite(reg) or reg < 0:
        raise ConfigError(want)
    return float(reg)


# --------------------------------------------------------------------------- math
@dataclass
class CCAFit:
    """A fitted CCA (all float64): ``x_mean, x_scale`` (d_x,), ``x_weights`` (d_x, k) — likewise
    for y — and ``correlations`` (k,), descending."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    x_weights: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    y_weights: np.ndarray
    correlations: np.ndarray


def _moments(X: np.ndarray, w: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean (d,), scale (d,) and the centred/scaled data (n, d); ``w`` sums to 1."""
    mean = w @ X
    Xc = X - mean
    if standardize:
        scale = np.sqrt(w @ (Xc * Xc))
        scale[scale <= 1e-12 * scale.max(initial=0.0)] = 1.0  # constant features keep scale 1
    else:
        scale = np.ones(X.shape[1])
    return mean, scale, Xc / scale


def _ridge(C: np.ndarray, reg: float) -> np.ndarray:
    """``C + reg · (trace(C) / d) · I`` — the ridge relative to the mean variance."""
    d = C.shape[0]
    return C + (reg * float(np.trace(C)) / d) * np.eye(d)


def _inv_sqrt(C: np.ndarray) -> np.ndarray:
    """Symmetric ``C^{-1/2}`` (pseudo-inverse: eigenvalues ≤ EIG_FLOOR·max are dropped)."""
    vals, vecs = np.linalg.eigh(C)
    top = float(vals.max(initial=0.0))
    keep = vals > EIG_FLOOR * top if top > 0 else np.zeros_like(vals, dtype=bool)
    v = vecs[:, keep]
    return (v / np.sqrt(vals[keep])) @ v.T


def _span(Z: np.ndarray, reg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For weighted centred data ``Z`` (n, d) = P Σ Qᵀ: ``Q`` (d, r), ``G = P Σ`` (n, r) and
    ``D = (Σ² + λ)^{-1/2}`` (r,), λ = reg·trace(ZᵀZ)/d, over the r directions whose ridged
    variance exceeds ``EIG_FLOOR`` × the largest (the pseudo-inverse of :func:`_inv_sqrt`)."""
    P, sig, Qt = np.linalg.svd(Z, full_matrices=False)
    var = sig**2
    lam = reg * float(var.sum()) / Z.shape[1]
    ridged = var + lam
    top = float(ridged.max(initial=0.0))
    keep = ridged > EIG_FLOOR * top if top > 0 else np.zeros_like(ridged, dtype=bool)
    return Qt[keep].T, P[:, keep] * sig[keep], 1.0 / np.sqrt(ridged[keep])


def fit_cca(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    reg: float,
    n_components: int | None = None,
    weights: np.ndarray | None = None,
    standardize: bool = False,
) -> CCAFit:
    """Regularised CCA of paired rows ``X`` (n, d_x) and ``Y`` (n, d_y) (module docstring).

    Args:
        reg: relative ridge ≥ 0 added to both covariances.
        n_components: k (None: ``min(d_x, d_y, 128, n − 1)``; clipped to ``min(d_x, d_y, n − 1)``).
        weights: (n,) positive pair weights (None: all 1).
        standardize: scale features to unit weighted variance after centring.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    n = X.shape[0]
    if Y.shape[0] != n:
        raise DataError(f"CCA needs paired rows: {n} image rows, {Y.shape[0]} text rows.")
    if n < 2:
        raise DataError(f"CCA needs at least 2 training pairs, got {n}.")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise DataError("CCA: the training features contain NaN or infinite values.")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not (w > 0).all():
        raise DataError(f"CCA pair weights must be ({n},) and positive.")
    w = w / w.sum()
    mx, sx, Xs = _moments(X, w, standardize)
    my, sy, Ys = _moments(Y, w, standardize)
    # Work in each modality's data span: with √w·Xs = P Σ Qᵀ (thin SVD), Cxx = Q Σ² Qᵀ, and the
    # ridge adds λ = reg·trace(Cxx)/d on every direction; Cxy = Q Σ Pᵀ Py Σy Qyᵀ lives in the
    # spans, so (Cxx + λI)^{-1/2} Cxy (Cyy + λI)^{-1/2} = Qx Dx (Σx Pxᵀ Py Σy) Dy Qyᵀ with
    # D = (Σ² + λ)^{-1/2} — exact, and O(n·d·min(n, d)) instead of O(d³) when d ≫ n.
    Qx, Gx, Dx = _span(Xs * np.sqrt(w)[:, None], reg)
    Qy, Gy, Dy = _span(Ys * np.sqrt(w)[:, None], reg)
    k_max = min(X.shape[1], Y.shape[1], n - 1)
    k = min(MAX_COMPONENTS, k_max) if n_components is None else min(int(n_components), k_max)
    U, S, Vt = np.linalg.svd((Dx[:, None] * (Gx.T @ Gy)) * Dy[None, :], full_matrices=False)
    k = min(k, U.shape[1])
    A = Qx @ (Dx[:, None] * U[:, :k])
    B = Qy @ (Dy[:, None] * Vt[:k].T)
    rho = np.clip(S[:k], 0.0, None)
    # deterministic signs: the largest-magnitude image weight of each direction is positive
    flip = np.sign(A[np.argmax(np.abs(A), axis=0), np.arange(k)])
    flip[flip == 0] = 1.0
    return CCAFit(mx, sx, A * flip, my, sy, B * flip, rho)


def project(
    X: np.ndarray, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, correlations: np.ndarray, eig_power: float
) -> np.ndarray:
    """(n, d) features → (n, k) float32 L2-normalised embeddings ``((x − μ)/σ) W · ρ^p``."""
    Z = ((np.asarray(X, dtype=np.float64) - mean) / scale) @ weights
    if eig_power:
        Z = Z * correlations**eig_power
    norm = np.linalg.norm(Z, axis=1, keepdims=True)
    return (Z / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def modality_input(features: ModalityFeatures, input: str) -> np.ndarray:
    """The (n, d) float64 vectors CCA uses: pooled features or the masked mean of the locals."""
    if input == "pooled":
        return np.asarray(features.pooled, dtype=np.float64)
    n, _, d = features.local.shape
    out = np.empty((n, d), dtype=np.float64)
    for s in range(0, n, 1024):  # blocks: a float64 copy of all local features can be large
        m = features.mask[s : s + 1024].astype(np.float64)
        total = np.einsum("nld,nl->nd", np.asarray(features.local[s : s + 1024], dtype=np.float64), m)
        out[s : s + 1024] = total / np.maximum(m.sum(1, keepdims=True), 1.0)
    return out


# --------------------------------------------------------------------------- module + method
class CCAModel(nn.Module):
    """The fitted state as float64 buffers (so a checkpoint holds all of it)."""

    def __init__(self, image_dim: int, text_dim: int, n_components: int) -> None:
        super().__init__()
        k = int(n_components)
        for side, d in (("image", int(image_dim)), ("text", int(text_dim))):
            self.register_buffer(f"{side}_mean", torch.zeros(d, dtype=torch.float64))
            self.register_buffer(f"{side}_scale", torch.ones(d, dtype=torch.float64))
            self.register_buffer(f"{side}_weights", torch.zeros(d, k, dtype=torch.float64))
        self.register_buffer("correlations", torch.zeros(k, dtype=torch.float64))

    def set_fit(self, fit: CCAFit) -> None:
        with torch.no_grad():
            for name, arr in (
                ("image_mean", fit.x_mean),
                ("image_scale", fit.x_scale),
                ("image_weights", fit.x_weights),
                ("text_mean", fit.y_mean),
                ("text_scale", fit.y_scale),
                ("text_weights", fit.y_weights),
                ("correlations", fit.correlations),
            ):
                getattr(self, name).copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)))

    def numpy(self, name: str) -> np.ndarray:
        return getattr(self, name).detach().cpu().numpy()


class CCAMethod:
    """Regularised CCA over pooled (or mean local) features; see the module docstring."""

    name = "cca"

    def __init__(self, cfg: CCAConfig | None = None, device: str = "cpu") -> None:
        self.cfg = cfg if cfg is not None else CCAConfig()
        self.device = device  # unused: the linear algebra runs in numpy on the CPU
        self.model_: CCAModel | None = None
        self.input_dims_: dict[str, int] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], device: str = "cpu") -> CCAMethod:
        (cfg,) = split_options(options, CCAConfig)
        return cls(cfg, device)

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.name, **asdict(self.cfg)}

    def init_model(self, *, image_dim: int, text_dim: int, n_components: int) -> CCAModel:
        """The unfitted module for these input dims and k (the checkpoint contract)."""
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim), "n_components": int(n_components)}
        self.model_ = CCAModel(int(image_dim), int(text_dim), int(n_components))
        return self.model_

    # ------------------------------------------------------------------ fit
    def _fit_one(self, X: np.ndarray, Y: np.ndarray, w: np.ndarray, reg: float) -> CCAFit:
        return fit_cca(X, Y, reg=reg, n_components=self.cfg.n_components, weights=w, standardize=self.cfg.standardize)

    def _val_scores(self, fit: CCAFit, val: FeatureSet, labels: np.ndarray) -> dict[str, float]:
        from ..evaluation import cross_modal_metrics

        p = self.cfg.eig_power
        img = project(modality_input(val.image, self.cfg.input), fit.x_mean, fit.x_scale, fit.x_weights, fit.correlations, p)
        txt = project(modality_input(val.text, self.cfg.input), fit.y_mean, fit.y_scale, fit.y_weights, fit.correlations, p)
        res = cross_modal_metrics(img, txt, labels, img, txt, labels)
        return {"i2t": float(res["i2t"]["map"]), "t2i": float(res["t2i"]["map"]), "mean": float(res["mean_map"])}

    def fit(self, data: FitData, *, seed: int, checkpoint_dir: str | Path | None = None, resume: bool = True) -> FitReport:
        """Fit on ``data.train`` (closed form; ``seed``, ``checkpoint_dir`` and ``resume`` are
        accepted for the common interface and not used), choosing ``reg`` on ``data.val``
        when the option is a list or ``"auto"``."""
        t0 = time.perf_counter()
        X = modality_input(data.train.image, self.cfg.input)
        Y = modality_input(data.train.text, self.cfg.input)
        over = np.asarray(data.oversample, dtype=bool)
        if over.shape != (len(X),):
            raise DataError(f"FitData.oversample has shape {over.shape}, expected ({len(X)},).")
        w = np.where(over, self.cfg.fewshot_weight, 1.0)
        has_val = data.val is not None and len(data.val) > 0 and data.val_labels is not None
        candidates = self.cfg.reg_candidates()
        grid = len(candidates) > 1
        if grid and not has_val:
            if self.cfg.reg != "auto":
                raise ConfigError(
                    f"cca option reg={self.cfg.reg} is chosen on the validation pairs, but this fit "
                    "has none; give a single value (e.g. --option cca.reg=0.3)."
                )
            candidates, selection = [FALLBACK_REG], f"fallback (reg='auto' without validation pairs: {FALLBACK_REG})"
        else:
            selection = "validation mean mAP" if grid else "fixed"
        best: tuple[float, float, CCAFit, dict[str, float] | None] | None = None
        history: list[dict[str, float]] = []
        for reg in candidates:
            fit = self._fit_one(X, Y, w, reg)
            scores = self._val_scores(fit, cast(FeatureSet, data.val), cast(np.ndarray, data.val_labels)) if has_val else None
            if scores is not None:
                history.append(
                    {
                        "reg": reg,
                        "val_map": round(scores["mean"], 6),
                        "val_i2t_map": round(scores["i2t"], 6),
                        "val_t2i_map": round(scores["t2i"], 6),
                    }
                )
            score = scores["mean"] if scores is not None else -math.inf
            if best is None or score > best[0]:
                best = (score, reg, fit, scores)
        assert best is not None
        _, reg, fit, scores = best
        model = self.init_model(image_dim=X.shape[1], text_dim=Y.shape[1], n_components=fit.correlations.size)
        model.set_fit(fit)
        model.eval()
        extra = {
            "reg": reg,
            "reg_selection": selection,
            "n_components": int(fit.correlations.size),
            "canonical_correlations": [round(float(r), 6) for r in fit.correlations],
            "n_train": len(X),
            "n_fewshot": int(over.sum()),
        }
        if len(history) > 1:
            extra["val_map_by_reg"] = {str(h["reg"]): h["val_map"] for h in history}
        log.debug("cca: reg=%s (%s), k=%d, rho[:3]=%s", reg, selection, fit.correlations.size, fit.correlations[:3])
        return FitReport(
            epochs=0,
            best_epoch=0,
            best_val_map=scores["mean"] if scores else None,
            seconds=time.perf_counter() - t0,
            history=history,
            extra=extra,
        )

    def refit_options(self, report: FitReport) -> dict[str, Any]:
        """Options that refit this method without validation: the ridge chosen on it."""
        return {"reg": float(report.extra["reg"])}

    def tags(self) -> MethodTags:
        """Closed form: checkpointable (save/load, ``gcrdp train``), refit with the chosen ridge; nothing to resume."""
        return MethodTags(refit=True, checkpointable=True)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, **kw: Any) -> Path:
        """Write the fitted method as a final checkpoint folder (``save_method``)."""
        return save_method(self, path, **kw)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> CCAMethod:
        return cast(CCAMethod, load_method(path, device, expect=cls))

    # ---------------------------------------------------------------- embed
    def _embed(self, features: ModalityFeatures, side: str) -> np.ndarray:
        model = check_fitted(self)
        weights = model.numpy(f"{side}_weights")
        X = modality_input(features, self.cfg.input)
        if X.shape[1] != weights.shape[0]:
            what = "pooled" if self.cfg.input == "pooled" else "local"
            raise DataError(
                f"{self.name}: {side} {what} features have dim {X.shape[1]}, the fitted "
                f"CCA expects {weights.shape[0]} (input={self.cfg.input!r}); embed "
                "features from the same encoders the method was fitted on."
            )
        return project(
            X, model.numpy(f"{side}_mean"), model.numpy(f"{side}_scale"), weights, model.numpy("correlations"), self.cfg.eig_power
        )

    def embed_images(self, features: ModalityFeatures) -> np.ndarray:
        """(n, k) float32, L2-normalised."""
        return self._embed(features, "image")

    def embed_texts(self, features: ModalityFeatures) -> np.ndarray:
        """(n, k) float32, L2-normalised."""
        return self._embed(features, "text")


@METHODS.register("cca")
def _build(options: dict[str, Any], device: str) -> CCAMethod:
    return CCAMethod.from_options(options, device)
