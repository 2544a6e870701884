"""Search indexes (issue 12): FAISS backend against brute force, the index folder (atomic
versions, --add with duplicates, fingerprint checks), and gcrdp index / gcrdp search end to end
on a model trained with the real encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from gcrdp.cli.main import main  # noqa: E402
from gcrdp.errors import ConfigError, DataError  # noqa: E402
from gcrdp.search import FaissBackend, recall_at_k  # noqa: E402
from tests.cli.test_cli import needs_encoders, run_cli, write_manifest  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_backend_equals_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    g, q = _unit(rng.normal(size=(300, 16))), _unit(rng.normal(size=(20, 16)))
    b = FaissBackend(16)
    b.add(g[:100])
    b.add(g[100:])  # two adds: rows continue
    scores, rows = b.search(q, 7)
    ref = q @ g.T
    np.testing.assert_array_equal(rows, np.argsort(-ref, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(scores, np.sort(ref, axis=1)[:, ::-1][:, :7], rtol=1e-5, atol=1e-5)
    b.save(tmp_path / "x.faiss")
    again = FaissBackend.load(tmp_path / "x.faiss", "Flat")
    assert again.ntotal == 300 and np.array_equal(again.search(q, 7)[1], rows)
    assert b.search(q, 1000)[1].shape == (20, 300)  # k beyond the collection: all of it


def test_approximate_backend_reports_its_recall_and_refuses_too_few_vectors():
    rng = np.random.default_rng(1)
    g = _unit(rng.normal(size=(2000, 16)))
    hnsw = FaissBackend(16, "HNSW32")
    hnsw.add(g)
    r = recall_at_k(hnsw, g, k=10, n_queries=200)
    assert 0.5 < r <= 1.0
    exact = FaissBackend(16)
    exact.add(g)
    assert recall_at_k(exact, g) == 1.0
    with pytest.raises(ConfigError, match="at least 64 vectors"):
        FaissBackend(16, "IVF64,Flat").add(g[:10])
    with pytest.raises(ConfigError, match="cannot build index type"):
        FaissBackend(16, "NoSuchIndex")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A gap-infonce model trained (2 epochs) on a small real manifest with the real encoders."""
    if needs_encoders.args[0]:  # the skipif condition: encoder packages missing
        pytest.skip("encoder packages not installed")
    root = tmp_path_factory.mktemp("search")
    manifest = write_manifest(root / "data")
    code = main(
        [
            "train",
            "--manifest",
            str(manifest),
            "--method",
            "gap-infonce",
            "--shots",
            "1",
            "--option",
            "max_epochs=2",
            "--cache-dir",
            str(root / "cache"),
            "--checkpoint-dir",
            str(root / "ckpt"),
            "-q",
        ]
    )
    assert code == 0
    return root, manifest


