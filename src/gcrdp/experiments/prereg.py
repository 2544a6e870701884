"""Pre-registration a reader can check: a decision file committed before the runs it judges.

A grid config names its decision file (``"preregistration": "path"``: the rule, the variants,
the seeds, the thresholds — written before any run). :func:`decision_record` fingerprints it:
its SHA-256 and, in a git work tree, the commit that last changed it and that commit's time.
:func:`~gcrdp.experiments.grid.run_grid` refuses to run while the file has changes that are not
committed, and writes the record into every run's ``grid`` block with the run's start time.

A table built from such runs calls :func:`check_preregistered`: it refuses any run whose
recorded SHA-256 differs from the decision file's, that recorded none, or that started before
the decision's commit — so every figure in it was judged by the rule as committed, and a reader
can check with ``git log`` that the rule came first.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import subprocess
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def decision_record(path: str | Path) -> dict[str, Any]:
    """``{"path", "sha256", "commit", "committed_at", "uncommitted"}`` of a decision file.

    ``commit``/``committed_at``: the last commit that changed the file (``None`` outside a git
    work tree, or for a file git does not track). ``uncommitted``: the file differs from that
    commit, or is not tracked (``None`` outside a git work tree)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Pre-registration file not found: {path}")
    folder = path.resolve().parent
    top = _git(["rev-parse", "--show-toplevel"], folder)
    rec: dict[str, Any] = {"path": str(path), "sha256": file_sha256(path), "commit": None, "committed_at": None, "uncommitted": None}
    if top is None:
        return rec
    rel = path.resolve().relative_to(Path(top).resolve())
    rec["path"] = rel.as_posix()
    last = _git(["log", "-1", "--format=%H %cI", "--", rel.as_posix()], Path(top))
    if last:
        rec["commit"], rec["committed_at"] = last.split(" ", 1)
    status = _git(["status", "--porcelain", "--", rel.as_posix()], Path(top))
    rec["uncommitted"] = bool(status) or rec["commit"] is None
    return rec


def require_committed(rec: dict[str, Any]) -> None:
    """A :class:`ConfigError` unless the decision file is committed as it is (outside a git
    work tree there is nothing to check, and the record says so with ``commit: None``)."""
    if rec.get("uncommitted"):
        raise ConfigError(
            f"The pre-registration file {rec['path']} has changes that are not committed. Commit the decision "
            "(rule, variants, seeds, thresholds) before the runs it judges; the runs record its commit and hash."
        )


def _parse_time(value: str) -> _dt.datetime:
    t = _dt.datetime.fromisoformat(value)
    return t if t.tzinfo is not None else t.replace(tzinfo=_dt.timezone.utc)


def check_preregistered(runs: list[dict[str, Any]], decision_file: str | Path) -> dict[str, Any]:
    """Refuse (:class:`DataError`, naming them) runs not judged by ``decision_file`` as it is:
    no recorded pre-registration, another SHA-256, or a start before the decision's commit.
    Returns the decision's record (for the table's caption)."""
    rec = decision_record(decision_file)
    problems: list[str] = []
    when = _parse_time(rec["committed_at"]) if rec.get("committed_at") else None
    for run in runs:
        name = str(run.get("_path") or run.get("grid", {}).get("method") or "a run")
        pre = (run.get("grid") or {}).get("preregistration")
        if not pre:
            problems.append(f"{name}: records no pre-registration")
        elif pre.get("sha256") != rec["sha256"]:
            problems.append(f"{name}: judged by another version of the decision file (sha256 {str(pre.get('sha256'))[:12]}…)")
        elif when is not None and pre.get("started_at") and _parse_time(pre["started_at"]) < when:
            problems.append(f"{name}: started {pre['started_at']}, before the decision was committed ({rec['committed_at']})")
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DataError(
            f"{len(problems)} of {len(runs)} runs were not judged by {rec['path']} (sha256 {rec['sha256'][:12]}…) as committed:\n  {shown}"
        )
    return rec
