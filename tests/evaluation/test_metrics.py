"""Tests of gcrdp.evaluation.metrics against plain references and hand-computed cases.

References: a per-query Python loop (the DSCMR ``fx_calc_map_label`` shape, with the stable
tie-break made explicit) and ``sklearn.metrics.average_precision_score``. Tolerances: 1e-12 on
float64 averages of the same ranks (only summation order differs).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from gcrdp.errors import ConfigError, DataError, GcrdpError
from gcrdp.evaluation.metrics import (
    average_precision,
    chance_map,
    cross_modal_metrics,
    precision_at_k,
    recall_at_k,
    relevance,
    retrieval_metrics,
)

TOL = 1e-12


# ----------------------------------------------------------------------------------- references


def naive_relevance(ql: np.ndarray, gl: np.ndarray) -> np.ndarray:
    out = np.zeros((len(ql), len(gl)), bool)
    for i in range(len(ql)):
        for j in range(len(gl)):
            if ql.ndim == 1:
                out[i, j] = ql[i] == gl[j]
            else:
                out[i, j] = bool(np.any(np.logical_and(ql[i], gl[j])))
    return out


def naive_metrics(scores, rel, k=None, denominator="hits"):
    """Per-query loop: returns (ap, precision@k, recall@k) lists. Ties: gallery index first."""
    nq, ng = scores.shape
    k = ng if k is None else k
    aps, precs, recs = [], [], []
    for i in range(nq):
        order = sorted(range(ng), key=lambda j: (-scores[i, j], j))
        total = int(rel[i].sum())
        hits, p = 0, 0.0
        for rank, j in enumerate(order[:k]):
            if rel[i, j]:
                hits += 1
                p += hits / (rank + 1)
        denom = hits if denominator == "hits" else min(k, total)
        aps.append(p / denom if denom else 0.0)
        precs.append(hits / k)
        recs.append(hits / total if total else 0.0)
    return np.array(aps), np.array(precs), np.array(recs)


def one_hot(labels, n_classes):
    return np.eye(n_classes, dtype=bool)[labels]


def random_multi_hot(rng, n, n_classes, p=0.3):
    return rng.random((n, n_classes)) < p


def float32_cosine(q, g):
    q = q.astype(np.float32)
    g = g.astype(np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T


# ------------------------------------------------------------------------- against references


@pytest.mark.parametrize("multi_label", [False, True])
def test_map_matches_naive_loop_with_ties(multi_label):
    rng = np.random.default_rng(0)
    nq, ng, n_classes = 23, 41, 5
    if multi_label:
        ql, gl = random_multi_hot(rng, nq, n_classes), random_multi_hot(rng, ng, n_classes)
    else:
        ql, gl = rng.integers(0, n_classes, nq), rng.integers(0, n_classes, ng)
    rel = relevance(ql, gl)
    np.testing.assert_array_equal(rel, naive_relevance(ql, gl))
    # Coarse scores: many exact ties, so the tie-break matters. Same ranks in float32 and float64.
    scores = rng.integers(-3, 4, (nq, ng)) / 4.0
    ref_ap, ref_p, ref_r = naive_metrics(scores, rel)
    for dtype in (np.float64, np.float32, np.float16):
        np.testing.assert_allclose(average_precision(scores.astype(dtype), rel), ref_ap, atol=TOL)
    for k in (1, 5, ng):
        ap_k, p_k, r_k = naive_metrics(scores, rel, k)
        np.testing.assert_allclose(average_precision(scores, rel, k), ap_k, atol=TOL)
        np.testing.assert_allclose(precision_at_k(scores, rel, k), p_k, atol=TOL)
        np.testing.assert_allclose(recall_at_k(scores, rel, k), r_k, atol=TOL)
        ap_k2, _, _ = naive_metrics(scores, rel, k, "min_k_r")
        got = average_precision(scores, rel, k, k_denominator="min_k_r")
        np.testing.assert_allclose(got, ap_k2, atol=TOL)


@pytest.mark.parametrize("multi_label", [False, True])
def test_retrieval_metrics_matches_naive_loop(multi_label):
    rng = np.random.default_rng(1)
    nq, ng, d, n_classes = 30, 47, 3, 4
    if multi_label:
        ql, gl = random_multi_hot(rng, nq, n_classes), random_multi_hot(rng, ng, n_classes)
    else:
        ql, gl = rng.integers(0, n_classes, nq), rng.integers(0, n_classes, ng)
    # Small integer embeddings: float32 dot products are exact (no BLAS rounding) and tie often.
    q = rng.integers(-2, 3, (nq, d)).astype(np.float32)
    g = rng.integers(-2, 3, (ng, d)).astype(np.float32)
    rel = naive_relevance(ql, gl)
    scores = q.astype(np.float64) @ g.T.astype(np.float64)
    res = retrieval_metrics(q, g, ql, gl, ks=(1, 10), metric="dot", per_query=True)
    ref_ap, _, _ = naive_metrics(scores, rel)
    np.testing.assert_allclose(res["per_query"]["ap"], ref_ap, atol=TOL)
    assert res["map"] == pytest.approx(ref_ap.mean(), abs=TOL)
    for k in (1, 10):
        ap_k, p_k, r_k = naive_metrics(scores, rel, k)
        assert res[f"map@{k}"] == pytest.approx(ap_k.mean(), abs=TOL)
        assert res[f"precision@{k}"] == pytest.approx(p_k.mean(), abs=TOL)
        assert res[f"recall@{k}"] == pytest.approx(r_k.mean(), abs=TOL)
    np.testing.assert_array_equal(res["per_query"]["n_relevant"], rel.sum(axis=1))


@pytest.mark.parametrize("multi_label", [False, True])
def test_map_matches_sklearn_without_ties(multi_label):
    # sklearn's average_precision_score groups tied scores into one threshold (it does not break
    # ties by index), so the comparison uses continuous random scores, which have no ties.
    rng = np.random.default_rng(2)
    nq, ng, n_classes = 19, 64, 6
    if multi_label:
        ql, gl = random_multi_hot(rng, nq, n_classes), random_multi_hot(rng, ng, n_classes)
    else:
        ql, gl = rng.integers(0, n_classes, nq), rng.integers(0, n_classes, ng)
    q, g = rng.standard_normal((nq, 8)), rng.standard_normal((ng, 8))
    scores = float32_cosine(q, g)
    assert all(len(np.unique(row)) == ng for row in scores)
    rel = relevance(ql, gl)
    ours = average_precision(scores, rel)
    res = retrieval_metrics(q, g, ql, gl, per_query=True)
    np.testing.assert_allclose(res["per_query"]["ap"], ours, atol=TOL)
    for i in range(nq):
        if rel[i].any():  # sklearn is undefined without positives; ours is 0 (tested below)
            assert ours[i] == pytest.approx(average_precision_score(rel[i], scores[i]), abs=TOL)


def test_dscmr_style_map_at_k_loop():
    """mAP@k equals the DSCMR ``fx_calc_map_label`` loop (divide by hits in the top k)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 25)
    image, text = rng.standard_normal((25, 4)), rng.standard_normal((25, 4))
    dist = 1.0 - float32_cosine(image, text).astype(np.float64)  # cdist 'cosine'
    for k in (5, 25):
        res = []
        for i in range(25):
            order = np.argsort(dist[i], kind="stable")
            p = r = 0.0
            for j in range(k):
                if labels[i] == labels[order[j]]:
                    r += 1
                    p += r / (j + 1)
            res.append(p / r if r > 0 else 0)
        got = retrieval_metrics(image, text, labels, labels, ks=(k,))[f"map@{k}"]
        assert got == pytest.approx(np.mean(res), abs=1e-9)


