"""scripts/confirm_tables.py follows the pre-registered rules (issue 23): it refuses runs the
committed decision did not judge, and its verdicts are the 95 % t intervals' (9 df)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gcrdp.experiments.prereg import decision_record
from tests.experiments.test_prereg import _git

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

SEEDS = list(range(5, 15))
#: method -> mean test gap to gap-infonce (points), twemoji
GAPS = {"gap-infonce": 0.0, "gap-infonce@cp": 2.5, "gcrdp": -2.0, "gcrdp@study": 0.0, "gcrdp@study-no-gmm": 0.1, "gcrdp@study-no-rdp": -0.1}


def _script():
    spec = importlib.util.spec_from_file_location("confirm_tables", ROOT / "scripts" / "confirm_tables.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _setup(tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "decision.md").write_text("rules\n")
    from tests.cli.test_cli_data import write_features

    write_features(repo / "f.npz")
    grid = {
        "name": "confirm",
        "output_dir": str(tmp_path / "out"),
        "preregistration": "decision.md",
        "defaults": {"shots": [5], "seeds": SEEDS},
        "datasets": {
            f"twemoji-{p}": {"dataset": "features", "dataset_options": {"path": "f.npz"}} for p in ("mirror", "zero-shot", "matched")
        },
        "methods": list(GAPS),
        "method_options": {"gcrdp@study-no-gmm": {"use_gmm": False}, "gcrdp@study-no-rdp": {"use_rdp": False}},
    }
    (repo / "grid.json").write_text(json.dumps(grid))
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "rule")
    rec = decision_record(repo / "decision.md")
    rec.pop("uncommitted")
    rng = np.random.default_rng(0)
    for label in grid["datasets"]:
        for method, gap in GAPS.items():
            for seed in SEEDS:
                if method == "gcrdp@study":  # a tie with the base: ±0.3 by seed, mean 0
                    gap = 0.3 if seed % 2 else -0.3
                test = 0.40 + (gap + rng.normal(0, 0.05)) / 100 + seed / 1000
                val = test + (rng.normal(0, 0.2) if label.endswith("mirror") else rng.normal(0, 3)) / 100
                doc = {
                    "config": {"dataset": "features"},
                    "grid": {
                        "dataset_label": label,
                        "method": method,
                        "shots": 5,
                        "seed": seed,
                        "preregistration": {**rec, "started_at": "2999-01-01T00:00:00+00:00"},
                    },
                    "records": [{"test": {"mean_map": test}, "fit": {"report_val_map": val, "best_val_map": val + 0.01}}],
                }
                path = tmp_path / "out" / "runs" / label / method / f"shots5-seed{seed}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(doc))
    return repo, tmp_path / "out", repo / "grid.json", rec


def test_verdicts_follow_the_pre_registered_rules(tmp_path: Path) -> None:
    repo, out, grid, _ = _setup(tmp_path)
    mod = _script()
    js = tmp_path / "t.json"
    assert mod.main([str(out), "--decision", str(repo / "decision.md"), "--grid", str(grid), "--json", str(js), "--boot", "300"]) == 0
    doc = json.loads(js.read_text())
    c = doc["claims"]
    assert c["C1/twemoji/5"]["test"]["verdict"] == "behind" and c["C1/twemoji/5"]["status"] == "confirmed"
    assert c["C4/twemoji/5"]["test"]["verdict"] == "ahead" and c["C4/twemoji/5"]["status"] == "confirmed"
    assert c["C3/twemoji/5"]["test"]["verdict"] == "ahead" and c["C3/twemoji/5"]["status"] == "confirmed"
    assert c["C2/twemoji/5"]["status"] == "confirmed"  # a tie, as claimed
    assert c["C5/twemoji/5"]["status"] == "confirmed"
    assert c["C1/twemoji/5"]["test"]["df"] == 9
    lo, hi = c["C1/twemoji/5"]["test"]["t95"]
    assert hi < 0 and lo < hi
    # the mirrored validation (low noise here) predicts the test better than the others
    assert doc["protocols"]["twemoji/5/mirror"]["rho"] > doc["protocols"]["twemoji/5/zero-shot"]["rho"]
    assert doc["protocols"]["twemoji/5/mirror − zero-shot"][0] > 0


def test_a_run_judged_by_another_decision_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, out, grid, _ = _setup(tmp_path)
    one = out / "runs" / "twemoji-mirror" / "gcrdp" / "shots5-seed5.json"
    doc = json.loads(one.read_text())
    doc["grid"]["preregistration"]["sha256"] = "0" * 64
    one.write_text(json.dumps(doc))
    assert _script().main([str(out), "--decision", str(repo / "decision.md"), "--grid", str(grid), "--boot", "50"]) == 1
    assert "1 of 180 runs were not judged" in capsys.readouterr().err


def test_missing_runs_need_partial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, out, grid, _ = _setup(tmp_path)
    (out / "runs" / "twemoji-mirror" / "gcrdp" / "shots5-seed7.json").unlink()
    args = [str(out), "--decision", str(repo / "decision.md"), "--grid", str(grid), "--boot", "50"]
    assert _script().main(args) == 1 and "1 of 180 runs are missing" in capsys.readouterr().err
    assert _script().main([*args, "--partial"]) == 0


def test_every_run_goes_to_the_csv(tmp_path: Path) -> None:
    import csv

    repo, out, grid, _ = _setup(tmp_path)
    path = tmp_path / "runs.csv"
    assert _script().main([str(out), "--decision", str(repo / "decision.md"), "--grid", str(grid), "--boot", "50", "--csv", str(path)]) == 0
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    assert len(rows) == 180 and {r["protocol"] for r in rows} == {"mirror", "zero-shot", "matched"}
    one = next(r for r in rows if (r["protocol"], r["method"], r["seed"]) == ("mirror", "gcrdp", "5"))
    doc = json.loads((out / "runs" / "twemoji-mirror" / "gcrdp" / "shots5-seed5.json").read_text())
    assert float(one["test_map"]) == pytest.approx(100 * doc["records"][0]["test"]["mean_map"], abs=1e-4)


def test_kept_runs_fill_in_a_folder_that_lacks_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--kept: the tables from a CSV of earlier runs (the repository's confirm-runs.csv) are the
    tables of the runs themselves, whether the folder holds part of the grid or none of it."""
    import shutil as sh

    repo, out, grid, _ = _setup(tmp_path)
    mod = _script()
    base = ["--decision", str(repo / "decision.md"), "--grid", str(grid), "--boot", "200"]
    kept, full, part, none = (tmp_path / n for n in ("kept.csv", "full.json", "part.json", "none.json"))
    assert mod.main([str(out), *base, "--csv", str(kept), "--json", str(full)]) == 0
    sh.rmtree(out / "runs" / "twemoji-mirror")  # a lost folder: its runs only in the CSV
    assert mod.main([str(out), *base]) == 1  # 60 missing without it
    capsys.readouterr()
    assert mod.main([str(out), *base, "--kept", str(kept), "--json", str(part)]) == 0
    said = capsys.readouterr().out
    assert "60 kept runs the folder lacks taken from it" in said
    assert "gap-infonce 0.0000" in said  # the 120 runs in both agree (to the CSV's 4 decimals)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mod.main([str(empty), *base, "--kept", str(kept), "--json", str(none)]) == 0

    a, b, c = (json.loads(p.read_text()) for p in (full, part, none))
    for claim in ("C1/twemoji/5", "C4/twemoji/5"):
        for doc in (b, c):
            assert doc["claims"][claim]["test"]["mean"] == pytest.approx(a["claims"][claim]["test"]["mean"], abs=1e-4)
            assert doc["claims"][claim]["status"] == a["claims"][claim]["status"]
    assert b["protocols"]["twemoji/5/mirror"]["rho"] == pytest.approx(a["protocols"]["twemoji/5/mirror"]["rho"])
    for key, value in a["protocols"].items():  # the CSV keeps 4 decimals of a point: the ranks are the same
        assert b["protocols"][key] == pytest.approx(value) and c["protocols"][key] == pytest.approx(value)


def test_kept_must_be_a_csv_of_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, out, grid, _ = _setup(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    args = [str(out), "--decision", str(repo / "decision.md"), "--grid", str(grid), "--boot", "50", "--kept", str(bad)]
    assert _script().main(args) == 1 and "not a CSV written by --csv" in capsys.readouterr().err
