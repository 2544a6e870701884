"""A new user's first hour (issue 11): data problems found before any work, a stable generated
class split written next to the results, and the smaller surprises."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from gcrdp.data import ClassSplit, Dataset, Sample, generate_class_split
from gcrdp.data.checks import (
    check_class_sizes,
    duplicate_images,
    edit_distance,
    image_size_problems,
    near_duplicate_labels,
    small_classes,
)
from gcrdp.data.inspect import format_summary, summarize_dataset
from gcrdp.errors import DataError

NAMES = [f"class-{i:02d}" for i in range(40)]


# --------------------------------------------------------------------------- stable split
def test_generated_split_is_stable_when_classes_are_added_or_removed():
    full = generate_class_split(NAMES, dataset="x", seed=3)
    side = {c: "unseen" for c in full.unseen} | {c: "seen" for c in full.seen}
    for extra in (["acitons"], ["zz-new", "another one"], []):
        for drop in ([], NAMES[:5], NAMES[7:9]):
            names = [c for c in NAMES if c not in drop] + extra
            s = generate_class_split(names, dataset="x", seed=3)
            for c in names:
                if c in side:
                    assert (c in s.unseen) == (side[c] == "unseen"), (c, extra, drop)
    # roughly half unseen, and another seed is another draw
    assert 12 <= len(full.unseen) <= 28
    assert generate_class_split(NAMES, dataset="x", seed=4).unseen != full.unseen


def test_ordered_split_keeps_exact_counts_and_both_sides_always_exist():
    s = generate_class_split(NAMES[:10], dataset="x", seed=0, method="ordered")
    assert len(s.unseen) == 5 and s.version == "generated-seed0"
    for n in (2, 3, 4):
        for seed in range(20):
            h = generate_class_split(NAMES[:n], dataset="x", seed=seed)
            assert h.seen and h.unseen and h.version == f"hashed-seed{seed}"
    assert generate_class_split(NAMES[:4], dataset="x", unseen_fraction=0.0).unseen == ()
    with pytest.raises(Exception, match="split method"):
        generate_class_split(NAMES, dataset="x", method="random")


def test_generated_split_hash_rule_matches_a_naive_reference():
    import hashlib

    s = generate_class_split(NAMES, dataset="x", seed=7, unseen_fraction=0.3)
    naive = sorted(c for c in NAMES if int(hashlib.sha256(f"7\0{c}".encode()).hexdigest(), 16) / 2**256 < 0.3)
    assert list(s.unseen) == naive


# --------------------------------------------------------------------------- checks
def _ds(counts: dict[str, tuple[int, int]], unseen=()) -> Dataset:
    samples = []
    for c, (n_train, n_test) in counts.items():
        for i in range(n_train + n_test):
            samples.append(Sample(f"{c}-{i}", f"text {c} {i}", (c,), "train" if i < n_train else "test"))
    classes = list(counts)
    split = ClassSplit("t", "1", tuple(c for c in classes if c not in unseen), tuple(unseen))
    return Dataset("t", samples, classes, split)


def test_small_classes_name_the_class_and_its_rows():
    ds = _ds({"actions": (8, 2), "acitons": (1, 0), "apps": (6, 2), "games": (3, 1), "tools": (5, 0)}, unseen=("games", "tools", "apps"))
    small = {sc.name: sc for sc in small_classes(ds, [0, 1, 5])}
    assert set(small) == {"acitons", "games", "tools"}
    assert small["acitons"].sample_ids == ("acitons-0",) and small["acitons"].need == 2
    assert small["games"].need == 6  # 5 shots + a test pair
    assert "test pair" in small["tools"].reason
    with pytest.raises(DataError) as err:
        check_class_sizes(ds, [0, 1, 5])
    msg = str(err.value)
    assert "'acitons' has 1 item" in msg and "'acitons-0'" in msg and "--allow-small-classes" in msg
    assert "'acitons' (1) ~ 'actions' (10)" in msg  # the typo is named beside its class
    assert len(check_class_sizes(ds, [0, 1, 5], allow=True)) == 3
    # standard protocol: only the 2-item floor
    assert [sc.name for sc in small_classes(ds, [5], "standard")] == ["acitons"]


def test_edit_distance_against_a_naive_reference():
    def naive(a, b):  # optimal string alignment, full table
        d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a) + 1):
            d[i][0] = i
        for j in range(len(b) + 1):
            d[0][j] = j
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
                if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                    d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
        return d[-1][-1]

    rng = np.random.default_rng(0)
    for _ in range(300):
        a = "".join(rng.choice(list("abc"), rng.integers(0, 7)))
        b = "".join(rng.choice(list("abc"), rng.integers(0, 7)))
        assert edit_distance(a, b, 2) == min(naive(a, b), 3), (a, b)


def test_near_duplicate_labels():
    classes = [
        "actions",
        "acitons",
        "Web Browser",
        "web_browser",
        "cat",
        "car",
        "animal-bird",
        "animal-bug",
        "person",
        "persons",
        "international-organisation",
        "international-organization",
    ]
    counts = {"actions": 40, "acitons": 1, "Web Browser": 3, "web_browser": 9}
    pairs = {(a, b): why for a, _, b, _, why in near_duplicate_labels(classes, counts)}
    assert pairs[("acitons", "actions")] == "1 edit"  # a transposition, smaller class first
    assert pairs[("Web Browser", "web_browser")] == "case/spacing"
    assert ("person", "persons") in pairs
    assert ("international-organisation", "international-organization") in pairs
    assert not {("car", "cat"), ("cat", "car"), ("animal-bird", "animal-bug"), ("animal-bug", "animal-bird")} & set(pairs)


def test_duplicate_and_odd_sized_images(tmp_path):
    from PIL import Image

    paths = []
    for name, size, colour in (
        ("a", (64, 64), "red"),
        ("b", (64, 64), "red"),
        ("c", (64, 64), "blue"),
        ("tiny", (8, 40), "red"),
        ("d", (64, 64), "red"),
    ):
        p = tmp_path / f"{name}.png"
        Image.new("RGB", size, colour).save(p)
        paths.append(p)
    assert duplicate_images(paths) == [[0, 1, 4]]
    probs = image_size_problems(paths + [None, tmp_path / "missing.png"])
    assert probs == [(3, "tiny (8×40 px, under 16 px on a side)")]


def test_inspect_reports_typos_small_classes_and_duplicates(tmp_path):
    from PIL import Image

    rows = []
    for k, (c, n) in enumerate((("actions", 8), ("apps", 8), ("games", 8), ("tools", 8), ("acitons", 1))):
        for i in range(n):
            p = tmp_path / f"{c}{i}.png"
            Image.new("RGB", (32, 32), (10 * i, 40 * k, 0) if c != "acitons" else (0, 0, 0)).save(p)
            rows.append(Sample(f"{c}{i}", f"{c} {i}", (c,), "test" if i % 4 == 0 else "train", p))
    ds = Dataset(
        "icons",
        rows,
        ["actions", "apps", "games", "tools", "acitons"],
        ClassSplit("icons", "1", ("actions", "apps", "acitons"), ("games", "tools")),
    )
    s = summarize_dataset(ds, shots=5)
    text = format_summary(s)
    assert "problems found: none" not in text
    assert "seen class 'acitons' has 1 item" in text and "'acitons0'" in text
    assert "labels 'acitons' (1 items) and 'actions' (8 items) differ only by 1 edit" in text
    assert s["images"]["duplicates"] == 1  # actions0 and acitons0 are both black
    assert [d["class"] for d in s["small_classes"]] == ["acitons"]
    json.dumps(s)  # JSON-ready


# --------------------------------------------------------------------------- CLI
def _manifest(root: Path, extra_rows=()) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, c in enumerate(["red", "purple", "cyan", "magenta", "green"]):  # a usable generated split at split_seed 0: 3 seen, 2 unseen
        for i in range(6):
            p = root / f"{c}{i}.png"
            Image.new("RGB", (24, 24), (40 * k, 10 * i, 200 - 40 * k)).save(p)
            rows.append({"image": p.name, "text": f"a {c} thing number {i}", "label": c, "split": "test" if i % 3 == 0 else "train"})
    rows.extend(extra_rows)
    path = root / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_run_stops_on_a_label_typo_before_any_work_unless_allowed(tmp_path, capsys):
    from gcrdp.cli.main import main

    manifest = _manifest(tmp_path / "d", [{"image": "red0.png", "text": "a red typo", "label": "rde", "split": "train"}])
    args = [
        "run",
        "--manifest",
        str(manifest),
        "--methods",
        "cca",
        "--shots",
        "1",
        "--seeds",
        "0",
        "--output-dir",
        str(tmp_path / "o"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "-q",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "class 'rde' has 1 item" in err and "--allow-small-classes" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()  # nothing extracted
    assert main(["inspect", "--manifest", str(manifest)]) == 0
    assert "class 'rde' has 1 item" in capsys.readouterr().out


def test_class_split_file_is_written_and_pins_a_rerun(tmp_path):
    from gcrdp.experiments import RunConfig, run_experiment
    from tests.helpers import toy_run_dataset

    ds, feats = toy_run_dataset()
    cfg = RunConfig(dataset="toy", shots=[1], seeds=[0], methods=["cca"], device="cpu")
    res = run_experiment(cfg, tmp_path / "o", progress=False, dataset=ds, features=feats)
    doc = json.loads((tmp_path / "o" / "class_split.json").read_text())
    assert doc["seen"] == list(ds.class_split.seen) and doc["unseen"] == list(ds.class_split.unseen)
    assert "--class-split" in doc["note"]
    assert res["resolved"]["class_split_file"].endswith("class_split.json")
    assert ClassSplit.from_json(tmp_path / "o" / "class_split.json") == ds.class_split


# --------------------------------------------------------------------------- resume, progress
def _toy_cfg(**kw):
    from gcrdp.experiments import RunConfig

    base = dict(
        dataset="toy",
        shots=[1],
        seeds=[0, 1],
        methods=["cca", "gap-infonce"],
        device="cpu",
        method_options={"gap-infonce": {"max_epochs": 3, "hidden_dim": 16, "latent_dim": 8}},
    )
    return RunConfig(**{**base, **kw})


def test_run_resumes_finished_fits_and_can_grow(tmp_path):
    from gcrdp.errors import ConfigError
    from gcrdp.experiments import run_experiment
    from tests.helpers import toy_run_dataset

    ds, feats = toy_run_dataset()
    fresh = []
    first = run_experiment(_toy_cfg(), tmp_path / "o", progress=False, dataset=ds, features=feats, on_record=fresh.append)
    assert len(fresh) == 4 and len(list((tmp_path / "o" / "fits").rglob("*.json"))) == 4
    # a killed run: drop results.json and one fit; the same call refits only that one
    (tmp_path / "o" / "results.json").unlink()
    (tmp_path / "o" / "fits" / "gap-infonce" / "shots1-seed1.json").unlink()
    again = []
    second = run_experiment(_toy_cfg(), tmp_path / "o", progress=False, dataset=ds, features=feats, on_record=again.append)
    assert [(r["method"], r["seed"]) for r in again] == [("gap-infonce", 1)]
    assert [r["test"] for r in second["records"]] == [r["test"] for r in first["records"]]
    assert [(r["method"], r["seed"]) for r in second["records"]] == [(r["method"], r["seed"]) for r in first["records"]]
    # a run that grows: one more seed runs only the new fits
    more = []
    run_experiment(_toy_cfg(seeds=[0, 1, 2]), tmp_path / "o", progress=False, dataset=ds, features=feats, on_record=more.append)
    assert sorted((r["method"], r["seed"]) for r in more) == [("cca", 2), ("gap-infonce", 2)]
    # another configuration in the same folder is refused, unless resume=False
    other = _toy_cfg(method_options={"gap-infonce": {"max_epochs": 4, "hidden_dim": 16, "latent_dim": 8}})
    with pytest.raises(ConfigError, match="another configuration.*--no-resume"):
        run_experiment(other, tmp_path / "o", progress=False, dataset=ds, features=feats)
    redo = []
    run_experiment(other, tmp_path / "o", progress=False, dataset=ds, features=feats, resume=False, on_record=redo.append)
    assert len(redo) == 4


def test_progress_lines_and_epoch_status(tmp_path, capfd):
    from gcrdp.experiments import run_experiment
    from gcrdp.experiments.progress import epoch_status, fmt_seconds
    from gcrdp.training.loop import observe_epochs
    from tests.helpers import toy_run_dataset

    ds, feats = toy_run_dataset()
    seen = []
    with observe_epochs(seen.append):
        run_experiment(_toy_cfg(methods=["gap-infonce"], seeds=[0]), None, progress=True, dataset=ds, features=feats)
    assert seen[0]["start"] and seen[0]["epoch"] == 0
    assert [i["epoch"] for i in seen[1:]] == list(range(1, len(seen)))
    assert all(i["loss"] is not None and i["val_map"] is not None for i in seen[1:])
    err = capfd.readouterr().err  # not a terminal: no bar, but one line per finished fit
    assert "[1/1] gap-infonce shots=1 seed=0: I2T" in err and "val " in err
    info = {
        "epoch": 12,
        "max_epochs": 100,
        "loss": 2.3141,
        "val_map": 0.312,
        "best_val_map": 0.32,
        "best_epoch": 9,
        "bad_epochs": 3,
        "patience": 5,
        "epoch_seconds": 4.0,
        "stopped": False,
    }
    assert epoch_status(info) == "epoch 12/100 loss 2.314 val 31.2 (best 32.0 @9) ≥8s left"
    assert fmt_seconds(185) == "3m05s" and fmt_seconds(3720) == "1h02m" and fmt_seconds(None) == "?"


def test_files_follow_the_umask(tmp_path):
    import os

    from gcrdp.utils.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_one_seed_has_no_spread_and_the_title_names_the_set():
    from gcrdp.experiments import format_table
    from gcrdp.experiments.runner import summarize

    rec = {
        "method": "m",
        "shots": 1,
        "seed": 0,
        "test": {"i2t": {"map": 0.5}, "t2i": {"map": 0.4}, "mean_map": 0.45},
        "fit": {"best_val_map": None, "seconds": 1.0},
        "chance": {"i2t": 0.1, "t2i": 0.1},
    }
    (row,) = summarize([rec])
    assert row["mean_map_std"] is None
    table = format_table([row])
    assert "±" not in table and "45.0" in table


def test_manifest_folder_and_bad_rows_messages(tmp_path, capsys):
    from gcrdp.cli.main import main

    manifest = _manifest(tmp_path / "d")
    assert main(["inspect", "--manifest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a file (it holds manifest.csv)" in err and "not found" not in err
    manifest.write_text(manifest.read_text() + "nothere.png,a text,red,train\n")
    assert main(["inspect", "--manifest", str(manifest)]) == 2
    assert "--skip-bad" in capsys.readouterr().err


def test_evaluate_accepts_class_names_as_labels(tmp_path, capsys):
    from gcrdp.cli.main import main

    rng = np.random.default_rng(0)
    names = np.array(["cat", "dog", "owl"] * 4)
    img = rng.normal(size=(12, 8)).astype(np.float32)
    np.savez(tmp_path / "q.npz", image=img, text=img + 0.1 * rng.normal(size=img.shape), labels=names)
    np.savez(tmp_path / "ids.npz", image=img, text=np.load(tmp_path / "q.npz")["text"], labels=np.unique(names, return_inverse=True)[1])
    assert main(["evaluate", str(tmp_path / "q.npz")]) == 0
    by_name = capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "ids.npz")]) == 0
    assert capsys.readouterr().out == by_name  # the same metrics as with indices
    from gcrdp.errors import DataError
    from gcrdp.evaluation import cross_modal_metrics

    with pytest.raises(DataError, match="class names.*np.unique"):
        cross_modal_metrics(img, img, names, img, img, names)


def test_the_default_method_is_the_one_the_tool_is_named_after():
    from gcrdp.cli.main import build_parser
    from gcrdp.experiments import RunConfig

    assert RunConfig().methods == ["gcrdp"]
    helps = {a.dest: a.help for g in build_parser()._subparsers._group_actions[0].choices["run"]._actions for a in [g] if a.help}
    assert "default: gcrdp" in helps["methods"]
    for flag in ("extract_batch_size", "protocol", "val_fraction", "allow_small_classes", "resume"):
        assert helps.get(flag), flag


def test_split_versions_read_as_names_or_numbers():
    from gcrdp.data.types import split_label

    assert split_label("1") == "v1" and split_label("hashed-seed0") == "hashed-seed0"
    ds = _ds({"a": (4, 2), "b": (4, 2), "c": (4, 2), "d": (4, 2)}, unseen=("c", "d"))
    ds = Dataset(ds.name, ds.samples, ds.classes, generate_class_split(ds.classes, dataset="t"))
    text = format_summary(summarize_dataset(ds, shots=1))
    assert "class split hashed-seed0:" in text and "vhashed" not in text


def test_fit_keys_follow_the_data_and_not_the_paths(tmp_path):
    from gcrdp.experiments import run_experiment
    from gcrdp.experiments.runner import fit_key
    from tests.helpers import toy_run_dataset

    ds, feats = toy_run_dataset()
    cfg = _toy_cfg()
    base = fit_key(cfg, "cca", 1, 0, "k", ds)
    assert fit_key(_toy_cfg(cache_dir="/elsewhere", extract_batch_size=8, allow_small_classes=True), "cca", 1, 0, "k", ds) == base
    relabelled = Dataset(
        ds.name,
        [Sample(s.id, s.text, ("c1",) if i == 0 else s.labels, s.split) for i, s in enumerate(ds.samples)],
        ds.classes,
        ds.class_split,
        features=feats,
    )
    assert fit_key(cfg, "cca", 1, 0, "k", relabelled) != base
    other_split = Dataset(
        ds.name, ds.samples, ds.classes, ClassSplit("toy", "2", ds.class_split.seen, ds.class_split.unseen), features=feats
    )
    assert fit_key(cfg, "cca", 1, 0, "k", other_split) != base
    # resume=False starts afresh: no stale fits are left behind to refuse a later run
    run_experiment(_toy_cfg(methods=["cca"], method_options={}), tmp_path / "o", progress=False, dataset=ds, features=feats)
    (tmp_path / "o" / "fits" / "cca" / "shots9-seed9.json").write_text("{}")
    run_experiment(_toy_cfg(methods=["cca"], method_options={}), tmp_path / "o", progress=False, dataset=ds, features=feats, resume=False)
    assert sorted(p.name for p in (tmp_path / "o" / "fits" / "cca").iterdir()) == ["shots1-seed0.json", "shots1-seed1.json"]


def test_a_failing_progress_display_does_not_stop_training(caplog):
    from gcrdp.experiments import run_experiment
    from gcrdp.training.loop import observe_epochs
    from tests.helpers import toy_run_dataset

    ds, feats = toy_run_dataset()

    def broken(info):
        raise BrokenPipeError("stderr closed")

    with observe_epochs(broken):
        res = run_experiment(_toy_cfg(methods=["gap-infonce"], seeds=[0]), None, progress=False, dataset=ds, features=feats)
    assert len(res["records"]) == 1 and "progress display failed" in caplog.text