# --------------------------------------------------------------------------- hand-built cases


def test_ties_are_broken_by_gallery_index():
    # Items 1, 2, 3 tie at 0.9; by index the ranking is 1, 2, 3, 0, 4. Relevant: 3 and 4, at
    # ranks 3 and 5: AP = (1/3 + 2/5) / 2 = 11/30. Any other order of the tie changes it.
    scores = np.array([[0.5, 0.9, 0.9, 0.9, 0.1]])
    rel = np.array([[False, False, False, True, True]])
    for dtype in (np.float64, np.float32, np.float16):
        assert average_precision(scores.astype(dtype), rel)[0] == pytest.approx(11 / 30, abs=TOL)
    assert precision_at_k(scores, rel, 3)[0] == pytest.approx(1 / 3)
    # A tie decided in favour of the relevant item when it comes first.
    rel2 = np.array([[False, True, False, False, False]])
    assert average_precision(scores, rel2)[0] == 1.0
    # -0.0 == 0.0: they tie, so index order decides (item 0 first).
    zero_scores = np.array([[-0.0, 0.0]])
    for dtype in (np.float64, np.float32):
        got = average_precision(zero_scores.astype(dtype), np.array([[False, True]]))[0]
        assert got == 0.5


def test_ties_in_retrieval_metrics_follow_gallery_index():
    # Identical gallery items: every score ties; ranking = gallery order.
    g = np.ones((4, 2), np.float32)
    q = np.ones((1, 2), np.float32)
    res = retrieval_metrics(q, g, np.array([1]), np.array([0, 1, 0, 1]), ks=(1, 2))
    assert res["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res["map@1"] == 0.0
    assert res["map@2"] == pytest.approx(1 / 2)  # hits convention: (1/2) / 1
    assert res["precision@2"] == 0.5
    assert res["recall@2"] == 0.5


def test_at_k_metrics_hand_computed():
    # Ranked relevance: T F T F F T F T  (R = 4, n = 8), scores strictly decreasing.
    pattern = np.array([[1, 0, 1, 0, 0, 1, 0, 1]], bool)
    scores = np.linspace(1.0, 0.0, 8)[None, :]
    assert average_precision(scores, pattern)[0] == pytest.approx((1 + 2 / 3 + 3 / 6 + 4 / 8) / 4)
    assert average_precision(scores, pattern, 3)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, pattern, 3, k_denominator="min_k_r")[0] == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision(scores, pattern, 6)[0] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    assert average_precision(scores, pattern, 6, k_denominator="min_k_r")[0] == pytest.approx((1 + 2 / 3 + 3 / 6) / 4)
    assert average_precision(scores, pattern, 2)[0] == pytest.approx(1.0)
    assert precision_at_k(scores, pattern, 3)[0] == pytest.approx(2 / 3)
    assert recall_at_k(scores, pattern, 3)[0] == pytest.approx(2 / 4)
    assert recall_at_k(scores, pattern, 8)[0] == 1.0
    # The permutation of columns does not matter, only scores: shuffle both consistently.
    perm = np.array([5, 2, 7, 0, 1, 6, 3, 4])
    assert average_precision(scores[:, perm], pattern[:, perm], 6)[0] == pytest.approx(13 / 18)
    # k = ng makes AP@k equal AP@all under the "hits" convention.
    assert average_precision(scores, pattern, 8)[0] == average_precision(scores, pattern)[0]


