import numpy as np
import pytest
import torch

from gcrdp.errors import ConfigError
from gcrdp.methods import METHODS, FitData, build_method
from gcrdp.model import masked_mean
from gcrdp.training import TrainConfig
from gcrdp.training.batching import epoch_batches
from tests.helpers import one_hot, synthetic_features


def test_masked_mean_equals_mean_of_valid_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = masked_mean(x, mask)
    for i in range(3):
        assert torch.allclose(out[i], x[i][mask[i]].mean(0))


def test_epoch_batches_cover_everything_and_oversample_without_duplicates():
    rng = np.random.default_rng(0)
    over = np.array([3, 7, 11])
    batches = epoch_batches(50, 8, rng, over, repeats=4)
    flat = np.concatenate(batches)
    counts = np.bincount(flat, minlength=50)
    assert set(np.flatnonzero(counts == 4)) == {3, 7, 11}
    assert (np.delete(counts, over) == 1).all()
    for b in batches:
        assert len(np.unique(b)) == len(b), "a pair twice in one batch would be its own negative"


def test_epoch_batches_are_seeded():
    a = epoch_batches(30, 7, np.random.default_rng([1, 2]), np.array([0, 1]), 3)
    b = epoch_batches(30, 7, np.random.default_rng([1, 2]), np.array([0, 1]), 3)
    c = epoch_batches(30, 7, np.random.default_rng([1, 3]), np.array([0, 1]), 3)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all(len(x) == len(y) and (x == y).all() for x, y in zip(a, c))


def test_train_config_validates_each_parameter():
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(lr=0)
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        TrainConfig(batch_size=1)


def test_unknown_method_and_option_messages():
    with pytest.raises(ConfigError, match="Unknown method 'nope'. Known methods: .*gap-infonce"):
        build_method("nope")
    with pytest.raises(ConfigError, match=r"Unknown method option\(s\) \['learning_rate'\].*lr"):
        build_method("gap-infonce", {"learning_rate": 1e-3})
    assert "gap-infonce" in METHODS


def _fit_data(seed: int = 0):
    feats, labels = synthetic_features(n_per_class=12, n_classes=12, seed=seed)
    y = one_hot(labels)
    train = np.flatnonzero(labels < 8)
    val = np.flatnonzero(labels >= 8)
    return (
        feats,
        y,
        FitData(
            train=feats.subset(train),
            train_labels=y[train],
            oversample=np.zeros(len(train), bool),
            val=feats.subset(val),
            val_labels=y[val],
        ),
    )


def test_gap_infonce_learns_a_cross_modal_space_for_held_out_classes():
    from gcrdp.evaluation import chance_map, cross_modal_metrics

    feats, y, data = _fit_data()
    method = build_method("gap-infonce", {"max_epochs": 40, "batch_size": 16, "hidden_dim": 32, "latent_dim": 16, "temperature": 0.1})
    report = method.fit(data, seed=0)
    assert report.best_val_map is not None and report.epochs >= report.best_epoch >= 1
    held = np.flatnonzero(y[:, 8:].any(1))
    img = method.embed_images(feats.image.subset(held))
    txt = method.embed_texts(feats.text.subset(held))
    assert img.shape == (len(held), 16) and img.dtype == np.float32
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    res = cross_modal_metrics(img, txt, y[held], img, txt, y[held])
    assert res["mean_map"] > chance_map(y[held], y[held]) + 0.3


def test_gap_infonce_is_deterministic_given_the_seed():
    feats, y, data = _fit_data()
    opts = {"max_epochs": 3, "batch_size": 16, "hidden_dim": 16, "latent_dim": 8}
    a, b, c = (build_method("gap-infonce", opts) for _ in range(3))
    a.fit(data, seed=5), b.fit(data, seed=5), c.fit(data, seed=6)
    ea, eb, ec = (m.embed_images(feats.image) for m in (a, b, c))
    assert np.array_equal(ea, eb)
    assert not np.allclose(ea, ec)


def test_embedding_before_fit_or_with_wrong_dims_fails_clearly():
    from gcrdp.errors import DataError

    feats, y, data = _fit_data()
    m = build_method("gap-infonce", {"max_epochs": 1, "batch_size": 16})
    with pytest.raises(RuntimeError, match="call fit"):
        m.embed_images(feats.image)
    m.fit(data, seed=0)
    with pytest.raises(DataError, match="image features have dim 8, the model expects 12"):
        m.embed_images(feats.text)
