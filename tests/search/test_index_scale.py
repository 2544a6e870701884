"""Indexing at scale (issue 19): embeddings streamed through a spool in batches, trainable
indexes trained on a seeded sample, on-disk IVF lists built shard by shard, recall against
exact search computed in batches — each checked against the one-shot, in-memory result."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from gcrdp.errors import ConfigError  # noqa: E402
from gcrdp.search import FaissBackend, recall_at_k  # noqa: E402
from gcrdp.search.backends import resolve_index_type  # noqa: E402
from gcrdp.search.streaming import EmbeddingSpool, exact_top_k, own_pair_recall, recall_against_exact, sample_rows  # noqa: E402
from tests.cli.test_cli import run_cli  # noqa: E402


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n, d, seed, centers=20):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    return _unit(c[rng.integers(0, centers, n)] + 0.5 * rng.normal(size=(n, d)))


from tests.search.helpers import trained_model  # noqa: E402


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """One FAISS (OpenMP) thread: on a busy 2-core machine, two threads spinning at each
    k-means barrier make a tiny training take seconds instead of milliseconds."""
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


class LazyRows:
    """A stand-in for a lazy on-disk array: slices and integer-array rows only, never the
    whole array at once; records the largest read."""

    def __init__(self, array):
        self._a, self.shape, self.dtype, self.largest = array, array.shape, array.dtype, 0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, (slice, np.ndarray)):
            raise TypeError(f"lazy rows take a slice or an integer array, got {type(key).__name__}")
        out = np.array(self._a[key])
        self.largest = max(self.largest, len(out))
        return out

    def __array__(self, *a, **k):
        raise AssertionError("the whole lazy array was read at once")


# --------------------------------------------------------------------------- the pieces
def test_spool_reads_back_slices_and_rows(tmp_path):
    g = _clustered(1000, 8, 0)
    spool = EmbeddingSpool(tmp_path / "s.f32")
    for a in range(0, 1000, 333):
        spool.append(g[a : a + 333])
    assert spool.shape == (1000, 8) and len(spool) == 1000
    np.testing.assert_array_equal(spool[:], g)
    np.testing.assert_array_equal(spool[10:20], g[10:20])
    rows = np.array([999, 3, 500, 3, 0])
    np.testing.assert_array_equal(spool[rows], g[rows])
    np.testing.assert_array_equal(spool[7], g[7])
    spool.remove()
    assert not (tmp_path / "s.f32").exists()


def test_streamed_exact_build_equals_one_shot(tmp_path):
    g, q = _clustered(2000, 16, 1), _clustered(30, 16, 2)
    one = FaissBackend(16)
    one.add(g)
    spool = EmbeddingSpool(tmp_path / "s.f32")
    for a in range(0, 2000, 101):
        spool.append(g[a : a + 101])
    streamed = FaissBackend(16)
    assert streamed.add_from(spool, batch_rows=77) == 0  # nothing to train
    np.testing.assert_array_equal(streamed.vectors(), one.vectors())  # same vectors, same order
    for a, b in zip(one.search(q, 10), streamed.search(q, 10)):
        np.testing.assert_array_equal(a, b)
    # the exact reference in batches equals one exact search over everything
    d, i = exact_top_k(spool, q, 10, batch_rows=64)
    np.testing.assert_array_equal(i, one.search(q, 10)[1])
    np.testing.assert_allclose(d, one.search(q, 10)[0], rtol=1e-5, atol=1e-6)


def test_ivf_pq_trained_on_a_seeded_sample():
    g = _clustered(3000, 16, 3)
    q = g[:50]

    def build(seed):
        b = FaissBackend(16, "IVF16,PQ4", nprobe=4)
        trained = b.add_from(g, seed=seed, max_train=1200, batch_rows=500)
        return b, trained

    a, n_a = build(7)
    b, n_b = build(7)
    assert n_a == n_b == 1200  # a sample of 1200 of the 3000, not all of them
    assert faiss.serialize_index(a.index).tobytes() == faiss.serialize_index(b.index).tobytes()
    for x, y in zip(a.search(q, 10), b.search(q, 10)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(sample_rows(3000, 1200, 7), sample_rows(3000, 1200, 8))
    c, _ = build(8)
    assert faiss.serialize_index(c.index).tobytes() != faiss.serialize_index(a.index).tobytes()
    assert 0.3 < recall_at_k(a, g, k=10, n_queries=200) <= 1.0
    with pytest.raises(ConfigError, match="at least 64 vectors"):
        FaissBackend(16, "IVF64,Flat").add_from(g[:10])


@pytest.mark.parametrize("kind", ["IVF16,Flat", "IVF16,PQ4"])
def test_on_disk_ivf_searches_like_the_in_memory_one(tmp_path, kind):
    g = _clustered(2500, 16, 4)
    q = _clustered(40, 16, 5)
    memory = FaissBackend(16, kind, nprobe=5)
    memory.add_from(g, seed=3, max_train=1000)
    disk, trained = FaissBackend.build_on_disk(g, tmp_path, "image", kind, seed=3, max_train=1000, nprobe=5, shard_rows=700)
    assert trained == 1000 and disk.on_disk and disk.ntotal == 2500
    assert (tmp_path / "image.ivfdata").is_file() and not list(tmp_path.glob(".image-shard*"))
    for x, y in zip(memory.search(q, 10), disk.search(q, 10)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(disk.vector(1234), memory.vector(1234))
    np.testing.assert_array_equal(disk.vectors(100, 300), memory.vectors(100, 300))
    # extended on disk (an add): the same as adding to the in-memory index
    more = _clustered(600, 16, 6)
    memory.add_from(np.concatenate([g, more]), 2500)
    folder = tmp_path / "next"
    folder.mkdir()
    both = np.concatenate([g, more])
    bigger, trained = FaissBackend.build_on_disk(both, folder, "image", kind, start=2500, previous=disk, nprobe=5, shard_rows=250)
    assert trained == 0 and bigger.ntotal == 3100
    for x, y in zip(memory.search(q, 10), bigger.search(q, 10)):
        np.testing.assert_array_equal(x, y)
    # the files can move (the lists are found beside the index file)
    moved = tmp_path / "moved"
    folder.rename(moved)
    again = FaissBackend.load(moved / "image.faiss", kind, nprobe=5)
    np.testing.assert_array_equal(again.search(q, 10)[1], memory.search(q, 10)[1])
    with pytest.raises(ConfigError, match="IVF"):
        FaissBackend.build_on_disk(g, tmp_path, "text", "HNSW16")


def test_recall_and_instance_recall_in_batches_equal_the_one_shot_measures(tmp_path):
    from gcrdp.evaluation import instance_recall

    g = _clustered(1500, 12, 7)
    hnsw = FaissBackend(12, "HNSW8")
    hnsw.add(g)
    rows = sample_rows(1500, 300, 0)
    truth = np.argsort(-(g[rows] @ g.T), axis=1, kind="stable")[:, :10]
    got = hnsw.search(g[rows], 10)[1]
    expected = np.mean([len(set(t) & set(x)) / 10 for t, x in zip(truth, got)])
    assert recall_against_exact(hnsw.search, g, k=10, n_queries=300) == (pytest.approx(expected), 300)
    # own-pair recall: a gallery with exact duplicates (ties count in the query's favour)
    rng = np.random.default_rng(8)
    gallery = _clustered(400, 12, 9)
    gallery[200:260] = gallery[100:160]
    queries = _unit(gallery[:300] + 0.8 * rng.normal(size=(300, 12)))
    pair = rng.permutation(400)[:300]
    spool = EmbeddingSpool(tmp_path / "g.f32")
    for a in range(0, 400, 37):
        spool.append(gallery[a : a + 37])
    ref = instance_recall(queries, gallery, pair, metric="dot")
    mine = own_pair_recall(queries, spool, np.arange(300), pair)
    for k in (1, 5, 10):
        assert mine[f"recall@{k}"] == pytest.approx(ref[f"recall@{k}"])


def test_ivf_pq_sized_to_the_collection():
    assert resolve_index_type("IVF-PQ", 1_000_000, 256) == "IVF4096,PQ64"
    assert resolve_index_type("ivfpq", 100_000, 384) == "IVF1024,PQ96"
    assert resolve_index_type("IVF-Flat", 10_000, 64) == "IVF256,Flat"
    assert resolve_index_type("IVF-PQ", 100, 12) == "IVF2,PQ3"  # at least 39 vectors a list
    assert resolve_index_type("HNSW32", 100, 12) == "HNSW32"


# --------------------------------------------------------------------------- gcrdp index
@pytest.fixture(scope="module")
def features_model(tmp_path_factory):
    """A model trained (3 epochs) on a pre-extracted features file of 600 samples, and the file."""
    return trained_model(tmp_path_factory.mktemp("scale"), 600, 4, 3)


def _lazy(features):
    """The feature set with every array behind LazyRows."""
    return SimpleNamespace(
        **{
            m: SimpleNamespace(**{k: LazyRows(getattr(getattr(features, m), k)) for k in ("local", "mask", "pooled")})
            for m in ("image", "text")
        }
    )


def test_streamed_index_build_equals_the_one_shot_build(features_model, tmp_path):
    from gcrdp.search import Retriever, items_from_features

    ckpt, path = features_model
    items, features = items_from_features(path)
    one = Retriever.build(tmp_path / "one", checkpoint=ckpt, items=items, features=features, progress=False, batch_size=10_000)
    lazy = _lazy(features)
    streamed = Retriever.build(tmp_path / "streamed", checkpoint=ckpt, items=items, features=lazy, progress=False, batch_size=64)
    assert max(a.largest for m in ("image", "text") for a in vars(getattr(lazy, m)).values()) == 64  # read 64 rows at a time
    assert one._meta == streamed._meta and one.info["counts"] == streamed.info["counts"] == {"image": 600, "text": 600}
    for m in ("image", "text"):
        np.testing.assert_allclose(streamed.backends[m].vectors(), one.backends[m].vectors(), atol=1e-6)
    first = one._meta[("image", 0)][2]
    assert [h.id for h in streamed.search(like=first, k=10)] == [h.id for h in one.search(like=first, k=10)]
    for d in ("i2t", "t2i"):
        assert streamed.info["instance_recall"][d] == pytest.approx(one.info["instance_recall"][d])


def test_on_disk_index_end_to_end_with_add_and_an_interrupted_build(features_model, tmp_path, capsys, monkeypatch):
    from gcrdp.search import Retriever, items_from_features
    from gcrdp.search import retriever as rmod

    ckpt, path = features_model
    items, features = items_from_features(path)
    half = [it for it in items if it.row is not None and it.row < 400]
    common = dict(checkpoint=ckpt, features=features, progress=False, index_type="IVF8,Flat", nprobe=3, seed=5)
    memory = Retriever.build(tmp_path / "mem", items=half, **common)
    index = tmp_path / "disk"
    code, out, err = run_cli(
        capsys, "index", index, "--checkpoint", ckpt, "--features", path, "--index-type", "IVF8,Flat", "--on-disk", "--nprobe", "3", "-q"
    )
    assert code == 0, err
    assert "IVF8,Flat (lists on disk)" in out and "recall@10 against exact search" in out
    disk = Retriever.build(index, items=half, on_disk=True, **common)  # a new version, the 400 first only
    assert (index / "v000002" / "image.ivfdata").is_file() and not (index / "v000001").exists()
    info = json.loads((index / "v000002" / "index.json").read_text())
    assert info["on_disk"] and info["nprobe"] == {"image": 3, "text": 3} and info["training"]["seed"] == 5
    assert disk.info["recall_at_10_vs_exact"] == memory.info["recall_at_10_vs_exact"]
    ids = [memory._meta[("image", r)][2] for r in (0, 57, 399)]
    for like in ids:
        assert [h.id for h in Retriever.load(index).search(like=like, k=10)] == [h.id for h in memory.search(like=like, k=10)]
    code, out, err = run_cli(capsys, "search", index, "--like", ids[0], "--k", "3", "--json", "--nprobe", "8")
    assert code == 0 and [json.loads(x)["rank"] for x in out.strip().splitlines()] == [1, 2, 3]  # nothing else on stdout
    assert Retriever.load(index, nprobe=8).backends["text"].nprobe == 8 and Retriever.load(index).backends["text"].nprobe == 3
    # an interrupted add (after the lists were merged into the new version) keeps the old version
    before = [h.id for h in Retriever.load(index).search(like=ids[1], k=10)]

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(rmod, "_write_metadata", crash)
    with pytest.raises(KeyboardInterrupt):
        Retriever.build(index, items=items, features=features, add=True, progress=False)
    monkeypatch.undo()
    assert (index / "CURRENT").read_text().strip() == "v000002" and not list(index.glob(".tmp-*"))
    assert len(Retriever.load(index)) == 800 and [h.id for h in Retriever.load(index).search(like=ids[1], k=10)] == before
    # the add itself: the rest of the collection, merged with the lists already on disk
    grown = Retriever.build(index, items=items, features=features, add=True, progress=False)
    Retriever.build(tmp_path / "mem", items=items, features=features, add=True, progress=False)
    memory = Retriever.load(tmp_path / "mem")
    assert grown.info["counts"] == {"image": 600, "text": 600} and grown.info["on_disk"]
    for like in ids:
        assert [h.id for h in Retriever.load(index).search(like=like, k=10)] == [h.id for h in memory.search(like=like, k=10)]


def test_milvus_inserts_in_bounded_batches(tmp_path, monkeypatch):
    from gcrdp.search import backends as bmod

    class FakeClient:
        def __init__(self):
            self.inserts, self.flushes = [], 0

        def insert(self, collection, rows):
            self.inserts.append([r["row"] for r in rows])

        def flush(self, collection):
            self.flushes += 1

    client = FakeClient()
    monkeypatch.setattr(bmod, "_client", lambda uri: client)
    m = bmod.MilvusBackend.__new__(bmod.MilvusBackend)
    m.dim, m.index_type, m.uri, m.collection, m._n = 4096, "Flat", "x.db", "c", 0
    assert m.insert_rows == 1024  # 16 MiB of float32 a request at 4096 dims
    spool = EmbeddingSpool(tmp_path / "s.f32")
    spool.append(np.zeros((2500, 4096), np.float32))
    m.add_from(spool)
    assert [len(x) for x in client.inserts] == [1024, 1024, 452] and client.flushes == 1
    assert [r for x in client.inserts for r in x] == list(range(2500)) and m.ntotal == 2500
    assert bmod._milvus_index("IVF256,PQ16") == ("IVF_PQ", {"nlist": 256, "m": 16, "nbits": 8})
    assert bmod._milvus_index(resolve_index_type("IVF-PQ", 10_000, 64)) == ("IVF_PQ", {"nlist": 256, "m": 16, "nbits": 8})


def test_index_type_ivf_pq_is_sized_to_the_collection(features_model, tmp_path, capsys):
    ckpt, path = features_model
    code, out, err = run_cli(capsys, "index", tmp_path / "pq", "--checkpoint", ckpt, "--features", path, "--index-type", "IVF-PQ", "-q")
    assert code == 0, err
    info = json.loads(next((tmp_path / "pq").glob("v*/index.json")).read_text())
    dim = info["dim"]
    assert info["index_type"] == "IVF-PQ" and info["index_types"] == {m: resolve_index_type("IVF-PQ", 600, dim) for m in ("image", "text")}
    assert info["training"] == {"seed": 0, "vectors": {"image": 600, "text": 600}}
    assert f"IVF15,PQ{dim // 4}" in out and "trained on a random sample (seed 0): 600 image vectors" in out
    assert 0 < info["recall_at_10_vs_exact"]["image"] <= 1 and info["recall_queries"] == 600
