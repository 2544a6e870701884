"""scripts/results_tables.py: study tables, merged studies and paired differences."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO_ROOT


def _script():
    spec = importlib.util.spec_from_file_location("results_tables", REPO_ROOT / "scripts" / "results_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(method: str, shots: int, seed: int, test: float, val: float) -> dict:
    m = {"map": test}
    return {
        "method": method,
        "shots": shots,
        "seed": seed,
        "fit": {
            "best_val_map": val,
            "best_epoch": 1,
            "epochs": 2,
            "seconds": 1.0,
            "history": [{"epoch": 1, "pi_entropy_image": 1.0, "pi_entropy_text": 0.5}],
        },
        "chance": {"i2t": 0.1, "t2i": 0.1},
        "test": {"i2t": m, "t2i": m, "mean_map": test},
    }


def _results(records: list[dict], methods: list[str]) -> dict:
    return {"config": {"dataset": "toy", "methods": methods}, "records": records}


def test_paired_differences_and_merge(tmp_path, capsys):
    # two shot values written as two files (a study run one shot value at a time)
    a = _results(
        [
            _record("ref", 1, 0, 0.30, 0.50),
            _record("var", 1, 0, 0.33, 0.49),
            _record("ref", 1, 1, 0.40, 0.60),
            _record("var", 1, 1, 0.41, 0.63),
        ],
        ["ref", "var"],
    )
    b = _results([_record("ref", 5, 0, 0.50, 0.50), _record("var", 5, 0, 0.45, 0.52)], ["ref", "var"])
    pa, pb = tmp_path / "s1" / "results.json", tmp_path / "s5" / "results.json"
    for p, r in ((pa, a), (pb, b)):
        p.parent.mkdir()
        p.write_text(json.dumps(r))
    _script().main(["--merge", "--name", "toy study", "--reference", "ref", str(pa), str(pb)])
    out = capsys.readouterr().out
    assert "### toy study: toy, 2 seeds" in out
    # test: 1-shot differences +3 and +1 points -> +2.0 ± 1.4; 5-shot: one seed, -5 points;
    # val: paired Δ -1, +3 (1-shot) and +2 (5-shot) -> mean +1.33, standard error 2.08 / √3
    assert "| `var` | +2.0 ± 1.4 | -5.0 ± 0.0 | +1.3 ± 1.2 |" in out
    assert "1-shot Δ test (mean ± SD)" in out and "Δ val mAP (mean ± SE)" in out and "mean ± SD over seeds" in out
    assert "| `ref` | 35.0 ±  7.1 | 50.0 | 52.5 |" in out  # one seed: no spread; val: mean of 55 and 50
    assert "| `var` | 2.0 | 1.0 | 0.750 |" in out  # epochs, seconds, π entropy at the best epoch
