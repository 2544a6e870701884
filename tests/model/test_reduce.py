"""The fixed PCA basis of issue 25's ``pca-k`` candidate, against scikit-learn's PCA and a
naive projection; lazy (on-disk) features give the same results as in-memory ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gcrdp.data.lazy import DiskArray
from gcrdp.errors import ConfigError, DataError
from gcrdp.model.reduce import TokenPCA, fit_pca, reduce_local, sample_tokens


def _features(n: int = 40, L: int = 7, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.1, d)  # distinct variances: a well-defined basis
    local = (rng.normal(size=(n, L, d)) * scales + rng.normal(size=d)).astype(np.float32)
    mask = rng.random((n, L)) < 0.8
    mask[:, 0] = True
    local[~mask] = 0.0
    return local, mask


def test_fit_pca_matches_sklearn() -> None:
    from sklearn.decomposition import PCA

    local, mask = _features()
    tokens = local[mask]
    basis = fit_pca(tokens, 5)
    ref = PCA(n_components=5, svd_solver="full").fit(tokens.astype(np.float64))
    # the same directions up to sign, the same explained-variance shares
    cos = np.abs(np.sum(basis.components * ref.components_, axis=1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)
    np.testing.assert_allclose(basis.explained, ref.explained_variance_ratio_, rtol=1e-5)
    np.testing.assert_allclose(basis.mean, ref.mean_, atol=1e-5)
    np.testing.assert_allclose(basis.components @ basis.components.T, np.eye(5), atol=1e-5)
    # the sign convention: each component's largest-magnitude entry is positive
    big = np.abs(basis.components).argmax(axis=1)
    assert (basis.components[np.arange(5), big] > 0).all()
    # refitting the same tokens gives the same basis, bit for bit
    again = fit_pca(tokens.copy(), 5)
    np.testing.assert_array_equal(again.components, basis.components)


def test_reduce_local_equals_the_module_and_zeroes_padding() -> None:
    local, mask = _features()
    basis = fit_pca(local[mask], 6)
    out = reduce_local(local, mask, basis)
    assert out.shape == (*local.shape[:2], 6) and out.dtype == np.float32
    assert (out[~mask] == 0).all()
    naive = np.einsum("nld,kd->nlk", local.astype(np.float64) - basis.mean, basis.components)
    np.testing.assert_allclose(out[mask], naive[mask], atol=1e-4)
    pca = TokenPCA(local.shape[2], 6).set_basis(basis)
    with torch.no_grad():
        mod = pca(torch.from_numpy(local)).numpy()
    np.testing.assert_allclose(out[mask], mod[mask], atol=1e-5)
    # the basis lives in the state_dict: a fresh module loaded from it computes the same
    other = TokenPCA(local.shape[2], 6)
    other.load_state_dict(pca.state_dict())
    with torch.no_grad():
        np.testing.assert_array_equal(other(torch.from_numpy(local)).numpy(), mod)


def test_lazy_features_give_the_same_tokens_and_projection(tmp_path: Path) -> None:
    local, mask = _features(n=60)
    np.save(tmp_path / "local.npy", local)
    lazy = DiskArray(tmp_path / "local.npy")
    for cap in (50, 10_000):
        a, b = sample_tokens(local, mask, cap, seed=3), sample_tokens(lazy, mask, cap, seed=3)
        np.testing.assert_array_equal(a, b)
        assert len(a) == min(cap, int(mask.sum()))
    assert not np.array_equal(sample_tokens(local, mask, 50, seed=3), sample_tokens(local, mask, 50, seed=4))
    # every sampled token is a valid token of the features
    valid = {row.tobytes() for row in local[mask]}
    assert all(t.tobytes() in valid for t in sample_tokens(local, mask, 50, seed=3))
    basis = fit_pca(sample_tokens(local, mask, 10_000, seed=0), 4)
    np.testing.assert_array_equal(reduce_local(lazy, mask, basis), reduce_local(local, mask, basis))


def test_mistakes_are_clear() -> None:
    local, mask = _features()
    tokens = local[mask]
    with pytest.raises(ConfigError, match="pca_dim must be between 1 and 24"):
        fit_pca(tokens, 25)
    with pytest.raises(ConfigError, match="pca_dim"):
        fit_pca(tokens, 0)
    bad = tokens.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        fit_pca(bad, 3)
    with pytest.raises(DataError, match="dimension"):
        reduce_local(local[:, :, :10], mask, fit_pca(tokens, 3))
    with pytest.raises(ConfigError, match="max_tokens"):
        sample_tokens(local, mask, 0, seed=0)
