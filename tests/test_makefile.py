"""`make demo FRESH=1` reruns the demo from scratch (issue 20, item 8): every fit refitted; `make test`
runs every test, `make test-fast` the ones not marked slow on 2 workers (issue 24)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("args", "fresh"), [((), False), (("FRESH=1",), True), (("FRESH=0",), False)])
def test_make_demo_fresh_refits_every_fit(args, fresh):
    # -n: print the commands, run nothing; -o: take the venv stamp as made (no install)
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "demo", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    (line,) = [ln for ln in out.splitlines() if "gcrdp run" in ln]
    assert "--output-dir runs/demo" in line
    assert ("--no-resume" in line) is fresh


def _pytest_command(target: str, *args: str) -> str:
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", target, *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    (line,) = [ln for ln in out.splitlines() if "-m pytest" in ln]
    return line.split("-m pytest", 1)[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_runs_everything_and_test_fast_leaves_out_the_slow_tests():
    full = _pytest_command("test")
    assert " -m " not in full and " -n " not in full  # no marker filter: slow tests run too, in one process
    fast = _pytest_command("test-fast")
    assert '-m "not slow"' in fast
    # on 2 xdist workers, each file's tests on one worker; FAST_WORKERS=0 runs them in one process
    assert fast.split() == ["-m", '"not', 'slow"', "-n", "2", "--dist", "loadfile"]
    assert _pytest_command("test-fast", "FAST_WORKERS=0", "PYTEST_ARGS=-x").split()[3:] == ["-n", "0", "--dist", "loadfile", "-x"]


def test_pytest_xdist_is_pinned_for_make_test_fast():
    lock = (REPO_ROOT / "requirements.lock").read_text(encoding="utf-8").split()
    assert any(line.startswith("pytest-xdist==") for line in lock)
