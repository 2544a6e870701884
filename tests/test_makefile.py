"""`make demo FRESH=1` reruns the demo from scratch (issue 20, item 8): every fit refitted."""

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


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_runs_everything_and_test_fast_leaves_out_the_slow_tests():
    def command(target: str) -> str:
        out = subprocess.run(
            ["make", "-n", "-o", ".venv/.installed", target], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout
        (line,) = [ln for ln in out.splitlines() if "-m pytest" in ln]
        return line

    assert " -m " not in command("test").split("-m pytest", 1)[1]  # no marker filter: slow tests run too
    assert '-m "not slow"' in command("test-fast")
