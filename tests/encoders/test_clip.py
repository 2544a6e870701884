"""CLIP encoders on a tiny random CLIP folder written by ``tests/clip_fixture.py``: shapes,
agreement with ``transformers`` used directly, options, fingerprints, error messages for bad
folders and inputs, no network, and the cached feature pipeline. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="needs transformers (pip install 'gcrdp[encoders]')",
)

from gcrdp.data.types import Dataset, Sample  # noqa: E402
from gcrdp.encoders import (  # noqa: E402
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    CLIPImageEncoder,
    CLIPTextEncoder,
    extract_features,
    get_image_encoder,
    get_text_encoder,
)
from gcrdp.errors import ConfigError, DataError  # noqa: E402
from tests.clip_fixture import (  # noqa: E402
    HIDDEN,
    MAX_POSITIONS,
    NUM_PATCHES,
    PROJECTION_DIM,
    clip_vocab,
    make_clip_dir,
    write_vocab_files,
)

TEXTS = ["cat", "a photo of a dog", "Dog  cat dog", "a cat", "photo"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h, mode) in enumerate([(32, 32, "RGB"), (50, 40, "RGB"), (20, 64, "RGBA"), (33, 33, "L")]):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        pixels = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        p = root / f"img_{i}.png"
        Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def reference_model(clip_dir):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()


@pytest.fixture(scope="module")
def image_encoder(clip_dir):
    return CLIPImageEncoder(clip_dir, num_threads=1)


@pytest.fixture(scope="module")
def text_encoder(clip_dir):
    return CLIPTextEncoder(clip_dir, num_threads=1)


@pytest.fixture(scope="module")
def image_feats(image_encoder, image_paths):
    return image_encoder.encode(image_paths, batch_size=3, progress=False)


@pytest.fixture(scope="module")
def text_feats(text_encoder):
    return text_encoder.encode(TEXTS, batch_size=2, progress=False)


def _pooler(out):
    """``get_*_features`` returns a tensor in transformers 4 and an output object in 5."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _copy_without(clip_dir: Path, dest: Path, *names: str) -> Path:
    shutil.copytree(clip_dir, dest)
    for name in names:
        (dest / name).unlink()
    return dest


# ---------------------------------------------------------------------------- registry
def test_registered_as_clip(clip_dir):
    assert IMAGE_ENCODERS.get("clip") is CLIPImageEncoder
    assert TEXT_ENCODERS.get("clip") is CLIPTextEncoder
    assert isinstance(get_image_encoder("clip", model_dir=clip_dir), CLIPImageEncoder)
    enc = get_text_encoder("clip", model_dir=str(clip_dir))
    assert enc.max_tokens == MAX_POSITIONS and enc._text is None  # nothing loaded yet


# ---------------------------------------------------------------------------- images
def test_image_features_match_transformers(image_feats, image_paths, image_encoder, reference_model):
    import torch

    from gcrdp.encoders import load_image

    n = len(image_paths)
    assert image_feats.local.shape == (n, NUM_PATCHES, HIDDEN)
    assert image_feats.local.dtype == image_feats.pooled.dtype == np.float32
    assert image_feats.pooled.shape == (n, PROJECTION_DIM)
    assert image_feats.mask.shape == (n, NUM_PATCHES) and image_feats.mask.all()
    np.testing.assert_allclose(np.linalg.norm(image_feats.pooled, axis=1), 1.0, atol=1e-6)

    pixels = image_encoder.pixel_values([load_image(p) for p in image_paths])
    with torch.inference_mode():
        ref_pooled = _pooler(reference_model.get_image_features(pixel_values=pixels)).numpy()
        vision = reference_model.vision_model
        hidden = vision(pixel_values=pixels).last_hidden_state
        ref_local = vision.post_layernorm(hidden)[:, 1:].numpy()
    np.testing.assert_allclose(image_feats.pooled, _unit(ref_pooled), atol=1e-5)
    np.testing.assert_allclose(image_feats.local, ref_local, atol=1e-5)


def test_image_include_cls_and_determinism(clip_dir, image_feats, image_paths, image_encoder, reference_model):
    import torch

    with_cls = CLIPImageEncoder(clip_dir, include_cls=True, num_threads=1)
    feats = with_cls.encode(image_paths, batch_size=1, progress=False)
    assert feats.local.shape == (len(image_paths), NUM_PATCHES + 1, HIDDEN)
    np.testing.assert_allclose(feats.local[:, 1:], image_feats.local, atol=1e-5)
    np.testing.assert_allclose(feats.pooled, image_feats.pooled, atol=1e-5)
    # pooled = normalise(visual_projection(CLS token)): CLS is on the same (post-LN) scale
    with torch.inference_mode():
        projected = reference_model.visual_projection(torch.from_numpy(feats.local[:, 0])).numpy()
    np.testing.assert_allclose(feats.pooled, _unit(projected), atol=1e-5)
    assert with_cls.fingerprint() != image_encoder.fingerprint()
    again = image_encoder.encode(image_paths, batch_size=3, progress=False)
    np.testing.assert_array_equal(again.local, image_feats.local)
    np.testing.assert_array_equal(again.pooled, image_feats.pooled)


