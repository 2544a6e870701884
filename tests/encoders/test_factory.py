"""The one encoder factory (gcrdp.encoders.factory): settings from a run config, a mapping or a
stored record; equal settings give equal encoders in the runner and in search; the default
settings' feature cache key is the one the code before the factory produced."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gcrdp.encoders import (
    EncoderSettings,
    EncoderSpec,
    build_encoder,
    build_image_encoder,
    build_text_encoder,
    cache_key,
    class_name_texts,
)
from gcrdp.encoders.cache import cache_key_inputs
from gcrdp.errors import ConfigError, MissingDependencyError
from gcrdp.experiments import RunConfig

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers (pip install 'gcrdp[encoders]')"
)

#: The twemoji feature cache key of the default settings (efficientnet-lite0 + minilm-l6,
#: float16), as ``runner.load_features`` recorded it in ``FeatureSet.meta["key"]`` before the
#: factory existed (commit 00fac57). A change here re-extracts every user's features.
TWEMOJI_DEFAULT_KEY = "fcdd422dd6f65166f7da41e5dc2ad660b250aa0c71ca2d9782ec3a0829b79fec"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from tests.clip_fixture import make_clip_dir

    return make_clip_dir(tmp_path_factory.mktemp("clip"))


def test_default_settings_are_the_run_configs():
    assert EncoderSettings.of(RunConfig()) == EncoderSettings()
    assert EncoderSettings().to_dict() == {k: getattr(RunConfig(), k) for k in EncoderSettings.FIELDS}


def test_settings_from_a_config_a_mapping_and_back():
    cfg = RunConfig(image_encoder="clip", image_encoder_options={"model_dir": "/m"}, encoder_backend="torch", feature_dtype="float32")
    s = EncoderSettings.of(cfg)
    assert (s.image_encoder, s.text_encoder, s.encoder_backend, s.feature_dtype) == ("clip", "minilm-l6", "torch", "float32")
    assert EncoderSettings.of(s.to_dict()) == s
    assert EncoderSettings.of(cfg.to_dict()) == s  # a run config stored as a dict (a checkpoint)
    assert EncoderSettings.of({"text_encoder": "clip"}) == EncoderSettings(text_encoder="clip")  # missing keys: defaults
    cfg.image_encoder_options["model_dir"] = "/other"  # the settings hold their own copy
    assert s.image_encoder_options == {"model_dir": "/m"}


def test_the_backend_goes_to_the_image_encoder_only():
    s = EncoderSettings(image_encoder_options={"num_threads": 2}, text_encoder_options={"max_tokens": 8}, encoder_backend="onnx")
    assert s.options("image") == {"num_threads": 2, "backend": "onnx"}
    assert s.options("text") == {"max_tokens": 8}
    assert s.spec("image") == EncoderSpec("image", "efficientnet-lite0", {"num_threads": 2, "backend": "onnx"})
    assert s.spec("text") == EncoderSpec("text", "minilm-l6", {"max_tokens": 8})
    s.options("image")["backend"] = "torch"  # a new dict each time
    assert s.options("image")["backend"] == "onnx"
    assert EncoderSettings(image_encoder_options={"num_threads": 2}).options("image") == {"num_threads": 2}


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="feature_dtype must be"):
        EncoderSettings(feature_dtype="int8")
    with pytest.raises(ConfigError, match="modality must be"):
        EncoderSettings().options("audio")
    with pytest.raises(ConfigError, match=r"The text encoder 'minilm-l6' does not accept the options \['colour'\]"):
        build_text_encoder(EncoderSettings(text_encoder_options={"colour": "red"}))
    with pytest.raises(ConfigError, match="does not accept the options"):
        EncoderSpec("image", "efficientnet-lite0", {"colour": "red"}).build()
    with pytest.raises(ConfigError, match="no-such-encoder"):
        build_encoder("image", "no-such-encoder")


def test_a_spec_builds_a_registered_name_or_an_importable_factory():
    enc = EncoderSpec("image", "tests.encoders.fakes:BatchImageEncoder").build()
    assert enc.name == "batch-image"
    with pytest.raises(ConfigError, match="modality 'text'"):
        EncoderSpec("text", "tests.encoders.fakes:BatchImageEncoder").build()
    assert (
        EncoderSpec("image", "efficientnet-lite0", {"backend": "torch"}).build().fingerprint()
        == build_encoder("image", "efficientnet-lite0", {"backend": "torch"}).fingerprint()
    )


def test_class_name_texts():
    assert class_name_texts(["food-fruit", "animal_cat", " x ", "-"]) == ["food fruit", "animal cat", "x", "-"]


@needs_transformers
def test_runner_and_search_build_equal_encoders_from_equal_settings(clip_dir):
    from gcrdp.experiments import runner
    from gcrdp.search.model import SearchModel

    cfg = RunConfig(image_encoder="clip", text_encoder="clip", image_encoder_options={"model_dir": str(clip_dir)})
    cfg.text_encoder_options = {"model_dir": str(clip_dir)}
    settings = EncoderSettings.of(cfg)
    # search: a model of this run (its config as a checkpoint stores it), and one from the encoders alone
    from_run = SearchModel(config=cfg.to_dict())
    alone = SearchModel.from_encoders(
        image_encoder="clip", text_encoder="clip", **{f"{m}_encoder_options": {"model_dir": str(clip_dir)} for m in ("image", "text")}
    )
    for modality, build in (("image", build_image_encoder), ("text", build_text_encoder)):
        fp = build(settings).fingerprint()
        assert from_run.encoder(modality).fingerprint() == fp
        assert alone.encoder(modality).fingerprint() == fp
        assert settings.spec(modality).build().fingerprint() == fp  # what a Dask worker builds
    # the runner's class-name features are the factory's text encoder's
    names = ["cat", "dog-photo"]
    got = runner.class_name_features(names, cfg)
    want = build_text_encoder(settings).encode(["cat", "dog photo"], batch_size=64, progress=False).pooled
    assert got.dtype == np.float32 and got.shape == (2, 16)
    np.testing.assert_array_equal(got, want)


def test_the_default_feature_cache_key_is_unchanged():
    from gcrdp.data import load_dataset

    settings = EncoderSettings.of(RunConfig())
    try:
        image, text = build_image_encoder(settings).fingerprint(), build_text_encoder(settings).fingerprint()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    inputs = cache_key_inputs(load_dataset("twemoji").content_digest(), image, text, settings.feature_dtype)
    assert cache_key(inputs) == TWEMOJI_DEFAULT_KEY


def test_search_builds_encoders_through_the_factory_without_experiments():
    # the search model carries encoder settings, not a run config: it imports nothing from
    # gcrdp.experiments (anywhere in its body) and no registry lookup of its own
    import ast

    from tests.conftest import REPO_ROOT

    source = (REPO_ROOT / "src" / "gcrdp" / "search" / "model.py").read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not any("experiments" in m for m in imported), sorted(imported)
    assert "encoders.factory" in imported
    assert "get_image_encoder" not in source and "get_text_encoder" not in source