def test_query_without_relevant_items_gets_zero_and_is_counted():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    ql, gl = np.array([0, 1, 7]), np.array([0, 1])  # class 7 is not in the gallery
    res = retrieval_metrics(q, g, ql, gl, ks=(1,), per_query=True)
    np.testing.assert_array_equal(res["per_query"]["ap"], [1.0, 1.0, 0.0])
    assert res["map"] == pytest.approx(2 / 3)  # the query stays in the mean
    assert res["n_queries_without_relevant"] == 1
    assert res["recall@1"] == pytest.approx(2 / 3)
    assert res["map@1"] == pytest.approx(2 / 3)
    assert average_precision(np.zeros((1, 3)), np.zeros((1, 3), bool))[0] == 0.0
    assert recall_at_k(np.zeros((1, 3)), np.zeros((1, 3), bool), 2)[0] == 0.0
    # Multi-label: a query with no class is relevant to nothing.
    assert not relevance(np.array([[0, 0]]), np.array([[1, 1]])).any()


def test_relevance_multi_label_shares_a_class():
    ql = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    gl = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=bool)
    expected = np.array([[True, False, True, False], [True, True, False, False], [False] * 4])
    np.testing.assert_array_equal(relevance(ql, gl), expected)
    np.testing.assert_array_equal(relevance(ql.astype(float), gl), expected)
    # Single-label equals multi-label with one-hot rows.
    a, b = np.array([0, 2, 1]), np.array([2, 2, 0, 1])
    np.testing.assert_array_equal(relevance(a, b), relevance(one_hot(a, 3), one_hot(b, 3)))


