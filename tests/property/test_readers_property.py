"""The manifest and feature-file readers on arbitrary input: a valid dataset or a GcrdpError with
a message, never another exception (a traceback)."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gcrdp.data.formats.featurefiles import load_feature_files
from gcrdp.data.formats.manifest import load_manifest
from gcrdp.data.types import Dataset
from gcrdp.errors import GcrdpError
from tests.property import EXAMPLES, FAST

IMAGES = ("a.png", "b.png", "sub/c.png")
COLUMNS = ("image", "text", "label", "labels", "split", "id", "Image", " TEXT ", "extra", "")


def _check(load) -> Dataset | None:
    """``load()``: a valid dataset, or a GcrdpError with a message; anything else fails the test."""
    try:
        ds = load()
    except GcrdpError as exc:
        assert str(exc).strip()
        return None
    assert isinstance(ds, Dataset) and len(ds) > 0
    ids = [s.id for s in ds.samples]
    assert len(set(ids)) == len(ids)
    assert ds.classes == sorted(ds.classes) or ds.meta.get("format", "").startswith("features")
    assert {lab for s in ds.samples for lab in s.labels} == set(ds.classes)
    assert all(s.labels and s.split in ("train", "test") for s in ds.samples)
    split = ds.class_split
    assert split is not None and set(split.seen) | set(split.unseen) >= set(ds.classes)
    return ds


def _in_folder(files: dict[str, bytes], name: str, **options) -> Dataset | None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for image in IMAGES:
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            (root / image).write_bytes(b"not really an image")
        for fname, data in files.items():
            (root / fname).write_bytes(data)
        return _check(lambda: load_manifest(root / name, **options))


# ------------------------------------------------------------------------- manifests
text = st.text(max_size=12) | st.sampled_from(["train", "test", "TEST ", "a.png", "sub/c.png", "cat|dog", "~x/a.png", ""])
cell = text | st.sampled_from(IMAGES) | st.integers(-5, 5).map(str)
options = st.fixed_dictionaries(
    {"skip_bad": st.booleans(), "check_images": st.booleans(), "label_sep": st.sampled_from(["|", ";", "||"])},
    optional={"split_seed": st.integers(0, 3)},
)


@FAST
@given(
    st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=6),
    st.lists(st.lists(cell, max_size=7), max_size=8),
    options,
    st.sampled_from(["csv", "tsv"]),
)
def test_csv_manifest_of_any_rows(header, rows, opts, fmt):
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="," if fmt == "csv" else "\t")
    writer.writerow(header)
    writer.writerows(rows)
    _in_folder({f"m.{fmt}": buf.getvalue().encode("utf-8")}, f"m.{fmt}", **opts)


json_leaf = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | cell
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6
)
row_object = st.dictionaries(st.sampled_from(COLUMNS), json_value | cell | st.lists(cell, max_size=3), max_size=6)


@FAST
@given(st.lists(row_object | json_value, max_size=8), options)
def test_jsonl_manifest_of_any_values(rows, opts):
    body = "\n".join(json.dumps(r) for r in rows) + "\n"
    _in_folder({"m.jsonl": body.encode("utf-8")}, "m.jsonl", **opts)


@settings(FAST, max_examples=EXAMPLES * 3 // 2)
@given(st.binary(max_size=300), st.sampled_from(["m.csv", "m.tsv", "m.jsonl"]), options)
def test_manifest_of_any_bytes(data, name, opts):
    _in_folder({name: data}, name, **opts)


NEAR_VALID_LINES = ["image,text,label", "a.png,hello,cat", "b.png,x,dog", "sub/c.png,y,cat", '"a.png","un,closed', "\x00", "\r"]


@FAST
@given(
    st.lists(st.sampled_from(NEAR_VALID_LINES), max_size=8),
    st.binary(max_size=40),
    options,
)
def test_csv_manifest_of_near_valid_lines_and_garbage(lines, garbage, opts):
    _in_folder({"m.csv": "\n".join(lines).encode() + garbage}, "m.csv", **opts)


# ------------------------------------------------------------------------- feature files
dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64, "<U3", "S3"])


NAMES = st.text(st.characters(exclude_characters="\x00"), max_size=2)  # NumPy strings drop a trailing NUL


def arrays_of(shape):
    return dtypes.flatmap(lambda dt: hnp.arrays(dt, shape))


@st.composite
def feature_arrays(draw):
    n = draw(st.integers(0, 6))
    n_other = draw(st.sampled_from([n, n, n, max(n - 1, 0), n + 1]))
    out = {
        "image": draw(arrays_of(st.sampled_from([(n, 3), (n, 2, 3), (n,), (n, 0)]))),
        "text": draw(arrays_of(st.sampled_from([(n_other, 2), (n_other, 1)]))),
    }
    label_shape = st.sampled_from([(n,), (n, 1), (1, n), (n, 3), (n_other,), ()])
    out["labels"] = draw(
        st.one_of(
            hnp.arrays(np.int64, label_shape, elements=st.integers(-2, 4)),
            hnp.arrays(np.float64, label_shape),  # NaN, inf, fractions, 1e300
            hnp.arrays(np.uint64, label_shape),
            hnp.arrays("<U2", label_shape),
            hnp.arrays("S2", label_shape),  # bytes, not always UTF-8
            arrays_of(label_shape),
        )
    )
    extras = {
        "split": hnp.arrays("<U5", (n,), elements=st.sampled_from(["train", "test", "TEST", "val", ""])) | arrays_of((n,)),
        "is_test": hnp.arrays(np.int64, (n,), elements=st.integers(0, 1)) | arrays_of((n,)),
        "classes": hnp.arrays("<U2", st.sampled_from([(3,), (5,), (2,)]), elements=NAMES) | arrays_of((3,)),
        "ids": hnp.arrays("<U3", (n,), elements=NAMES) | arrays_of((n,)),
        "image_mask": arrays_of(st.sampled_from([(n, 2), (n, 3)])),
        "image_pooled": arrays_of(st.sampled_from([(n, 4), (n + 1, 4)])),
    }
    for key in draw(st.sets(st.sampled_from(sorted(extras)), max_size=3)):
        out[key] = draw(extras[key])
    return out


@settings(FAST, max_examples=EXAMPLES * 2)
@given(feature_arrays(), st.booleans(), st.sampled_from(["npz", "npy folder"]))
def test_feature_files_of_any_arrays(arrays, skip_bad, form):
    with tempfile.TemporaryDirectory() as tmp:
        if form == "npz":
            path = Path(tmp) / "f.npz"
            np.savez(path, **arrays)
        else:
            path = Path(tmp) / "f"
            path.mkdir()
            for key, arr in arrays.items():
                np.save(path / f"{key}.npy", arr)
        with np.errstate(all="ignore"):
            ds = _check(lambda: load_feature_files(path, skip_bad=skip_bad))
        if ds is not None:
            assert ds.features is not None and len(ds.features.sample_ids) >= len(ds)
            assert np.isfinite(ds.features.image.pooled).all() or skip_bad is False


@FAST
@given(st.binary(max_size=200), st.sampled_from(["f.npz", "f.npy", "f.safetensors", "f.mat", "f.h5"]))
def test_feature_file_of_any_bytes(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        _check(lambda: load_feature_files(path))
