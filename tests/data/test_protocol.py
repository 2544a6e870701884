"""The few-shot / generalized / standard protocols (SPEC §1)."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest

from gcrdp.data import ClassSplit, Dataset, ProtocolSplit, Sample, generate_class_split, make_split
from gcrdp.errors import ConfigError, DataError

SEEDS = range(5)


def make_dataset(n_classes=10, n_train=8, n_test=4, n_unseen=None, name="toy", extra=()):
    """``n_classes`` classes c0.., each with ``n_train`` train and ``n_test`` test pairs
    (interleaved), unseen = the last ``n_unseen`` (default half)."""
    classes = [f"c{i}" for i in range(n_classes)] + list(extra)
    samples = []
    for c in classes:
        for j in range(n_train + n_test):
            split = "test" if j % 3 == 2 and sum(s.split == "test" and s.labels == (c,) for s in samples) < n_test else "train"
            samples.append(Sample(id=f"{c}-{j}", text=f"{c} {j}", labels=(c,), split=split))
    n_unseen = n_classes // 2 if n_unseen is None else n_unseen
    base = [f"c{i}" for i in range(n_classes)]
    split = ClassSplit(name, "t", tuple(base[: n_classes - n_unseen]) + tuple(extra), tuple(base[n_classes - n_unseen :]))
    return Dataset(name=name, samples=samples, classes=sorted(classes), class_split=split)


@pytest.fixture(scope="module")
def ds():
    return make_dataset()


def _labels(ds, idx):
    return Counter(lab for i in idx for lab in ds.samples[int(i)].labels)


def _split_of(ds, idx):
    return {ds.samples[int(i)].split for i in idx}


# ----------------------------------------------------------------- fewshot
def test_determinism_given_seed(ds):
    for shots in (0, 1, 3):
        a, b = make_split(ds, shots=shots, seed=3), make_split(ds, shots=shots, seed=3)
        for f in ("train", "val", "test_query", "test_gallery", "fewshot"):
            assert np.array_equal(getattr(a, f), getattr(b, f))
        assert a.summary() == b.summary()


def test_different_seeds_differ(ds):
    draws = {tuple(make_split(ds, shots=1, seed=s).fewshot) for s in SEEDS}
    assert len(draws) == len(SEEDS)
    digests = {make_split(ds, shots=0, seed=s).digest() for s in SEEDS}
    assert len(digests) > 1  # the validation classes also move with the seed


def test_shots_are_nested(ds):
    for seed in SEEDS:
        one, three, five = (set(make_split(ds, shots=n, seed=seed).fewshot) for n in (1, 3, 5))
        assert one < three < five


def test_exactly_n_per_unseen_class(ds):
    for shots in (1, 3, 5, 8):
        # at 8 shots no seen class keeps a pair to validate on once its shots are drawn: no validation
        sp = make_split(ds, shots=shots, seed=1, val_fraction=0.0 if shots == 8 else 0.2)
        per_class = _labels(ds, sp.fewshot)
        assert per_class == {c: shots for c in ds.class_split.unseen}
        train_unseen = {c: n for c, n in _labels(ds, sp.train).items() if c in ds.class_split.unseen}
        assert train_unseen == per_class
        assert _split_of(ds, sp.fewshot) == {"train"}
        assert set(sp.fewshot) <= set(sp.train)


def test_zero_shot_has_no_unseen_class_in_train(ds):
    for seed in SEEDS:
        sp = make_split(ds, shots=0, seed=seed)
        assert sp.fewshot.size == 0
        assert not set(_labels(ds, sp.train)) & set(ds.class_split.unseen)
        assert not set(sp.train_classes) & set(ds.class_split.unseen)


def test_class_disjointness(ds):
    for seed in SEEDS:
        sp = make_split(ds, shots=0, seed=seed, val_mode="zero-shot")
        tr, va, te = set(sp.train_classes), set(sp.val_classes), set(sp.test_classes)
        assert not tr & va and not tr & te and not va & te
        assert tr | va == set(ds.class_split.seen) and te == set(ds.class_split.unseen)
        assert set(_labels(ds, sp.val)) == va and set(_labels(ds, sp.train)) == tr
        sp5 = make_split(ds, shots=5, seed=seed, val_mode="zero-shot")
        assert set(sp5.train_classes) == tr | te and not set(sp5.val_classes) & set(sp5.train_classes)


def test_validation_is_all_train_pairs_of_its_classes(ds):
    sp = make_split(ds, shots=0, seed=0, val_mode="zero-shot")
    # 5 seen classes, val_fraction 0.2 -> max(1, 1) = 1, raised to 2 (>= 3 seen classes)
    assert len(sp.val_classes) == 2
    expected = [i for i, s in enumerate(ds.samples) if s.split == "train" and s.labels[0] in sp.val_classes]
    assert sp.val.tolist() == expected
    assert len(make_split(ds, val_fraction=0.6, val_mode="zero-shot").val_classes) == 3
    assert make_split(ds, val_fraction=0.0).val.size == 0
    assert make_split(ds, val_fraction=0.0, val_mode="zero-shot").val.size == 0


def _mirror_dataset():
    # 24 seen classes of 6..17 train pairs, 6 unseen of 8
    classes = [f"s{i:02d}" for i in range(24)] + [f"u{i}" for i in range(6)]
    samples = []
    for ci, c in enumerate(classes):
        n_train = 8 if c.startswith("u") else 6 + ci % 12
        for j in range(n_train):
            samples.append(Sample(id=f"{c}-tr{j}", text=f"{c} {j}", labels=(c,), split="train"))
        for j in range(3):
            samples.append(Sample(id=f"{c}-te{j}", text=f"{c} t{j}", labels=(c,), split="test"))
    split = ClassSplit("mirror", "t", tuple(classes[:24]), tuple(classes[24:]))
    return Dataset(name="mirror", samples=samples, classes=classes, class_split=split)


def test_mirror_validation_treats_its_classes_like_the_unseen_ones():
    ds = _mirror_dataset()
    by_class = Counter(s.labels[0] for s in ds.samples if s.split == "train")
    for seed in SEEDS:
        previous: set[int] = set()
        classes_at: dict[int, tuple[str, ...]] = {}
        for shots in (0, 1, 3, 5):
            sp = make_split(ds, shots=shots, seed=seed)  # val_mode="mirror" is the default
            sp.verify(ds)
            assert sp.val_mode == "mirror"
            va = set(sp.val_classes)
            classes_at[shots] = sp.val_classes
            # exactly `shots` training pairs per validation class, the rest validate
            assert _labels(ds, sp.val_fewshot) == ({c: shots for c in va} if shots else {})
            assert _labels(ds, sp.val) == {c: by_class[c] - shots for c in va}
            assert set(sp.val_fewshot) <= set(sp.train) and not set(sp.val) & set(sp.train)
            # nested draws, like the unseen shots
            assert previous <= set(sp.val_fewshot)
            previous = set(sp.val_fewshot)
            # both kinds of shots are oversampled; nothing else is
            assert set(sp.oversampled) == set(sp.fewshot) | set(sp.val_fewshot)
            # at least 10 classes (min_classes), at most half of the 24 seen classes
            assert 10 <= len(va) <= 12
            assert len(va) == 12 or sp.val.size >= 200
            seen_train = {c for c in ds.class_split.seen if c not in va}
            assert set(_labels(ds, np.setdiff1d(sp.train, sp.oversampled))) == seen_train
        # the classes depend on the seed only while they stay eligible (> shots pairs: all here)
        assert len(set(classes_at.values())) == 1
    assert make_split(ds, seed=0).digest() != make_split(ds, seed=0, val_mode="zero-shot").digest()


def test_mirror_validation_sizes_and_eligibility():
    ds = _mirror_dataset()
    few = make_split(ds, shots=1, seed=0, val_min_classes=3, val_min_pairs=0)
    assert len(few.val_classes) == 5  # round(0.2 * 24) > 3
    pairs = make_split(ds, shots=1, seed=0, val_min_classes=3, val_min_pairs=60)
    assert pairs.val.size >= 60 and len(pairs.val_classes) >= 5
    # classes with no more than `shots` train pairs cannot validate
    big = make_split(ds, shots=7, seed=0, val_min_classes=24, val_min_pairs=10**6)
    counts = Counter(s.labels[0] for s in ds.samples if s.split == "train")
    assert all(counts[c] > 7 for c in big.val_classes) and len(big.val_classes) == 12
    assert any(counts[c] <= 7 for c in ds.class_split.seen)
    assert make_split(ds, shots=1, seed=0).split_options()["val_mode"] == "mirror"
    with pytest.raises(ConfigError, match="val_mode"):
        make_split(ds, val_mode="fold")


def test_split_from_summary_round_trips():
    from gcrdp.data.protocol import split_from_summary

    ds = _mirror_dataset()
    for mode in ("mirror", "zero-shot"):
        sp = make_split(ds, shots=3, seed=2, val_mode=mode)
        assert split_from_summary(ds, sp.summary()).digest() == sp.digest()
    old = make_split(ds, shots=3, seed=2, val_mode="zero-shot").summary()
    for key in ("val_mode", "val_min_classes", "val_min_pairs"):
        old.pop(key)  # a summary written before the mirrored validation existed
    assert split_from_summary(ds, old).digest() == make_split(ds, shots=3, seed=2, val_mode="zero-shot").digest()


def test_test_split_never_in_train_or_val(ds):
    for protocol in ("fewshot", "generalized", "standard"):
        for seed in SEEDS:
            sp = make_split(ds, protocol, shots=0 if protocol == "standard" else 3, seed=seed)
            sp.verify(ds)
            assert _split_of(ds, sp.train) == {"train"} and _split_of(ds, sp.val) <= {"train"}
            assert _split_of(ds, sp.test_gallery) == {"test"}
            assert not set(sp.train) & set(sp.val)


def test_fewshot_test_is_all_unseen_test_pairs(ds):
    sp = make_split(ds, shots=1)
    expected = [i for i, s in enumerate(ds.samples) if s.split == "test" and s.labels[0] in ds.class_split.unseen]
    assert sp.test_query.tolist() == expected and np.array_equal(sp.test_query, sp.test_gallery)


def test_generalized_shapes(ds):
    sp = make_split(ds, "generalized", shots=1, seed=0)
    fs = make_split(ds, "fewshot", shots=1, seed=0)
    assert np.array_equal(sp.train, fs.train) and np.array_equal(sp.val, fs.val)
    assert np.array_equal(sp.test_query, fs.test_query)
    assert sp.test_gallery.tolist() == ds.split_indices("test").tolist()
    assert sp.summary()["n_test_gallery"] == 10 * 4 and sp.summary()["n_test_query"] == 5 * 4


def test_standard_shapes(ds):
    sp = make_split(ds, "standard", seed=0)
    assert sp.shots == 0 and sp.fewshot.size == 0 and sp.unseen_classes == ()
    assert sorted(sp.train.tolist() + sp.val.tolist()) == ds.split_indices("train").tolist()
    assert sp.test_query.tolist() == ds.split_indices("test").tolist()
    assert np.array_equal(sp.test_query, sp.test_gallery)
    # stratified: round(0.2 * 8) = 2 validation pairs per class
    assert _labels(ds, sp.val) == {c: 2 for c in ds.classes}
    assert set(sp.test_classes) == set(sp.train_classes) == set(ds.classes)
    other = make_split(ds, "standard", seed=1)
    assert not np.array_equal(sp.val, other.val)


def test_draw_depends_only_on_seed_and_the_class_data():
    small, big = make_dataset(), make_dataset(extra=("zz-extra",))
    for seed in SEEDS:
        a = {small.samples[i].id for i in make_split(small, shots=3, seed=seed).fewshot}
        b = {big.samples[i].id for i in make_split(big, shots=3, seed=seed).fewshot}
        assert a == b


def test_does_not_touch_global_rng(ds):
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    make_split(ds, shots=5, seed=2)
    make_split(ds, "standard", seed=2)
    assert np.array_equal(np.random.get_state()[1], state)


def test_split_is_frozen_and_read_only(ds):
    sp = make_split(ds, shots=1)
    assert isinstance(sp, ProtocolSplit)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sp.shots = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        sp.train[0] = 0
    assert sp.train.dtype == np.int64 and np.all(np.diff(sp.train) > 0)


def test_multilabel_any_unseen_label_is_unseen_side():
    samples = [
        Sample("a", "a", ("s1",), "train"),
        Sample("b", "b", ("s1", "u1"), "train"),
        Sample("c", "c", ("s2",), "train"),
        Sample("d", "d", ("u1",), "train"),
        Sample("e", "e", ("s1", "u1"), "test"),
        Sample("f", "f", ("s2",), "test"),
        Sample("g", "g", ("u1",), "test"),
        Sample("h", "h", ("s3",), "train"),
    ]
    ds = Dataset("ml", samples, ["s1", "s2", "s3", "u1"], ClassSplit("ml", "t", ("s1", "s2", "s3"), ("u1",)))
    for seed in SEEDS:
        sp = make_split(ds, shots=0, seed=seed)
        sp.verify(ds)
        ids = {ds.samples[i].id for i in np.concatenate([sp.train, sp.val])}
        assert "b" not in ids and "d" not in ids
        assert {ds.samples[i].id for i in sp.test_query} == {"e", "g"}
        g = make_split(ds, "generalized", shots=2, seed=seed, val_fraction=0.0)  # 2 shots leave no seen pair to validate on
        assert {ds.samples[i].id for i in g.fewshot} == {"b", "d"}
        assert {ds.samples[i].id for i in g.test_gallery} == {"e", "f", "g"}


def test_too_few_seen_classes_stop_rather_than_validate_on_the_training_classes():
    # one seen class: the old fallback validated on held-out pairs of the class it trained on
    ds = make_dataset(n_classes=2, n_unseen=1)
    for mode in ("mirror", "zero-shot"):
        with pytest.raises(DataError, match="1 seen class: at least 3 are needed"):
            make_split(ds, shots=1, val_mode=mode)
    # two seen classes: one validation class alone would read mAP 100 whatever the model
    ds4 = make_dataset(n_classes=4, n_unseen=2)
    with pytest.raises(DataError, match="2 seen classes: at least 3"):
        make_split(ds4, shots=0)
    # asked for explicitly: no validation, or pair validation
    assert make_split(ds, shots=1, val_fraction=0.0).val.size == 0
    assert make_split(ds, val_by="pair", shots=0).val_by == "pair"
    # three seen classes: two validate, one trains, disjoint by construction, at every seed and mode
    ds5 = make_dataset(n_classes=5, n_unseen=2)
    for seed in SEEDS:
        for mode in ("mirror", "zero-shot"):
            for shots in (0, 1, 3):
                sp = make_split(ds5, shots=shots, seed=seed, val_mode=mode)
                sp.verify(ds5)
                assert sp.val_by == "class" and len(sp.val_classes) == 2
                trained_only = set(_labels(ds5, np.setdiff1d(sp.train, np.concatenate([sp.fewshot, sp.val_fewshot]))))
                assert len(trained_only) == 1 and not trained_only & set(sp.val_classes)
                assert set(_labels(ds5, sp.val)) == set(sp.val_classes)


# ----------------------------------------------------------------- errors
def test_error_negative_or_bad_shots(ds):
    with pytest.raises(ConfigError, match=r"shots must be an integer >= 0, got -1"):
        make_split(ds, shots=-1)
    with pytest.raises(ConfigError, match="shots must be an integer"):
        make_split(ds, shots=True)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        make_split(ds, seed=-3)


def test_error_too_many_shots_names_classes_and_max(ds):
    samples = [s for s in ds.samples if not (s.labels == ("c9",) and s.split == "train" and s.id not in ("c9-0", "c9-1"))]
    small = Dataset("toy", samples, ds.classes, ds.class_split)
    with pytest.raises(DataError) as info:
        make_split(small, shots=5)
    msg = str(info.value)
    assert "shots=5 needs at least 5 train-split pairs in every unseen class" in msg
    assert "'c9' has 2" in msg and "at most shots=2 is possible" in msg
    assert "\n" not in msg
    make_split(small, shots=2).verify(small)


def test_error_unknown_protocol_lists_known(ds):
    with pytest.raises(ConfigError, match="Unknown protocol 'oneshot'. Known protocols: fewshot, standard, generalized"):
        make_split(ds, "oneshot")
    assert make_split(ds, "Few-Shot").protocol == "fewshot"


def test_error_no_test_pairs():
    train_only = [Sample(f"x{i}", "t", (f"c{i % 2}",), "train") for i in range(6)]
    ds = Dataset("t", train_only, ["c0", "c1"], ClassSplit("t", "1", ("c0",), ("c1",)))
    with pytest.raises(DataError, match="has no test-split pairs"):
        make_split(ds)
    some_test = train_only + [Sample("y", "t", ("c0",), "test")]
    ds2 = Dataset("t", some_test, ["c0", "c1"], ClassSplit("t", "1", ("c0",), ("c1",)))
    with pytest.raises(DataError, match="No test-split pairs of the unseen classes"):
        make_split(ds2, val_fraction=0.0)
    make_split(ds2, "standard")


def test_error_no_class_split_and_other_options(ds):
    bare = Dataset("bare", ds.samples, ds.classes)
    with pytest.raises(ConfigError, match="needs a seen/unseen class split.*protocol='standard'"):
        make_split(bare)
    make_split(bare, class_split=ds.class_split).verify(ds)
    with pytest.raises(ConfigError, match="no meaning in the standard protocol"):
        make_split(ds, "standard", shots=1)
    with pytest.raises(ConfigError, match=r"val_fraction must be in \[0, 1\)"):
        make_split(ds, val_fraction=1.0)
    with pytest.raises(ConfigError, match="Unknown val_by 'x'"):
        make_split(ds, val_by="x")
    no_unseen = Dataset("t", ds.samples, ds.classes, ClassSplit("t", "1", tuple(ds.classes), ()))
    with pytest.raises(DataError, match="has no unseen classes"):
        make_split(no_unseen)


# ----------------------------------------------------------------- real labels (Wikipedia)
WIKI_TRAIN = [138, 272, 244, 248, 202, 178, 186, 144, 214, 347]
WIKI_TEST = [34, 88, 96, 85, 65, 58, 51, 41, 71, 104]


@pytest.mark.shared_data
def test_protocol_on_wikipedia_labels(shared_data):
    root = shared_data / "wikipedia"
    names = (root / "categories.list").read_text(encoding="utf-8").split()
    samples = []
    for split in ("train", "test"):
        for line in (root / f"{split}set_txt_img_cat.list").read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            text_id, _image_id, cat = line.split("\t")
            xml = (root / "texts" / f"{text_id}.xml").read_text(encoding="utf-8", errors="replace")
            m = re.search(r"<text>(.*?)</text>", xml, re.S)
            assert m, text_id
            samples.append(Sample(text_id, m.group(1).strip(), (names[int(cat) - 1],), split))
    classes = names
    ds = Dataset("wikipedia", samples, classes, generate_class_split(classes, dataset="wikipedia", seed=0, method="ordered"))
    tr = Counter(s.labels[0] for s in samples if s.split == "train")
    te = Counter(s.labels[0] for s in samples if s.split == "test")
    assert [tr[c] for c in names] == WIKI_TRAIN and [te[c] for c in names] == WIKI_TEST
    assert len(ds.class_split.seen) == len(ds.class_split.unseen) == 5

    unseen = set(ds.class_split.unseen)
    n_unseen_test = sum(te[c] for c in unseen)
    n_seen_train = sum(tr[c] for c in ds.class_split.seen)
    for seed in range(3):
        previous: set[int] = set()
        for shots in (0, 1, 3, 5):
            sp = make_split(ds, "fewshot", shots=shots, seed=seed, val_mode="zero-shot")
            sp.verify(ds)
            mirror = make_split(ds, "fewshot", shots=shots, seed=seed)
            mirror.verify(ds)  # 5 seen classes: at most 2 held out, each with `shots` in train
            assert len(mirror.val_classes) == 2 and mirror.val_fewshot.size == 2 * shots
            assert _labels(ds, sp.fewshot) == ({c: shots for c in unseen} if shots else {})
            assert previous <= set(sp.fewshot)
            previous = set(sp.fewshot)
            assert sp.test_query.size == sp.test_gallery.size == n_unseen_test
            assert len(sp.val_classes) == 2 and not set(sp.val_classes) & set(sp.train_classes)
            assert sp.train.size + sp.val.size == n_seen_train + 5 * shots
            assert _split_of(ds, sp.test_query) == {"test"}
        g = make_split(ds, "generalized", shots=5, seed=seed)
        g.verify(ds)
        assert g.test_gallery.size == 693 and g.test_query.size == n_unseen_test
    st = make_split(ds, "standard", seed=0)
    st.verify(ds)
    assert st.train.size + st.val.size == 2173 and st.test_query.size == 693
    assert _labels(ds, st.val) == {c: round(0.2 * tr[c]) for c in names}


def test_zero_shot_matched_validation_is_mirror_s_validation_without_its_shots():
    """The control of issue 23: mirror's validation classes and pairs exactly, but none of the
    validation classes trains (their shots are left out), so a comparison with mirror tells the
    protocol apart from the validation's size."""
    ds = _mirror_dataset()
    for seed in SEEDS:
        for shots in (0, 1, 5):
            mirror = make_split(ds, shots=shots, seed=seed)
            matched = make_split(ds, shots=shots, seed=seed, val_mode="zero-shot-matched")
            matched.verify(ds)
            assert matched.val_mode == "zero-shot-matched"
            assert matched.val_classes == mirror.val_classes and np.array_equal(matched.val, mirror.val)
            assert matched.val_fewshot.size == 0
            assert np.array_equal(matched.train, np.setdiff1d(mirror.train, mirror.val_fewshot))
            assert not set(_labels(ds, matched.train)) & set(matched.val_classes)  # a zero-shot validation
            assert np.array_equal(matched.fewshot, mirror.fewshot) and np.array_equal(matched.test_query, mirror.test_query)
            if shots:
                assert matched.digest() != mirror.digest()
    with pytest.raises(ConfigError, match="zero-shot-matched"):
        make_split(ds, val_mode="matched")


