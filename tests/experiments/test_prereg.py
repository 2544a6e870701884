"""Pre-registration a reader can check (issue 23 item 1): a grid judged by a committed decision
file records its hash, commit and each run's start; tables refuse runs judged by anything else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gcrdp.errors import ConfigError, DataError
from gcrdp.experiments.grid import Grid, collect_results, run_grid
from gcrdp.experiments.prereg import check_preregistered, decision_record, file_sha256
from tests.cli.test_cli_data import write_features

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
}


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **ENV}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "study"
    repo.mkdir()
    _git(repo, "init", "-q")
    write_features(repo / "f.npz")
    (repo / "decision.md").write_text("Rule: the candidate is adopted when its paired difference's 95 % t interval excludes 0.\n")
    grid = {
        "name": "confirm",
        "output_dir": str(tmp_path / "out"),
        "preregistration": "decision.md",
        "defaults": {"shots": [1], "seeds": [5, 6]},
        "datasets": {"feats": {"dataset": "features", "dataset_options": {"path": "f.npz"}}},
        "methods": ["cca", "cca@raw"],
        "method_options": {"cca@raw": {"standardize": False}},
    }
    (repo / "grid.json").write_text(json.dumps(grid))
    return repo


def test_runs_record_the_committed_decision_and_tables_accept_them(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with pytest.raises(ConfigError, match="not committed"):  # the rule first, then the runs
        run_grid(Grid.from_file(repo / "grid.json"), progress=False)
    assert not (tmp_path / "out").exists()
    _git(repo, "add", "decision.md", "grid.json", "f.npz")
    _git(repo, "commit", "-qm", "the rule")
    commit = _git(repo, "rev-parse", "HEAD")
    out = run_grid(Grid.from_file(repo / "grid.json"), progress=False)
    assert out["ran"] == 4
    runs = collect_results([tmp_path / "out"])
    for run in runs:
        pre = run["grid"]["preregistration"]
        assert pre["path"] == "decision.md" and pre["sha256"] == file_sha256(repo / "decision.md") and pre["commit"] == commit
        assert pre["started_at"] >= pre["committed_at"][:19]
    assert check_preregistered(runs, repo / "decision.md")["commit"] == commit
    # a finished grid is not run again while the decision stays as committed
    assert run_grid(Grid.from_file(repo / "grid.json"), progress=False)["ran"] == 0


def test_a_changed_decision_refuses_the_old_runs(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "the rule")
    run_grid(Grid.from_file(repo / "grid.json"), progress=False)
    old = collect_results([tmp_path / "out"])
    (repo / "decision.md").write_text("Rule: adopted when the mean difference is positive.\n")  # moved after the runs
    with pytest.raises(ConfigError, match="not committed"):
        run_grid(Grid.from_file(repo / "grid.json"), progress=False)
    _git(repo, "commit", "-qam", "another rule")
    with pytest.raises(DataError, match="4 of 4 runs were not judged by decision.md"):
        check_preregistered(old, repo / "decision.md")
    with pytest.raises(DataError, match="another version of the decision file"):  # the stored runs count as changed
        run_grid(Grid.from_file(repo / "grid.json"), progress=False)
    assert run_grid(Grid.from_file(repo / "grid.json"), progress=False, rerun_changed=True)["ran"] == 4
    assert check_preregistered(collect_results([tmp_path / "out"]), repo / "decision.md")


def test_runs_without_a_record_or_started_before_the_commit_are_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "the rule")
    rec = decision_record(repo / "decision.md")
    assert rec["uncommitted"] is False and rec["commit"]
    good = {"_path": "a.json", "grid": {"preregistration": {**rec, "started_at": "2999-01-01T00:00:00+00:00"}}}
    early = {"_path": "b.json", "grid": {"preregistration": {**rec, "started_at": "2000-01-01T00:00:00+00:00"}}}
    bare = {"_path": "c.json", "grid": {}}
    assert check_preregistered([good], repo / "decision.md")
    with pytest.raises(DataError, match=r"2 of 3 runs(.|\n)*b.json: started 2000(.|\n)*c.json: records no pre-registration"):
        check_preregistered([good, early, bare], repo / "decision.md")


def test_a_missing_decision_file_is_a_config_error(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "decision.md").unlink()
    with pytest.raises(ConfigError, match="pre-registration file .* does not exist"):
        Grid.from_file(repo / "grid.json")


@pytest.mark.parametrize("name", ["gcrdp-confirm.json", "fast-fits-select.json", "fast-fits-select-2.json"])
def test_the_study_grids_are_valid_and_judged_by_a_decision_file(name: str) -> None:
    root = Path(__file__).resolve().parents[2]
    grid = Grid.from_file(root / "configs" / name)
    assert grid.preregistration is not None and grid.preregistration.is_file()
    assert grid.preregistration.resolve().parent == (root / "docs" / "study").resolve()
    for c in grid.cells()[:3]:
        assert grid.run_config(c.dataset, c.method, c.shots, c.seed).val_report_fraction == 0.5
