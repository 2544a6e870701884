"""scripts/study_tables.py: paired differences over seeds and how well validation predicts test."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from tests.conftest import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("study_tables", REPO_ROOT / "scripts" / "study_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(root, label, method, shots, seed, val, test):
    f = root / "runs" / label / method / f"shots{shots}-seed{seed}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    rec = {"fit": {"best_val_map": val, "epochs": 3, "seconds": 1.0}, "test": {"mean_map": test}}
    f.write_text(json.dumps({"records": [rec]}), encoding="utf-8")


def test_paired_over_seeds_and_prediction(tmp_path, capsys):
    mod = _script()
    rng = np.random.default_rng(0)
    # reference; "up" is better on val and test, "down" worse on both, "flip" better on val only
    shift = {"gcrdp": (0, 0), "up": (0.02, 0.03), "down": (-0.02, -0.01), "flip": (0.01, -0.02)}
    for seed in range(4):
        base_v, base_t = rng.uniform(0.3, 0.5, 2)
        for shots in (1, 5):
            for m, (dv, dt) in shift.items():
                jitter = 0.001 * seed if m == "up" else 0.0
                _write(tmp_path, "toy", m, shots, seed, base_v + dv + jitter, base_t + dt)
    grid = mod.load_grid(tmp_path)
    mean, se, n = mod.paired(grid["toy"], "up", "gcrdp", "val")
    # per seed: 2 + 0.1·seed points; mean 2.15, se = std([2.0, 2.1, 2.2, 2.3]) / 2
    assert n == 4 and mean == pytest.approx(2.15) and se == pytest.approx(np.std([2.0, 2.1, 2.2, 2.3], ddof=1) / 2)
    text, figs = mod.label_tables("toy", grid["toy"], "gcrdp", "gap-infonce")
    assert figs["prediction"] == {"n_methods": 3, "sign_agreement": 2, "spearman": pytest.approx(0.5), "excluded": []}
    assert "signs agree for 2 of 3" in text and "none left out as zero" in text
    assert "(± SE)" in text and "(mean ± SD, seeds)" in text
    mod.main([str(tmp_path), "--shots", "5", "--json", str(tmp_path / "f.json"), "--csv", str(tmp_path / "r.csv")])
    rows = (tmp_path / "r.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("label,method,shots,seed,val_map") and len(rows) == 1 + 4 * 2 * 4
    out = json.loads((tmp_path / "f.json").read_text())
    assert set(out["toy"]["methods"]["up"]["test"]) == {"5"}
    assert "toy" in capsys.readouterr().out


def test_spearman_ties_and_degenerate():
    mod = _script()
    assert mod.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert mod.spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(mod.spearman([1, 2], [1, 2])) and math.isnan(mod.spearman([1, 1, 1], [1, 2, 3]))


def test_zero_differences_have_no_sign_and_are_counted_out(tmp_path, capsys):
    """A variant equal to the reference up to float noise (|Δ| ≤ 1e-6 of mAP) is left out of the
    sign count and of ρ, and the line says so; the CSV of --csv reads back to the same tables."""
    mod = _script()
    shift = {"gcrdp": (0, 0), "up": (0.02, 0.03), "down": (-0.02, -0.01), "flip": (0.01, -0.02), "noop": (1e-6, -1e-6)}
    for seed in range(5):
        for m, (dv, dt) in shift.items():
            _write(tmp_path, "toy", m, 5, seed, 0.4 + dv + 0.001 * seed * (m == "up"), 0.3 + dt)
    grid = mod.load_grid(tmp_path)
    text, figs = mod.label_tables("toy", grid["toy"], "gcrdp", "gap-infonce")
    assert figs["prediction"]["n_methods"] == 3 and figs["prediction"]["excluded"] == ["noop"]
    assert "1 left out, their differences zero within 1e-06 of mAP: `noop`" in text and "signs agree for 2 of 3" in text
    mod.main([str(tmp_path), "--csv", str(tmp_path / "r.csv")])
    capsys.readouterr()
    again = mod.load_csv(tmp_path / "r.csv")
    assert mod.label_tables("toy", again["toy"], "gcrdp", "gap-infonce")[0] == text
    mod.main([str(tmp_path / "r.csv"), "--verdicts", "up:gcrdp", "noop:gcrdp"])
    out = capsys.readouterr().out
    assert "| `up` − `gcrdp` | toy | test | +3.0 ± 0.0 (5) |" in out
    assert out.count("| tie |") >= 2  # noop: validation and test, by both intervals


def test_t_interval_and_verdict():
    mod = _script()
    lo, hi = mod.t_interval((1.0, 0.5, 5))
    assert (lo, hi) == (pytest.approx(1.0 - 2.776445 * 0.5, abs=1e-5), pytest.approx(1.0 + 2.776445 * 0.5, abs=1e-5))
    assert mod.verdict((lo, hi)) == "tie" and mod.verdict((0.1, 2.0)) == "win" and mod.verdict((-2.0, -0.1)) == "loss"
    assert mod.verdict((0.04, 0.3)) == "tie"  # printed as [+0.0, +0.3]: a bound of 0.0 holds 0
    assert mod.TWO_SE_LEVEL_5 == pytest.approx(0.884, abs=1e-3)
