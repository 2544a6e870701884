"""Crash tests of the search index (issue 21), in the style of Qdrant's crasher: ``gcrdp index``
rebuilding an index, or adding to it, is SIGKILLed at seeded points inside its work; afterwards
the index opens (its checksums verified) as the complete old state or the complete new state —
never a mix — and answers searches."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.crash.test_crasher import KILLS, SEED, _env, _kill_after, _work_window

faiss = pytest.importorskip("faiss")


def _features(path: Path, n: int, seed: int, prefix: str) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), n // 6)
    ci, ct = np.random.default_rng(7).normal(size=(6, 12)), np.random.default_rng(8).normal(size=(6, 8))
    np.savez(
        path,
        image=(ci[labels] + 0.3 * rng.normal(size=(n, 12))).astype(np.float32),
        text=(ct[labels] + 0.3 * rng.normal(size=(n, 8))).astype(np.float32),
        labels=labels,
        classes=np.array([f"class-{i}" for i in range(6)]),
        split=np.array(["test" if i % 10 < 3 else "train" for i in range(n)]),
        ids=np.array([f"{prefix}{i}" for i in range(n)]),
    )
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gcrdp.cli.main import main

    root = tmp_path_factory.mktemp("index-crash")
    a = _features(root / "a.npz", 1200, 1, "a")
    b = _features(root / "b.npz", 2400, 2, "b")
    c = _features(root / "c.npz", 1800, 3, "c")
    args = ["train", "--features", str(a), "--method", "gap-infonce", "--shots", "1", "--option", "max_epochs=2"]
    assert main([*args, "--checkpoint-dir", str(root / "ckpt"), "-q"]) == 0
    return root, root / "ckpt", {"a": a, "b": b, "c": c}


_STATE = """
import json, sys
from gcrdp.search import Retriever
r = Retriever.load(sys.argv[1])  # checksums of every file verified
hits = r.search(like=r.describe("image", 0)["id"], k=5)
assert hits and all(h.id for h in hits)
print(json.dumps([r.backends["image"].ntotal, r.backends["text"].ntotal]))
"""


def _state(index: Path, env: dict[str, str]) -> tuple[int, int]:
    """(images, texts) of the index as it opens now, in a process of its own (Milvus Lite lets one
    process at a time open its file); a search by an indexed item answers."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-c", _STATE, str(index)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    images, texts = json.loads(out.stdout.strip().splitlines()[-1])
    return images, texts


def _index(index: Path, args: list[str], env: dict[str, str]) -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "gcrdp", "index", str(index), *args, "-q"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow  # 35 s to 100 s a case on 2 loaded cores
@pytest.mark.parametrize(("mode", "backend"), [("rebuild", "faiss"), ("add", "faiss"), ("rebuild", "milvus"), ("add", "milvus")])
def test_an_index_killed_while_written_opens_as_the_old_or_the_new_state(setup, tmp_path, mode, backend):
    if backend == "milvus":
        pytest.importorskip("pymilvus")
        pytest.importorskip("milvus_lite")
    root, ckpt, feats = setup
    env = _env(tmp_path)
    index = tmp_path / "idx"
    store = ["--backend", "milvus", "--uri", str(tmp_path / "milvus.db")] if backend == "milvus" else []
    _index(index, ["--checkpoint", str(ckpt), "--features", str(feats["a"]), *store], env)
    sizes = {"a": 1200, "b": 2400, "c": 1800}

    def argv(target: Path, source: str) -> list[str]:
        extra = ["--add"] if mode == "add" else []
        what = ["--checkpoint", str(ckpt), "--features", str(feats[source]), *extra, *store, "-q"]
        return [sys.executable, "-m", "gcrdp", "index", str(target), *what]

    # the window of the work: a rebuild of b (or an add of c) into a copy, timed
    import shutil

    shutil.copytree(index, tmp_path / "ref")
    source = "b" if mode == "rebuild" else "c"
    window = _work_window(argv(tmp_path / "ref", source), env, lambda: len(list((tmp_path / "ref").iterdir())) > 3)
    if backend == "milvus":  # the timed copy shares the Milvus Lite file: put the collections of the original back
        _index(index, ["--checkpoint", str(ckpt), "--features", str(feats["a"]), *store], env)
    rng = np.random.default_rng(SEED)
    killed = 0

    def attempt(k: int, delay: float, watch: Path) -> bool:
        before = _state(index, env)
        if mode == "rebuild":
            source = "b" if k % 2 == 0 else "a"  # alternate, so that old and new differ every time
            new = (sizes[source], sizes[source])
        else:
            source = "c" if k == 0 else ("a" if k % 2 else "c")  # c once, then nothing new to add
            new = (before[0] + sizes["c"], before[1] + sizes["c"]) if before[0] == sizes["a"] else before
        hit = _kill_after(argv(index, source), env, watch, delay)
        after = _state(index, env)
        assert after in (before, new), f"kill {k}: {after} is neither the old {before} nor the new {new}"
        return hit

    for k, delay in enumerate(rng.uniform(0.0, 0.9, size=KILLS) * (window[1] - window[0])):
        killed += attempt(k, float(delay), index)
    # On a loaded machine the timed window can mislead (a Milvus load writes its folder late): then
    # kill at the first write anywhere in the test's folder (the Milvus Lite file included).
    for k in range(KILLS, KILLS + 3):
        if killed:
            break
        killed += attempt(k, 0.0, tmp_path)
    assert killed >= 1
    # and the index can still be written: a last build completes
    _index(index, ["--checkpoint", str(ckpt), "--features", str(feats["b"]), *store], env)
    assert _state(index, env) == (2400, 2400)
