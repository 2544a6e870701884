"""Lazy on-disk rows (gcrdp.data.lazy) and feature stores (gcrdp.data.store): every read equals
numpy's, stores round-trip exactly and with the in-memory digest, damage is detected, nothing
half-written is left, and a full disk is refused before any work."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from gcrdp.data import store as store_mod
from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.data.lazy import DiskArray, StoreDamaged, as_dtype, is_lazy
from gcrdp.data.store import open_or_build, open_store, store_key, write_store
from gcrdp.errors import DataError
from tests.helpers import synthetic_features


@pytest.fixture
def arr3(tmp_path):
    a = np.random.default_rng(0).standard_normal((40, 5, 3)).astype(np.float16)
    np.save(tmp_path / "a.npy", a)
    return a, DiskArray(tmp_path / "a.npy")


@pytest.mark.parametrize(
    "key",
    [
        0,
        39,
        -1,
        slice(None),
        slice(3, 17),
        slice(30, None, 4),
        slice(10, 2, -3),
        np.array([5, 1, 5, 39, 0]),
        [2, 2, 2],
        np.arange(40) % 3 == 0,
        np.array([], dtype=np.int64),
        (slice(2, 9), 0),
        (np.array([4, 3]), slice(None), 1),
        (7, 2),
    ],
)
def test_disk_array_reads_equal_numpy(arr3, key):
    a, x = arr3
    got, want = x[key], a[key]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


def test_views_compose_pickle_and_materialise(arr3):
    a, x = arr3
    v = x.take([30, 2, 2, 11]).take([3, 0, 1])
    assert v.shape == (3, 5, 3) and len(v) == 3
    assert np.array_equal(np.asarray(v), a[[11, 30, 2]])
    w = pickle.loads(pickle.dumps(v))  # a worker process gets the file name and row map, no rows
    assert np.array_equal(w[:], a[[11, 30, 2]])
    assert len(pickle.dumps(v)) < a.nbytes
    with pytest.raises(IndexError):
        x[[40]]
    with pytest.raises(IndexError):
        x.take([1.5])


def test_a_truncated_or_odd_user_file_is_a_clear_error(tmp_path):
    a = np.zeros((10, 4), np.float32)
    np.save(tmp_path / "t.npy", a)
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-5])
    with pytest.raises(DataError, match="truncated"):
        DiskArray(tmp_path / "t.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 3))))
    with pytest.raises(DataError, match="Fortran"):
        DiskArray(tmp_path / "f.npy")


@pytest.mark.parametrize("variant", ["3d-mask", "3d", "2d", "float64", "pooled-given"])
def test_from_lazy_gives_the_values_of_from_array(tmp_path, variant):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((30, 6, 4)).astype(np.float64 if variant == "float64" else np.float16)
    if variant == "2d":
        a = a[:, 0, :]
    mask = None
    if variant == "3d-mask":
        mask = rng.random((30, 6)) > 0.4
        mask[:, 0] = True
    pooled = rng.standard_normal((30, 7)).astype(np.float32) if variant == "pooled-given" else None
    np.save(tmp_path / "x.npy", a)
    dtype = "float16" if a.dtype == np.float16 else "float32"
    eager = ModalityFeatures.from_array(a, mask, pooled, dtype=dtype)
    lazy = ModalityFeatures.from_lazy(DiskArray(tmp_path / "x.npy"), mask, pooled, dtype=dtype)
    assert lazy.on_disk and not eager.on_disk
    for part in ("local", "mask", "pooled"):
        e, z = getattr(eager, part), np.asarray(getattr(lazy, part))
        assert e.dtype == z.dtype and np.array_equal(e, z), part
    rows = np.array([29, 3, 3, 0])
    sub_e, sub_z = eager.subset(rows), lazy.subset(rows)
    assert np.array_equal(sub_e.local, sub_z.local[:]) and np.array_equal(sub_e.pooled, sub_z.pooled[:])


def _features(dtype=np.float16, n_per_class=10):
    feats, _ = synthetic_features(n_per_class=n_per_class, n_classes=4, dtype=dtype, seed=3)
    return feats


@pytest.mark.parametrize("chunk_bytes", [1, 333, 1 << 20])
def test_a_store_round_trips_exactly_with_the_in_memory_digest(tmp_path, chunk_bytes):
    feats = _features()
    st = write_store(tmp_path / "s", feats, chunk_bytes=chunk_bytes)
    assert st.on_disk and st.meta["storage"] == "disk"
    assert st.sample_ids == feats.sample_ids
    for mod in ("image", "text"):
        for part in ("local", "mask", "pooled"):
            a, b = getattr(getattr(feats, mod), part), np.asarray(getattr(getattr(st, mod), part))
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert st.content_digest() == feats.content_digest()
    assert st.in_memory().content_digest() == feats.content_digest()
    # the lazy digest (streamed, no cache) equals the in-memory one too
    fresh = open_store(tmp_path / "s")
    fresh._digest = None
    assert fresh.content_digest() == feats.content_digest()
    sub = st.subset([5, 1])
    assert np.array_equal(sub.text.local[:], feats.text.local[[5, 1]])
    assert not list(tmp_path.glob(".tmp-*"))


def test_store_key_names_sources_without_reading_rows(tmp_path):
    feats = _features()
    assert store_key(feats) == store_key(_features())
    other = _features()
    other.image.local[0, 0, 0] += 1
    assert store_key(other) != store_key(feats)
    np.save(tmp_path / "img.npy", feats.image.local)
    lazy = ModalityFeatures.from_lazy(DiskArray(tmp_path / "img.npy"), feats.image.mask, dtype="float16")
    k1 = store_key(FeatureSet(lazy, feats.text, feats.sample_ids))
    k2 = store_key(FeatureSet(lazy.subset([0, 1]), feats.text.subset([0, 1]), feats.sample_ids[:2]))
    assert k1 != k2


def test_a_flipped_byte_fails_its_row_checksum_and_is_rebuilt(tmp_path, caplog):
    feats = _features()
    path = tmp_path / "s"
    write_store(path, feats)
    f = path / "image_local.npy"
    raw = bytearray(f.read_bytes())
    raw[-7] ^= 0x40  # a byte of the last row
    f.write_bytes(bytes(raw))
    st = open_store(path)  # sizes and headers still agree
    assert np.array_equal(st.image.local[:3], feats.image.local[:3])  # other rows read fine
    n = len(feats)
    with pytest.raises(StoreDamaged, match=f"row {n - 1} of image_local.npy fails its checksum") as err:
        st.image.local[[0, n - 1]]
    assert err.value.store == path
    with pytest.raises(StoreDamaged):
        np.asarray(st.image.local)
    # the failed checksum marked the store damaged: the next run rebuilds it, never reads it again
    with pytest.raises(FileNotFoundError):
        open_store(path)
    rebuilt, built = open_or_build(path, lambda: feats)
    assert built and np.array_equal(np.asarray(rebuilt.image.local), feats.image.local)
    # a damaged store found at open (truncated) is removed and rebuilt
    f.write_bytes(bytes(raw[:-100]))
    with pytest.raises(StoreDamaged, match="image_local.npy has"):
        open_store(path)
    rebuilt, built = open_or_build(path, lambda: feats)
    assert built and np.array_equal(np.asarray(rebuilt.image.local), feats.image.local)
    again, built = open_or_build(path, lambda: pytest.fail("must not rebuild"))
    assert not built and again.content_digest() == feats.content_digest()


@pytest.mark.parametrize(
    "damage",
    ["no-record", "bad-json", "ids", "mask", "crc", "header", "format"],
)
def test_every_damaged_part_is_detected_at_open(tmp_path, damage):
    feats = _features()
    path = tmp_path / "s"
    write_store(path, feats)
    if damage == "no-record":
        (path / "store.json").unlink()
        with pytest.raises(FileNotFoundError):
            open_store(path)
        return
    target = {
        "bad-json": "store.json",
        "ids": "ids.json",
        "mask": "text_mask.npy",
        "crc": "image_pooled.crc32.npy",
        "header": "text_local.npy",
        "format": "store.json",
    }[damage]
    f = path / target
    if damage == "format":
        f.write_text(f.read_text().replace("gcrdp-feature-store/1", "gcrdp-feature-store/0"))
    elif damage == "header":
        raw = bytearray(f.read_bytes())
        raw[20] ^= 0x01
        f.write_bytes(bytes(raw))
    else:
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0x20
        f.write_bytes(bytes(raw))
    with pytest.raises(StoreDamaged, match="is damaged"):
        open_store(path)


def test_not_enough_disk_is_refused_before_any_work(tmp_path, monkeypatch):
    feats = _features()
    monkeypatch.setattr(store_mod, "_free_bytes", lambda p: 1000)
    with pytest.raises(DataError, match=r"Not enough disk space .* needs .* GiB.*--cache-dir"):
        write_store(tmp_path / "s", feats)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_no_store(tmp_path, monkeypatch):
    feats = _features()
    calls = [0]
    real = store_mod.zlib.crc32

    def failing(data):
        calls[0] += 1
        if calls[0] > 25:
            raise KeyboardInterrupt
        return real(data)

    monkeypatch.setattr(store_mod.zlib, "crc32", failing)
    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path / "s", feats, chunk_bytes=100)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(store_mod.zlib, "crc32", real)
    with pytest.raises(FileNotFoundError):
        open_store(tmp_path / "s")


def test_non_finite_rows_are_refused_and_nothing_is_left(tmp_path):
    feats = _features(dtype=np.float32)
    feats.text.local[3, 0, 1] = np.nan
    with pytest.raises(DataError, match=r"NaN or infinite .* \(rows \[3\]\)"):
        write_store(tmp_path / "s", feats)
    assert list(tmp_path.iterdir()) == []


def test_a_cast_view_reads_as_the_new_dtype(arr3):
    a, x = arr3
    y = as_dtype(x, np.float32)
    assert is_lazy(y) and y.dtype == np.float32
    assert np.array_equal(y[[3, 1]], a[[3, 1]].astype(np.float32))
