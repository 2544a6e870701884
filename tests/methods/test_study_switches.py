"""The GCRDP switches of the issue-10 study: cross-modal-only view positives, π-weighted views,
RDP against a frozen teacher, the tempered E-step and data-driven variances, warm start, and
class positives for the base. Fast paths against loops or the dense form, on small seeded data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcrdp.errors import ConfigError, DataError
from gcrdp.losses import multi_positive_infonce, rdp_teacher_loss
from gcrdp.losses.multi_positive import _dense_multi_positive_infonce
from gcrdp.losses.rdp import topk_mask
from gcrdp.methods import build_method
from gcrdp.model.gmm import GMMConfig, GMMLayer, fit_gmm, set_variance
from tests.helpers import heads_fitdata, toy_run_dataset

F64 = torch.float64


def _views(b, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, k, d, generator=g, dtype=F64), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(b, k, d, generator=g, dtype=F64), dim=-1).requires_grad_(True)
    return img, txt


def naive_weighted(img, txt, tau, view_positives="all", w_img=None, w_txt=None, labels=None):
    """Per-anchor loop of the multi-positive loss with view weights and view-positive modes."""
    b, k, _ = img.shape
    vec = {(m, i, j): (img if m == 0 else txt)[i, j] for m in (0, 1) for i in range(b) for j in range(k)}
    w = {(m, i, j): 1.0 if w_img is None else float((w_img if m == 0 else w_txt)[i, j]) for m, i, j in vec}
    out = []
    for mod in (0, 1):
        num = den = 0.0
        for a in [v for v in vec if v[0] == mod]:
            cands = [c for c in vec if c != a and (c[0] != a[0] or (c[1] == a[1] and view_positives == "all"))]
            same = (lambda i, j: i == j) if labels is None else (lambda i, j: bool((labels[i] * labels[j]).sum() > 0))
            pos = [c for c in cands if same(a[1], c[1])]
            lse = torch.logsumexp(torch.stack([vec[a] @ vec[c] / tau for c in cands]), 0)
            wp = torch.tensor([w[p] for p in pos], dtype=F64)
            lp = torch.stack([vec[a] @ vec[p] / tau - lse for p in pos])
            loss_a = -(wp * lp).sum() / wp.sum()
            num = num + w[a] * loss_a
            den += w[a]
        out.append(num / den)
    return 0.5 * (out[0] + out[1])


@pytest.mark.parametrize("b,k", [(1, 2), (3, 1), (4, 3)])
def test_cross_view_positives_fast_path_equals_dense_and_loop(b, k):
    img, txt = _views(b, k, 5, seed=b + k)
    got = multi_positive_infonce(img, txt, 0.3, view_positives="cross")
    dense = _dense_multi_positive_infonce(img, txt, 0.3, None, class_positives=False, intra_modal_negatives=False, view_positives="cross")
    want = naive_weighted(img, txt, 0.3, "cross")
    assert torch.allclose(got, dense, rtol=1e-10) and torch.allclose(got, want, rtol=1e-10)
    for x, y in zip(torch.autograd.grad(got, (img, txt)), torch.autograd.grad(want, (img, txt))):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)
    if k > 1:  # the SPEC reading differs: one sample's views are positives of each other
        assert not torch.allclose(got, multi_positive_infonce(img, txt, 0.3))


@pytest.mark.parametrize("mode", ["all", "cross"])
def test_pi_weighted_views_match_the_loop_and_uniform_weights_change_nothing(mode):
    img, txt = _views(4, 3, 6, seed=7)
    g = torch.Generator().manual_seed(1)
    w_i = torch.softmax(torch.randn(4, 3, generator=g, dtype=F64), 1)
    w_t = torch.softmax(torch.randn(4, 3, generator=g, dtype=F64), 1)
    got = multi_positive_infonce(img, txt, 0.25, view_positives=mode, image_weights=w_i, text_weights=w_t)
    want = naive_weighted(img, txt, 0.25, mode, w_i, w_t)
    assert torch.allclose(got, want, rtol=1e-10)
    for x, y in zip(torch.autograd.grad(got, (img, txt)), torch.autograd.grad(want, (img, txt))):
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12)
    ones = torch.ones(4, 3, dtype=F64)
    flat = multi_positive_infonce(img, txt, 0.25, view_positives=mode, image_weights=ones, text_weights=ones)
    assert torch.allclose(flat, multi_positive_infonce(img, txt, 0.25, view_positives=mode), rtol=1e-12)


def test_class_positives_with_cross_views_match_the_loop():
    img, txt = _views(5, 2, 4, seed=3)
    labels = torch.tensor([[1, 0], [0, 1], [1, 0], [1, 1], [0, 1]], dtype=F64)
    got = multi_positive_infonce(img, txt, 0.5, labels, class_positives=True, view_positives="cross")
    # with class positives, same-class pairs' views of the anchor's own modality are candidates
    # (positives) only when they belong to another pair: the loop below builds exactly that
    b, k, _ = img.shape
    vec = {(m, i, j): (img if m == 0 else txt)[i, j] for m in (0, 1) for i in range(b) for j in range(k)}
    per = {0: [], 1: []}
    for a in vec:
        cands = [c for c in vec if c != a and c[0] != a[0]]
        pos = [c for c in cands if (labels[a[1]] * labels[c[1]]).sum() > 0]
        lse = torch.logsumexp(torch.stack([vec[a] @ vec[c] / 0.5 for c in cands]), 0)
        per[a[0]].append(-torch.stack([vec[a] @ vec[p] / 0.5 - lse for p in pos]).mean())
    want = 0.5 * (torch.stack(per[0]).mean() + torch.stack(per[1]).mean())
    assert torch.allclose(got, want, rtol=1e-10)


def test_view_weights_and_mode_are_validated():
    img, txt = _views(2, 3, 4, seed=0)
    with pytest.raises(ConfigError, match="view_positives"):
        multi_positive_infonce(img, txt, 0.2, view_positives="intra")
    with pytest.raises(DataError, match="text_weights"):
        multi_positive_infonce(img, txt, 0.2, image_weights=torch.ones(2, 3, dtype=F64))


# --------------------------------------------------------------------------- RDP with a teacher
def naive_teacher(gi, gt, fi, ft, mode, k, tau):
    """Row loop of the teacher RDP loss."""

    def cos(a, b):
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T

    tv, tt = cos(fi, fi).detach(), cos(ft, ft).detach()
    tx = 0.5 * (tv + tt)
    sv, st, sx = gi @ gi.T, gt @ gt.T, gi @ gt.T
    pairs = {"own": [(sv, tv), (st, tt)], "cross": [(sv, tt), (st, tv)], "cross-modal": [(sx, tx), (sx.T, tx)]}[mode]
    terms = []
    for s, t in pairs:
        rows = []
        for i in range(s.shape[0]):
            others = [j for j in range(s.shape[0]) if j != i]
            nb = sorted(others, key=lambda j: -float(t[i, j]))[:k]
            ts, ss = t[i, nb], s[i, nb]
            z = lambda v: (v - v.mean()) / (v.var(unbiased=False) + 1e-6).sqrt()  # noqa: E731
            p, logq = torch.softmax(z(ts) / tau, 0), torch.log_softmax(z(ss) / tau, 0)
            rows.append((p * (p.log() - logq)).sum())
        terms.append(torch.stack(rows).mean())
    return sum(terms) / len(terms)


@pytest.mark.parametrize("mode", ["own", "cross", "cross-modal"])
def test_teacher_rdp_matches_the_row_loop(mode):
    g = torch.Generator().manual_seed(5)
    gi = F.normalize(torch.randn(6, 4, generator=g, dtype=F64), dim=-1).requires_grad_(True)
    gt = F.normalize(torch.randn(6, 4, generator=g, dtype=F64), dim=-1).requires_grad_(True)
    fi, ft = torch.randn(6, 7, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    got, parts = rdp_teacher_loss(gi, gt, fi, ft, mode=mode, topk=3, temperature=0.7)
    want = naive_teacher(gi, gt, fi, ft, mode, 3, 0.7)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    for x, y in zip(torch.autograd.grad(got, (gi, gt)), torch.autograd.grad(want, (gi, gt))):
        assert torch.allclose(x, y, rtol=1e-8, atol=1e-12)
    assert parts["rdp_pairs"] == pytest.approx(3 / 5)


def test_teacher_rdp_is_zero_when_the_student_keeps_the_teachers_structure_at_any_scale():
    g = torch.Generator().manual_seed(2)
    fi = torch.randn(8, 5, generator=g, dtype=F64)
    ft = torch.randn(8, 5, generator=g, dtype=F64)
    gi, gt = F.normalize(fi, dim=-1), F.normalize(ft, dim=-1)
    loss, _ = rdp_teacher_loss(gi, gt, 3.0 * fi, 0.1 * ft, mode="own", topk=4)
    assert float(loss) == pytest.approx(0.0, abs=1e-10)
    swapped, _ = rdp_teacher_loss(gi, gt, fi, ft, mode="cross", topk=4)
    assert float(swapped) > 1e-3
    m = topk_mask(gi @ gi.T, 3)
    assert m.sum(1).tolist() == [3] * 8 and not m.diagonal().any()
    with pytest.raises(ConfigError, match="teacher"):
        rdp_teacher_loss(gi, gt, fi, ft, mode="none")
    with pytest.raises(ConfigError, match="rdp_topk"):
        rdp_teacher_loss(gi, gt, fi, ft, topk=0)


# --------------------------------------------------------------------------- the GMM switches
def test_tempered_e_step_softens_and_t1_is_standard_em():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 16, generator=g, dtype=F64)
    init = torch.randn(3, 3, 16, generator=g, dtype=F64)
    base = fit_gmm(x, None, init, GMMConfig(n_iter=3))
    same = fit_gmm(x, None, init, GMMConfig(n_iter=3, temperature=1.0))
    assert torch.equal(base.means, same.means)
    hard = base.resp.max(-1).values.mean()
    soft = fit_gmm(x, None, init, GMMConfig(n_iter=3, temperature=1e6)).resp
    assert float(hard) > 0.9 and torch.allclose(soft, torch.full_like(soft, 1 / 3), atol=1e-3)


def test_data_driven_initial_variance():
    g = torch.Generator().manual_seed(1)
    x = 0.01 * torch.randn(2, 9, 4, generator=g, dtype=F64)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    v = set_variance(x, mask)
    want = torch.stack([x[0].var(0, unbiased=False).mean(), x[1, :5].var(0, unbiased=False).mean()])
    assert torch.allclose(v, want)
    layer = GMMLayer(4, GMMConfig(n_components=2, init_var=2.0, init_var_mode="data")).double()
    got = layer(x, mask)
    ref = fit_gmm(x, mask, layer.initial_means(x, mask), layer.cfg, init_variances=(2.0 * v).view(2, 1, 1).expand(2, 2, 4))
    assert torch.allclose(got.means, ref.means) and torch.allclose(got.variances, ref.variances)
    with pytest.raises(ConfigError, match="init_var_mode"):
        GMMConfig(init_var_mode="kmeans")


# --------------------------------------------------------------------------- the methods
SMALL = {"batch_size": 16, "hidden_dim": 16, "latent_dim": 8}


def _data(seed=0):
    return heads_fitdata(seed)


def test_every_switch_trains_and_logs_its_parts():
    feats, y, data = _data()
    opts = {
        **SMALL,
        "max_epochs": 2,
        "view_positives": "cross",
        "global_weight": 1.0,
        "views_weight": 0.5,
        "pi_weighted": True,
        "class_positives": True,
        "normalize_local": True,
        "e_step_temperature": 8.0,
        "init_var_mode": "data",
        "rdp_teacher": "all",
        "rdp_topk": 4,
    }
    m = build_method("gcrdp", opts)
    h = m.fit(data, seed=0).history[0]
    for key in ("views", "global", "rdp", "rdp_pairs", "val_map"):
        assert key in h, key
    assert np.isfinite(m.embed_images(feats.image)).all()
    for bad in (
        {"view_positives": "same"},
        {"views_weight": 0.0, "global_weight": 0.0},
        {"rdp_teacher": "frozen"},
        {"rdp_topk": 0},
        {"warm_lr_factor": 0.0},
    ):
        with pytest.raises(ConfigError):
            build_method("gcrdp", bad)


@pytest.mark.slow  # three warm-started fits, one resumed: about 38 s on 2 loaded cores
def test_warm_start_trains_the_base_first_and_resumes_exactly(tmp_path):
    feats, y, data = _data()
    opts = {**SMALL, "max_epochs": 3, "patience": 10, "warm_start": True}
    ref = build_method("gcrdp", opts)
    rep = ref.fit(data, seed=1)
    assert rep.extra["warm_start"]["epochs"] == 3 and rep.epochs == 3
    # stage 2 starts from the warm stage's best weights: its first validation is close to it
    assert abs(rep.history[0]["val_map"] - rep.extra["warm_start"]["best_val_map"]) < 0.1
    assert "views" in rep.history[0] and "warm_infonce" not in rep.history[0]
    again = build_method("gcrdp", opts)
    rep2 = again.fit(data, seed=1, checkpoint_dir=tmp_path / "last")
    assert (tmp_path / "last-warm").is_dir() and rep2.history == rep.history
    resumed = build_method("gcrdp", opts).fit(data, seed=1, checkpoint_dir=tmp_path / "last")
    assert resumed.history == rep.history
    assert np.array_equal(again.embed_images(feats.image), ref.embed_images(feats.image))


def test_gap_infonce_class_positives():
    import torch as t

    from gcrdp.losses import symmetric_infonce

    feats, y, data = _data()
    m = build_method("gap-infonce", {**SMALL, "max_epochs": 1, "class_positives": True})
    m.fit(data, seed=0)
    batch = {
        "image_local": t.from_numpy(feats.image.local[:6]).float(),
        "image_mask": t.from_numpy(feats.image.mask[:6]),
        "text_local": t.from_numpy(feats.text.local[:6]).float(),
        "text_mask": t.from_numpy(feats.text.mask[:6]),
        "labels": t.from_numpy(np.eye(6)[:, :6]),
    }  # all classes distinct: the CLIP loss
    loss, _ = m._loss(m.model_, batch)
    img = m.model_.encode_image(batch["image_local"], batch["image_mask"])
    txt = m.model_.encode_text(batch["text_local"], batch["text_mask"])
    assert t.allclose(loss, symmetric_infonce(img, txt, m.cfg.temperature), atol=1e-6)
    batch["labels"] = t.ones(6, 1)  # one class: every pair a positive
    loss1, _ = m._loss(m.model_, batch)
    assert not t.allclose(loss1, loss)


# --------------------------------------------------------------------------- runner: presets, jobs
def _toy_run_inputs():
    return toy_run_dataset(n_per_class=14, seed=4)


@pytest.mark.slow  # about 28 s on 2 loaded cores
def test_spec_preset_and_parallel_jobs_give_the_sequential_records():
    from gcrdp.experiments import RunConfig, run_experiment
    from gcrdp.methods.presets import GCRDP_SPEC, preset_options

    ds, feats = _toy_run_inputs()
    cfg = RunConfig(
        dataset="toy",
        shots=[1, 3],
        seeds=[0, 1],
        methods=["gap-infonce", "gcrdp@spec"],
        method_options={"gcrdp@spec": {**SMALL, "max_epochs": 2}, "gap-infonce": {**SMALL, "max_epochs": 2}},
        device="cpu",
    )
    seq = run_experiment(cfg, progress=False, dataset=ds, features=feats)
    par = run_experiment(cfg, progress=False, dataset=ds, features=feats, jobs=2)
    assert [(r["method"], r["shots"], r["seed"]) for r in par["records"]] == [(r["method"], r["shots"], r["seed"]) for r in seq["records"]]
    for a, b in zip(seq["records"], par["records"]):
        assert a["split"]["digest"] == b["split"]["digest"] and a["fit"]["epochs"] == b["fit"]["epochs"]
        assert abs(a["test"]["mean_map"] - b["test"]["mean_map"]) < 0.05  # thread round-off only
    spec = next(r for r in seq["records"] if r["method"] == "gcrdp@spec")["method_config"]
    assert all(spec[k] == v for k, v in GCRDP_SPEC.items() if k != "max_epochs")
    assert spec["max_epochs"] == 2  # the entry's own options override the preset's
    assert preset_options("gcrdp@k5", {"n_components": 5}) == {"n_components": 5}
    assert par["resolved"]["jobs"] == 2 and par["resolved"]["torch_threads"] >= 1
    with pytest.raises(ConfigError, match="jobs"):
        run_experiment(cfg, progress=False, dataset=ds, features=feats, jobs=0)


def test_set_max_metric_equals_the_best_view_pair_loop():
    from gcrdp.evaluation import retrieval_metrics

    def naive_ap(rel):
        hits = np.flatnonzero(rel)
        return float(np.mean([(n + 1) / (r + 1) for n, r in enumerate(hits)])) if hits.size else 0.0

    rng = np.random.default_rng(0)
    k, d = 3, 4
    q, g = rng.normal(size=(7, k * d)).astype(np.float32), rng.normal(size=(9, k * d)).astype(np.float32)
    ql, gl = rng.integers(0, 3, 7), rng.integers(0, 3, 9)
    got = retrieval_metrics(q, g, ql, gl, metric=f"set-max:{k}", per_query=True)
    qv = q.reshape(7, k, d) / np.linalg.norm(q.reshape(7, k, d), axis=2, keepdims=True)
    gv = g.reshape(9, k, d) / np.linalg.norm(g.reshape(9, k, d), axis=2, keepdims=True)
    scores = np.array([[max(float(a @ b) for a in qv[i] for b in gv[j]) for j in range(9)] for i in range(7)])
    for i in range(7):
        order = np.lexsort((np.arange(9), -scores[i]))
        assert got["per_query"]["ap"][i] == pytest.approx(naive_ap(gl[order] == ql[i]), abs=1e-6)
    with pytest.raises(ConfigError, match="set-max"):
        retrieval_metrics(q, g, ql, gl, metric="set-max:x")
    with pytest.raises(DataError, match="multiple"):
        retrieval_metrics(q, g, ql, gl, metric="set-max:5")


def test_sets_score_trains_and_validates_with_the_set_metric():
    feats, y, data = _data()
    m = build_method("gcrdp", {**SMALL, "max_epochs": 2, "score": "sets", "n_components": 2})
    rep = m.fit(data, seed=0)
    assert m.score_metric == "set-max:2" and m.embed_images(feats.image).shape == (len(feats), 16)
    assert all(0 <= h["val_map"] <= 1 for h in rep.history)
    w = build_method("gcrdp", {**SMALL, "max_epochs": 2, "score": "sets", "warm_start": True})
    assert w.fit(data, seed=0).extra["warm_start"]["best_val_map"] is not None


def test_refit_trains_on_the_validation_classes_with_the_chosen_settings():
    from gcrdp.experiments import RunConfig, run_experiment

    ds, feats = _toy_run_inputs()
    cfg = RunConfig(
        dataset="toy",
        shots=[1],
        seeds=[0],
        methods=["gap-infonce", "cca"],
        refit=True,
        method_options={"gap-infonce": {**SMALL, "max_epochs": 6, "patience": 2}},
        device="cpu",
    )
    res = run_experiment(cfg, progress=False, dataset=ds, features=feats)
    gap, cca = res["records"]
    n = gap["split"]["n_train"] + gap["split"]["n_val"]
    assert gap["refit"]["n_train"] == n and cca["refit"]["n_train"] == n
    assert gap["refit"]["options"] == {"max_epochs": gap["fit"]["best_epoch"]}
    assert gap["refit"]["epochs"] == gap["fit"]["best_epoch"] and gap["refit"]["best_val_map"] is None
    assert cca["refit"]["options"] == {"reg": cca["fit"]["reg"]} and cca["refit"]["reg_selection"] == "fixed"
    plain = run_experiment(RunConfig(**{**cfg.to_dict(), "refit": False}), progress=False, dataset=ds, features=feats)
    assert "refit" not in plain["records"][0]
    assert plain["records"][0]["test"]["mean_map"] != gap["test"]["mean_map"]
    warm = build_method("gcrdp", {**SMALL, "warm_start": True, "max_epochs": 2})
    _, _, data = _data()
    rep = warm.fit(data, seed=0)
    assert warm.refit_options(rep) == {"max_epochs": rep.best_epoch, "warm_epochs": rep.extra["warm_start"]["best_epoch"]}


@pytest.mark.parametrize("side", ["image", "text"])
def test_gmm_on_one_modality(side):
    feats, y, data = _data()
    m = build_method("gcrdp", {**SMALL, "max_epochs": 2, "gmm_on": side, "view_positives": "cross"})
    m.fit(data, seed=0)
    model = m.model_
    assert hasattr(model, f"{side}_gmm") and not hasattr(model, f"{'text' if side == 'image' else 'image'}_gmm")
    import torch as t

    loc = t.from_numpy(feats.text.local[:5]).float() if side == "image" else t.from_numpy(feats.image.local[:5]).float()
    msk = t.from_numpy(feats.text.mask[:5] if side == "image" else feats.image.mask[:5])
    views, g, pi = (model.encode_text if side == "image" else model.encode_image)(loc, msk)
    assert views.shape == (5, 3, 8) and t.allclose(views[:, 0], g) and t.allclose(views[:, 2], g)
    assert t.allclose(pi, t.full((5, 3), 1 / 3))
    with pytest.raises(ConfigError, match="gmm_on"):
        build_method("gcrdp", {"gmm_on": "audio"})


def test_presets_pin_what_was_measured():
    """gcrdp@spec is the SPEC reading, which the study's rule kept as the default until issue
    25's decision changed one option (the E-step's temperature, 1 -> 32);
    gcrdp@study is the stage-2 candidate of configs/gcrdp-study-2.json, option for option."""
    import json
    from dataclasses import asdict

    from gcrdp.methods.gcrdp import GCRDPConfig
    from gcrdp.methods.presets import GCRDP_SPEC, GCRDP_STUDY
    from gcrdp.methods.trainable import TokenReduceConfig
    from gcrdp.training.config import TrainConfig
    from tests.conftest import REPO_ROOT

    defaults = {**asdict(GCRDPConfig()), **asdict(TrainConfig()), **asdict(TokenReduceConfig())}
    assert {k: v for k, v in GCRDP_SPEC.items() if defaults[k] != v} == {"e_step_temperature": 1.0}
    assert defaults["e_step_temperature"] == 32.0 and defaults["pca_dim"] is None
    grid = json.loads((REPO_ROOT / "configs" / "gcrdp-study-2.json").read_text(encoding="utf-8"))
    cand = grid["method_options"]["gcrdp@cand"]
    assert {k: v for k, v in GCRDP_STUDY.items() if GCRDP_SPEC.get(k) != v} == cand


def test_documented_variants_are_presets_and_an_unknown_tag_is_refused():
    """``gap-infonce@cp`` and ``clip4cmr@contrastive`` run what the README says; a ``NAME@TAG``
    that is neither a preset nor given options stops before any work, listing the presets."""
    from gcrdp.errors import ConfigError
    from gcrdp.experiments.config import RunConfig
    from gcrdp.experiments.runner import run_experiment
    from gcrdp.methods.presets import build_entry

    assert build_entry("gap-infonce@cp").cfg.class_positives is True
    assert build_entry("clip4cmr@contrastive").cfg.loss == "contrastive"
    assert build_entry("gcrdp@study", {"lam": 0.3}, max_epochs=2).config_dict()["lam"] == 0.3  # preset < options < overrides
    assert build_entry("gcrdp@study", {"max_epochs": 9}, max_epochs=2).config_dict()["max_epochs"] == 2
    with pytest.raises(ConfigError, match=r"'gap-infonce@typo' is neither a preset nor given options.*gap-infonce@cp.*--option"):
        run_experiment(RunConfig(methods=["gap-infonce@typo"]), progress=False)
    # a labelled variant with its options given is fine (checked before any data is loaded)
    labelled = RunConfig(dataset="no-such-dataset", methods=["gap-infonce@t"], method_options={"gap-infonce@t": {"temperature": 0.1}})
    with pytest.raises(Exception) as err:
        run_experiment(labelled, progress=False)
    assert "neither a preset" not in str(err.value)
