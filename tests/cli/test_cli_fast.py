"""The command line answers at once (issue 20, items 4 and 8): ``--help``, a mistyped flag of a
command without method options, the dataset name, and method names and option keys (from the
table generated from the method configs, gcrdp.cli.method_options) import none of the heavy
libraries; the library's own check (values too) runs before any data is loaded; an unknown flag is reported by its command with the
nearest flag or the ``--option`` form; every command has a description; loaders' docstrings
print as plain text."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from gcrdp.cli import main
from gcrdp.cli.common import DEFAULT_METHODS, _method_options, check_methods, plain_text
from gcrdp.cli.main import build_parser
from gcrdp.errors import ConfigError
from tests.cli.test_cli import assert_user_error, run_cli
from tests.conftest import REPO_ROOT

HEAVY = ("torch", "sentence_transformers", "transformers", "faiss", "fastapi")


def _in_fresh_python(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON line, returned."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- lazy imports
def test_importing_the_cli_imports_no_heavy_library():
    got = _in_fresh_python(
        f"""
        import json, sys
        import gcrdp, gcrdp.cli.main
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
        """
    )
    assert got == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--help"], None),
        (["run", "--help"], None),
        (["extract", "--epochs", "5"], "unrecognized arguments: --epochs 5"),
        (["run", "--dataset", "twemjoi", "--methods", "gcrdp"], "Unknown dataset 'twemjoi' (did you mean 'twemoji'?)"),
        (["run", "--shots", "-1"], "Shots must be >= 0"),
        (["run", "--jobs", "0"], "--jobs must be >= 1"),
        (["run", "--val-fraction", "1.5"], "must be in [0, 1)"),
        # method names and option keys: from the generated table (gcrdp.cli.method_options)
        (["run", "--epochs", "5"], "--option max_epochs=5"),
        (["run", "--methods", "gap-infonce", "--option", "gap-infonce.epochs=3"], "'max_epochs'"),
        (["run", "--option", "epochs=3"], "'max_epochs'"),
        (["train", "--checkpoint-dir", "unused", "--option", "lrr=1"], "'lr'"),
        (["run", "--methods", "gcrpd"], "Unknown method 'gcrpd' (did you mean 'gcrdp'?)"),
        (["run", "--methods", "gcrdp@typo"], "neither a preset nor given options"),
        (["run", "--methods", "flex-clip", "--option", "flex-clip.generator.lrr=1"], "(did you mean 'generator.lr'?)"),
        (["run", "--methods", "flex-clip", "gcrdp", "--option", "generator.lr=1"], "Method 'gcrdp' has no option(s) 'generator.lr'"),
    ],
)
def test_help_and_argument_errors_answer_before_torch_is_imported(argv, needle, tmp_path):
    """The issue measured 3–4 s for a mistyped flag and 8–11 s for an unknown --option: each of
    these must be answered without importing torch (docs/benchmarks.md, "CLI start-up")."""
    if argv[0] == "run" and "--help" not in argv:
        argv = [*argv, "--output-dir", str(tmp_path / "o")]
    got = _in_fresh_python(
        f"""
        import contextlib, io, json, sys
        from gcrdp.cli.main import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main({argv!r})
        print(json.dumps({{"code": code, "err": err.getvalue(), "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
        """
    )
    assert got["heavy"] == [], got
    if needle is None:
        assert got["code"] == 0, got
    else:
        assert got["code"] == 2 and needle in got["err"], got
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- methods and their options
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--methods", "gcrpd"], "Unknown method 'gcrpd' (did you mean 'gcrdp'?)"),
        (["run", "--methods", "flex-clip", "--option", "flex-clip.generator.lr=-1"], "generator.lr must be > 0"),  # a value
        (["run", "--seeds", "1", "1"], "must not repeat"),  # a RunConfig check
    ],
)
def test_method_and_option_errors_answer_before_any_data_is_loaded(argv, needle, tmp_path, capsys):
    """The library's checks (values read from the method configs, which imports torch; a whole
    RunConfig), before the dataset or its features are loaded: nothing is written."""
    if argv[0] == "run":
        argv = [*argv, "--output-dir", str(tmp_path / "o")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_the_generated_option_table_is_what_the_method_configs_give():
    """gcrdp.cli.method_options is generated (scripts/gen_method_options.py), never edited: after a
    change to a method's options this fails until it is regenerated."""
    import importlib.util

    from gcrdp.cli.method_options import METHOD_OPTIONS, PRESETS, RENAMED_OPTIONS
    from gcrdp.methods import METHODS, build_method
    from gcrdp.methods.base import method_tags
    from gcrdp.methods.presets import PRESETS as library_presets
    from gcrdp.methods.presets import option_keys

    assert sorted(METHOD_OPTIONS) == METHODS.names()
    for name in METHODS.names():
        assert list(METHOD_OPTIONS[name]) == option_keys(name), f"{name}: run python scripts/gen_method_options.py"
        assert set(RENAMED_OPTIONS.get(name, ())) == set(method_tags(build_method(name, {})).renamed_options), name
    assert set(PRESETS) == set(library_presets)
    spec = importlib.util.spec_from_file_location("gen_method_options", REPO_ROOT / "scripts" / "gen_method_options.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.TARGET.read_text(encoding="utf-8") == gen.render(), "run python scripts/gen_method_options.py"


def test_the_command_line_reads_the_options_from_the_method_configs():
    from gcrdp.experiments.config import RunConfig
    from gcrdp.methods import METHODS, build_method
    from gcrdp.methods.base import flatten_options
    from gcrdp.methods.presets import PRESETS, option_keys

    for name in METHODS.names():
        assert option_keys(name) == sorted(set(flatten_options(build_method(name, {}).config_dict())) - {"method"}), name
        with pytest.raises(ConfigError, match="no option.*'not_an_option'"):
            check_methods([name], {name: {"not_an_option": 1}})
    assert "generator.lr" in option_keys("flex-clip") and "gen_lr" not in option_keys("flex-clip")
    check_methods(["flex-clip"], {"flex-clip": {"generator": {"lr": 1e-3}, "generator.steps": 3}})
    with pytest.warns(FutureWarning, match="'gen_lr' are deprecated; use 'generator.lr'"):
        check_methods(["flex-clip"], {"flex-clip": {"gen_lr": 1e-3}})  # the old name: accepted, with a warning
    with pytest.raises(ConfigError, match="generator.lr must be > 0"):
        check_methods(["flex-clip"], {"flex-clip": {"generator.lr": -1}})
    check_methods(list(PRESETS), {})
    assert list(DEFAULT_METHODS) == RunConfig().methods


def test_a_dotted_option_key_goes_to_its_method_and_group():
    methods = ["gap-infonce", "flex-clip", "gcrdp@k0.5"]
    got = _method_options(["lr=1", "flex-clip.generator.lr=2", "gcrdp@k0.5.lam=0.3", "flex-clip.max_epochs=3"], methods)
    assert got == {
        "gap-infonce": {"lr": 1},
        "flex-clip": {"lr": 1, "generator.lr": 2, "max_epochs": 3},
        "gcrdp@k0.5": {"lr": 1, "lam": 0.3},
    }
    with pytest.raises(ConfigError, match="method 'gap-infonse' is not among --methods"):
        _method_options(["gap-infonse.lr=1"], methods)
    with pytest.raises(ConfigError, match="method 'gcrdp@k5' is not among --methods"):
        _method_options(["gcrdp@k5.lr=1"], methods)
    assert _method_options(["generator.lr=1"], ["flex-clip"]) == {"flex-clip": {"generator.lr": 1}}  # every method's
    with pytest.raises(ConfigError, match="method 'generator' is not among --methods"):
        _method_options(["generator.lr=1"], ["gcrdp"])  # no method run has that group


def test_check_entry_refuses_an_unknown_option_or_a_bad_value_before_any_data_is_loaded():
    from gcrdp.experiments.config import RunConfig
    from gcrdp.experiments.runner import run_experiment

    bad_key = RunConfig(dataset="no-such-dataset", methods=["gap-infonce"], method_options={"gap-infonce": {"epochs": 3}})
    with pytest.raises(ConfigError, match=r"no option\(s\) 'epochs' \(did you mean 'max_epochs'\?\)\. Its options: .*max_epochs"):
        run_experiment(bad_key, progress=False)
    bad_value = RunConfig(dataset="no-such-dataset", methods=["gap-infonce"], method_options={"gap-infonce": {"lr": -1}})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        run_experiment(bad_value, progress=False)


def test_two_unknown_options_each_get_their_nearest():
    with pytest.raises(ConfigError) as err:
        check_methods(["gcrdp"], {"gcrdp": {"n_component": 5, "lerning_rate": 1, "zzz": 0}})
    assert "(did you mean 'n_components' for 'n_component'" in str(err.value)
    assert "'zzz'" in str(err.value) and "Its options: alpha," in str(err.value)


# ----------------------------------------------------------------------------- flags and commands
def test_an_unknown_flag_is_reported_by_its_command_with_the_option_form(capsys):
    code, _, err = run_cli(capsys, "run", "--epochs", "5")
    assert_user_error(code, err, "usage: gcrdp run ", "gcrdp run: error: unrecognized arguments: --epochs 5", "--option max_epochs=5")
    assert "usage: gcrdp [-h]" not in err
    code, _, err = run_cli(capsys, "run", "--batch-size=8", "--lr", "1e-3")
    assert_user_error(code, err, "--option batch_size=8", "--option lr=1e-3")
    code, _, err = run_cli(capsys, "run", "--methdos", "gcrdp")
    assert_user_error(code, err, "usage: gcrdp run ", "--methdos: did you mean --methods?")
    code, _, err = run_cli(capsys, "train", "--checkpoint-dir", "unused", "--seeds", "1")
    assert_user_error(code, err, "usage: gcrdp train ", "--seeds: did you mean --seed?")
    # a command without --option gets no pointer to it
    code, _, err = run_cli(capsys, "extract", "--epochs", "3")
    assert_user_error(code, err, "usage: gcrdp extract ", "unrecognized arguments: --epochs 3")
    assert "--option" not in err
    code, _, err = run_cli(capsys, "--frobnicate")
    assert_user_error(code, err, "usage: gcrdp [-h]", "unrecognized arguments: --frobnicate")


def test_no_command_lists_the_commands_and_an_unknown_one_is_named(capsys):
    parser = build_parser()
    for argv in ([], ["-v"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == ""
        for name, text in parser.commands.helps.items():
            assert f"  {name}" in err and text in err
    code, _, err = run_cli(capsys, "rnu", "--shots", "1")
    assert_user_error(code, err, "unknown command 'rnu' (did you mean 'run'?)", "search")


def test_every_command_has_a_description(capsys):
    parser = build_parser()
    assert {"run", "train", "search", "serve", "datasets"} <= set(parser.commands.choices)
    for name, sub in parser.commands.choices.items():
        assert sub.description and sub.description[0].isupper(), name
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert sub.description.split()[0] in out.split("\n\n", 2)[1], name
    assert parser.commands.choices["run"].description.startswith("Few-shot retrieval:")
    assert parser.commands.choices["search"].description.startswith("Query an index")


def test_train_and_evaluate_name_the_dataset(tmp_path, capsys):
    import numpy as np

    from tests.cli.test_cli_data import write_features

    path = write_features(tmp_path / "myfeats.npz")
    classes = [str(c) for c in np.load(path)["classes"]]
    split = {"dataset": "myfeats", "version": 1, "seen": classes[:4], "unseen": classes[4:]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    common = ["--features", path, "--class-split", tmp_path / "split.json", "--cache-dir", tmp_path / "c", "-q"]
    code, out, err = run_cli(
        capsys, "train", *common, "--method", "gap-infonce", "--shots", "1", "--option", "max_epochs=2", "--checkpoint-dir", tmp_path / "ck"
    )
    assert code == 0, err
    assert out.startswith("gap-infonce on myfeats, protocol fewshot, shots=1")
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", tmp_path / "ck", "-q")
    assert code == 0, err
    assert out.startswith("gap-infonce on myfeats, protocol fewshot")


# ----------------------------------------------------------------------------- docstrings as plain text
def test_plain_text_drops_rest_markup_and_keeps_literal_blocks_and_tables():
    doc = textwrap.dedent(
        """\
        Your data (dataset ``manifest``, see :func:`gcrdp.data.load` and :class:`~gcrdp.errors.DataError`).

        **Split.** A ``split`` column, *if* given; `the docs <https://example.org>`_ and `x`.
        A literal ``over
        two lines`` too.

        =========  =====================
        ``image``  path of the image
        ``label``  one class name, or
                   several (``a|b``)
        =========  =====================

        Example::

            image,text,label
            **not bold** ``kept``

        Back to text ::

            verbatim
        end.
        """
    )
    got = plain_text(doc)
    assert got.splitlines()[0] == "Your data (dataset manifest, see gcrdp.data.load and DataError)."
    assert "Split. A split column, if given; the docs (https://example.org) and x." in got
    assert "A literal over\ntwo lines too." in got
    assert "image  path of the image\nlabel  one class name, or\n       several (a|b)\n" in got
    assert "=====" not in got
    assert "Example:\n\n    image,text,label\n    **not bold** ``kept``\n" in got
    assert "Back to text\n\n    verbatim\nend." in got


def test_datasets_manifest_prints_plain_text(capsys):
    code, out, err = run_cli(capsys, "datasets", "manifest")
    assert code == 0, err
    doc = out.split("\nOptions (")[0]
    body = [line for line in doc.splitlines() if not line.startswith("    ")]  # literal blocks are verbatim
    assert not any("``" in line or ":func:" in line or ":class:" in line or "====" in line for line in body), doc
    assert not any(line.rstrip().endswith("::") for line in body)
    assert "\n\n" in doc  # paragraphs kept
    code, out, err = run_cli(capsys, "datasets")
    assert code == 0 and "``" not in out
