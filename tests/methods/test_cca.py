"""The ``cca`` baseline: the math against sklearn and a naive block generalised eigenproblem,
the documented ridge, options, errors, checkpoints and the real Wikipedia figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

import gcrdp.methods.cca  # noqa: F401  (registers "cca")
from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import ConfigError, DataError
from gcrdp.methods.base import METHODS, FitData, build_method
from gcrdp.methods.cca import AUTO_REG_GRID, FALLBACK_REG, CCAMethod, fit_cca
from tests.helpers import one_hot, synthetic_features


def toy_views(n=400, dx=6, dy=5, noise=0.6, seed=0):
    """Two views sharing a 2-d latent (correlations ≈ 0.9 and ≈ 0.6) plus independent noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2)) * np.array([2.0, 0.8])
    X = z @ rng.normal(size=(2, dx)) + noise * rng.normal(size=(n, dx)) + rng.normal(size=dx)
    Y = z @ rng.normal(size=(2, dy)) + noise * rng.normal(size=(n, dy)) - 3.0
    return X, Y


def corr_of_projections(X, Y, A, B):
    """Pearson correlation of each pair of projected columns."""
    P, Q = (X - X.mean(0)) @ A, (Y - Y.mean(0)) @ B
    return np.array([np.corrcoef(P[:, i], Q[:, i])[0, 1] for i in range(A.shape[1])])


def fitdata(feats, labels, train, val=None, over=None, n_classes=None):
    lab = one_hot(labels, n_classes)
    return FitData(
        train=feats.subset(train),
        train_labels=lab[train],
        oversample=np.zeros(len(train), bool) if over is None else over,
        val=feats.subset(val) if val is not None else None,
        val_labels=lab[val] if val is not None else None,
    )


def pooled_set(X, Y, dtype=np.float32, meta=None):
    fs = FeatureSet(
        ModalityFeatures.from_array(X, dtype=dtype),
        ModalityFeatures.from_array(Y, dtype=dtype),
        tuple(f"s{i}" for i in range(len(X))),
        dict(meta or {}),
    )
    return fs