def test_pil_images_and_empty_list(image_encoder, image_feats, image_paths):
    from PIL import Image

    with Image.open(image_paths[1]) as im:
        feats = image_encoder.encode([im.copy()], progress=False)
    np.testing.assert_allclose(feats.local[0], image_feats.local[1], atol=1e-6)
    empty = image_encoder.encode([], progress=False)
    assert empty.local.shape == (0, NUM_PATCHES, HIDDEN) and empty.pooled.shape == (0, PROJECTION_DIM)


def test_bad_image_files(image_encoder, image_paths, tmp_path):
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
        image_encoder.encode([image_paths[0], bad[0], image_paths[1], bad[1]], batch_size=2, progress=False)
    with pytest.raises(DataError, match=r"1 image files are missing: .*nope\.png"):
        image_encoder.encode([*image_paths, tmp_path / "nope.png"], progress=False)


def test_processor_size_must_match_model(clip_dir, image_paths, tmp_path):
    folder = _copy_without(clip_dir, tmp_path / "clip", "preprocessor_config.json")
    cfg = json.loads((clip_dir / "preprocessor_config.json").read_text())
    cfg["crop_size"] = {"height": 40, "width": 40}
    cfg["size"] = {"shortest_edge": 40}
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=r"shape \(3, 40, 40\).*expects \(3, 32, 32\).*crop_size"):
        CLIPImageEncoder(folder).encode(image_paths[:1], progress=False)


# ---------------------------------------------------------------------------- texts
def test_text_features_match_transformers(text_feats, text_encoder, reference_model):
    import torch

    tok = text_encoder._tokenizer
    lengths = [len(tok(t)["input_ids"]) for t in TEXTS]  # with start/end tokens
    assert lengths[0] == 3 and max(lengths) == 8
    assert text_feats.local.shape == (len(TEXTS), max(lengths), HIDDEN)
    assert text_feats.local.dtype == text_feats.pooled.dtype == np.float32
    assert text_feats.pooled.shape == (len(TEXTS), PROJECTION_DIM)
    assert text_feats.mask.sum(1).tolist() == lengths
    assert not text_feats.local[~text_feats.mask].any()  # padding is zero

    inputs = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref_pooled = _pooler(reference_model.get_text_features(**inputs)).numpy()
        for i, text in enumerate(TEXTS):  # unpadded, one at a time
            ids = tok(text, return_tensors="pt")["input_ids"]
            hidden = reference_model.text_model(input_ids=ids).last_hidden_state[0].numpy()
            np.testing.assert_allclose(text_feats.local[i, : lengths[i]], hidden, atol=1e-5)
    np.testing.assert_allclose(text_feats.pooled, _unit(ref_pooled), atol=1e-5)


def test_text_options_truncation_and_determinism(clip_dir, text_encoder, text_feats):
    again = text_encoder.encode(TEXTS, batch_size=2, progress=False)
    np.testing.assert_array_equal(again.local, text_feats.local)
    one = text_encoder.encode(TEXTS, batch_size=1, progress=False)
    np.testing.assert_allclose(one.local, text_feats.local, atol=1e-5)
    np.testing.assert_allclose(one.pooled, text_feats.pooled, atol=1e-5)

    no_special = CLIPTextEncoder(clip_dir, include_special_tokens=False, num_threads=1)
    feats = no_special.encode(TEXTS[:2], progress=False)
    assert (feats.mask.sum(1) == text_feats.mask[:2].sum(1) - 2).all()
    np.testing.assert_allclose(feats.local[0, 0], text_feats.local[0, 1], atol=1e-5)
    np.testing.assert_allclose(feats.pooled, text_feats.pooled[:2], atol=1e-6)
    assert no_special.fingerprint() != text_encoder.fingerprint()

    long = "cat dog " * 20
    full = text_encoder.encode([long], progress=False)
    assert full.mask.sum() == MAX_POSITIONS  # default max_tokens: max_position_embeddings
    short = CLIPTextEncoder(clip_dir, max_tokens=5, num_threads=1)
    cut = short.encode([long, "cat"], progress=False)
    assert cut.mask.sum(1).tolist() == [5, 3]
    ids = short._tokenizer(long, truncation=True, max_length=5)["input_ids"]
    assert ids[-1] == short._tokenizer.eos_token_id  # truncation keeps <|endoftext|>
    np.testing.assert_allclose(cut.local[0, :4], full.local[0, :4], atol=1e-5)  # causal
    assert short.fingerprint()["max_tokens"] == 5 != text_encoder.fingerprint()["max_tokens"]
    for bad in (2, MAX_POSITIONS + 1, 4.0, True):
        with pytest.raises(
            ConfigError,
            match=rf"max_tokens must be an integer in 3\.\."
            rf"{MAX_POSITIONS}",
        ):
            CLIPTextEncoder(clip_dir, max_tokens=bad)


