"""The feature cache and extract_features, with small fake encoders that count their calls."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gcrdp.data.features import ModalityFeatures
from gcrdp.data.types import Dataset, Sample
from gcrdp.encoders import FeatureCache, cache_key, extract_features
from gcrdp.encoders import cache as cache_mod
from gcrdp.errors import ConfigError, DataError


def _seed(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


class FakeImageEncoder:
    """4 local vectors of 6 dims per image, derived from the file bytes; counts encode calls."""

    modality = "image"
    name = "fake-image"

    def __init__(self, version: int = 1, poison: bool = False, scale: float = 1.0) -> None:
        self.version, self.poison, self.scale = version, poison, scale
        self.calls = self.items = 0
        self.artifact_dir = None

    def fingerprint(self) -> dict:
        return {"encoder": self.name, "version": self.version}

    def use_artifact_dir(self, path) -> None:
        self.artifact_dir = path

    def encode(self, items, *, batch_size=32, progress=True) -> ModalityFeatures:
        self.calls += 1
        self.items += len(items)
        local = (
            np.stack([np.random.default_rng(_seed(Path(p).read_bytes())).normal(size=(4, 6)) for p in items]).astype(np.float32)
            * self.scale
        )
        if self.poison:
            local[1, 2, 3] = np.nan
        return ModalityFeatures(local, np.ones(local.shape[:2], bool), local.mean(1))


class FakeTextEncoder:
    """Up to 3 'tokens' of 5 dims per text (one per word), derived from the text."""

    modality = "text"
    name = "fake-text"

    def __init__(self) -> None:
        self.calls = self.items = 0

    def fingerprint(self) -> dict:
        return {"encoder": self.name}

    def encode(self, items, *, batch_size=32, progress=True) -> ModalityFeatures:
        self.calls += 1
        self.items += len(items)
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
def _chunks(cache_dir) -> list[Path]:
    cache = FeatureCache(cache_dir)
    return [c for space in sorted(cache.items_dir.glob("*")) if space.is_dir() for c in cache.chunks(space)]


def test_miss_then_hit_without_reencoding(ds, encs, tmp_path):
    cache_dir = tmp_path / "cache"
    first = _run(ds, encs, cache_dir)
    assert encs[0].calls == encs[1].calls == 1 and first.meta["cache_hit"] is False
    assert first.meta["items_extracted"] == {"image": 3, "text": 3}
    assert first.sample_ids == ("s0", "s1", "s2")
    assert encs[0].artifact_dir == cache_dir / "models"
    second = _run(ds, (FakeImageEncoder(), FakeTextEncoder()), cache_dir)
    third = _run(ds, encs, cache_dir)
    assert encs[0].calls == encs[1].calls == 1  # no re-encoding
    assert second.meta["cache_hit"] is third.meta["cache_hit"] is True
    assert second.meta["key"] == first.meta["key"] == _key(ds, encs)  # the dataset's identity
    for a, b in [(first.image, third.image), (first.text, third.text)]:
        for part in ("local", "mask", "pooled"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
            assert getattr(a, part).dtype == getattr(b, part).dtype
    chunks = _chunks(cache_dir)
    assert len(chunks) == 2  # one per modality
    for chunk in chunks:
        meta = json.loads((chunk / "meta.json").read_text())
        assert meta["n_items"] == 3 and meta["gcrdp_version"] and "created" in meta
        space = json.loads((chunk.parent / "space.json").read_text())
        assert space["modality"] in ("image", "text") and space["dtype"] == "float16"
    img_chunk = next(c for c in chunks if json.loads((c.parent / "space.json").read_text())["modality"] == "image")
    keys = json.loads((img_chunk / "keys.json").read_text())
    assert keys == [hashlib.sha256(s.image.read_bytes()).hexdigest() for s in ds.samples]


def test_without_cache_dir_nothing_is_written(ds, encs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feats = _run(ds, encs, None)
    assert feats.image.local.dtype == np.float16 and feats.meta["cache_hit"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def _key(ds, encs, dtype="float16") -> str:
    return cache_key(cache_mod.cache_key_inputs(ds.content_digest(), encs[0].fingerprint(), encs[1].fingerprint(), dtype))


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


def test_changing_one_row_extracts_one_item(ds, encs, tmp_path):
    cache_dir = tmp_path / "cache"
    ref = _run(ds, encs, cache_dir)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(ds.samples[0].image)  # new content for one image
    out = _run(ds, encs, cache_dir)
    assert (encs[0].items, encs[1].items) == (4, 3)  # 3 + the changed image; no text
    assert out.meta["items_extracted"] == {"image": 1, "text": 0} and out.meta["key"] != ref.meta["key"]
    np.testing.assert_array_equal(out.image.local[1:], ref.image.local[1:])
    assert not np.array_equal(out.image.local[0], ref.image.local[0])
    # one text changed, a label changed: one text extracted, nothing for the label
    samples = list(ds.samples)
    samples[2] = Sample("s2", "green tea", ("c0",), "test", samples[2].image)
    relabelled = Dataset("tiny", samples, ["c0", "c1"])
    out = _run(relabelled, encs, cache_dir)
    assert (encs[0].items, encs[1].items) == (4, 4) and out.meta["items_extracted"] == {"image": 0, "text": 1}
    # another storage dtype is another space: everything once more
    _run(ds, encs, cache_dir, dtype="float32")
    assert (encs[0].items, encs[1].items) == (7, 7)


def test_shared_items_are_extracted_once_and_padding_follows_the_dataset(tmp_path, encs):
    (tmp_path / "imgs").mkdir()
    ds = _dataset(tmp_path / "imgs", ("one", "two words", "three words here"))
    cache_dir = tmp_path / "cache"
    _run(ds, encs, cache_dir)
    # a second dataset: the same first image and text twice, and a new short text
    samples = [
        Sample("a", "one", ("c0",), "train", ds.samples[0].image),
        Sample("b", "one", ("c1",), "train", ds.samples[0].image),
        Sample("c", "hi", ("c1",), "test", ds.samples[1].image),
    ]
    out = _run(Dataset("other", samples, ["c0", "c1"]), encs, cache_dir)
    assert out.meta["items_extracted"] == {"image": 0, "text": 1}
    assert out.text.local.shape == (3, 1, 5)  # padded to the longest text of this dataset
    full = FakeTextEncoder().encode(["one", "one", "hi"])
    np.testing.assert_array_equal(out.text.local, full.local[:, :1].astype(np.float16))
    np.testing.assert_array_equal(out.text.mask, full.mask[:, :1])


def test_first_extraction_equals_an_uncached_one_with_duplicates(tmp_path, encs):
    (tmp_path / "imgs").mkdir()
    ds = _dataset(tmp_path / "imgs", ("same text", "same text", "other"))
    cached = _run(ds, encs, tmp_path / "cache")
    plain = _run(ds, (FakeImageEncoder(), FakeTextEncoder()), None)
    for a, b in [(cached.image, plain.image), (cached.text, plain.text)]:
        for part in ("local", "mask", "pooled"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert cached.meta["items_extracted"]["text"] == 2


def test_old_layout_entries_are_imported_without_extracting(ds, encs, tmp_path):
    """An entry of the first (per-dataset) layout is read once and becomes chunks."""
    cache_dir = tmp_path / "cache"
    key = _key(ds, encs)
    ref = _run(ds, (FakeImageEncoder(), FakeTextEncoder()), None)
    entry = cache_dir / "features" / key
    entry.mkdir(parents=True)
    files = {}
    for m in ("image", "text"):
        for part in ("local", "mask", "pooled"):
            name = f"{m}_{part}.npy"
            np.save(entry / name, getattr(getattr(ref, m), part))
            files[name] = {"sha256": hashlib.sha256((entry / name).read_bytes()).hexdigest()}
    (entry / "meta.json").write_text(json.dumps({"format": 1, "key": key, "files": files, "sample_ids": list(ref.sample_ids)}))
    out = _run(ds, encs, cache_dir)
    assert encs[0].calls == encs[1].calls == 0 and out.meta["cache_hit"] is True
    np.testing.assert_array_equal(out.image.local, ref.image.local)
    assert len(_chunks(cache_dir)) == 2


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
        np.testing.assert_allclose(hit.image.local.astype(np.float32), ref.local, rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match=r"dtype must be one of \('float16', 'float32'\)"):
        _run(ds, encs, tmp_path / "c", dtype="bfloat16")


def test_float16_overflow_is_caught(ds, tmp_path):
    with pytest.raises(DataError, match="after conversion to float16"):
        _run(ds, (FakeImageEncoder(scale=1e6), FakeTextEncoder()), tmp_path / "c")
    assert _chunks(tmp_path / "c") == []


# ---------------------------------------------------------------------------- atomicity
def test_interrupted_write_leaves_no_chunk(ds, encs, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    real_save, calls = cache_mod._save_array, []

    def crash_after_two(path, array):
        calls.append(path.name)
        if len(calls) > 2:
            raise KeyboardInterrupt("simulated crash mid-write")
        real_save(path, array)

    monkeypatch.setattr(cache_mod, "_save_array", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        _run(ds, encs, cache_dir)
    assert _chunks(cache_dir) == [] and not list(cache_dir.rglob(".tmp-*"))
    monkeypatch.setattr(cache_mod, "_save_array", real_save)
    out = _run(ds, encs, cache_dir)
    assert out.meta["cache_hit"] is False and encs[0].calls == 2
    assert len(_chunks(cache_dir)) == 2


def test_crash_before_rename_and_stale_tmp_dirs(ds, encs, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"

    def killed(*a):  # the process dies between writing and publishing: temp dir stays behind
        raise SystemExit("killed")

    monkeypatch.setattr(cache_mod, "_publish", killed)
    with pytest.raises(SystemExit):
        _run(ds, encs, cache_dir)
    monkeypatch.undo()
    assert _chunks(cache_dir) == [] and not list(cache_dir.rglob(".tmp-*"))  # cleaned on the way out
    # a temp dir left by a process killed for real (no cleanup ran) is ignored by lookups, and
    # removed once stale; a fresh one (a concurrent writer's) is kept
    (space,) = [p for p in (cache_dir / "items").iterdir()]
    leftover = [space / ".tmp-0123456789abcdef-999-dead"]
    leftover[0].mkdir()
    (leftover[0] / "local.npy").write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(leftover[0], (old, old))
    fresh = space / ".tmp-fedcba9876543210-998-beef"
    fresh.mkdir()
    out = _run(ds, encs, cache_dir)
    assert not leftover[0].exists() and fresh.exists()
    assert out.meta["cache_hit"] is False and len(_chunks(cache_dir)) == 2


def test_concurrent_writers_of_the_same_items(ds, encs, tmp_path):
    """Two runs that extract the same items at once each publish a chunk; both are valid and
    lookups agree on one of them."""
    cache_dir = tmp_path / "cache"
    a = _run(ds, encs, cache_dir)
    cache = FeatureCache(cache_dir)
    for chunk in _chunks(cache_dir):  # the racer's copy of the same rows under another name
        twin = chunk.parent / ("0" + chunk.name)
        shutil.copytree(chunk, twin)
    assert len(_chunks(cache_dir)) == 4
    b = _run(ds, encs, cache_dir)
    assert b.meta["cache_hit"] and encs[0].calls == 1
    np.testing.assert_array_equal(a.text.local, b.text.local)
    space = next(cache.items_dir.iterdir())
    assert {c for c, _ in cache.index(space).values()} == {cache.chunks(space)[0]}


# ---------------------------------------------------------------------------- damaged chunks
@pytest.mark.parametrize("damage", ["delete_array", "truncate_array", "flip_byte", "bad_meta", "no_meta", "bad_keys"])
def test_damaged_chunk_is_rebuilt_with_warning(ds, encs, tmp_path, caplog, damage):
    cache_dir = tmp_path / "cache"
    _run(ds, encs, cache_dir)
    chunk = next(c for c in _chunks(cache_dir) if json.loads((c.parent / "space.json").read_text())["modality"] == "text")
    target = chunk / "local.npy"
    if damage == "delete_array":
        target.unlink()
    elif damage == "truncate_array":
        target.write_bytes(target.read_bytes()[:40])
    elif damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "bad_meta":
        (chunk / "meta.json").write_text("{not json")
    elif damage == "no_meta":
        (chunk / "meta.json").unlink()
    else:
        (chunk / "keys.json").write_text("[1, 2")
    with caplog.at_level(logging.WARNING, logger="gcrdp.encoders.cache"):
        out = _run(ds, encs, cache_dir)
    assert out.meta["items_extracted"] == {"image": 0, "text": 3} and encs[1].calls == 2
    assert "damaged" in caplog.text and "rebuilt" in caplog.text and not chunk.exists()
    assert _run(ds, encs, cache_dir).meta["cache_hit"] is True and encs[1].calls == 2


# ---------------------------------------------------------------------------- bad input
def test_nan_features_are_rejected_before_writing(ds, tmp_path):
    with pytest.raises(
        DataError,
        match=r"image features: NaN or infinite values in 1 samples "
        r"\(rows \[1\]\)",
    ):
        _run(ds, (FakeImageEncoder(poison=True), FakeTextEncoder()), tmp_path / "c")
    assert _chunks(tmp_path / "c") == []


def test_sample_without_image_and_missing_files(ds, encs, tmp_path):
    samples = list(ds.samples)
    samples[1] = Sample("s1", "blue sky", ("c0",), "train", None)
    with pytest.raises(DataError, match=r"1 samples have no image \('s1'\)"):
        _run(Dataset("tiny", samples, ["c0", "c1"]), encs, tmp_path / "c")
    samples = [Sample(f"m{i}", "text", ("c0",), "train", tmp_path / f"gone{i}.png") for i in range(7)]
    with pytest.raises(
        DataError,
        match=r"7 image files are missing: .*gone0\.png.*"
        r"\(and 2 more; 7 in all\)",
    ):
        _run(Dataset("tiny", samples + list(ds.samples), ["c0", "c1"]), encs, tmp_path / "c")
    assert encs[0].calls == 0  # checked before any encoding


def test_encoder_roles_are_checked(ds, encs, tmp_path):
    with pytest.raises(ConfigError, match="image_encoder must be an encoder of modality 'image'; 'fake-text' has modality 'text'"):
        extract_features(ds, encs[1], encs[0], progress=False)
    with pytest.raises(ConfigError, match=r"text_encoder must follow the gcrdp Encoder protocol"):
        extract_features(ds, encs[0], object(), progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        extract_features(ds, *encs, batch_size=0, progress=False)


def test_many_damaged_chunks_are_all_rebuilt(ds, encs, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    for i in range(3):  # three chunks per space: one sample's item each
        _run(Dataset("tiny", [ds.samples[i]], list(ds.samples[i].labels)), encs, cache_dir)
    extra = _chunks(cache_dir)
    for c in extra:  # copies under other names, then damage every chunk
        shutil.copytree(c, c.parent / ("z" + c.name))
    for c in _chunks(cache_dir):
        (c / "local.npy").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="gcrdp.encoders.cache"):
        out = _run(ds, encs, cache_dir)
    assert out.meta["items_extracted"] == {"image": 3, "text": 3}
    assert _run(ds, encs, cache_dir).meta["cache_hit"] is True


def test_a_key_list_that_disagrees_with_its_arrays_is_damage(ds, encs, tmp_path):
    cache_dir = tmp_path / "cache"
    _run(ds, encs, cache_dir)
    chunk = _chunks(cache_dir)[0]
    keys = json.loads((chunk / "keys.json").read_text())
    (chunk / "keys.json").write_text(json.dumps(keys + ["f" * 64]))
    out = _run(ds, encs, cache_dir)
    assert sum(out.meta["items_extracted"].values()) == 3 and not chunk.exists()


def test_an_unreadable_cache_is_an_error_not_damage(ds, encs, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    _run(ds, encs, cache_dir)

    def no_memory(*a, **k):
        raise MemoryError("simulated")

    monkeypatch.setattr(cache_mod.np, "load", no_memory)
    with pytest.raises(MemoryError):
        _run(ds, encs, cache_dir)
    monkeypatch.undo()
    assert len(_chunks(cache_dir)) == 2  # nothing was discarded