def test_verify_names_every_broken_invariant():
    ds = make_dataset()
    sp = make_split(ds, shots=2, seed=0, val_min_classes=2, val_min_pairs=0)
    assert sp.val_fewshot.size and sp.fewshot.size
    u = np.union1d
    seen_test = next(i for i, s in enumerate(ds.samples) if s.split == "test" and s.labels[0] in ds.class_split.seen)
    unseen_train = [i for i, s in enumerate(ds.samples) if s.split == "train" and s.labels[0] in ds.class_split.unseen]
    unseen_pair = np.setdiff1d(unseen_train, sp.fewshot)[0]
    cases = [
        ({"val": u(sp.val, [-1])}, "val has indices outside [0, 120)"),
        ({"test_query": u(sp.test_query, [120]), "train": u(sp.train, [-1])}, "train has indices outside [0, 120)"),
        ({"train": u(sp.train, sp.test_query[:1])}, "train/val hold test-split pairs; unseen-class pairs in train beyond the shots"),
        ({"test_gallery": u(sp.test_gallery, sp.train[:1])}, "the test gallery holds train-split pairs"),
        ({"val": u(sp.val, sp.train[:1])}, "train and val overlap"),
        ({"test_gallery": sp.test_gallery[1:]}, "some test queries are not in the gallery"),
        ({"train": np.setdiff1d(sp.train, sp.fewshot[:1])}, "some shots are not in train"),
        ({"val_fewshot": u(sp.val_fewshot, sp.fewshot[:1])}, "validation shots overlap the unseen-class shots"),
        ({"train": u(sp.train, sp.val[:1])}, "train and val overlap; validation-class pairs in train beyond their shots"),
        ({"val": u(sp.val, [unseen_pair])}, "unseen-class pairs in val"),
        (
            {"test_query": u(sp.test_query, [seen_test]), "test_gallery": u(sp.test_gallery, [seen_test])},
            "seen-class pairs among the test queries",
        ),
        (
            {"train": u(sp.train, sp.test_query[:1]), "test_gallery": sp.test_gallery[1:], "val": u(sp.val, [unseen_pair])},
            "train/val hold test-split pairs; some test queries are not in the gallery; "
            "unseen-class pairs in train beyond the shots; unseen-class pairs in val",
        ),
    ]
    for changes, problems in cases:
        broken = dataclasses.replace(sp, **{k: np.asarray(v, dtype=np.int64) for k, v in changes.items()})
        message = f"Protocol split (fewshot, shots=2, seed=0) is inconsistent with the dataset: {problems}."
        with pytest.raises(DataError) as info:
            broken.verify(ds)
        assert str(info.value) == message
    sp.verify(ds)