def test_chance_map():
    ql, gl = np.array([0, 1, 5]), np.array([0, 0, 1, 2])
    assert chance_map(ql, gl) == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)
    qm = np.array([[1, 0, 0], [1, 1, 0]])
    gm = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert chance_map(qm, gm) == pytest.approx((1 / 4 + 2 / 4) / 2)
    rng = np.random.default_rng(4)
    q, g = rng.standard_normal((12, 3)), rng.standard_normal((20, 3))
    la, lb = rng.integers(0, 3, 12), rng.integers(0, 4, 20)
    assert retrieval_metrics(q, g, la, lb)["chance_map"] == pytest.approx(chance_map(la, lb))


# ----------------------------------------------------------------------------- the entry point


def test_chunking_and_threads_do_not_change_results():
    rng = np.random.default_rng(5)
    nq, ng = 17, 29
    q = rng.integers(-2, 3, (nq, 3)).astype(np.float32)  # exact scores, many ties
    g = rng.integers(-2, 3, (ng, 3)).astype(np.float32)
    ql, gl = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    kw = dict(ks=(1, 5, ng), metric="dot", per_query=True)
    ref = retrieval_metrics(q, g, ql, gl, chunk_size=nq, n_threads=1, **kw)
    for chunk_size in (1, 2, 5, nq - 1, nq, nq + 5, None):
        for n_threads in (1, 2, 3):
            got = retrieval_metrics(q, g, ql, gl, chunk_size=chunk_size, n_threads=n_threads, **kw)
            assert got.keys() == ref.keys()
            for key in ref:
                if key == "per_query":
                    for name, values in ref["per_query"].items():
                        np.testing.assert_array_equal(got["per_query"][name], values)
                else:
                    assert got[key] == ref[key], (key, chunk_size, n_threads)


def test_result_types_and_keys():
    rng = np.random.default_rng(6)
    q, g = rng.standard_normal((6, 4)), rng.standard_normal((9, 4))
    res = retrieval_metrics(q, g, rng.integers(0, 2, 6), rng.integers(0, 2, 9), ks=[3, 3, 1])
    assert list(res) == [
        "map", "map@3", "precision@3", "recall@3", "map@1", "precision@1", "recall@1",
        "chance_map", "n_queries", "n_gallery", "n_queries_without_relevant",
    ]  # fmt: skip
    for key, value in res.items():
        if key.startswith("n_"):
            assert type(value) is int
        else:
            assert type(value) is float and 0.0 <= value <= 1.0
    assert (res["n_queries"], res["n_gallery"]) == (6, 9)
    assert "map@5" in retrieval_metrics(q, g, np.zeros(6, int), np.zeros(9, int), ks=5)


def test_float16_inputs_are_scored_in_float32():
    # 2048 and 2049 are distinct in float32 but the same float16 (spacing 2 above 2048); scored
    # in float16 they would tie and index order would put the irrelevant item 0 first.
    q = np.array([[1.0, 1.0]], np.float16)
    g = np.array([[2048.0, 0.0], [2048.0, 1.0]], np.float16)
    assert np.float16(2049.0) == np.float16(2048.0)
    res = retrieval_metrics(q, g, np.array([1]), np.array([0, 1]), metric="dot")
    assert res["map"] == 1.0
    # Dot products up to 3 * 200 * 200 = 120000 exceed the float16 range (65504), not float32's.
    rng = np.random.default_rng(7)
    q16 = (rng.integers(-200, 201, (8, 3))).astype(np.float16)
    g16 = (rng.integers(-200, 201, (11, 3))).astype(np.float16)
    ql, gl = rng.integers(0, 2, 8), rng.integers(0, 2, 11)
    got = retrieval_metrics(q16, g16, ql, gl, ks=(3,), metric="dot", per_query=True)
    ref = retrieval_metrics(
        q16.astype(np.float32),
        g16.astype(np.float32),
        ql,
        gl,
        ks=(3,),
        metric="dot",
        per_query=True,
    )
    np.testing.assert_array_equal(got["per_query"]["ap"], ref["per_query"]["ap"])
    scores = q16.astype(np.float64) @ g16.astype(np.float64).T  # exact: integers < 2**24
    np.testing.assert_allclose(got["per_query"]["ap"], naive_metrics(scores, relevance(ql, gl))[0])
    # Cosine of float16 features equals cosine of the same values in float32.
    c16 = retrieval_metrics(q16, g16, ql, gl, per_query=True)["per_query"]["ap"]
    c32 = retrieval_metrics(q16.astype(np.float32), g16.astype(np.float32), ql, gl, per_query=True)
    np.testing.assert_array_equal(c16, c32["per_query"]["ap"])


