"""``gcrdp train`` and ``gcrdp run`` under ``torchrun --standalone --nproc_per_node=2`` (gloo,
CPU) against the same commands in one process (issue 22 item 2): the same fits, one set of files
written by rank 0, one summary printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.cli.test_cli_data import write_features

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available in this build"
)

#: no dropout: then 2 ranks compute the fit of one process, up to float round-off
OPTIONS = ["--option", "max_epochs=8", "--option", "latent_dim=16", "--option", "hidden_dim=16", "--option", "dropout=0"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["GCRDP_CACHE_DIR"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)  # the plain run must be a plain process
    return env


def _gcrdp(args: list[str], env: dict[str, str], ranks: int = 1) -> subprocess.CompletedProcess[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable]
    return subprocess.run([*launch, "-m", "gcrdp", *args], env=env, capture_output=True, text=True, timeout=300)


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))


def _same_records(a: dict, b: dict, tol: float = 1e-4) -> None:
    assert [(r["method"], r["shots"], r["seed"]) for r in a["records"]] == [(r["method"], r["shots"], r["seed"]) for r in b["records"]]
    for ra, rb in zip(a["records"], b["records"]):
        fa, fb = ra["fit"], rb["fit"]
        assert (fa.get("epochs"), fa.get("best_epoch")) == (fb.get("epochs"), fb.get("best_epoch")), ra["method"]
        for d in ("i2t", "t2i"):
            assert ra["test"][d]["map"] == pytest.approx(rb["test"][d]["map"], abs=tol), (ra["method"], d)


@pytest.mark.slow  # torchrun, 2 ranks: about 60 s on 2 loaded cores
def test_train_on_two_ranks_fits_as_one_process_and_writes_once(tmp_path: Path) -> None:
    feats = write_features(tmp_path / "f.npz")
    env = _env(tmp_path)
    args = ["train", "--features", str(feats), "--method", "gcrdp", "--shots", "1", "--seed", "0", *OPTIONS]
    one = _gcrdp([*args, "--checkpoint-dir", str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr
    two = _gcrdp([*args, "--checkpoint-dir", str(tmp_path / "two")], env, ranks=2)
    assert two.returncode == 0, two.stderr
    _same_records(_results(tmp_path / "two"), _results(tmp_path / "one"))
    assert two.stdout.count("validation mean mAP") == 1 and two.stdout.count("test: ") == 1  # rank 0 prints
    for name in ("last", "final"):
        assert (tmp_path / "two" / name / "state.json").is_file() or (tmp_path / "two" / name).is_dir()
    # resume the finished 2-rank fit in one process: it restores the same model
    again = _gcrdp([*args, "--checkpoint-dir", str(tmp_path / "two")], env)
    assert again.returncode == 0, again.stderr
    _same_records(_results(tmp_path / "two"), _results(tmp_path / "one"))


@pytest.mark.slow  # torchrun, 2 ranks: about 40 s on 2 loaded cores
def test_run_on_two_ranks_gives_the_records_of_one_process(tmp_path: Path) -> None:
    feats = write_features(tmp_path / "f.npz")
    env = _env(tmp_path)
    per_method = [f"{m}.{o}" if o != "--option" else o for m in ("gap-infonce", "gcrdp") for o in OPTIONS]
    args = [
        "run",
        "--features",
        str(feats),
        "--methods",
        "gap-infonce",
        "gcrdp",
        "cca",
        "--shots",
        "1",
        "--seeds",
        "0",
        "1",
        *per_method,
        "-q",
    ]
    one = _gcrdp([*args, "--output-dir", str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr
    two = _gcrdp([*args, "--output-dir", str(tmp_path / "two")], env, ranks=2)
    assert two.returncode == 0, two.stderr
    _same_records(_results(tmp_path / "two"), _results(tmp_path / "one"))
    assert two.stdout.count("Results: ") == 1  # one table, printed by rank 0
    assert len(list((tmp_path / "two" / "fits").rglob("*.json"))) == 6  # every fit written once, by rank 0


@pytest.mark.slow  # torchrun, 2 ranks: about 16 s on 2 loaded cores
def test_jobs_on_several_ranks_is_a_clear_error(tmp_path: Path) -> None:
    feats = write_features(tmp_path / "f.npz")
    run = _gcrdp(
        ["run", "--features", str(feats), "--methods", "gap-infonce", "--seeds", "0", "1", "--jobs", "2", "-q"], _env(tmp_path), ranks=2
    )
    assert run.returncode != 0
    assert "on several ranks each fit uses all of them" in run.stderr
