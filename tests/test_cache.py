"""The feature cache and extract_features, with small fake encoders that count their calls."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gcrdp.data.features import ModalityFeatures
from gcrdp.data.types import Dataset, Sample
from gcrdp.encoders import cache as cache_mod
from gcrdp.encoders import FeatureCache, cache_key, extract_features
from gcrdp.errors import ConfigError, DataError


def _seed(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


class FakeImageEncoder:
    """4 local vectors of 6 dims per image, derived from the file bytes; counts encode calls."""

    modality = "image"
    name = "fake-image"

    def __init__(self, version: int = 1, poison: bool = False, scale: float = 1.0) -> None:
        self.version, self.poison, self.scale = version, poison, scale
        self.calls = 0
        self.artifact_dir = None

    def fingerprint(self) -> dict:
        return {"encoder": self.name, "version": self.version}

    def use_artifact_dir(self, path) -> None:
        self.artifact_dir = path

    def encode(self, items, *, batch_size=32, progress=True) -> ModalityFeatures:
        self.calls += 1
        local = np.stack([
            np.random.default_rng(_seed(Path(p).read_bytes())).normal(size=(4, 6)) for p in items
        ]).astype(np.float32) * self.scale
        if self.poison:
            local[1, 2, 3] = np.nan
        return ModalityFeatures(local, np.ones(local.shape[:2], bool), local.mean(1))


class FakeTextEncoder:
    """Up to 3 'tokens' of 5 dims per text (one per word), derived from the text."""

    modality = "text"
    name = "fake-text"

    def __init__(self) -> None:
        self.calls = 0

    def fingerprint(self) -> dict:
        return {"encoder": self.name}

    def encode(self, items, *, batch_size=32, progress=True) -> ModalityFeatures:
        self.calls += 1
        n = len(items)
        local = np.zeros((n, 3, 5), np.float32)
        mask = np.zeros((n, 3), bool)
        for i, t in enumerate(items):
            k = min(3, len(t.split()))
            local[i, :k] = np.random.default_rng(_seed(t.encode())).normal(size=(k, 5))
            mask[i, :k] = True
        return ModalityFeatures(local, mask, local.sum(1) / mask.sum(1, keepdims=True))


def _dataset(root: Path, texts=("a red apple", "blue sky", "green tea leaves")) -> Dataset:
    samples = []
    for i, t in enumerate(texts):
        p = root / f"img{i}.png"
        if not p.exists():
            Image.new("RGB", (8, 8), (40 * i, 10, 200)).save(p)
        samples.append(Sample(f"s{i}", t, ("c0" if i % 2 else "c1",), "train", p))
    return Dataset("tiny", samples, ["c0", "c1"])


@pytest.fixture
def ds(tmp_path) -> Dataset:
    (tmp_path / "imgs").mkdir()
    return _dataset(tmp_path / "imgs")


@pytest.fixture
def encs():
    return FakeImageEncoder(), FakeTextEncoder()


def _run(ds, encs, cache_dir, **kw):
    return extract_features(ds, *encs, cache_dir=cache_dir, progress=False, **kw)


# ---------------------------------------------------------------------------- hits and misses
def test_miss_then_hit_without_reencoding(ds, encs, tmp_path):
    cache_dir = tmp_path / "cache"
    first = _run(ds, encs, cache_dir)
    assert encs[0].calls == encs[1].calls == 1 and first.meta["cache_hit"] is False
    assert first.sample_ids == ("s0", "s1", "s2")
    assert encs[0].artifact_dir == cache_dir / "models"
    second = _run(ds, (FakeImageEncoder(), FakeTextEncoder()), cache_dir)
    third = _run(ds, encs, cache_dir)
    assert encs[0].calls == encs[1].calls == 1  # no re-encoding
    assert second.meta["cache_hit"] is third.meta["cache_hit"] is True
    for a, b in [(first.image, third.image), (first.text, third.text)]:
        for part in ("local", "mask", "pooled"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
            assert getattr(a, part).dtype == getattr(b, part).dtype
    entry = FeatureCache(cache_dir).entry_dir(first.meta["key"])
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["sample_ids"] == ["s0", "s1", "s2"] and meta["gcrdp_version"]
    assert meta["key_inputs"]["image_encoder"] == {"encoder": "fake-image", "version": 1}
    assert meta["files"]["text_local.npy"]["shape"] == [3, 3, 5] and "created" in meta


def test_without_cache_dir_nothing_is_written(ds, encs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feats = _run(ds, encs, None)
    assert feats.image.local.dtype == np.float16 and feats.meta["cache_hit"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def _key(ds, encs, dtype="float16") -> str:
    return cache_key(cache_mod.cache_key_inputs(
        ds.content_digest(), encs[0].fingerprint(), encs[1].fingerprint(), dtype))


def test_key_changes_with_every_input(ds, encs, tmp_path):
    base = _key(ds, encs)
    assert _key(ds, encs) == base  # stable
    changed_text = _dataset(ds.samples[0].image.parent, ("a red apple", "blue sky!", "green tea"))
    assert _key(changed_text, encs) != base
    assert _key(ds, (FakeImageEncoder(version=2), encs[1])) != base
    assert _key(ds, encs, "float32") != base
    img = ds.samples[1].image
    data = bytearray(img.read_bytes())
    data[-20] ^= 1  # one byte of one image
    img.write_bytes(bytes(data))
    assert _key(ds, encs) != base


def test_changed_content_recomputes(ds, encs, tmp_path):
    cache_dir = tmp_path / "cache"
    _run(ds, encs, cache_dir)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(ds.samples[0].image)  # new image content
    _run(ds, encs, cache_dir)
    assert encs[0].calls == 2
    _run(ds, encs, cache_dir, dtype="float32")
    assert encs[0].calls == 3
    assert len(FeatureCache(cache_dir).keys()) == 3


# ---------------------------------------------------------------------------- dtypes
def test_float16_and_float32_round_trip(ds, encs, tmp_path):
    ref = FakeImageEncoder().encode([s.image for s in ds.samples])
    for dtype in ("float16", "float32"):
        out = _run(ds, encs, tmp_path / "c", dtype=dtype)
        hit = _run(ds, encs, tmp_path / "c", dtype=dtype)
        assert not out.meta["cache_hit"] and hit.meta["cache_hit"]
        assert hit.image.local.dtype == np.dtype(dtype)
        assert hit.image.mask.dtype == bool and hit.meta["dtype"] == dtype
        np.testing.assert_array_equal(hit.image.local, ref.local.astype(dtype))
        np.testing.assert_array_equal(out.image.pooled, ref.pooled.astype(dtype))
        # computing downstream in float32 stays within float16 resolution
        np.testing.assert_allclose(hit.image.local.astype(np.float32), ref.local, rtol=1e-3,
                                   atol=1e-3)
    with pytest.raises(ConfigError, match=r"dtype must be one of \('float16', 'float32'\)"):
        _run(ds, encs, tmp_path / "c", dtype="bfloat16")


def test_float16_overflow_is_caught(ds, tmp_path):
    with pytest.raises(DataError, match="after conversion to float16"):
        _run(ds, (FakeImageEncoder(scale=1e6), FakeTextEncoder()), tmp_path / "c")
    assert FeatureCache(tmp_path / "c").keys() == []


# ---------------------------------------------------------------------------- atomicity
def test_interrupted_write_leaves_no_entry(ds, encs, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    real_save, calls = cache_mod._save_array, []

    def crash_after_three(path, array):
        calls.append(path.name)
        if len(calls) > 3:
            raise KeyboardInterrupt("simulated crash mid-write")
        real_save(path, array)

    monkeypatch.setattr(cache_mod, "_save_array", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        _run(ds, encs, cache_dir)
    cache = FeatureCache(cache_dir)
    assert cache.keys() == [] and not list(cache.features_dir.glob(".tmp-*"))
    monkeypatch.setattr(cache_mod, "_save_array", real_save)
    out = _run(ds, encs, cache_dir)
    assert out.meta["cache_hit"] is False and encs[0].calls == 2
    assert cache.keys() == [out.meta["key"]]


def test_crash_before_rename_and_stale_tmp_dirs(ds, encs, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"

    def killed(*a):  # the process dies between writing and publishing: temp dir stays behind
        raise SystemExit("killed")

    monkeypatch.setattr(cache_mod, "_publish", killed)
    with pytest.raises(SystemExit):
        _run(ds, encs, cache_dir)
    monkeypatch.undo()
    cache = FeatureCache(cache_dir)
    assert cache.keys() == []
    # a temp dir left by a process killed for real is ignored, and removed once stale
    stale = cache.features_dir / ".tmp-0123456789abcdef-999-dead"
    stale.mkdir(parents=True)
    (stale / "image_local.npy").write_bytes(b"partial")
    fresh = cache.features_dir / ".tmp-fedcba9876543210-998-beef"
    fresh.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert cache.keys() == []
    out = _run(ds, encs, cache_dir)
    assert not stale.exists() and fresh.exists()  # only the stale one is cleaned
    assert cache.keys() == [out.meta["key"]]


# ---------------------------------------------------------------------------- damaged entries
@pytest.mark.parametrize("damage", ["delete_array", "truncate_array", "flip_byte", "bad_meta",
                                    "no_meta"])
def test_damaged_entry_is_rebuilt_with_warning(ds, encs, tmp_path, caplog, damage):
    cache_dir = tmp_path / "cache"
    key = _run(ds, encs, cache_dir).meta["key"]
    entry = FeatureCache(cache_dir).entry_dir(key)
    target = entry / "text_local.npy"
    if damage == "delete_array":
        target.unlink()
    elif damage == "truncate_array":
        target.write_bytes(target.read_bytes()[:40])
    elif damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "bad_meta":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / "meta.json").unlink()
    with caplog.at_level(logging.WARNING, logger="gcrdp.encoders.cache"):
        out = _run(ds, encs, cache_dir)
    assert out.meta["cache_hit"] is False and encs[0].calls == 2
    assert "damaged" in caplog.text and "rebuilt" in caplog.text
    assert _run(ds, encs, cache_dir).meta["cache_hit"] is True and encs[0].calls == 2


# ---------------------------------------------------------------------------- bad input
def test_nan_features_are_rejected_before_writing(ds, tmp_path):
    with pytest.raises(DataError, match=r"image features: NaN or infinite values in 1 samples "
                                        r"\(rows \[1\]\)"):
        _run(ds, (FakeImageEncoder(poison=True), FakeTextEncoder()), tmp_path / "c")
    assert FeatureCache(tmp_path / "c").keys() == []


def test_sample_without_image_and_missing_files(ds, encs, tmp_path):
    samples = list(ds.samples)
    samples[1] = Sample("s1", "blue sky", ("c0",), "train", None)
    with pytest.raises(DataError, match=r"1 samples have no image \('s1'\)"):
        _run(Dataset("tiny", samples, ["c0", "c1"]), encs, tmp_path / "c")
    samples = [Sample(f"m{i}", "text", ("c0",), "train", tmp_path / f"gone{i}.png")
               for i in range(7)]
    with pytest.raises(DataError, match=r"7 image files are missing: .*gone0\.png.*"
                                        r"\(and 2 more; 7 in all\)"):
        _run(Dataset("tiny", samples + list(ds.samples), ["c0", "c1"]), encs, tmp_path / "c")
    assert encs[0].calls == 0  # checked before any encoding


def test_encoder_roles_are_checked(ds, encs, tmp_path):
    with pytest.raises(ConfigError, match="image_encoder must be an encoder of modality 'image'; "
                                          "'fake-text' has modality 'text'"):
        extract_features(ds, encs[1], encs[0], progress=False)
    with pytest.raises(ConfigError, match=r"text_encoder must follow the gcrdp Encoder protocol"):
        extract_features(ds, encs[0], object(), progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        extract_features(ds, *encs, batch_size=0, progress=False)
