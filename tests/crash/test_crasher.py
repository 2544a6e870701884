"""Crash tests in the style of Qdrant's crasher (issue 21): a subprocess writes into a folder and
is SIGKILLed at a random point (seeded; a bounded number of kills); afterwards the folder must
hold either the complete old state or the complete new state, never a mix, and finishing the
work must give exactly what an uninterrupted run gives.

* ``gcrdp run``: every kept fit file and ``results.json`` is whole JSON; the finished run's
  records equal an uninterrupted run's.
* ``gcrdp train``: ``DIR/last`` and ``DIR/final`` are absent or whole checkpoints; the finished
  model equals an uninterrupted one (history and embeddings).
* the feature cache: a killed extraction leaves only whole chunks; finishing it gives the arrays
  of a clean extraction.

The kill points are drawn (seeded) inside the window an uninterrupted run took here between its
first written piece of work and its end, so they fall inside the work on a slow or a fast
machine alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_cli_data import write_features
from tests.conftest import REPO_ROOT

KILLS = 4
SEED = 20261207


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["GCRDP_CACHE_DIR"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"  # the same float round-off in every process
    return env


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    return time.monotonic() - t0


def _work_window(argv: list[str], env: dict[str, str], started) -> tuple[float, float]:
    """Run ``argv`` to the end; -> (seconds until ``started()`` first held — the first piece of
    work written, after the imports —, seconds in all)."""
    t0 = time.monotonic()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while child.poll() is None:
        if first is None and started():
            first = time.monotonic() - t0
        time.sleep(0.01)
    total = time.monotonic() - t0
    assert child.returncode == 0, child.stderr.read().decode() if child.stderr else ""
    return (first if first is not None else 0.0), total


def _newest_write(folder: Path) -> float:
    """The newest modification time under ``folder`` (0 when empty), while a child renames and
    removes entries in it: whatever vanishes during the walk is skipped."""
    newest = 0.0
    for top, dirs, files in os.walk(folder, onerror=lambda _: None):
        for name in dirs + files:
            try:
                newest = max(newest, os.stat(os.path.join(top, name)).st_mtime)
            except OSError:  # renamed or removed meanwhile
                pass
    return newest


def _kill_when(argv: list[str], env: dict[str, str], ready, delay: float) -> bool:
    """Run ``argv``; once ``ready()`` holds, wait ``delay`` s and SIGKILL it. True when killed."""
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while child.poll() is None and not ready():
        time.sleep(0.005)
    try:
        child.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        return True
    err = child.stderr.read().decode() if child.stderr else ""
    assert child.returncode == 0, err
    return False


def _kill_after(argv: list[str], env: dict[str, str], folder: Path, delay: float) -> bool:
    """Run ``argv``; once it has written into ``folder`` (its imports are done, its work has
    begun), wait ``delay`` s and SIGKILL it. True when it was killed (not already done)."""
    t0 = time.time()
    return _kill_when(argv, env, lambda: _newest_write(folder) >= t0, delay)


def _kill_points(window: tuple[float, float], n: int = KILLS) -> list[float]:
    """``n`` seeded delays inside the work: up to 60 % of the time an uninterrupted run spent
    between its first written piece and its end."""
    first, total = window
    rng = np.random.default_rng(SEED)
    return [float(x) * (total - first) for x in rng.uniform(0.0, 0.6, size=n)]


def _whole_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # pragma: no cover - the failure this test looks for
        pytest.fail(f"{path} is not whole JSON after a kill: {exc}")


def _visible_json(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.json") if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if "seconds" not in k and k not in ("timing", "started", "finished")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- gcrdp run
@pytest.mark.slow  # about 40 s on 2 loaded cores
def test_a_run_killed_anywhere_keeps_whole_files_and_finishes_as_an_uninterrupted_run(tmp_path):
    feats = write_features(tmp_path / "f.npz")
    env = _env(tmp_path)

    def argv(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "gcrdp", "run", "--features", str(feats), "--methods", "gap-infonce", "cca",
            "--shots", "1", "3", "--seeds", "0", "1", "--option", "gap-infonce.max_epochs=40", "--option", "gap-infonce.patience=40",
            "--option", "gap-infonce.latent_dim=16",
            "--option", "gap-infonce.hidden_dim=16", "--output-dir", str(out), "-q",
        ]  # fmt: skip

    window = _work_window(argv(tmp_path / "ref"), env, lambda: (tmp_path / "ref" / "fits").is_dir())
    reference = _whole_json(tmp_path / "ref" / "results.json")
    out = tmp_path / "out"
    killed = 0
    for delay in _kill_points(window):
        killed += _kill_after(argv(out), env, out, delay)
        for path in _visible_json(out) if out.exists() else []:
            doc = _whole_json(path)
            if path.name == "results.json":
                assert len(doc["records"]) == len(reference["records"])  # never a partial results file
            elif "fits" in path.relative_to(out).parts:
                assert {"fit_key", "record"} <= set(doc)
    assert killed >= 1  # at least one kill landed inside the work
    _timed(argv(out), env)
    got = _whole_json(out / "results.json")
    assert _strip_times(got["records"]) == _strip_times(reference["records"])
    assert _strip_times(got["summary"]) == _strip_times(reference["summary"])


# --------------------------------------------------------------------------- gcrdp train
@pytest.mark.slow  # about 45 s on 2 loaded cores
def test_a_train_killed_anywhere_leaves_whole_checkpoints_and_resumes_to_the_same_model(tmp_path):
    from gcrdp.data.registry import load_dataset
    from gcrdp.methods.persistence import load_method
    from gcrdp.training.checkpoint import checkpoint_exists, read_checkpoint

    feats = write_features(tmp_path / "f.npz")
    env = _env(tmp_path)

    def argv(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "gcrdp", "train", "--features", str(feats), "--method", "gap-infonce", "--shots", "1",
            "--seed", "0", "--option", "max_epochs=30", "--option", "patience=30", "--option", "latent_dim=16",
            "--option", "hidden_dim=16", "--checkpoint-dir", str(out), "-q",
        ]  # fmt: skip

    _timed(argv(tmp_path / "ref"), env)
    out = tmp_path / "out"

    def epoch_done() -> int:
        try:
            return int(json.loads((out / "last" / "state.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError):  # not there yet, or being replaced
            return 0

    # seeded kill points: after a drawn epoch's checkpoint, plus a drawn part of an epoch (so the
    # kill falls anywhere: inside an epoch, inside a checkpoint's writing, between the renames)
    rng = np.random.default_rng(SEED)
    epochs = sorted(int(e) for e in rng.choice(np.arange(2, 28), size=KILLS, replace=False))
    killed, mid_fit = 0, 0
    for target, extra in zip(epochs, rng.uniform(0.0, 0.15, size=KILLS)):
        killed += _kill_when(argv(out), env, lambda target=target: epoch_done() >= target, float(extra))
        mid_fit += checkpoint_exists(out / "last") and not checkpoint_exists(out / "final")
        for name in ("last", "final"):
            if checkpoint_exists(out / name):
                read_checkpoint(out / name)  # whole: raises on a partial folder
            else:
                assert not (out / name).exists() or not any((out / name).iterdir())
    assert killed >= 1 and mid_fit >= 1  # a kill landed between two epochs' checkpoints
    _timed(argv(out), env)
    ref, got = _whole_json(tmp_path / "ref" / "results.json"), _whole_json(out / "results.json")
    assert got["records"][0]["fit"]["history"] == ref["records"][0]["fit"]["history"]
    assert got["records"][0]["test"] == ref["records"][0]["test"]
    data = load_dataset("features", path=str(feats))
    a, b = load_method(tmp_path / "ref" / "final"), load_method(out / "final")
    np.testing.assert_array_equal(a.embed_images(data.features.image), b.embed_images(data.features.image))
    np.testing.assert_array_equal(a.embed_texts(data.features.text), b.embed_texts(data.features.text))


# --------------------------------------------------------------------------- the feature cache
_EXTRACT = """
import json, sys, time
from pathlib import Path
from gcrdp.data.types import Dataset, Sample
from gcrdp.encoders import cache as cache_mod, extract_features
from tests.encoders.fakes import BatchImageEncoder, BatchTextEncoder