def test_empty_texts_rejected(text_encoder):
    with pytest.raises(DataError, match=r"2 texts are empty or not strings \(positions '1', '2'\)"):
        text_encoder.encode(["cat", "   ", None], progress=False)


# ---------------------------------------------------------------------------- fingerprints
def test_fingerprints_are_json_and_follow_the_weights(clip_dir, image_encoder, text_encoder, tmp_path):
    fp_img, fp_txt = image_encoder.fingerprint(), text_encoder.fingerprint()
    json.dumps([fp_img, fp_txt])
    assert fp_img["encoder"] == fp_txt["encoder"] == "clip"
    assert (fp_img["modality"], fp_txt["modality"]) == ("image", "text")
    assert len(fp_img["weights_sha256"]) == 64
    assert fp_img["weights_sha256"] == fp_txt["weights_sha256"]
    assert fp_img["local"]["count"] == NUM_PATCHES and fp_img["pooled"]["dim"] == PROJECTION_DIM
    assert set(fp_txt["tokenizer_sha256"]) >= {"tokenizer.json", "tokenizer_config.json"}
    assert len(fp_img["preprocessor_sha256"]) == 64
    other = make_clip_dir(tmp_path / "other", seed=1)  # same config, other weights
    assert CLIPImageEncoder(other).fingerprint()["weights_sha256"] != fp_img["weights_sha256"]
    assert CLIPImageEncoder(other).fingerprint() != fp_img
    assert CLIPTextEncoder(other).fingerprint() != fp_txt


# ---------------------------------------------------------------------------- bad folders
def test_missing_folder(tmp_path):
    for cls in (CLIPImageEncoder, CLIPTextEncoder):
        with pytest.raises(DataError, match=r"CLIP model folder not found: .*nope"):
            cls(tmp_path / "nope")
    with pytest.raises(ConfigError, match="model_dir must be a path"):
        CLIPImageEncoder(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cls, removed, named",
    [
        (CLIPImageEncoder, ["config.json"], r"missing config\.json\."),
        (CLIPTextEncoder, ["model.safetensors"], r"missing model\.safetensors or pytorch_model\.bin"),
        (CLIPImageEncoder, ["preprocessor_config.json"], r"missing preprocessor_config\.json"),
        (CLIPTextEncoder, ["tokenizer.json"], r"missing tokenizer\.json or vocab\.json \+ merges\.txt"),
        (CLIPTextEncoder, ["config.json", "tokenizer.json"], r"missing config\.json, tokenizer\.json or vocab\.json"),
    ],
)
def test_incomplete_folder_names_missing_files(clip_dir, tmp_path, cls, removed, named):
    folder = _copy_without(clip_dir, tmp_path / "clip", *removed)
    with pytest.raises(DataError, match=rf"incomplete for the {cls.modality} encoder: {named}"):
        cls(folder)


def test_folder_complete_for_the_other_modality_only(clip_dir, tmp_path, image_paths, image_feats, text_feats):
    # the image encoder needs no tokenizer, the text encoder no preprocessor config: each still
    # encodes as it does from the complete folder, and the other modality is refused
    folder = _copy_without(clip_dir, tmp_path / "clip", "tokenizer.json")
    img = CLIPImageEncoder(folder, num_threads=1).encode(image_paths, batch_size=3, progress=False)
    np.testing.assert_allclose(img.pooled, image_feats.pooled, atol=1e-6)
    np.testing.assert_allclose(img.local, image_feats.local, atol=1e-6)
    with pytest.raises(DataError, match=r"incomplete for the text encoder: missing tokenizer\.json"):
        CLIPTextEncoder(folder)
    folder2 = _copy_without(clip_dir, tmp_path / "clip2", "preprocessor_config.json")
    txt = CLIPTextEncoder(folder2, num_threads=1).encode(TEXTS, batch_size=2, progress=False)
    np.testing.assert_allclose(txt.pooled, text_feats.pooled, atol=1e-6)
    np.testing.assert_allclose(txt.local, text_feats.local, atol=1e-6)
    with pytest.raises(DataError, match=r"incomplete for the image encoder: missing preprocessor_config\.json"):
        CLIPImageEncoder(folder2)


