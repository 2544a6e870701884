"""Issue 25's two options for faster fits, off by default: ``pca_dim`` (the image tokens reduced
once per fit by a PCA basis of the training tokens, held by the model) and ``precision="bf16"``
(autocast of the forward passes). Off, no code path changes; on, the fitted model embeds raw
features, saves, loads and resumes like any other. The kill-and-resume and save/load checks of
the options run in ``test_contract.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import ConfigError
from gcrdp.methods import FitData, build_method
from gcrdp.methods.persistence import load_method, save_method
from gcrdp.methods.trainable import PCA_MAX_TOKENS
from gcrdp.model.reduce import PCABasis, fit_pca, reduce_local, sample_tokens
from gcrdp.training.config import identity_options
from tests.helpers import fit_data_by_class, synthetic_features

SMALL = {"max_epochs": 3, "hidden_dim": 16, "latent_dim": 8, "batch_size": 32}
IMAGE_DIM = 12  # synthetic_features' default


def _data(padded_images: bool = False) -> tuple[FeatureSet, FitData]:
    """8 synthetic classes, 6 to train and 2 to validate; with ``padded_images`` a third of the
    images have their last two grid cells padded (mask False, features 0)."""
    feats, labels = synthetic_features(n_per_class=10, n_classes=8, seed=4)
    if padded_images:
        img = feats.image
        local, mask = img.local.copy(), img.mask.copy()
        rows = np.arange(0, len(feats), 3)
        mask[rows, -2:] = False
        local[~mask] = 0.0
        feats = FeatureSet(ModalityFeatures(local, mask, img.pooled), feats.text, feats.sample_ids, dict(feats.meta))
    return feats, fit_data_by_class(feats, labels, 6)


def _fit(name: str, feats: FeatureSet, data: FitData, **options):
    method = build_method(name, {**SMALL, **options})
    report = method.fit(data, seed=3)
    return method, report, method.embed_images(feats.image), method.embed_texts(feats.text)


def _record_head_outputs(monkeypatch) -> list[tuple[torch.dtype, bool]]:
    """(dtype, autocast on) of every image-head output of the models built from now on."""
    from gcrdp.model.heads import ProjectionHead

    seen: list[tuple[torch.dtype, bool]] = []
    forward = ProjectionHead.forward

    def recording(self, x):
        out = forward(self, x)
        seen.append((out.dtype, torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(ProjectionHead, "forward", recording)
    return seen


# ----------------------------------------------------------------------------- off: nothing changes
@pytest.mark.parametrize("name", ["gap-infonce", "gcrdp"])
def test_the_options_at_their_defaults_fit_exactly_as_without_them(name, monkeypatch):
    """Neither the PCA nor autocast is touched by a default fit (the PCA's functions raise here,
    and no forward pass runs under autocast), and the fit with the options given at their
    defaults equals the one without."""
    feats, data = _data()

    def forbidden(*_a, **_k):
        raise AssertionError("called in a default fit")

    monkeypatch.setattr("gcrdp.methods.trainable.sample_tokens", forbidden)
    monkeypatch.setattr("gcrdp.methods.trainable.fit_pca", forbidden)
    monkeypatch.setattr("gcrdp.methods.trainable.reduce_local", forbidden)
    seen = _record_head_outputs(monkeypatch)
    plain, plain_report, img, txt = _fit(name, feats, data)
    assert seen and set(seen) == {(torch.float32, False)}
    given, given_report, img2, txt2 = _fit(name, feats, data, pca_dim=None, precision="float32")
    assert not hasattr(plain.model_, "image_pca") and "pca" not in plain_report.extra
    assert plain_report.history == given_report.history and plain_report.best_epoch == given_report.best_epoch
    assert np.array_equal(img, img2) and np.array_equal(txt, txt2)
    assert plain.config_dict() == given.config_dict()
    assert plain.config_dict()["pca_dim"] is None and plain.config_dict()["precision"] == "float32"


def test_a_training_checkpoint_identity_leaves_the_new_options_out_at_their_defaults():
    """So a fit checkpointed before the options existed resumes (the same fit); set, they count."""
    cfg = build_method("gcrdp").config_dict()
    assert "pca_dim" not in identity_options(cfg) and "precision" not in identity_options(cfg)
    assert {k: v for k, v in cfg.items() if k not in ("pca_dim", "precision")} == identity_options(cfg)
    set_cfg = build_method("gcrdp", {"pca_dim": 8, "precision": "bf16"}).config_dict()
    assert identity_options(set_cfg)["pca_dim"] == 8 and identity_options(set_cfg)["precision"] == "bf16"


# ----------------------------------------------------------------------------- pca_dim
@pytest.mark.parametrize("name", ["gap-infonce", "gcrdp"])
def test_a_pca_fit_embeds_raw_features_as_its_heads_embed_the_reduced_ones(name):
    """The basis is that of the training image tokens (the fit's seed); the model embeds raw
    features as the heads embed ``reduce_local``'s features — padded grid cells included."""
    feats, data = _data(padded_images=True)
    k = 5
    method, report, img, txt = _fit(name, feats, data, pca_dim=k)
    model = method.model_
    assert model.image_pca.in_dim == IMAGE_DIM and model.image_head.in_dim == k
    assert report.extra["pca"]["dim"] == k and report.extra["pca"]["tokens"] == int(data.train.image.mask.sum())
    assert 0 < report.extra["pca"]["explained"] <= 1
    expected = fit_pca(sample_tokens(data.train.image.local, data.train.image.mask, PCA_MAX_TOKENS, seed=3), k)
    np.testing.assert_array_equal(model.image_pca.components.numpy(), expected.components)
    np.testing.assert_array_equal(model.image_pca.mean.numpy(), expected.mean)
    basis = PCABasis(model.image_pca.mean.numpy(), model.image_pca.components.numpy(), expected.explained)
    reduced = reduce_local(feats.image.local, feats.image.mask, basis)
    with torch.inference_mode():
        by_heads = method._encode_batch(model, "image", torch.from_numpy(reduced), torch.from_numpy(feats.image.mask)).numpy()
    assert img.shape == by_heads.shape and img.dtype == np.float32
    np.testing.assert_allclose(img, by_heads, atol=1e-5)
    assert txt.shape[1] == img.shape[1] and np.isfinite(txt).all()


def test_a_pca_fit_differs_from_the_raw_one_and_learns():
    feats, data = _data()
    _, raw_report, raw_img, _ = _fit("gap-infonce", feats, data)
    _, report, img, _ = _fit("gap-infonce", feats, data, pca_dim=4, max_epochs=6)
    assert not np.allclose(raw_img[:, :4], img[:, :4])
    assert report.history[-1]["loss"] < report.history[0]["loss"]


@pytest.mark.parametrize("name", ["gap-infonce", "gcrdp"])
def test_a_saved_pca_fit_loads_with_its_basis_and_embeds_the_same(name, tmp_path):
    feats, data = _data()
    method, report, img, txt = _fit(name, feats, data, pca_dim=6)
    save_method(method, tmp_path / "m", fit=report.to_dict())
    loaded = load_method(tmp_path / "m")
    assert loaded.config_dict() == method.config_dict() and loaded.config_dict()["pca_dim"] == 6
    assert torch.equal(loaded.model_.image_pca.components, method.model_.image_pca.components)
    np.testing.assert_array_equal(loaded.embed_images(feats.image), img)
    np.testing.assert_array_equal(loaded.embed_texts(feats.text), txt)


def test_the_pca_of_a_warm_started_gcrdp_reduces_once_for_both_stages():
    feats, data = _data()
    method, report, img, _ = _fit("gcrdp", feats, data, pca_dim=5, warm_start=True, warm_epochs=2)
    assert report.extra["warm_start"]["epochs"] == 2 and report.extra["pca"]["dim"] == 5
    assert np.isfinite(img).all() and not method._tokens_reduced


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "8", "Auto"])
def test_a_bad_pca_dim_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match='pca_dim must be null, "auto" or an integer >= 1'):
        build_method("gcrdp", {"pca_dim": bad})


