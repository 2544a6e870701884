"""An index on a cluster (issue 22, item 3): Milvus inserts in batches of --batch-rows, a load
killed mid-insert resumes from the rows already in the collection (--resume), shards and
partitions reach pymilvus; FAISS indexes built in shards (--shard I/N, --trained) merge into the
index one build makes (gcrdp index-merge); the clip-retrieval export reads as embedding-reader
reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from gcrdp.cli.main import main  # noqa: E402
from gcrdp.errors import ConfigError, DataError  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402
from tests.search.helpers import trained_model  # noqa: E402

N = 150  # pairs in the collection


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model trained (2 epochs) on a small pre-extracted features file, and the file."""
    return trained_model(tmp_path_factory.mktemp("cluster"), N, 11, 2)


def _index(index: Path, model, *extra: str) -> int:
    ckpt, path = model
    return main(["index", str(index), "--checkpoint", str(ckpt), "--features", str(path), "-q", *extra])


def _all_results(index: Path, k: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every indexed vector of each modality as a query against the other modality: (scores, ids)."""
    from gcrdp.search import Retriever

    r = Retriever.load(index)
    out = {}
    for m, other in (("image", "text"), ("text", "image")):
        q = r.backends[m].vectors() if r.backends[m].index_type == "Flat" else _flat_vectors(r, m)
        scores, rows = r.backends[other].search(q, k)
        ids = np.vectorize(lambda row, o=other: r.describe(o, int(row))["id"] if row >= 0 else "")(rows)
        out[m] = (scores, ids)
    return out


def _flat_vectors(r, m):
    """The queries of an IVF index: its stored vectors by row (IVF-Flat gives them back exactly)."""
    return np.concatenate([r.backends[m].vector(i) for i in range(r.backends[m].ntotal)])


# --------------------------------------------------------------------------- FAISS shards
def test_flat_shards_merge_into_the_index_of_one_build(model, tmp_path, capsys):
    assert _index(tmp_path / "one", model) == 0
    for i in range(3):
        assert _index(tmp_path / f"s{i}", model, "--shard", f"{i}/3") == 0
        assert f"shard {i}/3: image rows {i * N // 3}-{(i + 1) * N // 3} of {N}" in capsys.readouterr().out
    # any order on the command line: the rows go in shard order
    assert main(["index-merge", str(tmp_path / "merged"), *(str(tmp_path / f"s{i}") for i in (2, 0, 1))]) == 0
    assert f"{N} images, {N} texts merged from 3 shards, Flat" in capsys.readouterr().out
    from gcrdp.search import Retriever

    one, merged = Retriever.load(tmp_path / "one"), Retriever.load(tmp_path / "merged")
    for m in ("image", "text"):
        np.testing.assert_array_equal(merged.backends[m].vectors(), one.backends[m].vectors())
        assert [merged.describe(m, i)["id"] for i in range(N)] == [one.describe(m, i)["id"] for i in range(N)]
    ref, got = _all_results(tmp_path / "one"), _all_results(tmp_path / "merged")
    for m in ref:
        np.testing.assert_array_equal(got[m][1], ref[m][1])
        np.testing.assert_allclose(got[m][0], ref[m][0], rtol=1e-6, atol=1e-6)
    hits = merged.search(like=one.describe("image", N - 1)["id"], k=3)
    assert [h.id for h in hits] == [h.id for h in one.search(like=one.describe("image", N - 1)["id"], k=3)]


@pytest.mark.parametrize("on_disk", [False, True])
def test_ivf_shards_sharing_shard_0s_training_merge_on_disk_like_one_build(model, tmp_path, capsys, on_disk):
    disk = ["--on-disk"] if on_disk else []
    assert _index(tmp_path / "s0", model, "--shard", "0/3", "--index-type", "IVF4,Flat", "--nprobe", "2", *disk) == 0
    for i in (1, 2):
        assert _index(tmp_path / f"s{i}", model, "--shard", f"{i}/3", "--trained", str(tmp_path / "s0"), "--nprobe", "2", *disk) == 0
    # the reference: one build of the whole collection filling the same trained quantizer
    assert _index(tmp_path / "one", model, "--trained", str(tmp_path / "s0"), "--nprobe", "2") == 0
    assert main(["index-merge", str(tmp_path / "merged"), *(str(tmp_path / f"s{i}") for i in range(3))]) == 0
    assert "IVF4,Flat (lists on disk)" in capsys.readouterr().out
    version = tmp_path / "merged" / "v000001"
    assert (version / "image.ivfdata").is_file() and (version / "text.trained.faiss").is_file()
    info = json.loads((version / "index.json").read_text())
    assert info["on_disk"] and info["counts"] == {"image": N, "text": N} and info["nprobe"] == {"image": 2, "text": 2}
    ref, got = _all_results(tmp_path / "one"), _all_results(tmp_path / "merged")
    for m in ref:
        np.testing.assert_array_equal(got[m][1], ref[m][1])
        np.testing.assert_allclose(got[m][0], ref[m][0], rtol=1e-6, atol=1e-6)
    if on_disk:  # the merged on-disk index takes an --add like any on-disk index
        more = tmp_path / "more.npz"
        with np.load(model[1]) as z:
            kept = {k: z[k] for k in z.files if k not in ("image", "text")}
            np.savez(more, **kept, image=z["image"] + 1e-3, text=z["text"] + 1e-3, ids=np.array([f"b{i}" for i in range(N)]))
        assert main(["index", str(tmp_path / "merged"), "--features", str(more), "--add", "-q"]) == 0
        from gcrdp.search import Retriever

        r = Retriever.load(tmp_path / "merged")
        assert r.backends["image"].ntotal == 2 * N and r.backends["image"].on_disk
        assert r.describe("image", N)["id"] == "b0" and r.search(like="b3", k=1)


def test_shards_trained_apart_or_incomplete_are_refused(model, tmp_path, capsys):
    from gcrdp.search import merge_indexes

    for i in range(2):  # each shard trains its own quantizer: not mergeable
        assert _index(tmp_path / f"s{i}", model, "--shard", f"{i}/2", "--index-type", "IVF4,Flat") == 0
    with pytest.raises(ConfigError, match=r"trained apart .* --trained"):
        merge_indexes(tmp_path / "m", [tmp_path / "s0", tmp_path / "s1"])
    assert not (tmp_path / "m" / "CURRENT").exists()
    assert _index(tmp_path / "f0", model, "--shard", "0/3") == 0
    assert _index(tmp_path / "f2", model, "--shard", "2/3") == 0
    assert main(["index-merge", str(tmp_path / "m"), str(tmp_path / "f0"), str(tmp_path / "f2")]) == 2
    assert "missing 1/3" in capsys.readouterr().err
    assert main(["index-merge", str(tmp_path / "m"), str(tmp_path / "f0"), str(tmp_path / "f0"), str(tmp_path / "f2")]) == 2
    assert "given twice 0/3" in capsys.readouterr().err
    assert main(["index-merge", str(tmp_path / "m"), str(tmp_path / "f0"), str(tmp_path / "s0")]) == 2
    assert "another" in capsys.readouterr().err
    assert _index(tmp_path / "whole", model) == 0
    assert main(["index-merge", str(tmp_path / "m"), str(tmp_path / "whole")]) == 2
    assert "is not a shard" in capsys.readouterr().err
    for bad in ("3/3", "1", "a/b", "-1/2"):
        assert _index(tmp_path / "x", model, f"--shard={bad}") == 2
        assert "--shard must be I/N" in capsys.readouterr().err
    assert _index(tmp_path / "x", model, "--trained", str(tmp_path / "s0"), "--index-type", "IVF8,Flat") == 2
    assert "differs from the index type of --trained" in capsys.readouterr().err


# --------------------------------------------------------------------------- Milvus
def _milvus():
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")


_KILLED_BUILD = """
import os, signal, sys
from gcrdp.search import backends
calls = [0]
real = backends.MilvusBackend._insert_request
def insert(self, rows, x, *rest):
    if calls[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-load: some inserts done, the rest not
    calls[0] += 1
    real(self, rows, x, *rest)
backends.MilvusBackend._insert_request = insert
from gcrdp.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # killed and resumed: about 12 s on 2 loaded cores
def test_a_milvus_load_killed_mid_insert_resumes_from_the_rows_already_in(model, tmp_path, capsys, monkeypatch):
    """SIGKILLed after 7 of its inserts of 20 rows (image rows 0-139 in, none of the texts), the
    build resumes: only the rows missing are sent, and the index searches as a build never killed."""
    _milvus()
    from gcrdp.search import backends

    ckpt, path = model
    db = str(tmp_path / "m.db")
    argv = ["index", str(tmp_path / "idx"), "--checkpoint", str(ckpt), "--features", str(path), "-q"]
    argv += ["--backend", "milvus", "--uri", db, "--batch-rows", "20", "--partition", "load_1"]
    env = dict(os.environ, KILL_AT="7", PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _KILLED_BUILD, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == -9, out.stderr
    record = json.loads((tmp_path / "idx" / ".milvus-load.json").read_text())
    assert not (tmp_path / "idx" / "CURRENT").exists()
    sent: list[int] = []
    real = backends.MilvusBackend._insert_request

    def counting(self, rows, x, partition, upsert=False):
        assert len(rows) <= 20 and partition == "load_1" and upsert  # --batch-rows: rows a single request sends
        sent.extend(int(r) for r in rows)
        real(self, rows, x, partition, upsert)

    monkeypatch.setattr(backends.MilvusBackend, "_insert_request", counting)
    assert main([*argv, "--resume"]) == 0
    assert f"resumed: {7 * 20} image rows were already in Milvus" in capsys.readouterr().out
    assert len(sent) == 2 * N - 7 * 20  # the rows missing, once each
    assert not (tmp_path / "idx" / ".milvus-load.json").exists()
    from gcrdp.search import Retriever

    r = Retriever.load(tmp_path / "idx")
    assert r.backends["image"].collection == record["made"]["image"]  # the collection of the killed build
    info = r.info["milvus"]
    assert info["resumed_rows"] == {"image": 140} and info["partition"] == "load_1" and info["batch_rows"] == 20
    c = backends._client(r.backends["image"].uri)
    assert c.list_partitions(record["made"]["image"]) == ["_default", "load_1"]
    # the reference: the same vectors in FAISS, exact
    assert _index(tmp_path / "ref", model) == 0
    ref = Retriever.load(tmp_path / "ref")
    for m in ("image", "text"):
        np.testing.assert_allclose(r.backends[m].vectors(), ref.backends[m].vectors(), atol=1e-6)
    q = ref.backends["text"].vectors()
    ms, mr = r.backends["image"].search(q, 5)
    fs, fr = ref.backends["image"].search(q, 5)
    np.testing.assert_allclose(ms, fs, atol=1e-5)
    assert (mr == fr).mean() > 0.99  # ties may swap


def test_resume_refuses_another_load_and_a_build_without_it_starts_over(model, tmp_path, capsys, monkeypatch, caplog):
    _milvus()
    from gcrdp.search import backends

    ckpt, path = model
    db = str(tmp_path / "m.db")
    store = ["--backend", "milvus", "--uri", db, "--batch-rows", "25"]
    calls = [0]
    real = backends.MilvusBackend._insert_request

    def failing(self, rows, x, *rest):  # a Milvus error after 3 inserts (a lost connection)
        calls[0] += 1
        if calls[0] > 3:
            raise DataError("simulated: connection to Milvus lost")
        real(self, rows, x, *rest)

    monkeypatch.setattr(backends.MilvusBackend, "_insert_request", failing)
    assert _index(tmp_path / "idx", model, *store) == 2
    assert "connection to Milvus lost" in capsys.readouterr().err
    assert "--resume to continue" in caplog.text
    caplog.clear()
    record = json.loads((tmp_path / "idx" / ".milvus-load.json").read_text())
    monkeypatch.setattr(backends.MilvusBackend, "_insert_request", real)
    c = backends._client(str(Path(db).resolve()))
    assert c.has_collection(record["made"]["image"])  # kept for --resume
    # another model: refused, naming what differs
    other = tmp_path / "other.npz"
    with np.load(path) as z:
        np.savez(other, **{k: z[k] for k in z.files if k != "image"}, image=z["image"][::-1].copy())
    assert main(["index", str(tmp_path / "idx"), "--checkpoint", str(ckpt), "--features", str(other), "-q", *store, "--resume"]) == 2
    assert "differs from this build in the items" in capsys.readouterr().err
    assert "--resume to continue" not in caplog.text  # a refusal is not a stopped load
    # without --resume: the leftover collection is dropped, the build starts over
    assert _index(tmp_path / "idx", model, *store) == 0
    assert not c.has_collection(record["made"]["image"])
    assert not (tmp_path / "idx" / ".milvus-load.json").exists()
    # --resume with nothing to resume builds as usual
    assert _index(tmp_path / "idx", model, *store, "--resume") == 0
    capsys.readouterr()
    # options that need Milvus, or that Milvus would refuse
    for extra, msg in (
        (["--resume"], "--resume applies to the Milvus backend"),
        (["--shards", "2"], "--shards applies to the Milvus backend"),
        (["--backend", "milvus", "--uri", db, "--partition", "9 bad"], "--partition must be a Milvus partition name"),
        (["--backend", "milvus", "--uri", db, "--shards", "0"], "--shards must be a positive integer"),
        (["--batch-rows", "0"], "batch_rows must be a positive integer"),
        (["--backend", "milvus", "--uri", db, "--shard", "0/2"], "--shard and --trained build FAISS indexes"),
        (["--backend", "milvus"], "The Milvus backend needs uri="),
    ):
        assert _index(tmp_path / "bad", model, *extra) == 2, extra
        assert msg in capsys.readouterr().err
    assert main(["index", str(tmp_path / "idx"), "--features", str(path), "--add", "--shards", "2", "-q"]) == 2
    assert "an --add inserts into the index's collections" in capsys.readouterr().err


def test_an_interrupted_milvus_add_resumes(model, tmp_path, capsys, monkeypatch, caplog):
    _milvus()
    from gcrdp.search import Retriever, backends

    ckpt, path = model
    rng = np.random.default_rng(3)
    more = tmp_path / "more.npz"
    with np.load(path) as z:
        np.savez(more, **{k: z[k] for k in z.files if k not in ("image", "text")}, ids=np.array([f"b{i}" for i in range(N)]),
                 image=(z["image"] + 0.1 * rng.normal(size=z["image"].shape)).astype(np.float32),
                 text=(z["text"] + 0.1 * rng.normal(size=z["text"].shape)).astype(np.float32))  # fmt: skip
    store = ["--backend", "milvus", "--uri", str(tmp_path / "m.db"), "--batch-rows", "30"]
    assert _index(tmp_path / "idx", model, *store) == 0
    real, calls = backends.MilvusBackend._insert_request, [0]

    def failing(self, rows, x, *rest):
        calls[0] += 1
        if calls[0] > 2:
            raise KeyboardInterrupt
        real(self, rows, x, *rest)

    monkeypatch.setattr(backends.MilvusBackend, "_insert_request", failing)
    add = ["index", str(tmp_path / "idx"), "--features", str(more), "--add", "-q", "--partition", "load_2", *store]
    assert main(add) == 130  # ^C while inserting
    assert "--resume to continue" in caplog.text
    monkeypatch.setattr(backends.MilvusBackend, "_insert_request", real)
    assert Retriever.load(tmp_path / "idx").backends["image"].ntotal == N  # the published count
    assert main([*add, "--resume"]) == 0
    assert "resumed: 60 image rows were already in Milvus" in capsys.readouterr().out
    r = Retriever.load(tmp_path / "idx")
    assert r.backends["image"].ntotal == 2 * N and r.backends["image"].loads == [
        {"partition": "_default", "start": 0, "stop": N},
        {"partition": "load_2", "start": N, "stop": 2 * N},
    ]
    assert r.describe("image", N)["id"] == "b0"
    np.testing.assert_allclose(r.backends["image"].vector(N + 5), r.backends["image"].vectors(N + 5, N + 6), atol=0)


class _FakeClient:
    """A stand-in for pymilvus's MilvusClient that records what it is asked."""

    def __init__(self) -> None:
        self.created: dict[str, dict] = {}
        self.inserts: list[tuple[str, int, str]] = []
        self.partitions: dict[str, list[str]] = {}
        self.queries: list[str | None] = []

    def has_collection(self, name):
        return name in self.created

    def create_schema(self, **kw):
        from pymilvus import MilvusClient

        return MilvusClient.create_schema(**kw)

    def prepare_index_params(self):
        from pymilvus import MilvusClient

        return MilvusClient.prepare_index_params()

    def create_collection(self, name, **kw):
        self.created[name] = kw
        self.partitions[name] = ["_default"]

    def describe_collection(self, name):
        return {"num_shards": self.created[name].get("num_shards", 1)}

    def has_partition(self, name, partition):
        return partition in self.partitions[name]

    def create_partition(self, name, partition):
        self.partitions[name].append(partition)

    def insert(self, name, data, partition_name=""):
        self.inserts.append((name, len(data), partition_name))

    def upsert(self, name, data, partition_name=""):
        self.inserts.append((name, -len(data), partition_name))  # negative: an upsert

    def flush(self, name):
        pass

    def load_collection(self, name):
        pass

    def query(self, name, filter, output_fields, consistency_level=None):
        self.queries.append(consistency_level)
        lo, hi = (int(t) for t in filter.replace("row >= ", "").replace(" and row < ", " ").split())
        return [{"row": r, "vector": [1.0] * 8} for r in range(max(lo, 0), min(hi, 45))]  # rows 0-44 are in


def test_shards_partition_and_batch_rows_reach_pymilvus(monkeypatch):
    """Milvus Lite accepts num_shards but keeps one shard (describe_collection says 1), so that the
    option reaches a cluster is checked on a stand-in client."""
    pytest.importorskip("pymilvus")
    from gcrdp.search import backends

    fake = _FakeClient()
    monkeypatch.setitem(backends._CLIENTS, "http://cluster:19530", fake)
    b = backends.MilvusBackend(8, "IVF16,Flat", uri="http://cluster:19530", collection="c", shards=4, partition="load_7", batch_rows=30)
    assert fake.created["c"]["num_shards"] == 4 and b.num_shards == 4
    b.add_from(np.ones((100, 8), np.float32))
    assert fake.inserts == [("c", 30, "load_7"), ("c", 30, "load_7"), ("c", 30, "load_7"), ("c", 10, "load_7")]
    assert fake.partitions["c"] == ["_default", "load_7"] and b.loads == [{"partition": "load_7", "start": 0, "stop": 100}]
    backends.MilvusBackend(8, "Flat", uri="http://cluster:19530", collection="d")
    assert "num_shards" not in fake.created["d"]  # Milvus's default unless asked
    # a resume asks which rows are in with a strongly consistent query, then upserts the others
    fake.inserts.clear()
    b.add_from(np.ones((100, 8), np.float32), resume=True)
    assert fake.queries and set(fake.queries) == {"Strong"} and b.resumed_rows == 45
    assert fake.inserts == [("c", -30, "load_7"), ("c", -25, "load_7")]
    with pytest.raises(ConfigError, match="other vectors than this build computes"):
        b.add_from(np.zeros((100, 8), np.float32), resume=True)


def test_milvus_lite_takes_num_shards_but_keeps_one(tmp_path):
    _milvus()
    from gcrdp.search import backends

    b = backends.MilvusBackend(4, "Flat", uri=str(tmp_path / "m.db"), shards=4)
    assert b.num_shards == 1  # Milvus Lite is one process: no shards (evidence for docs/search.md)
    b.drop()


def test_milvus_diskann_for_a_collection_larger_than_memory(model, tmp_path, capsys):
    """--index-type DiskANN is Milvus's on-disk graph index; Milvus Lite builds the collection
    with it (describe_index says DISKANN) and the build reports its recall@10 against exact."""
    _milvus()
    from gcrdp.search import Retriever, backends

    assert _index(tmp_path / "idx", model, "--backend", "milvus", "--uri", str(tmp_path / "m.db"), "--index-type", "DiskANN") == 0
    assert "recall@10 against exact search" in capsys.readouterr().out
    r = Retriever.load(tmp_path / "idx")
    assert set(r.info["index_types"].values()) == {"DiskANN"} and min(r.info["recall_at_10_vs_exact"].values()) >= 0.9
    b = r.backends["image"]
    assert backends._client(b.uri).describe_index(b.collection, "vector")["index_type"] == "DISKANN"
    assert _index(tmp_path / "f", model, "--index-type", "DiskANN") == 2  # FAISS has no DiskANN
    assert "FAISS cannot build index type 'DiskANN'" in capsys.readouterr().err


# --------------------------------------------------------------------------- clip-retrieval
def test_export_reads_as_embedding_reader_reads_numpy_parts(tmp_path):
    """embedding-reader (what autofaiss and clip-retrieval index read with) takes the .npy files of
    a folder in sorted-name order, finds each one's shape and dtype in the header's first line,
    reads the rows right after that line, skips files without rows, and pairs the metadata files
    with the embedding files by sorted name. The export's parts hold to each of those."""
    import re

    from gcrdp.data.formats.clip_retrieval import export_clip_retrieval

    rng = np.random.default_rng(0)
    img = rng.normal(size=(25, 8)).astype(np.float16)
    txt = rng.normal(size=(25, 6)).astype(np.float32)
    meta = {"id": [f"s{i}" for i in range(25)], "caption": [f"t{i}" for i in range(25)]}
    out = export_clip_retrieval(tmp_path / "out", img, txt, meta, part_size=2)  # 13 parts: names padded
    for folder, ref in (("img_emb", img), ("text_emb", txt)):
        names = sorted(p.name for p in (out / folder).glob("*.npy"))
        assert names == [f"{folder}_{i:02d}.npy" for i in range(13)]
        rows = []
        for name in names:
            raw = (out / folder / name).read_bytes()
            first = raw[:300].split(b"\n")[0]
            shape = re.search(rb"'shape': \((\d+), (\d+)\)", first)
            dtype = re.search(rb"'descr': '([<f0-9]+)'", first)
            assert shape and dtype and int(shape[1]) > 0
            n, d = int(shape[1]), int(shape[2])
            rows.append(np.frombuffer(raw[len(first) + 1 :], dtype=dtype[1].decode()).reshape(n, d))
        np.testing.assert_array_equal(np.concatenate(rows), ref)
    import pyarrow.parquet as pq

    metas = sorted((out / "metadata").glob("*.parquet"))
    assert [p.name for p in metas] == [f"metadata_{i:02d}.parquet" for i in range(13)]
    assert sum(pq.read_table(p).num_rows for p in metas) == 25
    assert pq.read_table(metas[-1]).column("id").to_pylist() == ["s24"]


def test_export_reads_with_embedding_reader_itself(tmp_path):
    er = pytest.importorskip("embedding_reader")
    from gcrdp.data.formats.clip_retrieval import export_clip_retrieval

    rng = np.random.default_rng(1)
    img = rng.normal(size=(25, 8)).astype(np.float16)
    out = export_clip_retrieval(tmp_path / "out", img, img, {"id": [f"s{i}" for i in range(25)]}, part_size=2)
    reader = er.EmbeddingReader(str(out / "img_emb"), file_format="parquet_npy", metadata_folder=str(out / "metadata"), meta_columns=["id"])
    got, ids = [], []
    for emb, meta in reader(batch_size=7, show_progress=False):
        got.append(emb)
        ids += list(meta["id"])
    np.testing.assert_array_equal(np.concatenate(got), img.astype(np.float32))
    assert ids == [f"s{i}" for i in range(25)]
