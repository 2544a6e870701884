"""The ``folder`` dataset: class folders and split folders of image + same-stem text files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

import gcrdp.data.formats.folder  # noqa: F401  (registers "folder")
from gcrdp.data import load_dataset
from gcrdp.data.formats.folder import n_test_of, per_class_test_split
from gcrdp.errors import ConfigError, DataError


def _pair(folder: Path, stem: str, text: str | bytes | None = "a photo", ext: str = ".png", image: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        Image.new("RGB", (4, 4), (len(stem) * 30 % 256, 10, 10)).save(folder / f"{stem}{ext}")
    if text is not None:
        p = folder / f"{stem}.txt"
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text, encoding="utf-8")


def _class_tree(root: Path, classes=("cat", "dog", "owl"), n=5) -> Path:
    for c in classes:
        for i in range(n):
            _pair(root / c, f"{c}{i}", f"a {c} number {i}", ext=".png" if i % 2 else ".JPG")
    return root


def test_class_folders_generated_split(tmp_path):
    root = _class_tree(tmp_path / "pets")
    (root / "README.md").write_text("about", encoding="utf-8")
    (root / ".DS_Store").write_bytes(b"x")
    (root / ".hidden").mkdir()
    _pair(root / ".hidden", "h0")
    (root / "cat" / "cat0.json").write_text("{}", encoding="utf-8")
    ds = load_dataset("folder", root=str(root))
    assert ds.name == "pets"
    assert ds.classes == ["cat", "dog", "owl"]
    assert len(ds) == 15
    s = next(x for x in ds.samples if x.id == "cat/cat1")
    assert s.labels == ("cat",) and s.text == "a cat number 1" and s.image.name == "cat1.png"
    assert next(x for x in ds.samples if x.id == "cat/cat0").image.name == "cat0.JPG"
    # per class: round(0.2 * 5) = 1 test sample, chosen by the documented sha256 order
    for c in ds.classes:
        tests = [x.id for x in ds.samples if x.labels == (c,) and x.split == "test"]
        keys = sorted((hashlib.sha256(f"0\0{c}\0{c}{i}".encode()).hexdigest(), f"{c}/{c}{i}") for i in range(5))
        assert tests == [keys[0][1]]
    assert ds.meta["layout"] == "class folders"
    assert ds.meta["n_ignored"] == 2  # README.md and cat0.json; hidden entries are not listed
    assert not any(".hidden" in p or "DS_Store" in p for p in ds.meta["ignored"])
    assert ds.meta["class_split_generated"]
    # deterministic, and the seed changes it
    again = load_dataset("folder", root=str(root))
    assert [x.split for x in again.samples] == [x.split for x in ds.samples]
    other = load_dataset("folder", root=str(root), split_seed=3, test_fraction=0.4)
    assert sum(x.split == "test" for x in other.samples) == 6


def test_split_rule_edges():
    assert [n_test_of(n, 0.2) for n in (0, 1, 2, 3, 7, 8, 10)] == [0, 0, 1, 1, 1, 2, 2]
    assert n_test_of(2, 0.9) == 1  # every class keeps a training sample
    out = per_class_test_split([("a", "x")], 0.5)
    assert out == ["train"]
    with pytest.raises(ConfigError, match="test_fraction"):
        per_class_test_split([("a", "x")], 1.0)


def test_split_folders(tmp_path):
    root = tmp_path / "data"
    for c in ("cat", "dog"):
        for i in range(3):
            _pair(root / "train" / c, f"{c}{i}")
        _pair(root / "test" / c, f"{c}9")
    _pair(root / "train" / "owl", "owl0")  # a class in train only is fine
    ds = load_dataset("folder", root=str(root), name="mine")
    assert ds.name == "mine"
    assert {s.id for s in ds.samples if s.split == "test"} == {"test/cat/cat9", "test/dog/dog9"}
    assert "train/owl/owl0" in {s.id for s in ds.samples}
    assert ds.meta["split_source"] == "folders"
    assert ds.classes == ["cat", "dog", "owl"]


def test_split_folders_need_both_and_nothing_else(tmp_path):
    root = tmp_path / "d"
    _pair(root / "train" / "cat", "c0")
    with pytest.raises(DataError, match="no test folder"):
        load_dataset("folder", root=str(root))
    _pair(root / "test" / "cat", "c1")
    _pair(root / "dog", "d0")
    with pytest.raises(DataError, match="either split folders or class folders"):
        load_dataset("folder", root=str(root))


def test_no_class_folders(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"(?s)no class folders.*root/<class>/<name>\.jpg"):
        load_dataset("folder", root=str(tmp_path))
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("folder", root=str(tmp_path / "nope"))


def _bad_tree(root: Path) -> Path:
    _class_tree(root, ("cat", "dog"), n=3)
    _pair(root / "cat", "lonely_image", text=None)
    _pair(root / "dog", "lonely_text", image=False)
    _pair(root / "dog", "latin1", text="caf\xe9".encode("latin-1"))
    _pair(root / "dog", "blank", text="  \n")
    (root / "empty").mkdir()
    return root


def test_problems_are_reported_together(tmp_path):
    root = _bad_tree(tmp_path / "bad")
    with pytest.raises(DataError) as e:
        load_dataset("folder", root=str(root))
    msg = str(e.value)
    assert "5 problem(s)" in msg
    assert "lonely_image.png" in msg and "image without a text file" in msg
    assert "lonely_text.txt" in msg and "text file without an image" in msg
    assert "latin1.txt" in msg and "not valid UTF-8" in msg
    assert "blank.txt" in msg and "empty text" in msg
    assert "empty class folder" in msg and str(root / "empty") in msg


def test_skip_bad(tmp_path):
    root = _bad_tree(tmp_path / "bad")
    ds = load_dataset("folder", root=str(root), skip_bad=True)
    assert len(ds) == 6
    assert ds.classes == ["cat", "dog"]
    assert ds.meta["empty_class_folders"] == [str(root / "empty")]
    skipped = {p["sample"] for p in ds.meta["skipped"]}
    assert skipped == {"cat/lonely_image", "dog/lonely_text", "dog/latin1", "dog/blank"}
    assert all(p["where"].startswith(str(root)) for p in ds.meta["skipped"])
    # the split is over the kept samples: 3 per class -> 1 test each
    assert sum(s.split == "test" for s in ds.samples) == 2


def test_text_ext_and_duplicate_stems(tmp_path):
    root = tmp_path / "d"
    for i in range(2):
        (root / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (2, 2)).save(root / "a" / f"x{i}.png")
        (root / "a" / f"x{i}.caption").write_text("hello", encoding="utf-8")
    ds = load_dataset("folder", root=str(root), text_ext="caption")
    assert len(ds) == 2
    Image.new("RGB", (2, 2)).save(root / "a" / "x0.jpg")
    with pytest.raises(DataError, match="two images with the stem 'x0'"):
        load_dataset("folder", root=str(root), text_ext=".caption")
    with pytest.raises(ConfigError, match="text_ext"):
        load_dataset("folder", root=str(root), text_ext=".png")
    with pytest.raises(ConfigError, match="skip_bad"):
        load_dataset("folder", root=str(root), skip_bad="yes")