def test_cosine_normalises_rows_and_dot_does_not():
    q = np.array([[1.0, 0.0]])
    g = np.array([[10.0, 10.0], [1.0, 0.0]])  # dot prefers item 0, cosine item 1
    ql, gl = np.array([0]), np.array([1, 0])
    assert retrieval_metrics(q, g, ql, gl, metric="cosine")["map"] == 1.0
    assert retrieval_metrics(q, g, ql, gl, metric="dot")["map"] == 0.5


def test_cross_modal_directions():
    labels = np.array([0, 1, 2, 0, 1, 2])
    onehot = np.eye(3)[labels]
    rng = np.random.default_rng(8)
    image, text = onehot + 0.01 * rng.random((6, 3)), 1.0 - onehot  # query texts anti-aligned
    # Gallery texts are aligned with the images: I2T (image queries vs gallery texts) is perfect,
    # T2I (anti-aligned text queries vs gallery images) is not.
    res = cross_modal_metrics(image, text, labels, image, onehot, labels, ks=(2,))
    assert res["i2t"] == retrieval_metrics(image, onehot, labels, labels, ks=(2,))
    assert res["t2i"] == retrieval_metrics(text, image, labels, labels, ks=(2,))
    assert res["i2t"]["map"] == 1.0  # image queries find the aligned texts
    assert res["t2i"]["map"] < 1.0  # anti-aligned text queries do not find their images
    assert res["mean_map"] == pytest.approx((res["i2t"]["map"] + res["t2i"]["map"]) / 2)
    # Options are passed to both directions; the query's own pair stays in the gallery.
    per = cross_modal_metrics(image, text, labels, image, onehot, labels, per_query=True)
    assert per["i2t"]["per_query"]["n_relevant"].tolist() == [2] * 6


# ------------------------------------------------------------------------------ the errors


def _labels():
    return np.array([0, 1, 0]), np.array([1, 0])


@pytest.mark.parametrize(
    ("query_labels", "gallery_labels", "message"),
    [
        (np.zeros((2, 2, 2), int), np.zeros(2, int), "labels must be a 1-D array of class"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "query_labels: a 1-D label array must hold"),
        (np.array([0, 1]), np.array(["a", "b"]), "gallery_labels: a 1-D label array must hold"),
        (np.array([[0, 2]]), np.array([[1, 0]]), r"must contain only 0 and 1, found \[2\]"),
        (np.array([["a"]]), np.array([[1]]), "must be bool or 0/1 numbers, got dtype <U1"),
        (np.array([0, 1]), np.array([[1, 0]]), "must be of the same kind, got a 1-D array"),
        (np.array([[1, 0]]), np.array([[1, 0, 0]]), "same number of classes.*got 2 and 3"),
        (np.zeros(0, int), np.array([0]), "query_labels is empty"),
        (np.array([0]), np.zeros(0, int), "gallery_labels is empty"),
    ],
)
def test_label_errors(query_labels, gallery_labels, message):
    with pytest.raises(DataError, match=message):
        relevance(query_labels, gallery_labels)
    with pytest.raises(DataError, match=message):
        chance_map(query_labels, gallery_labels)