def test_a_pca_dim_above_the_image_dimension_is_an_error_naming_it():
    _feats, data = _data()
    method = build_method("gap-infonce", {**SMALL, "pca_dim": IMAGE_DIM + 1})
    with pytest.raises(ConfigError, match=f"pca_dim={IMAGE_DIM + 1} is larger than the image features' dimension {IMAGE_DIM}"):
        method.fit(data, seed=0)
    assert method.model_ is None  # before any model is built


def test_pca_dim_auto_keeps_small_features_raw_and_reduces_large_ones():
    """``"auto"``: the raw features up to AUTO_PCA_DIM dimensions (the same fit as without the
    option, so it never fails on small features), AUTO_PCA_DIM dimensions above; the choice is
    the model's, so a saved fit loads with it."""
    from gcrdp.methods.trainable import AUTO_PCA_DIM

    feats, data = _data()
    _, raw_report, raw_img, _ = _fit("gap-infonce", feats, data)
    small, report, img, _ = _fit("gap-infonce", feats, data, pca_dim="auto")
    assert not hasattr(small.model_, "image_pca") and "pca" not in report.extra
    assert np.array_equal(img, raw_img) and report.history == raw_report.history
    assert small.config_dict()["pca_dim"] == "auto"

    big_dim = AUTO_PCA_DIM + 32
    big, labels = synthetic_features(n_per_class=8, n_classes=6, image_dim=big_dim, seed=2)
    big_data = fit_data_by_class(big, labels, 4)
    method, report, img, _ = _fit("gap-infonce", big, big_data, pca_dim="auto")
    assert method.model_.image_pca.in_dim == big_dim and method.model_.image_head.in_dim == AUTO_PCA_DIM
    assert report.extra["pca"]["dim"] == AUTO_PCA_DIM
    explicit, _, img2, _ = _fit("gap-infonce", big, big_data, pca_dim=AUTO_PCA_DIM)
    np.testing.assert_array_equal(img, img2)  # "auto" above the threshold is that k
    assert method.reduce.dim_for(AUTO_PCA_DIM) is None and method.reduce.dim_for(AUTO_PCA_DIM + 1) == AUTO_PCA_DIM