def test_non_clip_config(clip_dir, tmp_path):
    folder = _copy_without(clip_dir, tmp_path / "clip", "config.json")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(
        DataError,
        match=r"not a CLIP config: model_type is 'bert', "
        r"expected 'clip'",
    ):
        CLIPTextEncoder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable JSON model config"):
        CLIPImageEncoder(folder)


def test_weights_that_do_not_fit_the_config(clip_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy_without(clip_dir, tmp_path / "clip")
    state = load_file(str(folder / "model.safetensors"))
    del state["visual_projection.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DataError, match=r"do not fill the CLIP model.*visual_projection\.weight"):
        CLIPImageEncoder(folder).load()


def _tokenizer_only(clip_dir: Path, dest: Path, vocab: dict[str, int], merges: list[str]) -> Path:
    folder = _copy_without(clip_dir, dest, "tokenizer.json")
    write_vocab_files(folder, vocab, merges)
    return folder


def test_empty_vocabulary_tokenizer(clip_dir, tmp_path):
    specials = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    folder = _tokenizer_only(clip_dir, tmp_path / "specials", specials, [])
    with pytest.raises(DataError, match=r"empty vocabulary \(2 entries"):
        CLIPTextEncoder(folder).load()
    folder = _tokenizer_only(clip_dir, tmp_path / "empty", {}, [])
    # depending on the transformers version: a load error or the same empty vocabulary
    with pytest.raises(DataError, match=r"Cannot load the CLIP tokenizer|empty vocabulary"):
        CLIPTextEncoder(folder).load()


def test_vocabulary_without_the_probe_words(clip_dir, tmp_path):
    vocab = {t: i for i, t in enumerate(["x", "y", "x</w>", "y</w>", "<|startoftext|>", "<|endoftext|>"])}
    folder = _tokenizer_only(clip_dir, tmp_path / "xy", vocab, [])
    with pytest.raises(DataError, match=r"nothing but unknown tokens.*not a CLIP vocabulary"):
        CLIPTextEncoder(folder).load()


def test_tokenizer_must_match_the_model(clip_dir, tmp_path):
    vocab = clip_vocab()
    # an extra token shifts the special tokens: ids beyond vocab_size, another eos id
    vocab = {**{k: v for k, v in vocab.items() if not k.startswith("<|")}, "zz": len(vocab) - 2}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder = _tokenizer_only(clip_dir, tmp_path / "shifted", vocab, [])
    with pytest.raises(DataError, match=r"token ids up to 62 but .*vocab_size is 62"):
        CLIPTextEncoder(folder).load()


# ---------------------------------------------------------------------------- no network
def test_no_network_is_used(clip_dir, image_paths, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    img = CLIPImageEncoder(clip_dir, num_threads=1).encode(image_paths[:2], progress=False)
    txt = CLIPTextEncoder(clip_dir, num_threads=1).encode(["cat", "dog"], progress=False)
    assert img.pooled.shape == txt.pooled.shape == (2, PROJECTION_DIM)


# ---------------------------------------------------------------------------- end to end
def test_extract_features_with_clip_is_cached(clip_dir, image_paths, image_feats, tmp_path):
    samples = [Sample(f"s{i}", text, ("cat" if i % 2 else "dog",), "train", p) for i, (p, text) in enumerate(zip(image_paths, TEXTS))]
    ds = Dataset("tiny", samples, ["cat", "dog"], class_split=None)
    image_enc, text_enc = CLIPImageEncoder(clip_dir, num_threads=1), CLIPTextEncoder(clip_dir)
    first = extract_features(ds, image_enc, text_enc, cache_dir=tmp_path, progress=False)
    assert first.meta["cache_hit"] is False
    assert first.image.pooled_dim == first.text.pooled_dim == PROJECTION_DIM
    assert first.image.local.shape == (len(samples), NUM_PATCHES, HIDDEN)
    np.testing.assert_allclose(first.image.pooled.astype(np.float32), image_feats.pooled, atol=1e-3)
    fresh_img, fresh_txt = CLIPImageEncoder(clip_dir), CLIPTextEncoder(clip_dir)
    second = extract_features(ds, fresh_img, fresh_txt, cache_dir=tmp_path, progress=False)
    assert second.meta["cache_hit"] is True and second.sample_ids == first.sample_ids
    assert fresh_img._vision is None and fresh_txt._text is None  # a cache hit loads no model
    np.testing.assert_array_equal(second.text.local, first.text.local)
