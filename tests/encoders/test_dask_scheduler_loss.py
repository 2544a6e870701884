"""A Dask scheduler that dies in the middle of an extraction (issue 22, item 1): the call ends
with a clear error naming the scheduler (no hang), the cache holds only complete chunks, and the
same call run again on another cluster extracts the rest and ends with the local arrays."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gcrdp.encoders import cache as cache_mod
from gcrdp.encoders import extract_features
from gcrdp.encoders.cache import FeatureCache
from gcrdp.encoders.dask_extract import EncoderSpec, SchedulerLostError, dask_available, extract_features_dask
from tests.conftest import REPO_ROOT
from tests.encoders.fakes import BatchImageEncoder, BatchTextEncoder
from tests.encoders.test_extract_scale import _dataset

pytestmark = pytest.mark.skipif(not dask_available(), reason="dask and distributed are not installed (pip install 'gcrdp[dask]')")
HERE = __name__
N = 40
SCHEDULER = textwrap.dedent(
    """
    import sys, time
    if __name__ == "__main__":
        from distributed import LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1")
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(cluster.scheduler_address)
        import os
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(300)  # killed by the test long before
    """
)


class SlowImageEncoder(BatchImageEncoder):
    """:class:`BatchImageEncoder` (the same fingerprint and rows) taking ``delay`` s per call."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def encode(self, items, *, batch_size=32, progress=True):
        time.sleep(self.delay)
        return super().encode(items, batch_size=batch_size, progress=progress)


def text_encoder() -> BatchTextEncoder:
    return BatchTextEncoder()


def image_encoder() -> BatchImageEncoder:
    return BatchImageEncoder()


def _wait(what: str, ok, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _published(root: Path) -> list[Path]:
    cache = FeatureCache(root)
    return [c for space in cache.items_dir.glob("*") if space.is_dir() for c in cache.chunks(space)]


@pytest.mark.slow  # a local Dask cluster: about 13 s on 2 loaded cores
def test_a_scheduler_killed_mid_extraction_is_a_clear_error_and_a_rerun_completes(monkeypatch, tmp_path):
    monkeypatch.setattr(cache_mod, "SHARD_ITEMS", 4)  # batch 2 (texts 4): 4 items a shard, 20 shards
    ds = _dataset(tmp_path, N)
    root = tmp_path / "cache"
    script = tmp_path / "scheduler.py"
    script.write_text(SCHEDULER)
    address_file = tmp_path / "address"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    # its own process group: the scheduler, its nannies and workers die together
    proc = subprocess.Popen(
        [sys.executable, str(script), str(address_file)],
        cwd=REPO_ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict = {}
    try:
        _wait("the scheduler to start", lambda: address_file.exists() or proc.poll() is not None, 60)
        assert proc.poll() is None, "the scheduler process died at start"
        address = address_file.read_text()
        slow = EncoderSpec("image", f"{HERE}:SlowImageEncoder", {"delay": 0.5})

        def run() -> None:
            try:
                out["feats"] = extract_features_dask(
                    ds, slow, EncoderSpec("text", f"{HERE}:text_encoder"), cache_dir=root, client=address, batch_size=2, progress=False
                )
            except BaseException as exc:  # checked below
                out["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        _wait("a first published chunk", lambda: bool(_published(root)) or not thread.is_alive(), 60)
        assert thread.is_alive(), out  # the run is still going: the scheduler dies mid-run
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        thread.join(60)  # Dask cancels a lost client's futures at once; 60 s is a hang
        assert not thread.is_alive(), "the extraction hangs after its scheduler died"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    error = out.get("error")
    assert isinstance(error, SchedulerLostError), out
    message = str(error)
    assert address in message and "re-run" in message and str(root) in message and "complete chunks only" in message
    # what was published is whole: every chunk reads back (checksums), none is discarded
    chunks = _published(root)
    cache = FeatureCache(root)
    for chunk in chunks:
        cache.read_chunk(chunk)
    done = sum(len(cache.index(space)) for space in cache.items_dir.glob("*") if space.is_dir())
    assert 0 < done and _published(root) == chunks
    # the same call on another cluster extracts what is missing and ends with the arrays of a
    # local extraction resumed from the same cache (a resumed extraction batches the missing
    # items anew, locally as on Dask: the batch-sensitive fakes show any difference)
    shutil.copytree(root, tmp_path / "resumed-locally")
    again = extract_features_dask(
        ds,
        EncoderSpec("image", f"{HERE}:image_encoder"),
        EncoderSpec("text", f"{HERE}:text_encoder"),
        cache_dir=root,
        workers=2,
        batch_size=2,
        progress=False,
        storage="memory",
    )
    local = extract_features(
        ds, image_encoder(), text_encoder(), cache_dir=tmp_path / "resumed-locally", batch_size=2, progress=False, storage="memory"
    )
    assert again.sample_ids == local.sample_ids
    for m in ("image", "text"):
        for part in ("local", "mask", "pooled"):
            assert np.array_equal(getattr(getattr(again, m), part), getattr(getattr(local, m), part)), (m, part)
    assert again.meta["items_extracted"] == local.meta["items_extracted"]  # only the missing items
    fresh = extract_features(ds, image_encoder(), text_encoder(), cache_dir=tmp_path / "fresh", batch_size=2, progress=False)
    assert sum(again.meta["items_extracted"].values()) == sum(fresh.meta["items_extracted"].values()) - done > 0