def test_embedding_errors():
    ql, gl = _labels()
    q, g = np.ones((3, 2)), np.ones((2, 2))
    cases = [
        ((np.ones(3), g, ql, gl), {}, r"query_emb must be a 2-D array \(n, dim\), got shape \(3\)"),
        ((q, g.astype(str), ql, gl), {}, "gallery_emb must hold real numbers"),
        ((np.array([[1.0, np.nan]] * 3), g, ql, gl), {}, r"query_emb contains NaN.*first: \[0, 1"),
        ((q, np.array([[1.0, 1e39], [1, 1]]), ql, gl), {}, "beyond the float32 range"),
        ((q, np.ones((2, 3)), ql, gl), {}, "same dimension, got 2 and 3"),
        ((q, g, np.array([0, 1]), gl), {}, "query_emb has 3 rows but query_labels has 2"),
        ((q, g, ql, np.array([0, 1, 1])), {}, "gallery_emb has 2 rows but gallery_labels has 3"),
        ((q, np.array([[1.0, 1.0], [0, 0]]), ql, gl), {}, r"gallery_emb: 1 rows have zero norm"),
        ((q * 1e30, g * 1e30, ql, gl), {"metric": "dot"}, "scores contains 0 NaN and 6 infinite"),
    ]
    for args, kw, message in cases:
        with pytest.raises(DataError, match=message):
            retrieval_metrics(*args, **kw)


def test_cross_modal_error_names_the_modality():
    ql, gl = _labels()
    q3, q2, g2, g5 = np.ones((3, 2)), np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 5))
    with pytest.raises(DataError, match="query_text has 2 rows but query_labels has 3"):
        cross_modal_metrics(q3, q2, ql, g2, g2, gl)
    with pytest.raises(DataError, match="query_image and gallery_text must have the same dim"):
        cross_modal_metrics(q3, q3, ql, g2, g5, gl)
    with pytest.raises(DataError, match="query_text and gallery_image must have the same dim"):
        cross_modal_metrics(q3, q3, ql, g5, g2, gl)
    with pytest.raises(ConfigError, match="unknown options 'metrc'"):
        cross_modal_metrics(q3, q3, ql, g2, g2, gl, metrc="dot")


@pytest.mark.parametrize(
    ("scores", "relevant", "message"),
    [
        (np.ones(3), np.ones(3, bool), r"2-D array .*got shape \(3\). For a single query use"),
        (np.array([["a"]]), np.ones((1, 1), bool), "must be real numbers"),
        (np.ones((1, 0)), np.ones((1, 0), bool), r"scores is empty \(shape \(1, 0\)\)"),
        (np.array([[1.0, np.nan]]), np.ones((1, 2), bool), "contains 1 NaN and 0 infinite"),
        (np.array([[np.inf, -np.inf]]), np.ones((1, 2), bool), "contains 0 NaN and 2 infinite"),
        (np.ones((2, 3)), np.ones((3, 2), bool), r"same shape as scores \(2, 3\), got \(3, 2\)"),
        (np.ones((1, 2)), np.array([[0, 2]]), "must be a bool \\(or 0/1\\) array"),
    ],
)
def test_score_errors(scores, relevant, message):
    with pytest.raises(DataError, match=message):
        average_precision(scores, relevant)


def test_config_errors():
    s, rel = np.ones((1, 4)), np.ones((1, 4), bool)
    q, g = np.ones((3, 2)), np.ones((2, 2))
    ql, gl = _labels()
    for k, message in [
        (0, "k must be between 1 and the gallery size 4, got 0"),
        (5, "between 1 and the gallery size 4, got 5"),
        (2.0, r"k must be a positive integer, got 2.0 \(float\)"),
        (True, "k must be a positive integer, got True"),
    ]:
        with pytest.raises(ConfigError, match=message):
            average_precision(s, rel, k)
    with pytest.raises(ConfigError, match="k must be between"):
        precision_at_k(s, rel, 9)
    with pytest.raises(ConfigError, match="k must be between"):
        recall_at_k(s, rel, -1)
    expected = re.escape("k_denominator must be one of 'hits', 'min_k_r', got 'R'")
    with pytest.raises(ConfigError, match=expected):
        average_precision(s, rel, 2, k_denominator="R")
    bad = [
        ({"ks": "10"}, "ks must be a sequence of positive integers, got '10'"),
        ({"ks": (1, 3)}, "each of ks must be between 1 and the gallery size 2, got 3"),
        ({"metric": "l2"}, "metric must be one of 'cosine', 'dot' or 'set-max:K', got 'l2'"),
        ({"chunk_size": 0}, "chunk_size must be at least 1, got 0"),
        ({"chunk_size": 1.5}, "chunk_size must be a positive integer"),
        ({"chunk_size": True}, "chunk_size must be a positive integer"),
        ({"n_threads": 0}, "n_threads must be at least 1, got 0"),
        ({"n_threads": "2"}, "n_threads must be a positive integer or None"),
        ({"k_denominator": "all"}, "k_denominator must be one of"),
    ]
    for kw, message in bad:
        with pytest.raises(ConfigError, match=message):
            retrieval_metrics(q, g, ql, gl, **kw)


