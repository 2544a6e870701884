"""A fixed PCA basis of a modality's local features, fitted once per fit (issue 25's ``pca-k``).

The projection heads' first layer maps every local feature (an image's 49 grid cells of 1,280
dimensions) to the hidden width; over an epoch that matrix product and its backward pass are
most of a fit. A linear map fitted once on the training tokens — the top-k principal
directions — reduces the features to k dimensions *once*, before the first epoch; the head's
first layer then acts on k dimensions. The composition is still a linear map of the raw
features, so a fitted model embeds raw features through :class:`TokenPCA` then its head.

Layout: pure functions that tests call directly — :func:`sample_tokens` (a seeded sample of
valid tokens, streamed from lazy arrays), :func:`fit_pca` (float64 eigendecomposition of the
covariance, a deterministic sign per component), :func:`reduce_local` (the projected features,
chunk by chunk) — and :class:`TokenPCA`, the module whose buffers hold the basis (so a
checkpoint of the model holds it too).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..data.lazy import iter_row_chunks, take_rows
from ..errors import ConfigError, DataError


class PCABasis(NamedTuple):
    """``mean`` (D,) and ``components`` (k, D), float32, rows orthonormal, in decreasing order of
    the variance they explain; ``explained`` (k,) the share of the total variance of each."""

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray


def sample_tokens(local: Any, mask: np.ndarray, max_tokens: int, seed: int) -> np.ndarray:
    """Up to ``max_tokens`` valid local features ``(m, D)`` float32 of ``local`` ``(n, L, D)``
    (numpy or lazy): every valid token of a seeded sample of rows, read in row order, then a
    seeded subsample of the tokens if there are still too many. The same inputs and seed give
    the same tokens."""
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    n = int(local.shape[0])
    per_row = max(1, int(np.asarray(mask).sum(axis=1).mean()))
    rng = np.random.default_rng(seed)
    n_rows = min(n, -(-max_tokens // per_row))
    rows = np.sort(rng.choice(n, size=n_rows, replace=False)) if n_rows < n else np.arange(n)
    chunk = np.asarray(take_rows(local, rows), dtype=np.float32)
    tokens = chunk[np.asarray(mask)[rows]]
    if len(tokens) > max_tokens:
        tokens = tokens[np.sort(rng.choice(len(tokens), size=max_tokens, replace=False))]
    return np.ascontiguousarray(tokens, dtype=np.float32)


def fit_pca(tokens: np.ndarray, k: int) -> PCABasis:
    """The top-``k`` principal directions of ``tokens`` ``(m, D)``: the eigenvectors of their
    covariance (centred in float64, its product in float32, decomposed in float64) with the ``k`` largest eigenvalues. Each component's sign
    makes its largest-magnitude entry positive, so the basis does not depend on the eigensolver's
    arbitrary signs."""
    x = np.asarray(tokens)
    if x.ndim != 2 or len(x) < 2:
        raise DataError(f"fit_pca needs an (m >= 2, D) array of tokens, got shape {x.shape}")
    m, d = x.shape
    if not 1 <= k <= min(d, m - 1):
        raise ConfigError(f"pca_dim must be between 1 and {min(d, m - 1)} (the tokens' dimension and count), got {k}")
    if not np.isfinite(x).all():
        raise DataError("fit_pca: the tokens hold NaN or infinite values")
    mean = x.mean(axis=0, dtype=np.float64)
    # centred in float64, multiplied in float32 (3x faster than a float64 product on this CPU;
    # the covariance's relative error stays ~1e-6, far below the gaps between the leading
    # eigenvalues a basis depends on), decomposed in float64
    xc = (x - mean).astype(np.float32)
    cov = (xc.T @ xc).astype(np.float64) / (m - 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:k]
    comps = vectors[:, order].T  # (k, D)
    big = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(k), big])[:, None]
    total = max(float(values.clip(min=0).sum()), np.finfo(np.float64).tiny)
    explained = values[order].clip(min=0) / total
    return PCABasis(mean.astype(np.float32), np.ascontiguousarray(comps, dtype=np.float32), explained.astype(np.float32))


def reduce_local(local: Any, mask: np.ndarray, basis: PCABasis) -> np.ndarray:
    """``local`` ``(n, L, D)`` (numpy or lazy, read chunk by chunk) projected on the basis:
    ``(n, L, k)`` float32, ``(x − mean) @ componentsᵀ`` at valid positions and 0 at padded
    ones — what :class:`TokenPCA` computes, for every row at once."""
    n, L, d = (int(s) for s in local.shape)
    if d != basis.components.shape[1]:
        raise DataError(f"reduce_local: features of dimension {d}, basis of dimension {basis.components.shape[1]}")
    k = basis.components.shape[0]
    out = np.zeros((n, L, k), dtype=np.float32)
    mask = np.asarray(mask)
    proj = basis.components.T.astype(np.float32)
    for start, rows in iter_row_chunks(local):
        x = np.asarray(rows, dtype=np.float32)
        y = (x - basis.mean) @ proj
        out[start : start + len(x)] = np.where(mask[start : start + len(x), :, None], y, 0.0)
    return out


class TokenPCA(nn.Module):
    """``(..., D) -> (..., k)``: ``(x − mean) @ componentsᵀ`` with the basis in buffers (not
    trained; saved with the model's ``state_dict``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if not 1 <= out_dim <= in_dim:
            raise ConfigError(f"TokenPCA: out_dim must be between 1 and in_dim={in_dim}, got {out_dim}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mean: Tensor
        self.components: Tensor
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("components", torch.eye(out_dim, in_dim))

    def set_basis(self, basis: PCABasis) -> TokenPCA:
        if basis.components.shape != (self.out_dim, self.in_dim):
            raise DataError(f"TokenPCA({self.in_dim} -> {self.out_dim}): basis of shape {basis.components.shape}")
        self.mean.copy_(torch.from_numpy(basis.mean))
        self.components.copy_(torch.from_numpy(basis.components))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x.to(self.mean.dtype) - self.mean) @ self.components.T

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.out_dim}"
