"""mAP, precision/recall@k and instance recall against the naive per-query loops of
tests/evaluation/test_metrics.py, on small integer embeddings (exact float scores, many ties)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gcrdp.evaluation.metrics import average_precision, instance_recall, precision_at_k, recall_at_k, retrieval_metrics
from tests.evaluation.test_metrics import TOL, naive_metrics, naive_relevance
from tests.property import FAST


@st.composite
def problems(draw, multi_label: bool | None = None):
    """(query embeddings, gallery embeddings, query labels, gallery labels): small integers."""
    nq = draw(st.integers(1, 9))
    ng = draw(st.integers(1, 12))
    d = draw(st.integers(1, 3))
    n_classes = draw(st.integers(1, 4))
    multi = draw(st.booleans()) if multi_label is None else multi_label
    emb = st.integers(-2, 2)
    q = draw(hnp.arrays(np.float32, (nq, d), elements=emb))
    g = draw(hnp.arrays(np.float32, (ng, d), elements=emb))
    if multi:
        ql = draw(hnp.arrays(np.bool_, (nq, n_classes)))
        gl = draw(hnp.arrays(np.bool_, (ng, n_classes)))
    else:
        ql = draw(hnp.arrays(np.int64, nq, elements=st.integers(0, n_classes - 1)))
        gl = draw(hnp.arrays(np.int64, ng, elements=st.integers(0, n_classes - 1)))
    return q, g, ql, gl


@FAST
@given(problems(), st.data())
def test_map_precision_recall_match_the_naive_loop(problem, data):
    q, g, ql, gl = problem
    rel = naive_relevance(ql, gl)
    scores = q.astype(np.float64) @ g.T.astype(np.float64)
    ng = g.shape[0]
    k = data.draw(st.integers(1, ng))
    ref_ap, _, _ = naive_metrics(scores, rel)
    np.testing.assert_allclose(average_precision(scores, rel), ref_ap, atol=TOL)
    for denominator in ("hits", "min_k_r"):
        ap_k, p_k, r_k = naive_metrics(scores, rel, k, denominator)
        np.testing.assert_allclose(average_precision(scores, rel, k, k_denominator=denominator), ap_k, atol=TOL)
    np.testing.assert_allclose(precision_at_k(scores, rel, k), p_k, atol=TOL)
    np.testing.assert_allclose(recall_at_k(scores, rel, k), r_k, atol=TOL)
    assert np.all((ref_ap >= 0) & (ref_ap <= 1))


@FAST
@given(problems(), st.data())
def test_retrieval_metrics_match_the_naive_loop(problem, data):
    q, g, ql, gl = problem
    rel = naive_relevance(ql, gl)
    scores = q.astype(np.float64) @ g.T.astype(np.float64)
    k = data.draw(st.integers(1, g.shape[0]))
    chunk = data.draw(st.none() | st.integers(1, 5))
    res = retrieval_metrics(q, g, ql, gl, ks=(k,), metric="dot", per_query=True, chunk_size=chunk)
    ref_ap, _, _ = naive_metrics(scores, rel)
    ap_k, p_k, r_k = naive_metrics(scores, rel, k)
    np.testing.assert_allclose(res["per_query"]["ap"], ref_ap, atol=TOL)
    assert res["map"] == pytest.approx(ref_ap.mean(), abs=TOL)
    assert res[f"map@{k}"] == pytest.approx(ap_k.mean(), abs=TOL)
    assert res[f"precision@{k}"] == pytest.approx(p_k.mean(), abs=TOL)
    assert res[f"recall@{k}"] == pytest.approx(r_k.mean(), abs=TOL)
    assert res["n_queries_without_relevant"] == int((rel.sum(axis=1) == 0).sum())


@FAST
@given(problems(multi_label=False), st.data())
def test_instance_recall_matches_a_naive_rank(problem, data):
    q, g, _, _ = problem
    ng = g.shape[0]
    pair = data.draw(hnp.arrays(np.int64, q.shape[0], elements=st.integers(-1, ng - 1)))
    ks = data.draw(st.lists(st.integers(1, ng + 2), min_size=1, max_size=3))
    out = instance_recall(q, g, pair, ks=ks, metric="dot", chunk_size=data.draw(st.none() | st.integers(1, 4)))
    scores = q.astype(np.float64) @ g.T.astype(np.float64)
    ranks = np.array([1 + int((scores[i] > scores[i, pair[i]]).sum()) for i in range(len(pair)) if pair[i] >= 0])
    assert out["n_queries"] == ranks.size and out["n_gallery"] == ng
    if not ranks.size:
        assert np.isnan(out["mrr"])
        return
    for k in set(ks):
        assert out[f"recall@{k}"] == pytest.approx((ranks <= k).mean())
    assert out["median_rank"] == pytest.approx(np.median(ranks))
    assert out["mean_rank"] == pytest.approx(ranks.mean())
    assert out["mrr"] == pytest.approx((1 / ranks).mean())
