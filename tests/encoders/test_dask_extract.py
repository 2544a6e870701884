"""Extraction on a Dask cluster (issue 22, item 1): the same arrays as a local extraction, on a
LocalCluster of 2 worker processes; a duplicated or retried task is harmless; a worker killed
mid-shard has its task retried and the run ends with the local arrays."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gcrdp.encoders import cache as cache_mod
from gcrdp.encoders import extract_features
from gcrdp.encoders.cache import FeatureCache, image_item_key, text_item_key
from gcrdp.encoders.dask_extract import EncoderSpec, dask_available, encode_shard, extract_features_dask, plan_shards
from gcrdp.errors import MissingDependencyError
from tests.encoders.fakes import BatchImageEncoder, BatchTextEncoder
from tests.encoders.test_extract_scale import _dataset

needs_dask = pytest.mark.skipif(not dask_available(), reason="dask and distributed are not installed (pip install 'gcrdp[dask]')")
HERE = __name__
IMAGE = EncoderSpec("image", f"{HERE}:image_encoder")
TEXT = EncoderSpec("text", f"{HERE}:text_encoder")


def image_encoder() -> BatchImageEncoder:
    return BatchImageEncoder()


def text_encoder() -> BatchTextEncoder:
    return BatchTextEncoder()


class StallOnceImageEncoder(BatchImageEncoder):
    """The first encode() of all processes (an exclusive claim file) writes its pid and waits to
    be killed; every other call encodes as :class:`BatchImageEncoder` (same fingerprint)."""

    def __init__(self, claim: str) -> None:
        super().__init__()
        self.claim = claim

    def encode(self, items, *, batch_size=32, progress=True):
        try:
            fd = os.open(self.claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().encode(items, batch_size=batch_size, progress=progress)
        os.close(fd)
        Path(self.claim + ".pid").write_text(str(os.getpid()))
        time.sleep(120)
        raise SystemExit("the stalled worker was not killed")


@pytest.fixture(scope="module")
def client():
    if not dask_available():
        pytest.skip("dask and distributed are not installed")
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(cache_mod, "SHARD_ITEMS", 4)  # batch 2 (texts 4): several shards of whole batches


def _local(ds, root: Path):
    return extract_features(ds, image_encoder(), text_encoder(), cache_dir=root, batch_size=2, progress=False, storage="memory")


def _assert_same(a, b) -> None:
    assert a.sample_ids == b.sample_ids
    for m in ("image", "text"):
        for part in ("local", "mask", "pooled"):
            x, y = getattr(getattr(a, m), part), getattr(getattr(b, m), part)
            assert x.dtype == y.dtype and np.array_equal(x, y), (m, part)


def test_without_dask_a_clear_error(monkeypatch, tmp_path):
    from gcrdp.encoders import dask_extract

    monkeypatch.setattr(dask_extract, "dask_available", lambda: False)
    with pytest.raises(MissingDependencyError, match=r"gcrdp\[dask\]"):
        extract_features_dask(_dataset(tmp_path, 3), IMAGE, TEXT, cache_dir=tmp_path / "c", workers=1)


@needs_dask
def test_same_arrays_as_local_extraction(client, small_shards, tmp_path):
    ds = _dataset(tmp_path, 23)
    local = _local(ds, tmp_path / "local")
    got = extract_features_dask(ds, IMAGE, TEXT, cache_dir=tmp_path / "dask", client=client, batch_size=2, progress=False, storage="memory")
    _assert_same(got, local)
    assert got.meta["key"] == local.meta["key"]
    assert got.meta["dask_shards"]["image"] > 2 and got.meta["dask_shards"]["text"] > 2
    assert got.meta["items_extracted"] == local.meta["items_extracted"]
    # the chunks are the meeting point: a second call finds everything, submits nothing
    again = extract_features_dask(ds, IMAGE, TEXT, cache_dir=tmp_path / "dask", client=client, batch_size=2, progress=False)
    assert again.meta["cache_hit"] and again.meta["dask_shards"] == {"image": 0, "text": 0}
    _assert_same(again, local)


@needs_dask
def test_duplicated_and_retried_tasks_are_harmless(client, small_shards, tmp_path):
    ds = _dataset(tmp_path, 17)
    root = tmp_path / "dask"
    cache = FeatureCache(root)
    images, texts = [s.image for s in ds.samples], [s.text for s in ds.samples]
    shards = plan_shards(cache, image_encoder(), images, [image_item_key(p) for p in images], "float16", 2)
    shards += plan_shards(cache, text_encoder(), texts, [text_item_key(t) for t in texts], "float16", 4)
    spec = {"image": IMAGE, "text": TEXT}
    args = [(spec[s.modality], str(root), s.inputs, s.items, s.keys, s.keep, "float16", s.batch_size) for s in shards]
    # every task twice at once: copies may race and both publish; identical rows either way
    futures = [client.submit(encode_shard, *a, pure=False) for a in args for _ in range(2)]
    client.gather(futures)
    space = cache.space_dir(shards[0].inputs)
    n_chunks = len(cache.chunks(space))
    # a retry after the chunk is published writes nothing
    assert client.gather(client.submit(encode_shard, *args[0], pure=False)) == 0
    assert len(cache.chunks(space)) == n_chunks
    got = extract_features(ds, image_encoder(), text_encoder(), cache_dir=root, batch_size=2, progress=False, storage="memory")
    assert got.meta["items_extracted"] == {"image": 0, "text": 0}
    _assert_same(got, _local(ds, tmp_path / "local"))


@needs_dask
def test_a_worker_killed_mid_shard(client, small_shards, tmp_path):
    ds = _dataset(tmp_path, 19)
    claim = tmp_path / "claim"
    spec = EncoderSpec("image", f"{HERE}:StallOnceImageEncoder", {"claim": str(claim)})
    out: dict = {}

    def run() -> None:
        try:
            out["feats"] = extract_features_dask(
                ds, spec, TEXT, cache_dir=tmp_path / "dask", client=client, batch_size=2, progress=False, storage="memory"
            )
        except BaseException as exc:  # reported below
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    pid_file = Path(str(claim) + ".pid")
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "no task stalled"
        assert thread.is_alive(), out
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)  # the worker dies mid-shard; its nanny starts a new one
    thread.join(90)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    _assert_same(out["feats"], _local(ds, tmp_path / "local"))
    # the client still works after the loss
    assert client.submit(sum, [1, 2], pure=False).result() == 3


@needs_dask
def test_a_scheduler_address(client, small_shards, tmp_path):
    ds = _dataset(tmp_path, 9)
    address = client.scheduler.address
    got = extract_features_dask(ds, IMAGE, TEXT, cache_dir=tmp_path / "dask", client=address, batch_size=2, progress=False)
    _assert_same(got, _local(ds, tmp_path / "local"))


@needs_dask
def test_no_scheduler_there_is_a_clear_error(monkeypatch, tmp_path):
    import socket

    from gcrdp.encoders import dask_extract
    from gcrdp.errors import ConfigError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(dask_extract, "CONNECT_TIMEOUT_S", 2.0)
    with pytest.raises(ConfigError, match="Could not reach the Dask scheduler"):
        extract_features_dask(
            _dataset(tmp_path, 3), IMAGE, TEXT, cache_dir=tmp_path / "c", client=f"tcp://127.0.0.1:{port}", progress=False
        )


@needs_dask
def test_workers_n_starts_and_closes_a_local_cluster(small_shards, tmp_path):
    ds = _dataset(tmp_path, 11)
    got = extract_features_dask(ds, IMAGE, TEXT, cache_dir=tmp_path / "dask", workers=2, batch_size=2, progress=False)
    _assert_same(got, _local(ds, tmp_path / "local"))
    assert got.meta["dask_shards"]["image"] >= 2


@needs_dask
def test_progress_advances_per_shard_done(client, small_shards, tmp_path, monkeypatch):
    """The progress report (a log line per update here) advances once per shard done, by its
    items, and says how many shards are done: ``k/N shards``."""
    import io
    import re

    from gcrdp.utils import progress

    out = io.StringIO()
    made = []

    def log_every_update(total, *, desc="", unit="it", enabled=True, **_):
        assert enabled
        bar = progress.LogProgress(total, desc=desc, unit=unit, every=0, file=out)
        made.append(bar)
        return bar

    monkeypatch.setattr(progress, "progress_bar", log_every_update)
    ds = _dataset(tmp_path, 15)
    got = extract_features_dask(ds, IMAGE, TEXT, cache_dir=tmp_path / "dask", client=client, batch_size=2, progress=True)
    shards = sum(got.meta["dask_shards"].values())
    lines = out.getvalue().splitlines()
    assert len(made) == 1 and len(lines) == shards + 1  # one line per shard done, and the closing one
    counts = [tuple(map(int, re.search(r"(\d+)/(\d+) shards", line).groups())) for line in lines]
    assert counts[:-1] == [(k, shards) for k in range(1, shards + 1)] and counts[-1] == (shards, shards)
    items = [int(re.search(r": (\d+)/(\d+) ", line).group(1)) for line in lines]
    assert items == sorted(items) and items[-1] == made[0].total == made[0].n > items[0] > 0
    assert "done in" in lines[-1]
    # a run with nothing left to extract reports nothing
    out.truncate(0)
    extract_features_dask(ds, IMAGE, TEXT, cache_dir=tmp_path / "dask", client=client, batch_size=2, progress=True)
    assert out.getvalue() == "" and len(made) == 1


@needs_dask
def test_items_extracted_in_the_batches_of_the_later_calls(client, small_shards, tmp_path):
    """extract_items_dask (the search index's embedding on Dask): after it, each later
    encode_items call over one part finds every item in the cache, and gets the rows it would
    have computed itself, part after part (repeated items across parts and within one; a part
    longer than a shard, so encode_order reorders it)."""
    from gcrdp.encoders.cache import encode_items
    from gcrdp.encoders.dask_extract import extract_items_dask
    from tests.encoders.test_extract_scale import _images, _texts

    paths, texts = [str(p) for p in _images(tmp_path / "imgs", 14)], _texts(14)
    parts = {
        "image": [paths[:3], paths[2:5] + paths[:1], paths[5:14] + paths[5:7]],
        "text": [texts[:2], texts[1:11] + texts[3:5], texts[11:] + texts[:1]],
    }
    make = {"image": image_encoder, "text": text_encoder}
    spec = {"image": IMAGE, "text": TEXT}
    for m in ("image", "text"):
        batch = 2 if m == "image" else 4
        written = extract_items_dask(spec[m], parts[m], cache_dir=tmp_path / "dask", client=client, batch_size=batch, progress=False)
        assert written == len({x for part in parts[m] for x in part})
        for part in parts[m]:
            got, encoded = encode_items(make[m](), part, cache_dir=tmp_path / "dask", batch_size=batch, progress=False)
            want, _ = encode_items(make[m](), part, cache_dir=tmp_path / "local", batch_size=batch, progress=False)
            assert encoded == 0, m
            for name in ("local", "mask", "pooled"):
                assert np.array_equal(getattr(got, name), getattr(want, name)), (m, name)
        # everything is there now: nothing to submit
        assert extract_items_dask(spec[m], parts[m], cache_dir=tmp_path / "dask", client=client, batch_size=batch, progress=False) == 0


def test_encoders_take_their_process_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--workers K`` sets each local worker's OMP_NUM_THREADS to its share of the cores; the
    encoders follow it unless num_threads is given (issue 22: 2 workers each on every core ran
    at 0.48-0.67x the local speed)."""
    from gcrdp.encoders.base import available_cpus, resolve_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(None) == 3 and resolve_threads(5) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert resolve_threads(None) == available_cpus()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert resolve_threads(None) == available_cpus()
