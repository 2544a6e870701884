"""A search starts fast (issue 20, item 4): after ``gcrdp index``, ``gcrdp search`` embeds its
query with ONNX Runtime — the text encoder's twin or the image encoder's ONNX backend, and the
method's exported projection — and imports neither torch nor transformers; the query vectors
equal the torch path's (``GCRDP_QUERY_PATH=torch``, what gcrdp did before) on seeded queries,
with the same top-k; stale or altered exports are never used.

Stated tolerance: query vectors at cosine > 0.99999 and within 1e-4 per value of the torch
path's (measured: about 1e-6); the same top 10."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("tokenizers")

from gcrdp.cli.main import main  # noqa: E402
from gcrdp.errors import ConfigError  # noqa: E402
from gcrdp.search import Retriever, items_from_manifest  # noqa: E402
from gcrdp.search import model as search_model  # noqa: E402
from tests.cli.test_cli import needs_encoders, write_manifest  # noqa: E402

HEAVY = ("torch", "transformers", "sentence_transformers")
K = 10


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A gcrdp model (GMM views, 2 epochs) on a small real manifest, and its index; the models
    folder (``GCRDP_CACHE_DIR``) is the test's own, so the index writes the query path there."""
    if needs_encoders.args[0]:
        pytest.skip("encoder packages not installed")
    root = tmp_path_factory.mktemp("startup")
    manifest = write_manifest(root / "data")
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GCRDP_CACHE_DIR", str(cache))
        mp.delenv(search_model.QUERY_PATH_ENV, raising=False)
        args = ["train", "--manifest", str(manifest), "--method", "gcrdp", "--shots", "1", "--option", "max_epochs=2"]
        assert main([*args, "--cache-dir", str(cache), "--checkpoint-dir", str(root / "ckpt"), "-q"]) == 0
        assert main(["index", str(root / "idx"), "--checkpoint", str(root / "ckpt"), "--manifest", str(manifest), "-q"]) == 0
    return root, manifest, cache


@pytest.fixture
def env(built, monkeypatch):
    root, manifest, cache = built
    monkeypatch.setenv("GCRDP_CACHE_DIR", str(cache))
    monkeypatch.delenv(search_model.QUERY_PATH_ENV, raising=False)
    return root, manifest, cache


def _queries(manifest):
    items = items_from_manifest(manifest)
    texts = sorted({it.text for it in items if it.modality == "text"})
    rng = np.random.default_rng(0)
    words = "red green blue purple circle square ring triangle small big shape a the of".split()
    texts += [" ".join(rng.choice(words, size=int(rng.integers(1, 8)))) for _ in range(10)]
    images = [it.path for it in items if it.modality == "image"][::3]
    return texts, images


def _index_info(root) -> dict:
    return json.loads((root / "idx" / (root / "idx" / "CURRENT").read_text().strip() / "index.json").read_text())


def _record_path(root, models):
    """The query-heads record of the index's checkpoint, for this code."""
    return search_model.QueryHeads.record_path(_index_info(root)["model"]["checkpoint_sha256"], models)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_index_writes_the_query_path(env):
    root, _manifest, cache = env
    models = cache / "models"
    record = json.loads(_record_path(root, models).read_text())
    assert record["fingerprint"]["checkpoint_sha256"] == _index_info(root)["model"]["checkpoint_sha256"]
    assert set(record["heads"]) == {"text", "image"}
    assert all(h["max_difference"] <= search_model.HEAD_TOLERANCE for h in record["heads"].values())
    assert list(models.glob("minilm-l6-hidden-*.onnx")) and list(models.glob("efficientnet-lite0-features-*.onnx"))
    assert not list(models.glob(".*.tmp"))


def test_query_vectors_and_top_k_equal_the_torch_path(env, monkeypatch):
    root, manifest, _cache = env
    texts, images = _queries(manifest)
    fast = Retriever.load(root / "idx")
    assert fast.model._method is None  # read through the query heads: the method was not loaded
    assert fast.model.query_path("text") is not None and fast.model.query_path("image") is not None
    monkeypatch.setenv(search_model.QUERY_PATH_ENV, "torch")
    old = Retriever.load(root / "idx")
    assert old.model._method is not None and old.model.query_path("text") is None
    for modality, queries in (("text", texts), ("image", images)):
        a, b = fast.query_vectors(modality, queries), old.query_vectors(modality, queries)
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        assert _cosines(a, b).min() > 0.99999
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
        target = "image" if modality == "text" else "text"
        ha, hb = fast.search_vectors(target, a, K), old.search_vectors(target, b, K)
        assert [[h.id for h in hits] for hits in ha] == [[h.id for h in hits] for hits in hb]


