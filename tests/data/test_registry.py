"""The data path: a reader returns a RawDataset, load_dataset applies the shared options."""

from __future__ import annotations

import inspect

import pytest

import gcrdp.data.registry as registry
from gcrdp.data import DATASETS, ClassSplit, Dataset, RawDataset, Sample, SeededSplit, dataset_options, list_datasets, load_dataset
from gcrdp.data.problems import Problems
from gcrdp.data.registry import register_reader
from gcrdp.errors import ConfigError, DataError

SHARED = ("class_split", "split_seed", "skip_bad")


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test are undone after it."""
    list_datasets()
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))
    monkeypatch.setattr(registry, "_SHARED", dict(registry._SHARED))


def _toy(n_per_class: int = 6, bad: tuple[str, ...] = (), seeded: bool = False) -> RawDataset:
    samples = [
        Sample(f"{c}{i}", f"a {c} {i}", (c,), "test" if i == 0 else "train")
        for c in ("cat", "dog", "fox", "owl")
        for i in range(n_per_class)
    ]
    problems = Problems("toy")
    for sid in bad:
        problems.add(f"row {sid}", "broken", sid)
    raw = RawDataset("toy", samples, ["cat", "dog", "fox", "owl"], problems, meta={"source": "memory", "split": "given"})
    if seeded:
        raw.seeded_split = SeededSplit([(s.labels[0], s.id) for s in samples], test_fraction=0.5, notes=("split",))
        raw.meta["split"] = "drawn with seed {seed}"
    return raw


def test_no_built_in_reader_declares_the_shared_options():
    for name in list_datasets():
        params = inspect.signature(DATASETS.get(name)).parameters
        assert not set(SHARED) & set(params), name
        assert set(dataset_options(name)) >= {"class_split"}, name


def test_the_shared_options_come_after_the_readers_own():
    assert list(dataset_options("twemoji")) == ["min_class_size", "test_every", "class_split"]
    opts = list(dataset_options("manifest"))
    assert opts[0] == "path" and opts[-3:] == list(SHARED)
    assert dataset_options("folder")["skip_bad"] is False and dataset_options("folder")["split_seed"] == 0


def test_load_dataset_applies_skip_bad_class_split_and_split_seed(scratch_registry):
    calls = []

    @register_reader("toy-reader")
    def read_toy(*, bad: str = "") -> RawDataset:
        calls.append(bad)
        return _toy(bad=tuple(x for x in bad.split(",") if x), seeded=True)

    assert list(dataset_options("toy-reader")) == ["bad", *SHARED]
    ds = load_dataset("toy-reader")
    assert isinstance(ds, Dataset) and len(ds) == 24 and ds.meta["n_skipped"] == 0
    assert ds.meta["split"] == "drawn with seed 0" and ds.meta["class_split_generated"] is True
    assert [s.split for s in load_dataset("toy-reader", split_seed=0).samples] == [s.split for s in ds.samples]
    other = load_dataset("toy-reader", split_seed=7)
    assert other.meta["split"] == "drawn with seed 7" and other.meta["class_split_seed"] == 7
    assert [s.split for s in other.samples] != [s.split for s in ds.samples]
    assert sum(s.split == "test" for s in ds.samples) == 12  # half of each class of 6

    with pytest.raises(DataError, match=r"toy has 1 problem\(s\) in 24 samples"):
        load_dataset("toy-reader", bad="cat3")
    skipped = load_dataset("toy-reader", bad="cat3", skip_bad=True)
    assert len(skipped) == 23 and "cat3" not in {s.id for s in skipped.samples}
    assert skipped.meta["n_skipped"] == 1 and skipped.meta["skipped"][0]["sample"] == "cat3"
    with pytest.raises(ConfigError, match="skip_bad must be true or false"):
        load_dataset("toy-reader", skip_bad="yes")

    mine = ClassSplit("toy", "mine", ("cat", "dog"), ("fox", "owl"))
    pinned = load_dataset("toy-reader", class_split=mine)
    assert pinned.class_split == mine and pinned.meta["class_split_source"] == "user"
    assert calls == ["", "", "", "cat3", "cat3", ""]  # only its own option; a bad skip_bad is refused before reading


def test_a_reader_may_take_only_some_shared_options(scratch_registry):
    @register_reader("toy-fixed", shared=("class_split",))
    def read_toy() -> RawDataset:
        return _toy()

    assert list(dataset_options("toy-fixed")) == ["class_split"]
    with pytest.raises(ConfigError, match=r"does not accept option\(s\) 'skip_bad'. Accepted options: class_split=None"):
        load_dataset("toy-fixed", skip_bad=True)
    with pytest.raises(ValueError, match="shared options are among"):
        register_reader("toy-wrong", shared=("seed",))


def test_a_loader_returning_a_finished_dataset_gets_every_option(scratch_registry):
    got = {}

    @DATASETS.register("toy-finished")
    def load_toy(*, skip_bad: bool = False, split_seed: int = 0) -> Dataset:
        got.update(skip_bad=skip_bad, split_seed=split_seed)
        raw = _toy()
        return Dataset(raw.name, raw.samples, raw.classes, meta={"mine": True})

    ds = load_dataset("toy-finished", skip_bad=True, split_seed=3)
    assert got == {"skip_bad": True, "split_seed": 3} and ds.meta == {"mine": True}

    @DATASETS.register("toy-wrong-type")
    def load_wrong() -> list:
        return []

    with pytest.raises(TypeError, match="returned list, not a Dataset or a RawDataset"):
        load_dataset("toy-wrong-type")


def test_unusable_is_raised_after_the_problems():
    raw = RawDataset("toy", [], [], Problems("toy"), unusable="toy: nothing to build", n_read=3)
    raw.problems.add("row 1", "broken", "a")
    with pytest.raises(DataError, match=r"1 problem\(s\) in 3 samples"):
        registry_finish(raw, skip_bad=False)
    with pytest.raises(DataError, match="nothing to build"):
        registry_finish(raw, skip_bad=True)


def test_problems_only_when_not_skipping_are_dropped_by_skip_bad():
    problems = Problems("toy")
    problems.add_unless_skipping("folder x", "empty class folder")
    with pytest.raises(DataError, match="empty class folder"):
        problems.resolve(False)
    assert problems.resolve(True) == set() and problems.report() == []


def test_seeded_split_per_class_count_rule():
    keys = [("a", f"k{i}") for i in range(5)] + [None] + [("b", f"k{i}") for i in range(3)]
    sides = SeededSplit(keys, test_per_class=2).draw(0)
    assert sides[5] == "train"
    assert sides[:5].count("test") == 2 and sides[6:].count("test") == 2
    assert SeededSplit(keys, test_per_class=2).draw(0) == sides
    assert any(SeededSplit(keys, test_per_class=2).draw(s) != sides for s in range(1, 6))


def registry_finish(raw: RawDataset, **options) -> Dataset:
    from gcrdp.data.formats.build import finish

    return finish(raw, **options)
