"""Index integrity (issue 21): every file of a version is checked against the checksums
recorded at build time, CURRENT stays inside the index folder, a build never removes a version
a reader is loading, and the smaller findings (an --add with nothing new, a second texts file,
a checkpoint whose declared dims do not match its weights, non-finite embeddings)."""

from __future__ import annotations

import json
import logging
import shutil
import threading

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from gcrdp.errors import DataError  # noqa: E402
from tests.cli.test_cli import run_cli  # noqa: E402
from tests.search.helpers import trained_model  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model trained (3 epochs) on a small pre-extracted features file, and the file."""
    return trained_model(tmp_path_factory.mktemp("integrity"), 120, 7, 3)


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    from gcrdp.search import Retriever, items_from_features

    ckpt, path = model
    index = tmp_path_factory.mktemp("built") / "idx"
    items, features = items_from_features(path)
    Retriever.build(index, checkpoint=ckpt, items=items, features=features, progress=False)
    return index


def _copy(built, tmp_path):
    shutil.copytree(built, tmp_path / "idx")
    return tmp_path / "idx"


def _damage(path, how, rng):
    data = bytearray(path.read_bytes())
    if how == "empty":
        data = bytearray()
    elif how == "half":
        data = data[: len(data) // 2]
    elif how == "random":
        data = bytearray(rng.integers(0, 256, size=max(1, len(data)), dtype=np.uint8).tobytes())
    else:  # 64 flipped bytes (one for CURRENT: it is a few bytes long)
        for i in rng.choice(len(data), size=min(64, max(1, len(data) // 4)), replace=False):
            data[i] ^= 0x5A
    path.write_bytes(bytes(data))


FILES = ["CURRENT", "v000001/index.json", "v000001/items.sqlite", "v000001/image.faiss", "v000001/text.faiss", "v000001/checksums.json"]


@pytest.mark.parametrize("name", FILES)
def test_every_damaged_file_is_a_clear_error_naming_it(built, tmp_path, capsys, name):
    from gcrdp.search import Retriever

    rng = np.random.default_rng(0)
    like = None
    for how in ("empty", "half", "random", "flipped"):
        index = tmp_path / how
        shutil.copytree(built, index)
        if like is None:
            like = Retriever.load(index)._meta[("image", 0)][2]
        _damage(index / name, how, rng)
        with pytest.raises(DataError) as err:
            Retriever.load(index)
        msg = str(err.value)
        assert name.split("/")[-1] in msg and "gcrdp index" in msg, (how, msg)
        code, out, stderr = run_cli(capsys, "search", index, "--like", like, "--k", "3")
        assert code == 2 and "Traceback" not in stderr and name.split("/")[-1] in stderr, (how, stderr)


def test_flipped_vectors_and_swapped_files_are_caught(built, tmp_path):
    """The two silent cases: 64 flipped bytes inside image.faiss's vectors (a wrong top hit,
    no error) and image.faiss and text.faiss swapped."""
    from gcrdp.search import Retriever

    index = _copy(built, tmp_path)
    v = index / "v000001"
    data = bytearray((v / "image.faiss").read_bytes())
    for i in range(len(data) - 200, len(data) - 136):  # inside the float32 vectors
        data[i] ^= 0x40
    (v / "image.faiss").write_bytes(bytes(data))
    with pytest.raises(DataError, match="image.faiss"):
        Retriever.load(index)
    shutil.rmtree(index)
    index = _copy(built, tmp_path)
    v = index / "v000001"
    (v / "image.faiss").rename(v / "tmp")
    (v / "text.faiss").rename(v / "image.faiss")
    (v / "tmp").rename(v / "text.faiss")
    with pytest.raises(DataError, match=r"(image|text)\.faiss"):
        Retriever.load(index)


def test_the_checksums_are_recorded_and_verify_index_checks_them(built):
    from gcrdp.search.retriever import verify_index

    sums = json.loads((built / "v000001" / "checksums.json").read_text())
    assert sums["algorithm"] == "sha256"
    assert set(sums["files"]) == {"index.json", "items.sqlite", "image.faiss", "text.faiss"}
    assert all(len(e["sha256"]) == 64 and e["size"] > 0 for e in sums["files"].values())
    assert verify_index(built)["index.json"]["size"] == (built / "v000001" / "index.json").stat().st_size


def test_an_index_without_checksums_loads_with_a_note(built, tmp_path, caplog):
    from gcrdp.search import Retriever

    index = _copy(built, tmp_path)
    (index / "v000001" / "checksums.json").unlink()
    with caplog.at_level(logging.WARNING, logger="gcrdp.search.retriever"):
        r = Retriever.load(index)
    assert len(r) == 240 and "checksums" in caplog.text
    # unchecked, a damaged file is still a clear error, not a traceback
    _damage(index / "v000001" / "text.faiss", "half", np.random.default_rng(1))
    with pytest.raises(DataError, match="text.faiss"):
        Retriever.load(index)


@pytest.mark.parametrize("pointer", ["../other/v000001", "ABSOLUTE", "v000001/../../other/v000001", ".", ""])
def test_current_stays_inside_the_index_folder(built, tmp_path, pointer):
    from gcrdp.search import Retriever

    index = _copy(built, tmp_path)
    shutil.copytree(built, tmp_path / "other")  # a valid index outside: never followed
    if pointer == "ABSOLUTE":
        pointer = str(tmp_path / "other" / "v000001")
    (index / "CURRENT").write_text(pointer + "\n")
    with pytest.raises(DataError, match="CURRENT"):
        Retriever.load(index)


def test_a_build_never_removes_the_version_a_reader_is_loading(model, built, tmp_path, monkeypatch):
    """A reader has read CURRENT and is loading its model when a build publishes a new version:
    the old one stays until the reader is done (a later build removes it)."""
    from gcrdp.search import Retriever, SearchModel, items_from_features

    ckpt, path = model
    index = _copy(built, tmp_path)
    items, features = items_from_features(path)
    loading, finish = threading.Event(), threading.Event()
    real = SearchModel.from_checkpoint.__func__
    reader = threading.current_thread()

    def slow(cls, *a, **k):
        if threading.current_thread() is not reader:  # the reader's model load waits for the build
            loading.set()
            assert finish.wait(60)
        return real(cls, *a, **k)

    monkeypatch.setattr(SearchModel, "from_checkpoint", classmethod(slow))
    got: dict = {}

    def read():
        try:
            got["r"] = Retriever.load(index)
        except BaseException as exc:  # noqa: BLE001 - reported below
            got["error"] = exc

    t = threading.Thread(target=read)
    t.start()
    assert loading.wait(60)
    half = [it for it in items if it.row is not None and it.row < 60]
    new = Retriever.build(index, checkpoint=ckpt, items=half, features=features, progress=False)
    assert (index / "v000001" / "items.sqlite").is_file() and new.version == "v000002"  # held: kept
    finish.set()
    t.join(60)
    assert "error" not in got, got.get("error")
    r = got["r"]
    assert r.version == "v000001" and len(r) == 240 and not r.is_current()
    assert r.search(like=r._meta[("image", 0)][2], k=3)
    monkeypatch.undo()
    assert Retriever.load(index).is_current() and len(Retriever.load(index)) == 120
    Retriever.build(index, checkpoint=ckpt, items=half, features=features, progress=False)  # no reader now: both old ones go
    assert sorted(p.name for p in index.glob("v*")) == ["v000003"]


def test_a_reader_whose_version_vanished_reads_current_again(built, tmp_path, monkeypatch):
    from gcrdp.search import Retriever
    from gcrdp.search import retriever as rmod

    index = _copy(built, tmp_path)
    shutil.copytree(index / "v000001", index / "v000002")
    real = rmod._current
    calls = []

    def current(d):
        calls.append(1)
        version = real(d)
        if len(calls) == 1:  # as if a build published v000002 and removed v000001 right now
            (d / "CURRENT").write_text("v000002\n")
            shutil.rmtree(version)
        return version

    monkeypatch.setattr(rmod, "_current", current)
    r = Retriever.load(index)
    assert r.version == "v000002" and len(calls) == 2


def test_an_add_with_nothing_new_writes_nothing(model, built, tmp_path, capsys):
    ckpt, path = model
    index = _copy(built, tmp_path)
    code, out, err = run_cli(capsys, "index", index, "--add", "--features", path, "-q")
    assert code == 0, err
    assert "nothing new added" in out and "240 duplicates skipped" in out
    assert (index / "CURRENT").read_text().strip() == "v000001" and sorted(p.name for p in index.glob("v*")) == ["v000001"]


def test_text_file_ids_stay_unique_across_files(tmp_path):
    from gcrdp.search import items_from_text_file

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one\ntwo\n", encoding="utf-8")
    b.write_text("three\nfour\n", encoding="utf-8")
    ids_a = [it.id for it in items_from_text_file(a)]
    ids_b = [it.id for it in items_from_text_file(b)]
    assert not set(ids_a) & set(ids_b) and ids_a[1].startswith("a.txt@") and ids_a[1].endswith(":line-2")
    b.write_text("one\ntwo\n", encoding="utf-8")  # the same name elsewhere, or an edited file: other ids
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("one\nchanged\n", encoding="utf-8")
    assert not set(ids_a) & {it.id for it in items_from_text_file(tmp_path / "sub" / "a.txt")}


def test_a_checkpoint_whose_dims_do_not_match_its_weights_is_refused_before_allocating(model, tmp_path, monkeypatch):
    from gcrdp.methods.contrastive import ContrastiveHeadsMethod
    from gcrdp.methods.persistence import load_method

    ckpt, _ = model
    shutil.copytree(ckpt, tmp_path / "ckpt")
    state_path = tmp_path / "ckpt" / "final" / "state.json"
    state = json.loads(state_path.read_text())
    state["input_dims"]["image_dim"] = 2_000_000
    state_path.write_text(json.dumps(state))

    def never(*a, **k):
        raise AssertionError("the model was built before its dims were checked")

    monkeypatch.setattr(ContrastiveHeadsMethod, "init_model", never)
    with pytest.raises(DataError, match="image_dim = 2000000"):
        load_method(tmp_path / "ckpt" / "final")


def test_non_finite_embeddings_are_refused_at_build(model, tmp_path):
    from gcrdp.search import Retriever, items_from_features
    from gcrdp.training.checkpoint import read_checkpoint, write_checkpoint

    ckpt, path = model
    c = read_checkpoint(ckpt / "final")
    tensors = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in c.tensors("model.safetensors").items()}
    write_checkpoint(tmp_path / "nan", dict(c.state), {"model.safetensors": (tensors, None)})
    items, features = items_from_features(path)
    with pytest.raises(DataError, match=r"120 of the 120 image embeddings are not finite"):
        Retriever.build(tmp_path / "idx", checkpoint=tmp_path / "nan", items=items, features=features, progress=False)
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_a_large_on_disk_list_file_is_checked_by_a_sample_and_verify_index_reads_it_all(model, tmp_path, monkeypatch):
    """An .ivfdata over SAMPLED_ABOVE is checked on load by its size and sampled chunks (the
    first and the last included); verify_index(full=True) hashes every byte."""
    from gcrdp.search import Retriever, items_from_features
    from gcrdp.search import retriever as rmod

    ckpt, path = model
    monkeypatch.setattr(rmod, "SAMPLED_ABOVE", 0)
    monkeypatch.setattr(rmod, "SAMPLE_CHUNK", 64)
    monkeypatch.setattr(rmod, "SAMPLE_CHUNKS", 4)
    items, features = items_from_features(path)
    index = tmp_path / "idx"
    Retriever.build(index, checkpoint=ckpt, items=items, features=features, progress=False, index_type="IVF4,Flat", on_disk=True)
    sums = json.loads((index / "v000001" / "checksums.json").read_text())["files"]
    assert "sampled_sha256" in sums["image.ivfdata"] and "sampled_sha256" not in sums["image.faiss"]
    data = bytearray((index / "v000001" / "image.ivfdata").read_bytes())
    data[len(data) // 6] ^= 1  # between the sampled chunks: not seen by a load
    (index / "v000001" / "image.ivfdata").write_bytes(bytes(data))
    assert len(Retriever.load(index)) == 240
    with pytest.raises(DataError, match="image.ivfdata"):
        rmod.verify_index(index)
    data[-1] ^= 1  # in the last chunk: seen by a load
    (index / "v000001" / "image.ivfdata").write_bytes(bytes(data))
    with pytest.raises(DataError, match="image.ivfdata"):
        Retriever.load(index)