def _search_in_fresh_python(argv: list[str], env_vars: dict[str, str]) -> dict:
    code = f"""
        import contextlib, io, json, sys
        from gcrdp.cli.main import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main({argv!r})
        print(json.dumps({{"code": code, "out": out.getvalue(), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env={**os.environ, **env_vars}
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cli_search_imports_neither_torch_nor_transformers(env):
    root, manifest, cache = env
    image = next(it.path for it in items_from_manifest(manifest) if it.modality == "image")
    for query in (["--text", "a red circle"], ["--image", image]):
        got = _search_in_fresh_python(["search", str(root / "idx"), *query, "--k", "3", "--json"], {"GCRDP_CACHE_DIR": str(cache)})
        assert got["code"] == 0 and got["heavy"] == [], got
        assert [json.loads(x)["rank"] for x in got["out"].strip().splitlines()] == [1, 2, 3]
    # forced onto the torch path, the same search loads torch and answers the same
    fast = _search_in_fresh_python(["search", str(root / "idx"), "--text", "a red circle", "--json"], {"GCRDP_CACHE_DIR": str(cache)})
    old = _search_in_fresh_python(
        ["search", str(root / "idx"), "--text", "a red circle", "--json"], {"GCRDP_CACHE_DIR": str(cache), "GCRDP_QUERY_PATH": "torch"}
    )
    assert "torch" in old["heavy"]
    ids = lambda r: [json.loads(x)["id"] for x in r["out"].strip().splitlines()]  # noqa: E731
    assert ids(fast) == ids(old)


def test_records_of_other_code_or_other_bytes_are_not_used(env, monkeypatch, tmp_path):
    root, manifest, cache = env
    texts, _ = _queries(manifest)
    ref = Retriever.load(root / "idx").query_vectors("text", texts)
    ours = _record_path(root, cache / "models")
    # other gcrdp code: the record is not found; the model is loaded with torch and a new record written
    monkeypatch.setattr(search_model, "code_digest", lambda: "0" * 64)
    r = Retriever.load(root / "idx")
    assert r.model._method is not None
    assert len(list((cache / "models").glob("query-heads-*-0000000000000000-*.json"))) == 1
    assert not ours.exists()  # one record per checkpoint: the other code's went
    np.testing.assert_allclose(r.query_vectors("text", texts), ref, atol=1e-4, rtol=0)
    monkeypatch.undo()
    monkeypatch.setenv("GCRDP_CACHE_DIR", str(cache))
    assert Retriever.load(root / "idx").model._method is not None and ours.exists()  # this code's record, written again
    # other checkpoint bytes: no record, and the index refuses the model as before
    moved = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", moved)
    state = moved / "final" / "state.json"
    state.write_text(state.read_text().replace('"gcrdp_version"', ' "gcrdp_version"', 1))
    with pytest.raises(ConfigError, match="differs in: checkpoint_sha256"):
        Retriever.load(root / "idx", checkpoint=moved)


def test_an_altered_head_is_not_used(env, tmp_path, caplog, monkeypatch):
    root, manifest, cache = env
    texts, _ = _queries(manifest)
    models = tmp_path / "models"
    shutil.copytree(cache / "models", models)
    monkeypatch.setenv("GCRDP_CACHE_DIR", str(tmp_path))
    ref = Retriever.load(root / "idx").query_vectors("text", texts)
    record = _record_path(root, models)
    head = record.with_name(f"{record.stem}.text.onnx")
    head.write_bytes(head.read_bytes()[:-1] + b"\0")
    r = Retriever.load(root / "idx")
    assert r.model.query_path("text") is None and "missing or altered" in caplog.text
    np.testing.assert_allclose(r.query_vectors("text", texts), ref, atol=1e-4, rtol=0)  # through torch


def test_warm_loads_what_queries_need(env):
    root, _manifest, _cache = env
    r = Retriever.load(root / "idx")
    r.model.warm()
    for modality in ("text", "image"):
        enc, head = r.model.query_path(modality)
        assert head._session is not None
    assert r.model.query_path("text")[0]._session is not None
    assert r.model._method is None  # warming the query path loads no torch model


def test_an_unknown_query_path_setting_is_refused(env, monkeypatch):
    root, _manifest, _cache = env
    monkeypatch.setenv(search_model.QUERY_PATH_ENV, "fast")
    with pytest.raises(ConfigError, match="GCRDP_QUERY_PATH must be one of"):
        Retriever.load(root / "idx")


def test_a_model_of_pre_extracted_features_is_queried_by_id_without_torch(tmp_path, monkeypatch):
    """Such a model has no encoder: its query heads record alone lets ``--like`` answer without torch."""
    monkeypatch.setenv("GCRDP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(search_model.QUERY_PATH_ENV, raising=False)
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(6), 10)
    image = rng.normal(size=(6, 12))[labels] + 0.3 * rng.normal(size=(60, 12))
    text = rng.normal(size=(6, 8))[labels] + 0.3 * rng.normal(size=(60, 8))
    split = np.array(["test" if i % 10 < 3 else "train" for i in range(60)])
    path = tmp_path / "f.npz"
    np.savez(
        path, image=image.astype(np.float32), text=text.astype(np.float32), labels=labels, classes=[f"c{i}" for i in range(6)], split=split
    )
    args = ["train", "--features", str(path), "--dataset-option", "split_seed=1", "--method", "gap-infonce", "--shots", "1"]
    assert main([*args, "--option", "max_epochs=3", "--checkpoint-dir", str(tmp_path / "ckpt"), "-q"]) == 0
    assert main(["index", str(tmp_path / "idx"), "--checkpoint", str(tmp_path / "ckpt"), "--features", str(path), "-q"]) == 0
    r = Retriever.load(tmp_path / "idx")
    assert r.model._method is None and r.model.pre_extracted
    first = r._meta[("image", 0)][2]
    argv = ["search", str(tmp_path / "idx"), "--like", first, "--k", "5", "--json"]
    fast = _search_in_fresh_python(argv, {"GCRDP_CACHE_DIR": str(tmp_path / "cache")})
    old = _search_in_fresh_python(argv, {"GCRDP_CACHE_DIR": str(tmp_path / "cache"), "GCRDP_QUERY_PATH": "torch"})
    assert fast["heavy"] == [] and "torch" in old["heavy"] and fast["out"] == old["out"]