# --------------------------------------------------------------------------- math
def test_matches_sklearn_cca():
    sk = pytest.importorskip("sklearn.cross_decomposition")
    X, Y = toy_views()
    fit = fit_cca(X, Y, reg=0.0, n_components=2)
    ours = corr_of_projections(X, Y, fit.x_weights, fit.y_weights)
    np.testing.assert_allclose(ours, fit.correlations, atol=1e-8)  # ρ are the projections' correlations
    ref = sk.CCA(n_components=2, scale=False, max_iter=2000, tol=1e-12).fit(X, Y)
    Px, Py = ref.transform(X, Y)
    ref_corr = [np.corrcoef(Px[:, i], Py[:, i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(fit.correlations, ref_corr, atol=1e-6)
    assert fit.correlations[0] > 0.8 and fit.correlations[1] > 0.3  # the 2-d shared latent
    # same subspaces of projected data (scaling and signs differ): principal angles ≈ 0
    ox, oy = (X - X.mean(0)) @ fit.x_weights, (Y - Y.mean(0)) @ fit.y_weights
    assert np.max(scipy.linalg.subspace_angles(ox, Px)) < 1e-5
    assert np.max(scipy.linalg.subspace_angles(oy, Py)) < 1e-5


@pytest.mark.parametrize("reg", [0.0, 0.1, 2.0])
@pytest.mark.parametrize("standardize", [False, True])
def test_matches_block_generalized_eigenproblem(reg, standardize):
    X, Y = toy_views(n=300, dx=5, dy=4, seed=1)
    fit = fit_cca(X, Y, reg=reg, n_components=4, standardize=standardize)
    Xs = X - X.mean(0)
    Ys = Y - Y.mean(0)
    if standardize:
        Xs, Ys = Xs / Xs.std(0), Ys / Ys.std(0)
    n = len(X)
    Cxx, Cyy, Cxy = Xs.T @ Xs / n, Ys.T @ Ys / n, Xs.T @ Ys / n
    Cxx_r = Cxx + reg * np.trace(Cxx) / Cxx.shape[0] * np.eye(Cxx.shape[0])  # the documented ridge
    Cyy_r = Cyy + reg * np.trace(Cyy) / Cyy.shape[0] * np.eye(Cyy.shape[0])
    dx = X.shape[1]
    lhs = np.block([[np.zeros_like(Cxx), Cxy], [Cxy.T, np.zeros_like(Cyy)]])
    rhs = scipy.linalg.block_diag(Cxx_r, Cyy_r)
    vals, vecs = scipy.linalg.eigh(lhs, rhs)
    order = np.argsort(vals)[::-1][:4]
    np.testing.assert_allclose(fit.correlations, vals[order], rtol=1e-8, atol=1e-10)
    # eigh normalises vᵀ rhs v = 1, i.e. aᵀCxx_r a = bᵀCyy_r b = 1/2; ours are normalised to 1
    for j, i in enumerate(order):
        a, b = np.sqrt(2) * vecs[:dx, i], np.sqrt(2) * vecs[dx:, i]
        s = np.sign(a @ fit.x_weights[:, j])
        np.testing.assert_allclose(s * a, fit.x_weights[:, j], atol=1e-7)
        np.testing.assert_allclose(s * b, fit.y_weights[:, j], atol=1e-7)
    np.testing.assert_allclose(fit.x_weights.T @ Cxx_r @ fit.x_weights, np.eye(4), atol=1e-9)


def test_ridge_on_whitened_data_shrinks_correlations_by_one_plus_reg():
    """With Cxx = Cyy = I the documented ridge is (1 + reg)·I: same directions, ρ / (1 + reg)."""
    X, Y = toy_views(n=500, dx=4, dy=4, seed=2)

    def whiten(Z):
        Zc = Z - Z.mean(0)
        return Zc @ np.linalg.inv(np.linalg.cholesky(Zc.T @ Zc / len(Z))).T

    Xw, Yw = whiten(X), whiten(Y)
    base = fit_cca(Xw, Yw, reg=0.0)
    for reg in (0.5, 3.0):
        f = fit_cca(Xw, Yw, reg=reg)
        np.testing.assert_allclose(f.correlations, base.correlations / (1 + reg), rtol=1e-9)
        np.testing.assert_allclose(f.x_weights, base.x_weights / np.sqrt(1 + reg), atol=1e-9)


def test_ridge_is_relative_and_tends_to_pls():
    X, Y = toy_views(n=200, dx=6, dy=5, seed=3)
    a, b = fit_cca(X, Y, reg=0.3, n_components=3), fit_cca(1e3 * X, 1e-2 * Y, reg=0.3, n_components=3)
    np.testing.assert_allclose(a.correlations, b.correlations, rtol=1e-9)  # unit-free reg
    assert not np.allclose(fit_cca(X, Y, reg=0.0).correlations, fit_cca(X, Y, reg=0.3).correlations)
    # reg → ∞: the directions are the singular vectors of Cxy (PLS), ρ ≈ σ / (reg·mean variance)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    U, S, Vt = np.linalg.svd(Xc.T @ Yc / len(X))
    big = fit_cca(X, Y, reg=1e7, n_components=2)
    assert np.max(scipy.linalg.subspace_angles(big.x_weights, U[:, :2])) < 1e-4
    assert np.max(scipy.linalg.subspace_angles(big.y_weights, Vt[:2].T)) < 1e-4
    tx, ty = np.trace(Xc.T @ Xc / len(X)) / 6, np.trace(Yc.T @ Yc / len(X)) / 5
    np.testing.assert_allclose(big.correlations, S[:2] / (1e7 * np.sqrt(tx * ty)), rtol=1e-4)


def test_singular_covariance_and_default_components():
    X, Y = toy_views(n=50, dx=6, dy=5, seed=4)
    Y = np.hstack([Y, Y[:, :1] + Y[:, 1:2]])  # rank-deficient text side (like LDA proportions)
    f = fit_cca(X, Y, reg=0.0)
    # without a ridge the rank-5 text side has 5 directions: k is clipped to the rank
    assert f.correlations.shape == (5,) and np.all(np.isfinite(f.x_weights))
    assert np.all(f.correlations <= 1 + 1e-9)
    assert fit_cca(X[:4], Y[:4], reg=0.1).correlations.shape == (3,)  # k = n - 1
    assert fit_cca(X, Y, reg=0.1, n_components=100).correlations.shape == (6,)  # clipped
    assert fit_cca(X, Y, reg=0.1).correlations.shape == (6,)  # the ridge makes every direction usable
    with pytest.raises(DataError, match="at least 2 training pairs"):
        fit_cca(X[:1], Y[:1], reg=0.1)


def test_weights_equal_repetition():
    X, Y = toy_views(n=80, seed=5)
    w = np.ones(80)
    w[:10] = 3.0
    a = fit_cca(X, Y, reg=0.2, weights=w, standardize=True)
    rep = np.r_[np.arange(80), np.arange(10), np.arange(10)]
    b = fit_cca(X[rep], Y[rep], reg=0.2, standardize=True)
    np.testing.assert_allclose(a.correlations, b.correlations, rtol=1e-9)
    np.testing.assert_allclose(a.x_weights, b.x_weights, atol=1e-9)


# --------------------------------------------------------------------------- the method
@pytest.fixture(scope="module")
def synth():
    feats, labels = synthetic_features(n_per_class=20, n_classes=6, noise=0.5, seed=0)
    idx = np.arange(len(labels))
    train, val, test = idx[labels < 3], idx[labels == 3], idx[labels >= 4]  # class-disjoint
    return feats, labels, train, val, test


def _map(method, feats, labels, idx):
    from gcrdp.evaluation import cross_modal_metrics

    sub = feats.subset(idx)
    img, txt = method.embed_images(sub.image), method.embed_texts(sub.text)
    return cross_modal_metrics(img, txt, labels[idx], img, txt, labels[idx])["mean_map"]


def test_fit_embed_beats_chance(synth):
    from gcrdp.evaluation import chance_map

    feats, labels, train, val, test = synth
    m = build_method("cca", {"reg": 0.1})
    rep = m.fit(fitdata(feats, labels, train, val), seed=0)
    assert rep.epochs == 0 and rep.extra["reg"] == 0.1 and rep.extra["reg_selection"] == "fixed"
    assert rep.best_val_map is not None and rep.extra["n_components"] == 8  # min(12, 8, 128, 59)
    emb = m.embed_images(feats.subset(test).image)
    assert emb.dtype == np.float32 and emb.shape == (len(test), 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    chance = chance_map(one_hot(labels[test]), one_hot(labels[test]))
    assert _map(m, feats, labels, test) > chance + 0.15  # two unseen classes: chance 0.5


def test_run_experiment_end_to_end():
    from gcrdp.experiments import RunConfig, run_experiment
    from tests.helpers import toy_run_dataset

    ds, feats = toy_run_dataset(n_per_class=16, seed=1)
    res = run_experiment(
        RunConfig(
            dataset="toy",
            shots=[1],
            seeds=[0],
            methods=["cca", "cca@fixed"],
            method_options={"cca@fixed": {"reg": 0.5, "fewshot_weight": 4}},
            device="cpu",
        ),
        progress=False,
        dataset=ds,
        features=feats,
    )
    for rec in res["records"]:
        assert rec["test"]["mean_map"] > rec["chance"]["i2t"] + 0.2, rec["method"]
        # the 3 unseen-class shots and the validation classes' shots (mirrored validation)
        assert rec["split"]["n_fewshot"] == 3 and rec["split"]["n_val_fewshot"] >= 2
        assert rec["fit"]["epochs"] == 0 and rec["fit"]["n_fewshot"] == 3 + rec["split"]["n_val_fewshot"]
    auto = res["records"][0]["fit"]
    assert auto["reg_selection"] == "validation mean mAP" and auto["reg"] in AUTO_REG_GRID
    assert set(auto["val_map_by_reg"]) == {str(r) for r in AUTO_REG_GRID}
    assert auto["best_val_map"] == pytest.approx(max(auto["val_map_by_reg"].values()), abs=1e-6)


def test_reg_selection_on_validation(synth):
    feats, labels, train, val, _ = synth
    data = fitdata(feats, labels, train, val)
    m = build_method("cca", {"reg": [1e-3, 0.1, 10.0]})
    rep = m.fit(data, seed=0)
    scores = {h["reg"]: h["val_map"] for h in rep.history}
    assert set(scores) == {1e-3, 0.1, 10.0} and rep.extra["reg"] == max(scores, key=scores.get)
    single = build_method("cca", {"reg": rep.extra["reg"]})
    single.fit(data, seed=0)
    np.testing.assert_array_equal(single.embed_texts(feats.text), m.embed_texts(feats.text))
    no_val = fitdata(feats, labels, train)
    auto = build_method("cca").fit(no_val, seed=0)
    assert auto.extra["reg"] == FALLBACK_REG and auto.extra["reg_selection"].startswith("fallback")
    assert auto.best_val_map is None
    with pytest.raises(ConfigError, match="chosen on the validation pairs, but this fit has none"):
        m.fit(no_val, seed=0)


def test_fewshot_weight_and_mean_local_input(synth):
    feats, labels, train, _, _ = synth
    over = np.zeros(len(train), bool)
    over[:5] = True
    a, b = build_method("cca", {"reg": 0.1}), build_method("cca", {"reg": 0.1, "fewshot_weight": 4})
    ra, rb = a.fit(fitdata(feats, labels, train, over=over), seed=0), b.fit(fitdata(feats, labels, train, over=over), seed=0)
    assert rb.extra["n_fewshot"] == 5 and ra.extra["canonical_correlations"] != rb.extra["canonical_correlations"]
    # mean_local uses the masked mean of the local features, pooled the pooled ones
    shuffled = FeatureSet(
        feats.image, ModalityFeatures(feats.text.local, feats.text.mask, feats.text.pooled[::-1].copy()), feats.sample_ids
    )
    ml = build_method("cca", {"reg": 0.1, "input": "mean_local"})
    ml.fit(fitdata(shuffled, labels, train), seed=0)
    ref = build_method("cca", {"reg": 0.1})
    ref.fit(fitdata(feats, labels, train), seed=0)  # synthetic pooled = masked mean of locals
    np.testing.assert_allclose(ml.embed_texts(shuffled.text), ref.embed_texts(feats.text), atol=1e-4)


def test_float16_input(synth):
    feats, labels, train, val, test = synth
    half = FeatureSet(
        *(ModalityFeatures(m.local.astype(np.float16), m.mask, m.pooled.astype(np.float16)) for m in (feats.image, feats.text)),
        feats.sample_ids,
    )
    back = FeatureSet(
        *(ModalityFeatures(m.local.astype(np.float32), m.mask, m.pooled.astype(np.float32)) for m in (half.image, half.text)),
        feats.sample_ids,
    )
    a, b = build_method("cca", {"reg": 0.1}), build_method("cca", {"reg": 0.1})
    a.fit(fitdata(half, labels, train, val), seed=0)
    b.fit(fitdata(back, labels, train, val), seed=0)
    ea, eb = a.embed_images(half.subset(test).image), b.embed_images(back.subset(test).image)
    assert ea.dtype == np.float32 and np.isfinite(ea).all()
    np.testing.assert_allclose(ea, eb, atol=1e-5)


def test_wrong_dims_at_embed(synth):
    feats, labels, train, _, _ = synth
    m = build_method("cca", {"reg": 0.1})
    with pytest.raises(RuntimeError, match="call fit"):
        m.embed_images(feats.image)
    m.fit(fitdata(feats, labels, train), seed=0)
    bad = ModalityFeatures.from_array(np.ones((3, 7), np.float32))
    with pytest.raises(DataError, match=r"image pooled features have dim 7, the fitted CCA expects 12"):
        m.embed_images(bad)
    with pytest.raises(DataError, match=r"text pooled features have dim 7, the fitted CCA expects 8"):
        m.embed_texts(bad)


# --------------------------------------------------------------------------- options, contract
def test_options_validated_and_round_trip():
    assert "cca" in METHODS
    with pytest.raises(ConfigError, match=r"Unknown method option\(s\) \['regg'\]. Accepted options: .*eig_power"):
        build_method("cca", {"regg": 1})
    for opts, msg in [
        ({"input": "local"}, "input must be one of 'pooled', 'mean_local'"),
        ({"reg": -1}, "reg must be a number >= 0"),
        ({"reg": "best"}, "or 'auto'"),
        ({"reg": []}, "non-empty list"),
        ({"reg": True}, "reg must be"),
        ({"n_components": 0}, "n_components must be an integer >= 1"),
        ({"n_components": 2.5}, "n_components"),
        ({"eig_power": -1}, "eig_power must be"),
        ({"fewshot_weight": 0}, "fewshot_weight must be"),
        ({"standardize": "yes"}, "standardize must be true or false"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            build_method("cca", opts)
    for opts in [{}, {"reg": [0.1, 1], "standardize": True, "n_components": 4, "eig_power": 4, "input": "mean_local", "fewshot_weight": 2}]:
        cfg = build_method("cca", opts).config_dict()
        json.dumps(cfg)
        again = build_method("cca", {k: v for k, v in cfg.items() if k != "method"}).config_dict()
        assert cfg == again and cfg["method"] == "cca"
    assert build_method("cca").config_dict()["reg"] == "auto"


def test_checkpoint_round_trip(synth, tmp_path):
    from gcrdp.methods.persistence import check_checkpointable, load_method

    feats, labels, train, val, test = synth
    m = build_method("cca", {"reg": [0.01, 1.0], "eig_power": 2})
    check_checkpointable(m)
    rep = m.fit(fitdata(feats, labels, train, val), seed=0)
    m.save(tmp_path / "ck", fit=rep.to_dict())
    back = load_method(tmp_path / "ck")
    assert isinstance(back, CCAMethod) and back.input_dims_ == m.input_dims_
    sub = feats.subset(test)
    np.testing.assert_array_equal(back.embed_images(sub.image), m.embed_images(sub.image))
    np.testing.assert_array_equal(back.embed_texts(sub.text), m.embed_texts(sub.text))


# --------------------------------------------------------------------------- real data
def test_wikipedia_standard_protocol(shared_data):
    """Regularised CCA on the published SIFT/LDA features, mAP@all over the 693 test pairs
    (literature ≈ 0.25 I2T / 0.20 T2I)."""
    from gcrdp.data import load_dataset, make_split
    from gcrdp.experiments.runner import evaluate_split, fit_data_for

    root = shared_data / "wikipedia"
    if not (root / "features").is_dir():
        pytest.skip(f"no Wikipedia features under {root}")
    ds = load_dataset("wikipedia", root=str(root), source="features")
    split = make_split(ds, protocol="standard", shots=0, seed=0)
    labels = ds.label_matrix()
    m = build_method("cca")
    rep = m.fit(fit_data_for(split, ds.features, labels, ds.classes), seed=0)
    test = evaluate_split(m, ds.features, labels, split)
    i2t, t2i = test["i2t"]["map"], test["t2i"]["map"]
    print(
        f"\nWikipedia CCA (reg={rep.extra['reg']} chosen on {len(split.val)} validation pairs, "
        f"val mAP {rep.best_val_map:.4f}): I2T {i2t:.4f}  T2I {t2i:.4f} on {len(split.test_query)} test pairs"
    )
    assert len(split.test_query) == 693
    assert 0.21 <= i2t <= 0.28 and 0.16 <= t2i <= 0.23


def test_wide_features_fit_in_the_data_span_exactly():
    """d ≫ n (e.g. 4,096-d VGG features, 60 pairs): the span-reduced solution equals the
    full-covariance eigenproblem on the same data."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(30, 200))
    Y = X[:, :5] @ rng.normal(size=(5, 40)) + 0.5 * rng.normal(size=(30, 40))
    f = fit_cca(X, Y, reg=0.5, n_components=5)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    n = len(X)
    Cxx, Cyy, Cxy = Xc.T @ Xc / n, Yc.T @ Yc / n, Xc.T @ Yc / n
    Cxx += 0.5 * np.trace(Cxx) / Cxx.shape[0] * np.eye(Cxx.shape[0])
    Cyy += 0.5 * np.trace(Cyy) / Cyy.shape[0] * np.eye(Cyy.shape[0])
    M = np.linalg.solve(Cxx, Cxy) @ np.linalg.solve(Cyy, Cxy.T)
    ref = np.sqrt(np.sort(np.linalg.eigvals(M).real)[::-1][:5])
    np.testing.assert_allclose(f.correlations, ref, rtol=1e-6)
