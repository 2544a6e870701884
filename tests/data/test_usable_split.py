"""A split that can be learned from, or a stop (issue 20, item 1), and manifests without a
``split`` column (item 3): the rules of :func:`split_shortfalls`, the seed search, the stop of
:func:`check_class_split`, and the generated, stable train/test split of a manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from gcrdp.data import ClassSplit, load_manifest, make_split
from gcrdp.data.checks import check_class_split, class_split_problems
from gcrdp.data.splits import find_split_seed, generate_class_split, generated_split_source, min_classes, split_shortfalls
from gcrdp.data.types import Dataset, Sample
from gcrdp.errors import ConfigError, DataError

ICON_CLASSES = ["devices", "actions", "apps", "places", "status", "mimetypes", "emblems"]


# --------------------------------------------------------------------------- the rules
@pytest.mark.parametrize(
    ("n_seen", "n_unseen", "fraction", "problems"),
    [
        (1, 6, 0.5, ["1 seen class", "6 of 7 classes unseen"]),
        (2, 2, None, ["2 seen classes"]),
        (3, 1, None, ["1 unseen class"]),
        (3, 2, None, []),
        (3, 4, 0.5, []),
        (4, 3, 0.5, []),
        (5, 2, 0.5, ["2 of 7 classes unseen"]),
        (3, 0, None, ["0 unseen classes"]),
        (30, 70, 0.5, []),  # within a fifth of the classes of the half
        (29, 71, 0.5, ["71 of 100 classes unseen"]),
    ],
)
def test_split_shortfalls(n_seen, n_unseen, fraction, problems):
    found = split_shortfalls(n_seen, n_unseen, fraction)
    assert len(found) == len(problems)
    for text, want in zip(found, problems):
        assert want in text


def test_the_generalized_protocol_and_no_validation_need_fewer_classes():
    assert split_shortfalls(3, 1, protocol="generalized") == []
    assert split_shortfalls(1, 2, validate=False) == []
    assert (min_classes("fewshot"), min_classes("generalized"), min_classes("fewshot", validate=False)) == (5, 4, 3)


def test_find_split_seed_returns_the_first_usable_seed_and_none_when_no_split_can_serve():
    seed = find_split_seed(ICON_CLASSES)
    assert seed is not None
    for s in range(seed):  # every seed before it is refused
        sp = generate_class_split(ICON_CLASSES, dataset="x", seed=s)
        assert split_shortfalls(len(sp.seen), len(sp.unseen), 0.5)
    sp = generate_class_split(ICON_CLASSES, dataset="x", seed=seed)
    assert not split_shortfalls(len(sp.seen), len(sp.unseen), 0.5)
    assert find_split_seed(ICON_CLASSES, start=seed + 1) > seed
    assert find_split_seed(["a", "b", "c", "d"]) is None  # 4 classes cannot give 3 seen and 2 unseen


def test_the_source_of_an_unusable_generated_split_names_a_seed_that_works():
    sp = generate_class_split(ICON_CLASSES, dataset="icons", seed=0)
    assert (len(sp.seen), len(sp.unseen)) == (1, 6)  # the draw the user met
    text = generated_split_source(sp, 0)
    good = find_split_seed(ICON_CLASSES, start=1)
    assert "cannot serve the few-shot protocols" in text and f"split_seed={good}" in text
    few = generate_class_split(["a", "b", "c"], dataset="x", seed=0)
    assert "too few" in generated_split_source(few, 0) and "--protocol standard" in generated_split_source(few, 0)


# --------------------------------------------------------------------------- the stop
def _dataset(classes, seed=0, generated=True, per_class=4):
    samples = [Sample(f"{c}{i}", f"{c} {i}", (c,), "test" if i == 0 else "train") for c in classes for i in range(per_class)]
    split = generate_class_split(classes, dataset="icons", seed=seed)
    meta = {"class_split_generated": generated, "class_split_seed": seed} if generated else {}
    return Dataset("icons", samples, sorted(classes), split, meta=meta)


def test_check_class_split_names_a_seed_and_that_seed_passes():
    ds = _dataset(ICON_CLASSES)
    with pytest.raises(DataError) as info:
        check_class_split(ds)
    msg = str(info.value)
    good = find_split_seed(ICON_CLASSES, start=1)
    assert "seen 1 [devices]" in msg and f"--dataset-option split_seed={good}" in msg and "--class-split" in msg
    fixed = _dataset(ICON_CLASSES, seed=good)
    check_class_split(fixed)  # no error
    sp = make_split(fixed, shots=1, seed=0)
    sp.verify(fixed)
    assert len(sp.val_classes) >= 2 and not set(sp.val_classes) & (set(sp.train_classes) - set(sp.unseen_classes) - set(sp.val_classes))


def test_check_class_split_says_when_there_are_too_few_classes_and_ignores_standard():
    ds = _dataset(["a", "b", "c", "d"])
    with pytest.raises(DataError, match="has 4 classes, too few for the fewshot protocol: it needs at least 5.*--protocol standard"):
        check_class_split(ds)
    check_class_split(ds, "standard")
    assert class_split_problems(ds, "standard") == []


def test_a_user_split_file_may_be_lopsided_but_not_unusable():
    samples = [Sample(f"{c}{i}", "t", (c,), "test" if i == 0 else "train") for c in "abcdefg" for i in range(4)]
    lopsided = Dataset("u", samples, list("abcdefg"), ClassSplit("u", "1", ("a", "b", "c"), ("d", "e", "f", "g")))
    check_class_split(lopsided)  # 3 seen, 4 unseen: fine, whatever the share
    one_seen = Dataset("u", samples, list("abcdefg"), ClassSplit("u", "1", ("a",), tuple("bcdefg")))
    with pytest.raises(DataError, match="Pass a class split file with at least 3 seen classes") as info:
        check_class_split(one_seen)
    assert "split_seed" not in str(info.value)  # not generated: no seed to suggest
    check_class_split(one_seen, validate=False)  # --val-fraction 0: one seen class is enough


# --------------------------------------------------------------------------- manifests without a split column
def _icons(root: Path, classes=ICON_CLASSES, per_class=6, split_column=False, ids=False) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, c in enumerate(classes):
        for i in range(per_class):
            p = root / "img" / f"{c}{i}.png"
            if not p.exists():
                Image.new("RGB", (8, 8), (30 * k % 256, 20 * i % 256, 90)).save(p)
            row = {"image": f"img/{p.name}", "text": f"a {c} icon, number {i}", "label": c}
            if ids:
                row["id"] = f"{c}-{i}"
            if split_column:
                row["split"] = "test" if i == 0 else "train"
            rows.append(row)
    path = root / "icons.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_a_manifest_without_a_split_column_gets_a_seeded_per_class_split(tmp_path):
    ds = load_manifest(_icons(tmp_path))
    assert ds.meta["split_generated"] is True and "test_fraction 0.2" in ds.meta["split"]
    by_class: dict[str, list[str]] = {}
    for s in ds.samples:
        by_class.setdefault(s.labels[0], []).append(s.split)
    assert all(sides.count("test") == 1 for sides in by_class.values())  # round(0.2 * 6) = 1 per class
    again = load_manifest(_icons(tmp_path))
    assert [s.split for s in again.samples] == [s.split for s in ds.samples]
    other = load_manifest(_icons(tmp_path), split_seed=5)
    assert [s.split for s in other.samples] != [s.split for s in ds.samples]
    half = load_manifest(_icons(tmp_path), test_fraction=0.5)
    assert sum(s.split == "test" for s in half.samples) == 3 * len(ICON_CLASSES)


def test_the_generated_split_is_stable_when_rows_are_added(tmp_path):
    small = load_manifest(_icons(tmp_path / "a", per_class=6))
    big = load_manifest(_icons(tmp_path / "b", per_class=6, classes=[*ICON_CLASSES, "extra"]))
    side = {(s.text, s.labels): s.split for s in big.samples}
    assert all(side[(s.text, s.labels)] == s.split for s in small.samples)  # no row moved


def test_a_manifest_with_a_split_column_keeps_it_and_refuses_test_fraction(tmp_path):
    path = _icons(tmp_path, split_column=True)
    ds = load_manifest(path)
    assert ds.meta["split_generated"] is False and ds.meta["split"] == "from the 'split' column"
    assert sum(s.split == "test" for s in ds.samples) == len(ICON_CLASSES)
    with pytest.raises(ConfigError, match="has its own train/test split"):
        load_manifest(path, test_fraction=0.3)


def test_a_jsonl_manifest_gives_a_split_on_every_row_or_none(tmp_path):
    _icons(tmp_path)
    rows = [{"image": f"img/{c}{i}.png", "text": f"{c} {i}", "label": c} for c in ICON_CLASSES for i in range(4)]
    none = tmp_path / "none.jsonl"
    none.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_manifest(none).meta["split_generated"] is True
    mixed = tmp_path / "mixed.jsonl"
    rows[0]["split"] = "train"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="line 2: no 'split' while other rows have one"):
        load_manifest(mixed)
    ds = load_manifest(mixed, skip_bad=True)
    assert len(ds) == 1