class Slow(BatchImageEncoder):
    def encode(self, items, **kw):
        time.sleep(0.05 * len(items))
        return super().encode(items, **kw)

cache_mod.SHARD_ITEMS = 4
rows = json.loads(Path(sys.argv[1]).read_text())
ds = Dataset("crash", [Sample(i, t, ("c0",), "train", Path(p)) for i, t, p in rows], ["c0"])
extract_features(ds, Slow(), BatchTextEncoder(), cache_dir=sys.argv[2], batch_size=2, progress=False)
"""


@pytest.mark.slow  # kills extractions: about 10 s on 2 loaded cores
def test_an_extraction_killed_anywhere_leaves_whole_chunks_and_finishes_as_a_clean_one(tmp_path):
    from tests.encoders.test_extract_scale import _assert_same, _dataset, _run

    ds = _dataset(tmp_path, n=40, duplicates=False)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([[s.id, s.text, str(s.image)] for s in ds.samples]))
    env = _env(tmp_path)

    def argv(cache: Path) -> list[str]:
        return [sys.executable, "-c", _EXTRACT, str(rows), str(cache)]

    window = _work_window(argv(tmp_path / "ref"), env, lambda: any((tmp_path / "ref").rglob("keys.json")))
    cache = tmp_path / "killed"
    killed = 0
    for delay in _kill_points(window):
        killed += _kill_after(argv(cache), env, cache, delay)
        for meta in _visible_json(cache) if cache.exists() else []:
            _whole_json(meta)
    assert killed >= 1
    from tests.encoders.fakes import BatchImageEncoder, BatchTextEncoder

    with pytest.MonkeyPatch.context() as mp:
        from gcrdp.encoders import cache as cache_mod

        mp.setattr(cache_mod, "SHARD_ITEMS", 4)
        resumed = _run(ds, (BatchImageEncoder(), BatchTextEncoder()), cache, batch_size=2)
        clean = _run(ds, (BatchImageEncoder(), BatchTextEncoder()), None, batch_size=2)
    _assert_same(resumed, clean)
