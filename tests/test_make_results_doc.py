"""scripts/make_results_doc.py: the standing of the reference is a table whose verdict follows
the 95 % t interval of the paired difference (a tie when it holds 0), and every ± says SD."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO_ROOT
from tests.test_docs_claims import table_problems


def _script():
    spec = importlib.util.spec_from_file_location("make_results_doc", REPO_ROOT / "scripts" / "make_results_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(method, shots, seed, m):
    return {"dataset": "toy", "method": method, "shots": shots, "seed": seed, "test": {"mean_map": m}}


def test_standing_is_a_table_whose_verdict_follows_the_interval():
    mod = _script()
    records = []
    # 0 shots: gcrdp +0.2 points on average but ±4 per seed (a tie); 5 shots: behind on every seed
    for seed, noise in enumerate([0.04, -0.04, 0.03, -0.03, 0.01]):
        records += [_rec("gcrdp", 0, seed, 0.50 + noise + 0.002), _rec("base", 0, seed, 0.50)]
        records += [_rec("gcrdp", 5, seed, 0.40 + 0.001 * seed), _rec("base", 5, seed, 0.45)]
    rows = [
        {
            "dataset": "toy",
            "shots": s,
            "method": m,
            "mean_mean": 100 * sum(r["test"]["mean_map"] for r in records if r["method"] == m and r["shots"] == s) / 5,
        }
        for s in (0, 5)
        for m in ("gcrdp", "base")
    ]
    head, lines = mod.standing(records, rows, "toy", "gcrdp")
    table = "\n".join(lines)
    assert "mean ± SD (seeds)" in lines[0] and "95 % t interval" in lines[0]
    assert "| 0-shot |" in table and "| tie |" in table and "| behind |" in table and "win" not in table
    assert table_problems(table) == ([], 2)
    assert (
        "best mean mAP in 1 of 2" in head
        and "ahead beyond the 95 % t interval in 0, behind in 1, a tie (the interval holds 0) in 1" in head
    )
    summary = mod.summary_lines(records, rows, ["toy"], "gcrdp")[0]
    assert "is best in 1 of 2" in summary and "ahead of that method beyond the 95 % t interval in 0, behind in 1, a tie in 1" in summary


def test_intervals_and_caption():
    mod = _script()
    lo, hi = mod.t_interval((0.2, 3.9, 5))
    assert round(lo, 1) == -4.6 and round(hi, 1) == 5.0 and mod.verdict((lo, hi)) == "tie"
    assert "SD" in mod.SD_CAPTION and "not a standard error" in mod.SD_CAPTION


def test_the_caption_it_replaces_is_the_one_gcrdp_report_writes():
    """make_results_doc relabels the ± of gcrdp report's tables by replacing their caption text."""
    source = (REPO_ROOT / "src" / "gcrdp" / "experiments" / "report.py").read_text(encoding="utf-8")
    assert "mean ± std over seeds; bold: best per column" in source