def test_a_saved_auto_pca_fit_loads_and_embeds_the_same(tmp_path):
    from gcrdp.methods.trainable import AUTO_PCA_DIM

    big, labels = synthetic_features(n_per_class=8, n_classes=6, image_dim=AUTO_PCA_DIM + 8, seed=2)
    method, report, img, txt = _fit("gcrdp", big, fit_data_by_class(big, labels, 4), pca_dim="auto")
    save_method(method, tmp_path / "m", fit=report.to_dict())
    loaded = load_method(tmp_path / "m")
    assert loaded.config_dict()["pca_dim"] == "auto" and loaded.model_.image_head.in_dim == AUTO_PCA_DIM
    np.testing.assert_array_equal(loaded.embed_images(big.image), img)
    np.testing.assert_array_equal(loaded.embed_texts(big.text), txt)


@pytest.mark.parametrize("name", ["dscmr", "clip4cmr", "flex-clip"])
def test_pca_dim_is_not_an_option_of_the_methods_on_one_vector_per_sample(name):
    assert "pca_dim" not in build_method(name).config_dict()
    with pytest.raises(ConfigError, match="pca_dim"):
        build_method(name, {"pca_dim": 8})


def test_embedding_features_of_another_dimension_names_the_raw_one():
    feats, data = _data()
    method, *_ = _fit("gap-infonce", feats, data, pca_dim=4)
    other = ModalityFeatures(feats.image.local[:, :, :5], feats.image.mask, feats.image.pooled)
    with pytest.raises(Exception, match=f"dim 5, the model expects {IMAGE_DIM}"):
        method.embed_images(other)


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("name", ["gap-infonce", "gcrdp"])
def test_a_bf16_fit_computes_in_bf16_learns_and_returns_float32(name, monkeypatch):
    feats, data = _data()
    seen = _record_head_outputs(monkeypatch)
    method = build_method(name, {**SMALL, "max_epochs": 6, "precision": "bf16"})
    report = method.fit(data, seed=1)
    assert seen and set(seen) == {(torch.bfloat16, True)}  # training and validation forward passes
    losses = [h["loss"] for h in report.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    img, txt = method.embed_images(feats.image), method.embed_texts(feats.text)
    assert img.dtype == np.float32 and txt.dtype == np.float32 and np.isfinite(img).all()
    assert all(p.dtype == torch.float32 for p in method.model_.parameters())


def test_bf16_and_pca_together():
    feats, data = _data()
    method, report, img, _ = _fit("gcrdp", feats, data, pca_dim=4, precision="bf16")
    assert img.dtype == np.float32 and np.isfinite(img).all() and report.extra["pca"]["dim"] == 4


def test_a_bad_precision_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"precision must be one of \('float32', 'bf16'\), got 'fp16'"):
        build_method("gcrdp", {"precision": "fp16"})


