"""CSV/JSONL manifests: happy paths (relative paths, multi-label) and every error message."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from gcrdp.data import ClassSplit, load_dataset, load_manifest, make_split
from gcrdp.errors import ConfigError, DataError

ROWS = [
    # image, text, labels, split
    ("img/a0.png", "a red apple", ["fruit"], "train"),
    ("img/a1.png", "a green apple on a table", ["fruit", "table"], "train"),
    ("img/a2.png", "a banana", ["fruit"], "test"),
    ("img/b0.png", "a wooden table", ["table"], "train"),
    ("img/b1.png", "a round table", ["table"], "test"),
    ("img/c0.png", "a cat asleep", ["cat"], "train"),
    ("img/c1.png", "a cat on a table", ["cat", "table"], "test"),
    ("img/d0.png", "a dog running", ["dog"], "train"),
    ("img/d1.png", "a dog barking", ["dog"], "test"),
]


def _write_images(root: Path, rows=ROWS) -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i, (img, *_rest) in enumerate(rows):
        Image.new("RGB", (4, 4), (i * 20 % 256, 0, 0)).save(root / img)


def _write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _write_jsonl(path: Path, objs) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    _write_images(tmp_path)
    return tmp_path


@pytest.fixture
def csv_manifest(folder) -> Path:
    return _write_csv(folder / "data.csv", ["image", "text", "labels", "split"], [(img, t, "|".join(ls), sp) for img, t, ls, sp in ROWS])


@pytest.fixture
def jsonl_manifest(folder) -> Path:
    return _write_jsonl(
        folder / "data.jsonl",
        [{"image": img, "text": t, "labels": ls, "split": sp, "id": f"s{i}"} for i, (img, t, ls, sp) in enumerate(ROWS)],
    )


# ---------------------------------------------------------------- happy paths
def test_csv_multilabel_relative_paths(csv_manifest, folder):
    ds = load_manifest(csv_manifest)
    assert len(ds) == len(ROWS)
    assert ds.classes == ["cat", "dog", "fruit", "table"]
    assert ds.is_multilabel and ds.meta["multilabel"]
    assert [s.id for s in ds.samples] == [str(i) for i in range(1, len(ROWS) + 1)]
    assert ds.samples[1].labels == ("fruit", "table")
    assert ds.samples[0].image == folder.resolve() / "img" / "a0.png"
    assert all(s.image.is_file() for s in ds.samples)
    assert ds.meta["format"] == "csv" and ds.meta["n_train"] == 5 and ds.meta["n_test"] == 4


def test_jsonl_equals_csv(csv_manifest, jsonl_manifest):
    a, b = load_manifest(csv_manifest), load_manifest(jsonl_manifest)
    assert [(s.text, s.labels, s.split, s.image) for s in a.samples] == [(s.text, s.labels, s.split, s.image) for s in b.samples]
    assert [s.id for s in b.samples][:2] == ["s0", "s1"]
    assert a.class_split == b.class_split  # same stem "data", same classes


def test_registered_as_manifest(jsonl_manifest):
    ds = load_dataset("manifest", path=str(jsonl_manifest))
    assert len(ds) == len(ROWS) and ds.meta["format"] == "jsonl"


def test_absolute_paths_single_label_and_custom_separator(folder, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    rows = [(str((folder / img).resolve()), t, ";".join(ls), sp) for img, t, ls, sp in ROWS]
    path = _write_csv(other / "m.csv", ["Image", " Text ", "labels", "SPLIT", "notes"], [r + ("ignored",) for r in rows])
    ds = load_manifest(path, label_sep=";", name="mine")
    assert ds.name == "mine" and ds.samples[1].labels == ("fruit", "table")
    single = _write_jsonl(
        other / "single.jsonl",
        [
            {"image": r[0], "text": r[1], "label": 7 if i % 2 else "seven", "split": "TRAIN" if i < 5 else "test"}
            for i, r in enumerate(rows)
        ],
    )
    ds2 = load_manifest(single)
    assert ds2.classes == ["7", "seven"] and not ds2.is_multilabel


def test_format_override_and_tsv(folder):
    path = folder / "manifest.txt"
    path.write_text("image\ttext\tlabel\tsplit\n" + "".join(f"{img}\t{t}\t{ls[0]}\t{sp}\n" for img, t, ls, sp in ROWS), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"extension '\.txt'.*format="):
        load_manifest(path)
    ds = load_manifest(path, format="tsv")
    assert len(ds) == len(ROWS)
    with pytest.raises(ConfigError, match="Unknown manifest format 'xml'. Known formats: csv, tsv, jsonl"):
        load_manifest(path, format="xml")


def test_generated_class_split_is_deterministic_and_recorded(csv_manifest):
    a, b = load_manifest(csv_manifest), load_manifest(csv_manifest)
    assert a.class_split == b.class_split
    assert a.meta["class_split_generated"] is True
    assert "sha256" in a.meta["class_split_source"]
    assert len(a.class_split.unseen) + len(a.class_split.seen) == 4
    assert a.class_split.unseen and a.class_split.seen
    assert load_manifest(csv_manifest, split_seed=1).class_split.version == "hashed-seed1"


def test_class_split_from_file(csv_manifest, tmp_path):
    path = tmp_path / "split.json"
    path.write_text(
        json.dumps({"dataset": "data", "version": "7", "seen": ["cat", "dog"], "unseen": ["fruit", "table"], "note": "extra keys are fine"})
    )
    ds = load_manifest(csv_manifest, class_split=path)
    assert ds.class_split == ClassSplit("data", "7", ("cat", "dog"), ("fruit", "table"))
    assert ds.meta["class_split_generated"] is False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "data", "version": "1", "seen": ["cat"], "unseen": ["dog"]}))
    with pytest.raises(DataError, match="does not match the dataset"):
        load_manifest(csv_manifest, class_split=bad)


def test_protocol_runs_on_multilabel_manifest(csv_manifest):
    ds = load_manifest(csv_manifest, class_split=ClassSplit("data", "t", ("cat", "dog"), ("fruit", "table")))
    split = make_split(ds, "fewshot", shots=1, seed=0, val_fraction=0.0)  # two seen classes: too few to validate on
    split.verify(ds)
    # any unseen label puts a sample on the unseen side: "a cat on a table" is a test query
    texts = {ds.samples[i].text for i in split.test_query}
    assert "a cat on a table" in texts


# ---------------------------------------------------------------- errors
def test_missing_file():
    with pytest.raises(DataError, match="Manifest file not found"):
        load_manifest("/nonexistent/m.csv")


def test_missing_column(folder):
    path = _write_csv(folder / "m.csv", ["image", "caption", "label", "split"], [("img/a0.png", "x", "a", "train")])
    with pytest.raises(DataError, match=r"line 1 \(header\): missing column\(s\) 'text'.*Found columns: 'image', 'caption'"):
        load_manifest(path)
    path = _write_csv(folder / "m2.csv", ["image", "text", "split"], [("img/a0.png", "x", "train")])
    with pytest.raises(DataError, match=r"missing column\(s\) 'label \(or labels\)'"):
        load_manifest(path)
    path = _write_csv(folder / "m3.csv", ["image", "text", "label", "labels", "split"], [("img/a0.png", "x", "a", "a", "train")])
    with pytest.raises(DataError, match="both 'label' and 'labels'"):
        load_manifest(path)


def test_empty_csv(folder):
    path = folder / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_manifest(path)


def test_bad_json_line_number(folder):
    good = {"image": "img/a0.png", "text": "x", "label": "a", "split": "train"}
    path = _write_jsonl(folder / "m.jsonl", [good, "", '{"image": "img/a1.png", "text": ', good | {"id": "z"}, "[1, 2]"])
    with pytest.raises(DataError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert "line 3: bad JSON" in msg
    assert "line 5: expected a JSON object, got list" in msg
    assert "2 problem(s)" in msg


def test_jsonl_missing_key_and_wrong_types(folder):
    path = _write_jsonl(
        folder / "m.jsonl",
        [
            {"image": "img/a0.png", "label": "a", "split": "train"},
            {"image": "img/a1.png", "text": "x", "labels": "a|b", "split": "train"},
            {"image": "img/a2.png", "text": 3, "label": "a", "split": "train"},
            {"image": "img/b0.png", "text": "x", "labels": [], "split": "train"},
        ],
    )
    with pytest.raises(DataError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert "line 1: missing key(s) 'text'" in msg
    assert "line 2: 'labels' must be a JSON list of class names" in msg
    assert "line 3: 'text' must be a string, got int" in msg
    assert "line 4: empty labels" in msg


def test_empty_text_unknown_split_and_empty_label_csv(folder):
    path = _write_csv(
        folder / "m.csv",
        ["image", "text", "labels", "split"],
        [
            ("img/a0.png", "fine", "a", "train"),
            ("img/a1.png", "   ", "a", "train"),
            ("img/a2.png", "x", "a", "validation"),
            ("img/b0.png", "x", " | ", "test"),
        ],
    )
    with pytest.raises(DataError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert "line 3: empty text" in msg
    assert "line 4: unknown split 'validation'; expected 'train' or 'test'" in msg
    assert "line 5: empty labels" in msg
    assert "3 problem(s) in 4 rows" in msg


def test_wrong_field_count_and_duplicate_ids(folder):
    path = folder / "m.csv"
    path.write_text(
        "id,image,text,label,split\na,img/a0.png,x,a,train\na,img/a1.png,y,a,test\nb,img/a2.png,z,with,comma,train\n", encoding="utf-8"
    )
    with pytest.raises(DataError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert "line 3: duplicate id 'a' (first on line 2)" in msg
    assert "line 4: 6 fields but the header has 5 (a value with the delimiter must be quoted)" in msg


def test_missing_images_listed_with_count(folder):
    rows = [(f"img/missing{i}.png", "x", "a", "train") for i in range(8)] + [("img/a0.png", "y", "b", "test")]
    path = _write_csv(folder / "m.csv", ["image", "text", "label", "split"], rows)
    with pytest.raises(DataError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert "8 of 9 image files do not exist" in msg
    assert "line 2: 'img/missing0.png'" in msg and "line 6: 'img/missing4.png'" in msg
    assert "(and 3 more)" in msg and "missing5" not in msg
    ds = load_manifest(path, check_images=False)
    assert len(ds) == 9


def test_many_problems_are_truncated(folder):
    rows = [("img/a0.png", "", "a", "train")] * 15
    path = _write_csv(folder / "m.csv", ["image", "text", "label", "split"], rows)
    with pytest.raises(DataError, match=r"(?s)15 problem\(s\).*\(and 5 more\)"):
        load_manifest(path)


def test_bad_label_sep(csv_manifest):
    with pytest.raises(ConfigError, match="label_sep"):
        load_manifest(csv_manifest, label_sep="")


def _good_csv(tmp_path: Path) -> Path:
    _write_images(tmp_path)
    return _write_csv(tmp_path / "m.csv", ["image", "text", "labels", "split"], [(img, t, "|".join(ls), sp) for img, t, ls, sp in ROWS])


def test_invalid_utf8_line_is_named_and_skippable(tmp_path):
    path = _good_csv(tmp_path)
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"banana", b"ban\xffana")  # line 4 = 3rd data row
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"line 4: not valid UTF-8 \(byte 0xff"):
        load_manifest(path)
    ds = load_manifest(path, skip_bad=True)
    assert len(ds) == len(ROWS) - 1
    assert "3" not in {s.id for s in ds.samples}
    assert ds.meta["n_skipped"] == 1
    assert ds.meta["skipped"][0]["where"] == "line 4"
    assert "UTF-8" in ds.meta["skipped"][0]["reason"]


def test_skip_bad_leaves_out_bad_rows_and_reports_them(tmp_path):
    _write_images(tmp_path)
    rows = [(img, t, "|".join(ls), sp) for img, t, ls, sp in ROWS]
    rows[0] = ("img/missing.png", *rows[0][1:])  # line 2: missing image
    rows[4] = (rows[4][0], "", rows[4][2], rows[4][3])  # line 6: empty text
    rows[5] = (rows[5][0], rows[5][1], rows[5][2], "validation")  # line 7: bad split
    path = _write_csv(tmp_path / "m.csv", ["image", "text", "labels", "split"], rows)
    with pytest.raises(DataError) as err:
        load_manifest(path)
    msg = str(err.value)
    assert "line 6: empty text" in msg and "line 7: unknown split" in msg and "missing.png" in msg
    ds = load_manifest(path, skip_bad=True)
    assert len(ds) == len(ROWS) - 3
    assert sorted(item["where"] for item in ds.meta["skipped"]) == ["line 2", "line 6", "line 7"]
    assert ds.meta["n_skipped"] == 3
    # nothing that was good is lost
    assert {s.text for s in ds.samples} == {r[1] for i, r in enumerate(ROWS) if i not in (0, 4, 5)}


def test_skip_bad_must_be_bool(tmp_path):
    with pytest.raises(ConfigError, match="skip_bad"):
        load_manifest(_good_csv(tmp_path), skip_bad="yes")


# ------------------------------------------------------------------ hostile input (issue 21)
def _hostile_jsonl(tmp_path: Path, bad_line: str) -> Path:
    _write_images(tmp_path)
    lines = [json.dumps({"image": img, "text": t, "labels": ls, "split": sp}) for img, t, ls, sp in ROWS]
    lines.insert(1, bad_line)  # line 2
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ('{"image": "img/a0.png", "text": "t", "labels": ' + "[" * 100_000 + "]" * 100_000 + ', "split": "train"}', "nested more than"),
        ('{"image": "img/a0.png", "text": "t", "labels": ["x"], "split": "train", "id": ' + "9" * 5000 + "}", "5,000 digits"),
        ('{"image": "img/a0.png", "text": "t", "label": ' + "7" * 5000 + ', "split": "train"}', "5,000 digits"),
        ('{"image": "img/' + "a" * 5000 + '.png", "text": "t", "labels": ["x"], "split": "train"}', "image path has 5,008 characters"),
        ('{"image": "img/' + "a" * 300 + '.png", "text": "t", "labels": ["x"], "split": "train"}', "cannot be used"),
        ('{"image": "img/a0.png", "text": "' + "x" * (2 << 20) + '", "labels": ["x"], "split": "train"}', "'text' has 2,097,152"),
        ('{"image": "img/a0.png", "text": "' + "x" * (5 << 20) + '", "labels": ["x"], "split": "train"}', "the line has"),
        ('{"image": "~nosuchuser-gcrdp/a.png", "text": "t", "labels": ["x"], "split": "train"}', "cannot be expanded"),
    ],
    ids=["deep-json", "huge-id", "huge-int-label", "long-path", "long-name", "long-text", "long-line", "unknown-user"],
)
def test_hostile_jsonl_line_is_a_problem_of_its_line(tmp_path, bad_line, reason):
    path = _hostile_jsonl(tmp_path, bad_line)
    with pytest.raises(DataError) as err:
        load_manifest(path)
    assert "line 2: " in str(err.value) and reason in str(err.value)
    assert len(str(err.value)) < 5000  # the bad value is not echoed whole
    ds = load_manifest(path, skip_bad=True)
    assert len(ds) == len(ROWS)
    assert [item["where"] for item in ds.meta["skipped"]] == ["line 2"]


def test_csv_and_jsonl_share_the_field_limit(tmp_path):
    from gcrdp.data.formats.manifest import MAX_FIELD_CHARS

    _write_images(tmp_path)
    rows = [(img, t, "|".join(ls), sp) for img, t, ls, sp in ROWS]
    rows[1] = (rows[1][0], "y" * 200_000, rows[1][2], rows[1][3])  # over csv's 128 KiB default, under 1 MiB: read
    rows[2] = (rows[2][0], "z" * (MAX_FIELD_CHARS + 1), rows[2][2], rows[2][3])  # line 4: over the limit
    path = _write_csv(tmp_path / "m.csv", ["image", "text", "labels", "split"], rows)
    before = csv.field_size_limit()
    with pytest.raises(DataError, match=r"line 4: 'text' has 1,048,577 characters, over the limit of 1,048,576"):
        load_manifest(path)
    ds = load_manifest(path, skip_bad=True)
    assert len(ds) == len(ROWS) - 1 and any(s.text == "y" * 200_000 for s in ds.samples)
    assert csv.field_size_limit() == before  # the process-wide csv limit is left as it was
    # the same text in JSONL: the same limit, the same message
    lines = [json.dumps({"image": r[0], "text": r[1], "labels": r[2].split("|"), "split": r[3]}) for r in rows]
    jpath = tmp_path / "m.jsonl"
    jpath.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: 'text' has 1,048,577 characters, over the limit of 1,048,576"):
        load_manifest(jpath)


def test_csv_unclosed_quote_names_where_the_field_starts(tmp_path):
    _write_images(tmp_path)
    body = 'image,text,label\nimg/a0.png,fine,fruit\nimg/a1.png,"never closed,fruit\n' + "img/a2.png,more,fruit\n" * 300_000
    path = tmp_path / "m.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: a field longer than .* never closed"):
        load_manifest(path)


@pytest.mark.parametrize("name", ["a" * 5000 + ".png", "a" * 300 + ".png"])
def test_csv_long_image_path_is_a_problem(tmp_path, name):
    _write_images(tmp_path)
    rows = [(img, t, "|".join(ls), sp) for img, t, ls, sp in ROWS]
    rows.insert(0, (name, "text", "fruit", "train"))
    path = _write_csv(tmp_path / "m.csv", ["image", "text", "labels", "split"], rows)
    with pytest.raises(DataError, match="line 2: .*image path"):
        load_manifest(path)
    assert len(load_manifest(path, skip_bad=True)) == len(ROWS)
