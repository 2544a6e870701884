"""`gcrdp extract --workers N` / `--scheduler ADDRESS` (issue 22, item 1): the features of a
manifest extracted on a Dask cluster of 2 worker processes equal a local extraction's, and
the flags' mistakes are clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from gcrdp.encoders.dask_extract import dask_available
from tests.cli.test_cli import assert_user_error, run_cli, write_manifest

pytestmark = pytest.mark.skipif(not dask_available(), reason="dask and distributed are not installed (pip install 'gcrdp[dask]')")


@pytest.mark.slow  # a local Dask cluster: about 20 s on 2 loaded cores
def test_extract_on_two_local_workers_equals_a_local_extraction(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tests.clip_fixture import make_clip_dir

    clip = make_clip_dir(tmp_path / "clip")  # a tiny CLIP: cheap for each worker to load
    manifest = write_manifest(tmp_path / "data", n_classes=5, per_class=4)
    common = ("extract", "--manifest", manifest, "--clip", clip, "-q")
    code, out, err = run_cli(capsys, *common, "--cache-dir", tmp_path / "local", "--output", tmp_path / "local.npz")
    assert code == 0, err
    code, out, err = run_cli(capsys, *common, "--workers", "2", "--cache-dir", tmp_path / "dask", "--output", tmp_path / "dask.npz")
    assert code == 0, err
    assert "extracted now: 20 images, 20 texts" in out
    with np.load(tmp_path / "local.npz") as a, np.load(tmp_path / "dask.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            assert np.array_equal(a[name], b[name]), name


def test_the_cluster_flags_mistakes_are_clear(tmp_path, capsys, monkeypatch):
    from gcrdp.encoders import dask_extract

    monkeypatch.setattr(dask_extract, "CONNECT_TIMEOUT_S", 2.0)  # no scheduler listens there: fail fast
    manifest = write_manifest(tmp_path / "data", n_classes=5, per_class=2)
    code, _, err = run_cli(capsys, "extract", "--manifest", manifest, "--workers", "0")
    assert_user_error(code, err, "--workers must be >= 1")
    code, _, err = run_cli(capsys, "extract", "--manifest", manifest, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1")
    assert_user_error(code, err, "pass one")
    code, _, err = run_cli(
        capsys, "extract", "--manifest", manifest, "--scheduler", "tcp://127.0.0.1:1", "--cache-dir", tmp_path / "c", "-q"
    )
    assert_user_error(code, err, "tcp://127.0.0.1:1")


@pytest.mark.slow  # a local Dask cluster: about 20 s on 2 loaded cores
def test_run_extracts_on_the_cluster_and_ends_as_a_local_run(tmp_path, capsys):
    import json

    pytest.importorskip("transformers")
    from tests.clip_fixture import make_clip_dir

    clip = make_clip_dir(tmp_path / "clip")
    manifest = write_manifest(tmp_path / "data", n_classes=5, per_class=4)
    common = ("run", "--manifest", manifest, "--clip", clip, "--methods", "cca", "--shots", "1", "--seeds", "0", "-q")
    code, _, err = run_cli(capsys, *common, "--cache-dir", tmp_path / "local", "--output-dir", tmp_path / "local-run")
    assert code == 0, err
    code, _, err = run_cli(capsys, *common, "--workers", "2", "--cache-dir", tmp_path / "dask", "--output-dir", tmp_path / "dask-run")
    assert code == 0, err
    local = json.loads((tmp_path / "local-run" / "results.json").read_text())
    dask = json.loads((tmp_path / "dask-run" / "results.json").read_text())
    assert dask["resolved"]["features"]["dask_shards"] and "dask_shards" not in local["resolved"]["features"]
    assert dask["resolved"]["features"]["key"] == local["resolved"]["features"]["key"]
    assert dask["records"][0]["test"] == local["records"][0]["test"]


@pytest.mark.slow  # a local Dask cluster: about 20 s on 2 loaded cores
def test_index_on_two_local_workers_equals_a_local_index(tmp_path, capsys):
    """`gcrdp index --workers 2`: the features are extracted on the cluster (the cache's chunks
    were written by worker processes), and the index holds the vectors of a local build, bit for
    bit, in the same rows; a search gives the same hits. --batch-size 3: several batches, some
    repeating an earlier batch's text."""
    import os

    pytest.importorskip("faiss")
    pytest.importorskip("transformers")
    from gcrdp.encoders.cache import FeatureCache
    from gcrdp.search import Retriever
    from tests.clip_fixture import make_clip_dir

    clip = make_clip_dir(tmp_path / "clip")
    manifest = write_manifest(tmp_path / "data", n_classes=2, per_class=5)
    common = ("--clip", clip, "--manifest", manifest, "--batch-size", "3", "-q")
    code, _, err = run_cli(capsys, "index", tmp_path / "local", *common, "--cache-dir", tmp_path / "local-cache")
    assert code == 0, err
    code, out, err = run_cli(capsys, "index", tmp_path / "dask", *common, "--workers", "2", "--cache-dir", tmp_path / "dask-cache")
    assert code == 0, err
    assert "10 images, 10 texts" in out
    cache = FeatureCache(tmp_path / "dask-cache")
    chunks = [c for space in cache.items_dir.iterdir() if space.is_dir() for c in cache.chunks(space)]
    assert len(chunks) > 2 and all(c.name.split("-")[1] != str(os.getpid()) for c in chunks)  # written on the workers
    local, dask = Retriever.load(tmp_path / "local"), Retriever.load(tmp_path / "dask")
    for m in ("image", "text"):
        a, b = local.backends[m].vectors(), dask.backends[m].vectors()
        assert a.shape == b.shape and np.array_equal(a, b), m
    for query in ({"text": "a red circle"}, {"like": local.search(text="a blue square", k=1)[0].id}):
        assert [h.id for h in dask.search(**query, k=10)] == [h.id for h in local.search(**query, k=10)]