def test_bf16_on_a_device_that_cannot_run_it_is_an_error_before_training(monkeypatch):
    _feats, data = _data()

    def broken(*_a, **_k):
        raise RuntimeError("no bfloat16 here")

    monkeypatch.setattr(torch, "autocast", broken)
    method = build_method("gap-infonce", {**SMALL, "precision": "bf16"})
    with pytest.raises(ConfigError, match="precision='bf16' is not supported on device 'cpu': no bfloat16 here"):
        method.fit(data, seed=0)


def test_bf16_on_a_cpu_without_native_bf16_warns_and_runs_emulated(monkeypatch):
    _feats, data = _data()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    method = build_method("gap-infonce", {**SMALL, "max_epochs": 1, "precision": "bf16"})
    with pytest.warns(RuntimeWarning, match="without native bfloat16 instructions"):
        report = method.fit(data, seed=0)
    assert report.epochs == 1


def test_a_checkpoint_from_before_pca_dim_loads_as_the_raw_fit_it_was_whatever_the_default(tmp_path, monkeypatch):
    """A checkpoint whose config has no ``pca_dim``/``precision`` (written before they existed)
    rebuilds the model it holds — raw features — even when the method's default is another one
    (here ``"auto"``, which would add a PCA to 160-d features and not fit the saved weights)."""
    import json

    from gcrdp.methods.trainable import TokenReduceConfig

    big, labels = synthetic_features(n_per_class=8, n_classes=6, image_dim=160, seed=2)
    method, report, img, _ = _fit("gcrdp", big, fit_data_by_class(big, labels, 4))
    path = save_method(method, tmp_path / "m", fit=report.to_dict())
    state_file = next(p for p in path.iterdir() if p.suffix == ".json" and "method_config" in p.read_text())
    state = json.loads(state_file.read_text())
    for key in ("pca_dim", "precision"):
        del state["method_config"][key]
    state_file.write_text(json.dumps(state))
    monkeypatch.setattr(TokenReduceConfig.__init__, "__defaults__", ("auto",))
    assert build_method("gcrdp").config_dict()["pca_dim"] == "auto"  # the changed default
    loaded = load_method(path)
    assert loaded.config_dict()["pca_dim"] is None and not hasattr(loaded.model_, "image_pca")
    np.testing.assert_array_equal(loaded.embed_images(big.image), img)