def test_errors_are_value_errors_of_the_package():
    with pytest.raises(GcrdpError):
        relevance(np.array([0.5]), np.array([0]))
    with pytest.raises(ValueError):
        average_precision(np.ones((1, 2)), np.ones((1, 2), bool), 3)


def test_integer_scores_are_accepted():
    got = average_precision(np.array([[3, 1, 2]]), np.array([[0, 1, 1]]))
    assert got[0] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_memory_is_bounded_by_the_chunk():
    import tracemalloc

    rng = np.random.default_rng(9)
    nq, ng = 300, 4000
    q, g = rng.standard_normal((nq, 4)), rng.standard_normal((ng, 4))
    ql, gl = rng.integers(0, 5, nq), rng.integers(0, 5, ng)
    full = nq * ng * 4  # bytes of one float32 score matrix
    tracemalloc.start()
    try:
        retrieval_metrics(q, g, ql, gl, ks=(10,), chunk_size=10, n_threads=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < full / 4, (peak, full)


# --------------------------------------------------------------------------- instance level
def test_instance_recall_against_a_naive_loop():
    from gcrdp.evaluation import instance_recall

    rng = np.random.default_rng(3)
    q = rng.normal(size=(37, 8)).astype(np.float32)
    g = rng.normal(size=(50, 8)).astype(np.float32)
    g[:5] = g[5:10]  # exact ties
    pair = rng.integers(0, 50, size=37)
    pair[[3, 9]] = -1
    for metric in ("cosine", "dot", "set-max:2"):
        out = instance_recall(q, g, pair, ks=(1, 5, 10), metric=metric, chunk_size=7)
        ranks = []
        for i in range(37):
            if pair[i] < 0:
                continue
            if metric == "set-max:2":
                qv = q[i].reshape(2, 4) / np.linalg.norm(q[i].reshape(2, 4), axis=1, keepdims=True)
                gv = g.reshape(50, 2, 4) / np.linalg.norm(g.reshape(50, 2, 4), axis=2, keepdims=True)
                s = np.array([(qv @ gv[j].T).max() for j in range(50)])
            elif metric == "cosine":
                s = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (q[i] / np.linalg.norm(q[i]))
            else:
                s = g @ q[i]
            ranks.append(1 + sum(s[j] > s[pair[i]] + 1e-6 for j in range(50)))
        ranks = np.array(ranks)
        assert out["n_queries"] == 35
        for k in (1, 5, 10):
            assert out[f"recall@{k}"] == pytest.approx((ranks <= k).mean())
        assert out["median_rank"] == pytest.approx(np.median(ranks))
        assert out["mrr"] == pytest.approx((1 / ranks).mean())


def test_instance_recall_perfect_and_bad_input():
    from gcrdp.evaluation import instance_recall

    e = np.eye(6, dtype=np.float32)
    out = instance_recall(e, e, np.arange(6))
    assert out["recall@1"] == 1.0 and out["median_rank"] == 1.0 and out["mrr"] == 1.0
    with pytest.raises(DataError, match="pair_index"):
        instance_recall(e, e, np.arange(5))
    with pytest.raises(DataError, match="gallery row"):
        instance_recall(e, e, np.full(6, 9))
