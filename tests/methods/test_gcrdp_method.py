import numpy as np
import pytest

from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import ConfigError
from gcrdp.methods import FitData, build_method
from tests.helpers import heads_fitdata, one_hot, synthetic_features

SMALL = {"batch_size": 16, "hidden_dim": 16, "latent_dim": 8}


def _data(seed: int = 0):
    return heads_fitdata(seed)


def test_gcrdp_with_every_part_off_is_exactly_gap_infonce():
    feats, y, data = _data()
    opts = {**SMALL, "max_epochs": 3}
    base = build_method("gap-infonce", opts)
    off = build_method("gcrdp", {**opts, "use_gmm": False, "use_rdp": False, "alpha": 0.0})
    rb, ro = base.fit(data, seed=3), off.fit(data, seed=3)
    # same initialisation, same batches, same loss (the multi-positive loss with K = 1 is the
    # CLIP loss, computed in another order: float32 rounding differences only)
    np.testing.assert_allclose(base.embed_images(feats.image), off.embed_images(feats.image), atol=1e-4)
    np.testing.assert_allclose(base.embed_texts(feats.text), off.embed_texts(feats.text), atol=1e-4)
    np.testing.assert_allclose([h["val_map"] for h in rb.history], [h["val_map"] for h in ro.history], atol=1e-3)


@pytest.mark.slow  # about 40 s on 2 loaded cores
def test_gcrdp_learns_and_logs_every_loss_part_and_gmm_health():
    from gcrdp.evaluation import chance_map, cross_modal_metrics

    feats, y, data = _data()
    m = build_method("gcrdp", {**SMALL, "max_epochs": 30, "n_components": 3, "rdp_threshold": 0.3})
    report = m.fit(data, seed=0)
    h = report.history[0]
    for key in ("mpc", "reg", "rdp", "total", "reg_invariance", "reg_label", "rdp_pairs", "pi_entropy_image", "pi_entropy_text", "val_map"):
        assert key in h, key
    assert 0.0 <= h["pi_entropy_image"] <= np.log(3) + 1e-6
    held = np.flatnonzero(y[:, 8:].any(1))
    img, txt = m.embed_images(feats.image.subset(held)), m.embed_texts(feats.text.subset(held))
    assert img.shape == (len(held), 8)
    res = cross_modal_metrics(img, txt, y[held], img, txt, y[held])
    assert res["mean_map"] > chance_map(y[held], y[held]) + 0.3


def test_views_score_embeds_k_unit_views():
    feats, y, data = _data()
    m = build_method("gcrdp", {**SMALL, "max_epochs": 2, "score": "views", "n_components": 2})
    m.fit(data, seed=0)
    emb = m.embed_images(feats.image)
    assert emb.shape == (len(feats), 16)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_pooled_only_features_a_set_of_one_work_with_k3():
    feats, labels = synthetic_features(n_per_class=10, n_classes=6, seed=1)
    one = lambda m: ModalityFeatures(m.pooled[:, None, :], np.ones((len(m), 1), bool), m.pooled)  # noqa: E731
    pooled = FeatureSet(one(feats.image), one(feats.text), feats.sample_ids)
    y = one_hot(labels)
    data = FitData(train=pooled, train_labels=y, oversample=np.zeros(len(y), bool), val=pooled, val_labels=y)
    m = build_method("gcrdp", {**SMALL, "max_epochs": 3, "n_components": 3})
    report = m.fit(data, seed=0)
    assert all(np.isfinite(h["total"]) for h in report.history)
    assert np.isfinite(m.embed_images(pooled.image)).all()


def test_gcrdp_option_validation():
    with pytest.raises(ConfigError, match="rdp_variant must be one of"):
        build_method("gcrdp", {"rdp_variant": "rank"})
    with pytest.raises(ConfigError, match="score='views' needs the GMM"):
        build_method("gcrdp", {"score": "views", "use_gmm": False})
    with pytest.raises(ConfigError, match="alpha, lam and label_weight must be >= 0"):
        build_method("gcrdp", {"lam": -1})
    with pytest.raises(ConfigError, match="n_components"):
        build_method("gcrdp", {"n_components": 0})
    with pytest.raises(ConfigError, match=r"Unknown method option\(s\) \['K'\]"):
        build_method("gcrdp", {"K": 3})
    with pytest.raises(ConfigError, match="anchor_mode must be one of"):
        build_method("gcrdp", {"anchor_mode": "random"})


def test_anchor_mode_reaches_the_gmm_layer():
    feats, y, data = _data()
    m = build_method("gcrdp", {**SMALL, "max_epochs": 2, "anchor_mode": "absolute"})
    report = m.fit(data, seed=0)
    assert m.model_.image_gmm.cfg.anchor_mode == "absolute"
    assert m.config_dict()["anchor_mode"] == "absolute"
    assert all(np.isfinite(h["total"]) for h in report.history)


def test_gcrdp_checkpoint_round_trip_embeds_like_the_fitted_model(tmp_path):
    """GMM anchors, heads and the label classifier all survive save/load (kill and resume:
    tests/methods/test_contract.py, over every resumable method)."""
    from gcrdp.methods.gcrdp import GCRDPMethod

    feats, y, data = _data()
    opts = {**SMALL, "max_epochs": 4, "patience": 10}
    ref = build_method("gcrdp", opts)
    ref.fit(data, seed=2)
    ref.save(tmp_path / "final")
    loaded = GCRDPMethod.load(tmp_path / "final")
    assert np.array_equal(loaded.embed_images(feats.image), ref.embed_images(feats.image))
    assert np.array_equal(loaded.embed_texts(feats.text), ref.embed_texts(feats.text))


def test_the_warm_start_is_scored_like_its_pooled_embedding():
    """While warm-starting, the embedding is the base's pooled one: validation scores it by
    cosine, even for score="sets" (set-max over the K views afterwards)."""
    m = build_method("gcrdp", {**SMALL, "score": "sets", "warm_start": True})
    assert m.score_metric == "set-max:3"
    m.init_model(image_dim=12, text_dim=8, n_classes=12)
    m.model_.pool_only = True
    assert m.score_metric == "cosine"
    m.model_.pool_only = False
    assert m.score_metric == "set-max:3"
