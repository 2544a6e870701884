"""Experiment grids (resumable, one file per run) and reports (tables, CSV, figures)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from gcrdp.errors import ConfigError, DataError
from gcrdp.experiments.grid import Cell, Grid, collect_results, run_grid
from gcrdp.experiments.report import aggregate, gather, markdown_tables, sensitivity_series, write_report
from tests.cli.test_cli import assert_user_error, run_cli
from tests.cli.test_cli_data import write_features

TINY = {"max_epochs": 2, "latent_dim": 16, "hidden_dim": 16}


def grid_config(tmp_path: Path, **over) -> Path:
    write_features(tmp_path / "f.npz")
    cfg = {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "defaults": {"shots": [0, 1], "seeds": [0, 1]},
        "datasets": {
            "feats": {"dataset": "features", "dataset_options": {"path": "f.npz"}},
            "feats-standard": {"dataset": "features", "protocol": "standard", "dataset_options": {"path": "f.npz"}},
        },
        "methods": ["gap-infonce", "gcrdp", "gcrdp@k1"],
        "method_options": {"gap-infonce": TINY, "gcrdp": TINY, "gcrdp@k1": {**TINY, "n_components": 1}},
        "skip": [{"dataset": "feats-standard", "method": "gcrdp@k1"}],
    }
    cfg.update(over)
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(cfg))
    return path


def test_grid_cells_paths_and_validation(tmp_path):
    grid = Grid.from_file(grid_config(tmp_path))
    cells = grid.cells()
    # fewshot: 2 shots × 3 methods × 2 seeds; standard: 1 × 2 (k1 skipped) × 2
    assert len(cells) == 12 + 4
    assert Cell("feats", "gcrdp@k1", 1, 0) in cells and Cell("feats-standard", "gcrdp@k1", 0, 0) not in cells
    assert Cell("feats", "gcrdp", 1, 1).relpath() == Path("runs/feats/gcrdp/shots1-seed1.json")
    # the relative path is taken from the config file's folder
    assert grid.run_config("feats", "gcrdp", 1, 0).dataset_options["path"] == str((tmp_path / "f.npz").resolve())
    with pytest.raises(ConfigError, match="Unknown grid config key"):
        Grid.from_dict({"datasets": {"a": {}}, "methods": ["gap-infonce"], "seed": 1})
    with pytest.raises(ConfigError, match="non-empty 'methods'"):
        Grid.from_dict({"datasets": {"a": {}}, "methods": []})
    with pytest.raises(ConfigError, match="not in 'methods'"):
        Grid.from_dict({"datasets": {"a": {}}, "methods": ["gcrdp"], "method_options": {"cca": {}}})
    with pytest.raises(ConfigError, match="Unknown run config key"):
        Grid.from_dict({"datasets": {"a": {"datset": "x"}}, "methods": ["gcrdp"]})


@pytest.mark.slow  # a grid run, resumed: about 23 s on 2 loaded cores
def test_grid_runs_resumes_and_refuses_a_changed_config(tmp_path):
    path = grid_config(tmp_path)
    grid = Grid.from_file(path)
    out = run_grid(grid, progress=False)
    assert out["ran"] == 16 and out["already_done"] == 0
    files = sorted(p for p in (tmp_path / "out" / "runs").rglob("*.json") if p.name != "class_split.json")
    assert len(files) == 16
    doc = json.loads(files[0].read_text())
    assert doc["grid"]["name"] == "tiny" and len(doc["records"]) == 1 and doc["provenance"]
    split = json.loads((tmp_path / "out" / "runs" / "feats" / "class_split.json").read_text())
    assert split["unseen"] and "class_split" in split["note"]  # the split a rerun can pin
    # a finished grid does nothing; a lost run (an interrupted grid) is the only one run again
    assert run_grid(grid, progress=False)["ran"] == 0
    # files written before a config key existed count as done (the key takes its default)
    stored = json.loads(files[0].read_text())
    del stored["config"]["allow_small_classes"]
    files[0].write_text(json.dumps(stored))
    assert run_grid(grid, progress=False)["ran"] == 0
    lost = tmp_path / "out" / "runs" / "feats" / "gcrdp" / "shots1-seed0.json"
    before = json.loads(lost.read_text())["records"][0]["test"]
    lost.unlink()
    again = run_grid(grid, progress=False)
    assert again["ran"] == 1 and again["already_done"] == 15
    assert json.loads(lost.read_text())["records"][0]["test"] == before  # same seed, same result
    # changing a cell's configuration is refused unless asked
    changed = Grid.from_file(
        grid_config(tmp_path, method_options={"gap-infonce": TINY, "gcrdp": {**TINY, "lr": 3e-3}, "gcrdp@k1": {**TINY, "n_components": 1}})
    )
    with pytest.raises(DataError, match="another configuration"):
        run_grid(changed, progress=False)
    assert run_grid(changed, progress=False, rerun_changed=True)["ran"] == 6  # the gcrdp cells


def test_report_tables_csv_and_figures(tmp_path):
    grid = Grid.from_file(grid_config(tmp_path))
    run_grid(grid, progress=False)
    results = collect_results([tmp_path / "out"])
    assert len(results) == 16
    records = gather(results)
    rows = aggregate(records)
    by = {(r["dataset"], r["method"], r["shots"]): r for r in rows}
    one = [r for r in records if r["dataset"] == "feats" and r["method"] == "gcrdp" and r["shots"] == 1]
    vals = 100 * np.array([r["test"]["mean_map"] for r in one])
    assert by[("feats", "gcrdp", 1)]["mean_mean"] == pytest.approx(vals.mean())
    assert by[("feats", "gcrdp", 1)]["mean_std"] == pytest.approx(vals.std(ddof=1))
    md = markdown_tables(rows, methods=["gcrdp", "gcrdp@k1", "gap-infonce"])
    feats_table = md.split("### feats-standard")[0]
    lines = [ln for ln in feats_table.splitlines() if ln.startswith("| `")]
    assert [ln.split("|")[1].strip() for ln in lines] == ["`gcrdp`", "`gcrdp@k1`", "`gap-infonce`"]
    # the best mean of each column is bold, and only values equal to it
    col = 3  # 0-shot mean
    cells = [ln.split("|")[col + 1].strip() for ln in lines]
    means = [float(c.strip("*").split(" ± ")[0]) for c in cells]
    assert [c.startswith("**") for c in cells] == [m == max(means) for m in means]
    assert "### feats-standard" in md and "| method | I2T | T2I | mean | seeds |" in md
    series = sensitivity_series(records)
    assert set(series[("feats", "gcrdp", "n_components")]) == {1, 3}
    out = write_report(results, tmp_path / "report")
    names = {Path(f).name for f in out["files"]}
    wide = list(csv.reader(open(tmp_path / "report" / "results_wide.csv")))
    assert wide[0][:4] == ["method", "feats 0-shot I2T", "feats 0-shot T2I", "feats 0-shot mean"]
    assert "feats-standard 0-shot mean" in wide[0] and len(wide) == 1 + 3
    k1 = next(row for row in wide if row[0] == "gcrdp@k1")
    assert k1[wide[0].index("feats-standard 0-shot mean")] == "–"  # skipped there
    assert {"results.md", "results.csv", "results_wide.csv", "map_vs_shots_feats.png", "sensitivity_gcrdp_n_components_feats.png"} <= names
    for f in out["files"]:
        if f.endswith(".png"):
            assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "report" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    # the same cell twice is an error
    with pytest.raises(DataError, match="Two results for"):
        gather(results + results[:1])


def test_cli_experiment_report_and_embedding_map(tmp_path, capsys):
    path = grid_config(
        tmp_path,
        datasets={"feats": {"dataset": "features", "dataset_options": {"path": "f.npz"}}},
        skip=[],
        methods=["gap-infonce"],
        method_options={"gap-infonce": TINY},
        defaults={"shots": [1], "seeds": [0]},
    )
    code, out, err = run_cli(capsys, "experiment", path, "-q")
    assert code == 0, err
    assert "1 run(s) done now, 0 were already done" in out
    code, out, err = run_cli(capsys, "experiment", path, "-q")
    assert code == 0 and "0 run(s) done now, 1 were already done" in out
    code, out, err = run_cli(
        capsys,
        "train",
        "--features",
        tmp_path / "f.npz",
        "--method",
        "gcrdp",
        "--shots",
        "1",
        "--option",
        "max_epochs=2",
        "--checkpoint-dir",
        tmp_path / "ckpt",
        "-q",
    )
    assert code == 0, err
    bench = {"batch": 8, "threads": 1, "times_ms": {"gap": [1.0, 1.1, 1.2], "gmm": [1.5, 1.6, 1.4]}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    code, out, err = run_cli(
        capsys,
        "report",
        tmp_path / "out",
        tmp_path / "ckpt" / "results.json",
        "--output",
        tmp_path / "rep",
        "--bench",
        tmp_path / "bench.json",
        "--embedding-map",
        tmp_path / "ckpt",
    )
    assert code == 0, err
    assert "### feats" in out and "### f" in out  # the grid label and the train run's dataset name
    for name in ("results.md", "results.csv", "step_time.png", "embedding_map.png"):
        assert (tmp_path / "rep" / name).is_file(), name
    code, out, err = run_cli(capsys, "report", tmp_path / "nothing-here", "--output", tmp_path / "rep2")
    assert_user_error(code, err, "not found")
    code, out, err = run_cli(capsys, "experiment", tmp_path / "missing.json")
    assert_user_error(code, err, "Grid config not found")


def test_optional_datasets_without_data_are_left_out_and_select(tmp_path):
    path = grid_config(
        tmp_path,
        datasets={
            "feats": {"dataset": "features", "dataset_options": {"path": "f.npz"}},
            "absent": {"dataset": "wikipedia", "optional": True, "dataset_options": {"root": "no/such/folder"}},
        },
        skip=[],
        methods=["gap-infonce"],
        method_options={"gap-infonce": TINY},
        defaults={"shots": [1], "seeds": [0]},
    )
    grid = Grid.from_file(path)
    assert not grid.available("absent") and grid.available("feats")
    assert [c.dataset for c in grid.cells()] == ["feats"]
    out = run_grid(grid, progress=False)
    assert out["ran"] == 1 and out["unavailable"] == ["absent"]
    grid.select(["absent"])
    assert grid.cells() == []
    with pytest.raises(ConfigError, match="Unknown dataset label"):
        grid.select(["nope"])
    with pytest.raises(ConfigError, match="'optional' must be true or false"):
        Grid.from_dict({"datasets": {"a": {"optional": "yes"}}, "methods": ["gap-infonce"]})


def test_select_methods(tmp_path):
    grid = Grid.from_file(grid_config(tmp_path))
    grid.select_methods(["gcrdp"])
    assert {c.method for c in grid.cells()} == {"gcrdp"}
    with pytest.raises(ConfigError, match="Unknown method entr"):
        grid.select_methods(["cca"])


def test_the_reproduce_grid_is_valid_and_names_registered_methods():
    from gcrdp.data import list_datasets
    from gcrdp.methods import METHODS
    from gcrdp.methods.presets import method_base_name
    from tests.conftest import REPO_ROOT as root

    grid = Grid.from_file(root / "configs" / "reproduce.json")
    assert set(grid.datasets) == {"twemoji", "wikipedia", "wikipedia-standard", "pascal-dscmr-test"}
    assert {"wikipedia", "wikipedia-standard", "pascal-dscmr-test"} == grid.optional
    for m in grid.methods:
        METHODS.get(method_base_name(m))
    for entry in grid.datasets.values():
        assert entry["dataset"] in list_datasets()
    assert grid.run_config("wikipedia-standard", "cca", 0, 0).protocol == "standard"
    assert grid.shots_for("pascal-dscmr-test") == [0, 1, 3]
    assert grid.seeds_for("twemoji") == [0, 1, 2, 3, 4]


def test_skip_rules_match_list_values(tmp_path):
    grid = Grid.from_file(grid_config(tmp_path, skip=[{"method": ["gcrdp", "gcrdp@k1"], "shots": [0]}]))
    cells = grid.cells()
    assert not any(c.method in ("gcrdp", "gcrdp@k1") and c.shots == 0 for c in cells)
    assert any(c.method == "gcrdp" and c.shots == 1 for c in cells)
    assert any(c.method == "gap-infonce" and c.shots == 0 for c in cells)


def test_sensitivity_pairs_records_written_before_and_after_an_option_was_added():
    """A plain entry's record from before ``precision``/``pca_dim`` existed and a variant's from
    after differ in its one plotted option only: the added options at their default are absent."""
    old = {"method": "gap-infonce", "latent_dim": 256, "temperature": 0.2, "lr": 0.001}
    new = {**old, "temperature": 0.1, "precision": "float32", "pca_dim": None}

    def rec(method: str, cfg: dict) -> dict:
        return {"dataset": "d", "method": method, "method_config": cfg, "shots": 1, "test": {"mean_map": 0.3}}

    series = sensitivity_series([rec("gap-infonce", old), rec("gap-infonce@t01", new)])
    assert set(series[("d", "gap-infonce", "temperature")]) == {0.2, 0.1}
    # a variant that really changes an added option differs in two: not a one-option series
    both = {**new, "precision": "bf16"}
    assert ("d", "gap-infonce", "temperature") not in sensitivity_series([rec("gap-infonce", old), rec("gap-infonce@x", both)])
