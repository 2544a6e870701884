"""The README quotes no figure that no run produced: its demo block is what
scripts/readme_demo.py renders from docs/demo/results.json (written by `make readme`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_demo", ROOT / "scripts" / "readme_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_demo_block_is_rendered_from_the_kept_results():
    script = _script()
    assert script.main(["--check"]) == 0, "README.md's demo block differs: run `make demo && make readme`"


def test_kept_results_are_the_demo_command_and_render_its_table():
    kept = json.loads((ROOT / "docs" / "demo" / "results.json").read_text(encoding="utf-8"))
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    demo_line = next(line for line in makefile.splitlines() if "gcrdp run" in line and "DEMO_DIR" in line)
    cfg = kept["config"]
    assert f"--methods {' '.join(cfg['methods'])}" in demo_line
    assert f"--shots {' '.join(map(str, cfg['shots']))}" in demo_line
    assert f"--seeds {' '.join(map(str, cfg['seeds']))}" in demo_line
    assert f"--dataset {cfg['dataset']}" in demo_line
    block = _script().render(kept)
    for row in kept["summary"]:
        assert f"| {row['method']}" in block and f"{100 * row['mean_map_mean']:5.1f}" in block


def test_check_fails_when_a_figure_is_changed(tmp_path, monkeypatch):
    script = _script()
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    kept = json.loads((ROOT / "docs" / "demo" / "results.json").read_text(encoding="utf-8"))
    first = f"{100 * kept['summary'][0]['mean_map_mean']:5.1f}"
    readme.write_text(text.replace(first, "99.9", 1), encoding="utf-8")
    monkeypatch.setattr(script, "README", readme)
    assert script.main(["--check"]) == 1


def test_readme_methods_block_is_rendered_from_the_results_csv():
    spec = importlib.util.spec_from_file_location("readme_methods", ROOT / "scripts" / "readme_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "README.md's methods block differs: run scripts/readme_methods.py"


def test_kept_demo_results_come_from_the_current_fit_code():
    """docs/demo/results.json records the digest of the code its fits depend on (features,
    splits, models, losses, training, metrics); once that code changes, the README's demo
    figures come from other code than the tree's and must be made again."""
    from gcrdp.utils.provenance import fit_code_digest

    kept = json.loads((ROOT / "docs" / "demo" / "results.json").read_text(encoding="utf-8"))
    assert kept["provenance"].get("fit_code") == fit_code_digest(), (
        "docs/demo/results.json comes from other fit code than this tree's: run `make demo FRESH=1 && make readme`"
    )
    records = kept["records"]
    cfg = kept["config"]
    assert len(records) == len(cfg["methods"]) * len(cfg["shots"]) * len(cfg["seeds"])
    for row in kept["summary"]:  # the summary is the mean of the kept fits
        fits = [r for r in records if (r["method"], r["shots"]) == (row["method"], row["shots"])]
        assert abs(sum(r["test"]["mean_map"] for r in fits) / len(fits) - row["mean_map_mean"]) < 1e-9


def test_the_fit_code_digest_changes_with_the_code(tmp_path):
    import shutil

    from gcrdp.utils.provenance import fit_code_digest

    src = ROOT / "src" / "gcrdp"
    copy = tmp_path / "gcrdp"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert fit_code_digest(copy) == fit_code_digest(src)
    (copy / "cli" / "main.py").write_text("# the command line is not fit code\n", encoding="utf-8")
    assert fit_code_digest(copy) == fit_code_digest(src)
    loss = copy / "losses" / "infonce.py"
    loss.write_text(loss.read_text(encoding="utf-8") + "\n# changed\n", encoding="utf-8")
    assert fit_code_digest(copy) != fit_code_digest(src)
