"""Tests of the ranking paths of gcrdp.evaluation (ranking.py) and of evaluation at scale: every
path against the naive references of test_metrics.py, and the paths against each other bit for
bit (sorted scores + counts, the packed-key sort, ties resolved by counts or by the sort), the
blocks, the fused instance ranks, the block-by-block embedding preparation and the
memory-mapped ``.npz`` reader."""

from __future__ import annotations

import numpy as np
import pytest

from gcrdp.evaluation import chance_map, cross_modal_metrics, instance_recall, ranking, relevance, retrieval_metrics
from gcrdp.evaluation import metrics as metrics_mod
from gcrdp.evaluation.files import evaluate_embedding_files, load_embeddings
from gcrdp.evaluation.metrics import _row_norms, _self_paired_metrics, average_precision, precision_at_k, recall_at_k
from gcrdp.evaluation.ranking import BlockRelevance, GalleryRelevance, _blocks, _ranked_relevance, _relevant_ranks
from tests.evaluation.test_metrics import TOL, naive_metrics, naive_relevance, random_multi_hot

# Force each path: (MAX_RELEVANT_SHARE, MAX_TIES_PER_ROW).
PATHS = {
    "default": (ranking.MAX_RELEVANT_SHARE, ranking.MAX_TIES_PER_ROW),
    "sorted scores, ties by counts": (1.0, 10**9),
    "sorted scores, ties by the packed sort": (1.0, 0),
    "packed sort": (-1.0, 0),
}


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    share, ties = PATHS[request.param]
    monkeypatch.setattr(ranking, "MAX_RELEVANT_SHARE", share)
    monkeypatch.setattr(ranking, "MAX_TIES_PER_ROW", ties)
    return request.param


def scores_with_ties(rng, nq, ng, kind):
    """float32 scores: 'none' (continuous), 'few' (a few exact ties per row, 0.0 and -0.0
    included), 'many' (coarse values: most scores tie)."""
    s = rng.standard_normal((nq, ng)).astype(np.float32)
    if kind == "few":
        for i in range(nq):
            j = rng.choice(ng, 6, replace=False)
            s[i, j[1]] = s[i, j[0]]
            s[i, j[3]] = s[i, j[2]]
            s[i, j[4]], s[i, j[5]] = np.float32(0.0), np.float32(-0.0)
    elif kind == "many":
        s = np.round(s * 2) / 2
    return s


# ------------------------------------------------------------------ every path vs the references