def test_index_search_add_and_fingerprint(trained, tmp_path, capsys):
    from gcrdp.search import Retriever, items_from_manifest

    root, manifest = trained
    index = tmp_path / "idx"
    code, out, err = run_cli(
        capsys, "index", index, "--checkpoint", root / "ckpt", "--manifest", manifest, "--cache-dir", root / "cache", "-q"
    )
    assert code == 0, err
    assert "40 images, 40 texts" in out and "0 duplicates skipped" in out  # a build keeps repeated captions
    assert (index / "CURRENT").read_text().strip() == "v000001"
    # a text query ranks images; the Python API gives the same ranking as brute force over the vectors
    r = Retriever.load(index)
    hits = r.search(text="a red circle", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and all(h.modality == "image" for h in hits)
    items = [it for it in items_from_manifest(manifest) if it.modality == "image"]
    vecs = r.model.embed("image", [it.path for it in items], cache_dir=root / "cache")
    q = r.query_vectors("text", ["a red circle"])
    best = np.argsort(-(vecs @ q[0]), kind="stable")[:5]
    assert [h.id for h in hits] == [items[i].id for i in best]
    # an image query ranks texts, as JSON lines on the command line
    code, out, err = run_cli(capsys, "search", index, "--image", items[0].path, "--k", "3", "--json")
    assert code == 0, err
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [x["rank"] for x in lines] == [1, 2, 3] and all(x["modality"] == "text" and x["text"] for x in lines)
    # --add: a texts file with one new text and one already indexed; a new version, the old one gone
    extra = tmp_path / "more.txt"
    extra.write_text("a red circle\na brand new caption\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "index", index, "--add", "--texts", extra, "--cache-dir", root / "cache", "-q")
    assert code == 0, err
    assert "41 texts" in out and "1 texts added" in out and "1 duplicates skipped" in out
    assert (index / "CURRENT").read_text().strip() == "v000002" and not (index / "v000001").exists()
    assert Retriever.load(index).search(image=items[0].path, k=50)[-1].rank == 41
    # a second texts file takes ids of its own (file name, digest, line); a second build at once is refused
    (tmp_path / "more2.txt").write_text("another one\nand another\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "index", index, "--add", "--texts", tmp_path / "more2.txt", "-q")
    assert code == 0 and "43 texts" in out and "2 texts added" in out, err
    assert {h.id.split(":")[-1] for h in Retriever.load(index).search(image=items[0].path, k=50)} >= {"line-1", "line-2"}
    import fcntl

    with open(index / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        code, out, err = run_cli(capsys, "index", index, "--add", "--texts", extra, "-q")
        assert code == 2 and "Another build" in err


def test_interrupted_build_keeps_the_previous_index(trained, tmp_path, monkeypatch):
    from gcrdp.search import Retriever, items_from_text_file
    from gcrdp.search import retriever as rmod

    root, manifest = trained
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\nthree\n", encoding="utf-8")
    Retriever.build(tmp_path / "idx", checkpoint=root / "ckpt", items=items_from_text_file(texts), progress=False)

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(rmod, "_write_metadata", crash)
    texts.write_text("four\nfive\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        Retriever.build(tmp_path / "idx", checkpoint=root / "ckpt", items=items_from_text_file(texts), progress=False)
    monkeypatch.undo()
    r = Retriever.load(tmp_path / "idx")
    assert len(r) == 3 and not list((tmp_path / "idx").glob(".tmp-*"))


def test_a_changed_model_is_refused(trained, tmp_path, capsys):
    import shutil

    from gcrdp.search import Retriever, items_from_text_file

    root, manifest = trained
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\n", encoding="utf-8")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "ckpt", ckpt)
    Retriever.build(tmp_path / "idx", checkpoint=ckpt, items=items_from_text_file(texts), progress=False)
    weights = next(p for p in (ckpt / "final").iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises((ConfigError, DataError)):
        Retriever.load(tmp_path / "idx")
    code, _, err = run_cli(capsys, "search", tmp_path / "idx", "--text", "one")
    assert code == 2 and "Traceback" not in err
    code, _, err = run_cli(capsys, "search", tmp_path / "nothing", "--text", "one")
    assert code == 2 and "not a gcrdp index" in err


def test_milvus_lite_top_k_equals_faiss_exact(tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from gcrdp.search.backends import MilvusBackend

    rng = np.random.default_rng(2)
    g, q = _unit(rng.normal(size=(500, 12))), _unit(rng.normal(size=(15, 12)))
    exact = FaissBackend(12)
    exact.add(g)
    milvus = MilvusBackend(12, "Flat", uri=str(tmp_path / "m.db"))
    milvus.add(g[:200])
    milvus.add(g[200:])
    fs, fr = exact.search(q, 10)
    ms, mr = milvus.search(q, 10)
    np.testing.assert_array_equal(mr, fr)
    np.testing.assert_allclose(ms, fs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(milvus.vectors(), g, atol=1e-6)
    # rows beyond the published count (an interrupted add) are never returned, and trimmed
    milvus.save(tmp_path / "image.faiss")
    milvus.add(g[:5])
    again = MilvusBackend.load(tmp_path / "image.faiss", "Flat")
    assert again.ntotal == 500 and (again.search(q, 10)[1] < 500).all()
    again.trim()
    milvus.drop()


def test_index_on_milvus_lite_searches_like_faiss(trained, tmp_path, capsys):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from gcrdp.search import Retriever

    root, manifest = trained
    for name, extra in (("f", []), ("m", ["--backend", "milvus", "--uri", str(tmp_path / "milvus.db")])):
        code, out, err = run_cli(
            capsys,
            "index",
            tmp_path / name,
            "--checkpoint",
            root / "ckpt",
            "--manifest",
            manifest,
            "--cache-dir",
            root / "cache",
            "-q",
            *extra,
        )
        assert code == 0, err
    f, m = Retriever.load(tmp_path / "f"), Retriever.load(tmp_path / "m")
    assert m.info["backend"] == "milvus" and (tmp_path / "m" / "v000001" / "image.milvus.json").is_file()
    for query in ("a red circle", "a blue ring"):
        assert [h.id for h in m.search(text=query, k=8)] == [h.id for h in f.search(text=query, k=8)]


def test_the_readme_example_runs(trained, tmp_path, monkeypatch, capsys):
    import re
    import shutil

    root, manifest = trained
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- search-example:start -->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the example's relative paths: ckpt/g5 and my_photos/
    shutil.copytree(root / "ckpt", tmp_path / "ckpt" / "g5")
    (tmp_path / "my_photos" / "shapes").mkdir(parents=True)
    for p in sorted((manifest.parent / "img").glob("*.png"))[:12]:
        shutil.copy(p, tmp_path / "my_photos" / "shapes" / p.name)
    monkeypatch.setenv("GCRDP_CACHE_DIR", str(root / "cache"))
    exec(compile(block, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].startswith("1 ") and lines[0].endswith(" shapes")


def test_index_with_clip_alone(tmp_path, capsys):
    """A local CLIP folder indexes without training (aligned encoders): text queries rank images
    by the cosine of CLIP's pooled features, as brute force does."""
    pytest.importorskip("transformers")
    from gcrdp.encoders import get_image_encoder, get_text_encoder
    from gcrdp.search import Retriever
    from tests.clip_fixture import make_clip_dir

    clip = make_clip_dir(tmp_path / "clip")
    manifest = write_manifest(tmp_path / "data", n_classes=2, per_class=4)
    code, out, err = run_cli(
        capsys, "index", tmp_path / "idx", "--clip", clip, "--manifest", manifest, "--cache-dir", tmp_path / "cache", "-q"
    )
    assert code == 0, err
    r = Retriever.load(tmp_path / "idx")
    assert r.info["checkpoint"] is None and r.info["model"]["method"] == "zero-shot"
    hits = r.search(text="a red circle", k=8)
    paths = [h.path for h in hits]
    img = get_image_encoder("clip", model_dir=str(clip)).encode(paths, progress=False).pooled.astype(np.float32)
    txt = get_text_encoder("clip", model_dir=str(clip)).encode(["a red circle"], progress=False).pooled.astype(np.float32)
    s = _unit(img) @ _unit(txt)[0]
    assert np.all(np.diff(s) <= 1e-3)  # the hits come back in the order of CLIP's cosine
    # two separate (unaligned) encoders are refused
    from gcrdp.search import SearchModel

    with pytest.raises(ConfigError, match="aligned"):
        SearchModel.from_encoders(image_encoder="efficientnet-lite0", text_encoder="minilm-l6")


def test_index_of_pre_extracted_features_queried_by_id(tmp_path, capsys):
    """A model trained on a features file indexes a features file made the same way; queries go
    by an indexed item's id (there is no encoder to embed new text)."""
    from gcrdp.search import Retriever

    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(6), 10)
    centers_i, centers_t = rng.normal(size=(6, 12)), rng.normal(size=(6, 8))
    image = centers_i[labels] + 0.3 * rng.normal(size=(60, 12))
    text = centers_t[labels] + 0.3 * rng.normal(size=(60, 8))
    split = np.array(["test" if i % 10 < 3 else "train" for i in range(60)])
    path = tmp_path / "f.npz"
    np.savez(
        path,
        image=image.astype(np.float32),
        text=text.astype(np.float32),
        labels=labels,
        classes=np.array([f"class-{i}" for i in range(6)]),  # a usable generated split at split_seed 0
        split=split,
    )
    assert (
        main(
            [
                "train",
                "--features",
                str(path),
                "--method",
                "gap-infonce",
                "--shots",
                "1",
                "--option",
                "max_epochs=3",
                "--checkpoint-dir",
                str(tmp_path / "ckpt"),
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code, out, err = run_cli(capsys, "index", tmp_path / "idx", "--checkpoint", tmp_path / "ckpt", "--features", path, "-q")
    assert code == 0, err
    r = Retriever.load(tmp_path / "idx")
    assert r.info["model"]["pre_extracted"] is True and len(r) == 120
    first_id = r._meta[("image", 0)][2]
    hits = r.search(like=first_id, k=5)
    # brute force: the model's embeddings of the features file
    from gcrdp.data.registry import load_dataset

    ds = load_dataset("features", path=str(path))
    qi = r.model.embed_features("image", ds.features.image.subset(np.array([0])))
    tt = r.model.embed_features("text", ds.features.text)
    assert [h.id for h in hits] == [ds.samples[j].id for j in np.argsort(-(tt @ qi[0]), kind="stable")[:5]]
    code, out, err = run_cli(capsys, "search", tmp_path / "idx", "--like", first_id, "--k", "3")
    assert code == 0 and len(out.strip().splitlines()) == 4  # the header and 3 hits
    code, _, err = run_cli(capsys, "search", tmp_path / "idx", "--text", "anything")
    assert code == 2 and "pre-extracted" in err


def test_index_reports_instance_recall_of_its_own_pairs(trained, tmp_path):
    from gcrdp.evaluation import instance_recall
    from gcrdp.search import Retriever, items_from_manifest

    root, manifest = trained
    items = items_from_manifest(manifest)
    r = Retriever.build(tmp_path / "idx", checkpoint=root / "ckpt", items=items, cache_dir=root / "cache", progress=False)
    inst = r.info["instance_recall"]
    assert inst["n_pairs"] == 40
    vi, vt = r.backends["image"].vectors(), r.backends["text"].vectors()
    ids_i = {m[2]: m[1] for (mod, _), m in r._meta.items() if mod == "image"}
    pairs = [(ids_i[m[2]], m[1]) for (mod, _), m in r._meta.items() if mod == "text"]
    qi, qt = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    order = np.argsort([m for m in qi])  # the report sorts pairs by id; recall is order-free
    ref = instance_recall(vi[qi[order]], vt, qt[order], metric="dot")
    assert inst["i2t"]["recall@5"] == pytest.approx(ref["recall@5"])


def test_an_untrained_index_without_lists_trains_on_its_vectors():
    rng = np.random.default_rng(5)
    g = _unit(rng.normal(size=(600, 16)))
    pq = FaissBackend(16, "PQ4")  # needs training, has no IVF lists
    pq.add(g)
    assert pq.ntotal == 600 and pq.search(g[:3], 5)[1].shape == (3, 5)
    assert 0.0 < recall_at_k(pq, g, k=10, n_queries=100) <= 1.0