@pytest.mark.parametrize("kind", ["none", "few", "many"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_each_path_matches_the_naive_loop(path, kind, multi_label):
    rng = np.random.default_rng(10)
    nq, ng, n_classes = 21, 57, 4
    if multi_label:
        ql, gl = random_multi_hot(rng, nq, n_classes), random_multi_hot(rng, ng, n_classes)
    else:
        ql, gl = rng.integers(0, n_classes, nq), rng.integers(0, n_classes + 1, ng)
    rel = naive_relevance(ql, gl)
    scores = scores_with_ties(rng, nq, ng, kind)
    ref_ap, _, _ = naive_metrics(scores.astype(np.float64), rel)
    np.testing.assert_allclose(average_precision(scores, rel), ref_ap, atol=TOL)
    for k in (1, 7, ng):
        ap_k, p_k, r_k = naive_metrics(scores.astype(np.float64), rel, k)
        np.testing.assert_allclose(average_precision(scores, rel, k), ap_k, atol=TOL)
        np.testing.assert_allclose(precision_at_k(scores, rel, k), p_k, atol=TOL)
        np.testing.assert_allclose(recall_at_k(scores, rel, k), r_k, atol=TOL)


@pytest.mark.parametrize("multi_label", [False, True])
def test_each_path_matches_the_naive_loop_from_embeddings(path, multi_label):
    # Small integer embeddings: exact float32 dot products with many ties; rows of the same
    # gallery item repeated (identical scores) and queries without relevant items.
    rng = np.random.default_rng(11)
    nq, ng, d, n_classes = 19, 44, 3, 5
    if multi_label:
        ql, gl = random_multi_hot(rng, nq, n_classes), random_multi_hot(rng, ng, n_classes)
    else:
        ql, gl = rng.integers(0, n_classes + 1, nq), rng.integers(0, n_classes, ng)
    q = rng.integers(-2, 3, (nq, d)).astype(np.float32)
    g = rng.integers(-2, 3, (ng, d)).astype(np.float32)
    g[10:14] = g[3]
    rel = naive_relevance(ql, gl)
    scores = q.astype(np.float64) @ g.T.astype(np.float64)
    pair = rng.integers(-1, ng, nq)
    res = retrieval_metrics(q, g, ql, gl, ks=(1, 10), metric="dot", per_query=True, chunk_size=6)
    ref_ap, _, _ = naive_metrics(scores, rel)
    np.testing.assert_allclose(res["per_query"]["ap"], ref_ap, atol=TOL)
    for k in (1, 10):
        ap_k, p_k, r_k = naive_metrics(scores, rel, k)
        np.testing.assert_allclose(res["per_query"][f"ap@{k}"], ap_k, atol=TOL)
        np.testing.assert_allclose(res["per_query"][f"precision@{k}"], p_k, atol=TOL)
        np.testing.assert_allclose(res["per_query"][f"recall@{k}"], r_k, atol=TOL)
    # Instance ranks: 1 + the number of items scored strictly higher than the pair.
    inst = instance_recall(q, g, pair, ks=(1, 3), metric="dot")
    ranks = np.array([1 + int((scores[i] > scores[i, pair[i]]).sum()) for i in range(nq) if pair[i] >= 0])
    assert inst["recall@3"] == pytest.approx((ranks <= 3).mean())
    assert inst["mean_rank"] == pytest.approx(ranks.mean())


def test_the_paths_give_the_same_ranks_bit_for_bit():
    rng = np.random.default_rng(12)
    for kind in ("none", "few", "many"):
        for density in (0.0, 0.03, 0.3, 1.0):
            scores = scores_with_ties(rng, 13, 200, kind)
            rel = rng.random(scores.shape) < density
            ref_rows, ref_ranks = np.nonzero(_ranked_relevance(scores, rel))
            for share, ties in PATHS.values():
                ranking.MAX_RELEVANT_SHARE, ranking.MAX_TIES_PER_ROW = share, ties
                try:
                    pair = rng.integers(-1, 200, 13)
                    rows, ranks, pair_rank = _relevant_ranks(scores, BlockRelevance(200, dense=rel), pair=pair)
                finally:
                    ranking.MAX_RELEVANT_SHARE, ranking.MAX_TIES_PER_ROW = PATHS["default"]
                np.testing.assert_array_equal(rows, ref_rows)
                np.testing.assert_array_equal(ranks, ref_ranks)
                np.testing.assert_array_equal(pair_rank, ranking._pair_ranks(scores, pair))


def test_ties_of_zero_and_minus_zero_and_a_single_column():
    scores = np.array([[0.0, -0.0, 1.0, -0.0, 0.0]], np.float32)
    rel = np.array([[False, True, False, True, True]])
    rows, ranks, _ = _relevant_ranks(scores, BlockRelevance(5, dense=rel))
    np.testing.assert_array_equal(ranks, [2, 3, 4])  # 1.0 first, then the zeros by index
    one = np.array([[0.5]], np.float32)
    for relevant in (True, False):
        rows, ranks, pair_rank = _relevant_ranks(one, BlockRelevance(1, dense=np.array([[relevant]])), pair=np.array([0]))
        assert ranks.tolist() == ([0] if relevant else []) and pair_rank.tolist() == [1]


def test_gallery_relevance_equals_relevance():
    rng = np.random.default_rng(13)
    for ql, gl in [
        (rng.integers(0, 6, 15), rng.integers(1, 5, 40)),  # query classes 0 and 5 absent from the gallery
        (random_multi_hot(rng, 15, 3), random_multi_hot(rng, 40, 3)),
        (random_multi_hot(rng, 15, 130), random_multi_hot(rng, 40, 130)),  # dense: packed bits, three 64-bit words
        (random_multi_hot(rng, 15, 9, p=0.08), random_multi_hot(rng, 40, 9, p=0.08)),  # sparse: union of the classes' items
    ]:
        gallery = GalleryRelevance(gl)
        block = gallery.block(ql[2:11])
        expected = relevance(ql[2:11], gl)
        rows, cols = block.pairs()
        np.testing.assert_array_equal(np.stack([rows, cols]), np.stack(np.nonzero(expected)))
        np.testing.assert_array_equal(block.dense(np.array([1, 4])), expected[[1, 4]])
        assert chance_map(ql, gl) == pytest.approx(relevance(ql, gl).mean(), abs=1e-15)


def test_chance_map_multi_label_counts_repeated_rows():
    rng = np.random.default_rng(14)
    ql = random_multi_hot(rng, 50, 3)  # 3 classes: at most 8 distinct rows, many repeats
    gl = random_multi_hot(rng, 70, 3)
    assert chance_map(ql, gl) == float(int(naive_relevance(ql, gl).sum()) / (50 * 70))


# ------------------------------------------------------------------------------- blocks, threads


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 100])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 7, 64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocks_cover_the_queries_with_two_rows_or_more(n, chunk_size, threads):
    blocks = _blocks(n, chunk_size, threads)
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a < b and b == c for (a, b), (c, _) in zip(blocks, blocks[1:] + [(n, n)]))
    sizes = [b - a for a, b in blocks]
    if chunk_size >= 2 and n >= 2:
        assert min(sizes) >= 2
    per_thread = max(2 if chunk_size >= 2 else 1, chunk_size // threads)
    assert max(sizes) <= max(per_thread + 1, min(n, 3))


def test_results_do_not_depend_on_blocks_or_threads_with_float_scores():
    # Continuous cosine scores (rounded by the BLAS): every block of two rows or more is one
    # matrix product whose rows do not depend on the other rows of the block.
    rng = np.random.default_rng(15)
    q, g = rng.standard_normal((37, 16)), rng.standard_normal((53, 16))
    ql, gl = rng.integers(0, 3, 37), rng.integers(0, 3, 53)
    ref = retrieval_metrics(q, g, ql, gl, ks=(1, 5), per_query=True, chunk_size=37, n_threads=1)
    for chunk_size in (2, 3, 8, 36, None):
        for n_threads in (1, 2, 3):
            got = retrieval_metrics(q, g, ql, gl, ks=(1, 5), per_query=True, chunk_size=chunk_size, n_threads=n_threads)
            for name, values in ref["per_query"].items():
                np.testing.assert_array_equal(got["per_query"][name], values)


def test_an_error_in_a_block_is_raised_first_in_block_order():
    q = np.ones((40, 2)) * 1e30
    q[:20] = 1.0  # the first 20 queries score finitely; 20.. overflow
    g = np.ones((5, 2)) * 1e10
    with pytest.raises(metrics_mod.DataError, match=r"first rows: \[20, 21"):
        retrieval_metrics(q, g, np.zeros(40, int), np.zeros(5, int), metric="dot", chunk_size=8, n_threads=2)


# -------------------------------------------------------------- preparation of the embeddings


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_embeddings_prepared_block_by_block_equal_whole(monkeypatch, dtype):
    rng = np.random.default_rng(16)
    q = (rng.standard_normal((30, 8)) * 5).astype(dtype)
    g = (rng.standard_normal((45, 8)) * 5).astype(dtype)
    g[3] = g[7] if dtype != np.int64 else g[3]
    ql, gl = rng.integers(0, 3, 30), rng.integers(0, 3, 45)
    whole = np.linalg.norm(q.astype(np.float32), axis=1, keepdims=True)
    ref = retrieval_metrics(q, g, ql, gl, ks=(2,), per_query=True)
    monkeypatch.setattr(metrics_mod, "EMBEDDING_BLOCK_VALUES", 17)  # blocks of 2 rows
    np.testing.assert_array_equal(_row_norms(q, "q"), whole)
    assert metrics_mod._as_embeddings(q, "q") is q  # checked, not cast or copied
    got = retrieval_metrics(q, g, ql, gl, ks=(2,), per_query=True)
    for name, values in ref["per_query"].items():
        np.testing.assert_array_equal(got["per_query"][name], values)
    np.testing.assert_array_equal(metrics_mod._cosine_prepare(q, "q"), q.astype(np.float32) / whole)


def test_embedding_errors_are_found_in_any_block(monkeypatch):
    monkeypatch.setattr(metrics_mod, "EMBEDDING_BLOCK_VALUES", 4)
    q = np.ones((9, 2))
    q[[2, 7], 1] = np.nan
    with pytest.raises(metrics_mod.DataError, match=r"NaN or infinite values in 2 rows \(first: \[2, 7\]\)"):
        retrieval_metrics(q, np.ones((3, 2)), np.zeros(9, int), np.zeros(3, int))
    q = np.ones((9, 2))
    q[[1, 8]] = 0
    with pytest.raises(metrics_mod.DataError, match=r"2 rows have zero norm \(first: \[1, 8\]\)"):
        retrieval_metrics(q, np.ones((3, 2)), np.zeros(9, int), np.zeros(3, int))


# --------------------------------------------------------------- gcrdp evaluate: fused, mapped


def _paired_set(rng, n=60, d=6, multi_label=False):
    labels = random_multi_hot(rng, n, 4) if multi_label else rng.integers(0, 4, n)
    image = rng.standard_normal((n, d)).astype(np.float32)
    text = image + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    text[5] = text[9]  # exact ties
    return image, text, labels


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_self_paired_metrics_equal_the_separate_functions(multi_label, metric, monkeypatch):
    rng = np.random.default_rng(17)
    image, text, labels = _paired_set(rng, multi_label=multi_label)
    pair = np.arange(60)
    expected = cross_modal_metrics(image, text, labels, image, text, labels, ks=(1, 5), metric=metric)
    expected["instance"] = {
        "i2t": instance_recall(image, text, pair, metric=metric),
        "t2i": instance_recall(text, image, pair, metric=metric),
    }
    expected["chance"] = chance_map(labels, labels)
    for share in (ranking.MAX_RELEVANT_SHARE, -1.0):  # fast path, packed sort
        monkeypatch.setattr(ranking, "MAX_RELEVANT_SHARE", share)
        got = _self_paired_metrics(image, text, labels, ks=(1, 5), metric=metric, chunk_size=7)
        assert got == expected


@pytest.mark.parametrize("compressed", [False, True])
def test_evaluate_file_reads_mapped_or_compressed_arrays(tmp_path, compressed):
    rng = np.random.default_rng(18)
    image, text, labels = _paired_set(rng)
    image64 = np.asfortranarray(image.astype(np.float64))  # another dtype and layout
    path = tmp_path / "e.npz"
    (np.savez_compressed if compressed else np.savez)(path, image=image64, text=text, labels=labels, extra=np.zeros(3))
    data = load_embeddings(path)
    assert isinstance(data["image"], np.memmap) != compressed
    assert not isinstance(data["labels"], np.memmap)
    np.testing.assert_array_equal(data["image"], image64)
    assert data["image"].flags.f_contiguous
    got = evaluate_embedding_files(path, ks=(3,))
    expected = cross_modal_metrics(image64, text, labels, image64, text, labels, ks=(3,))
    expected["instance"] = {"i2t": instance_recall(image64, text, np.arange(60)), "t2i": instance_recall(text, image64, np.arange(60))}
    expected["chance"] = chance_map(labels, labels)
    assert got == expected
    # Against another gallery file (no instance level).
    np.savez(tmp_path / "g.npz", image=image[:30], text=text[:30], labels=labels[:30])
    got = evaluate_embedding_files(path, tmp_path / "g.npz")
    assert got["i2t"] == retrieval_metrics(image64, text[:30], labels, labels[:30])
    assert "instance" not in got


def test_evaluate_file_with_class_names_and_object_arrays(tmp_path):
    rng = np.random.default_rng(19)
    image, text, labels = _paired_set(rng, n=20)
    names = np.array(["cat", "dog", "emu", "fox"])[labels]
    np.savez(tmp_path / "n.npz", image=image, text=text, labels=names)
    assert evaluate_embedding_files(tmp_path / "n.npz")["i2t"] == retrieval_metrics(image, text, labels, labels)
    np.savez(tmp_path / "o.npz", image=image, text=text, labels=np.array([{"a": 1}] * 20, dtype=object))
    with pytest.raises(metrics_mod.DataError, match="Cannot read"):
        load_embeddings(tmp_path / "o.npz")
