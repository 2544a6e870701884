"""The ``zero-shot`` baseline: cosine between raw pooled features, and the alignment checks
(CLIP fingerprints, clip-retrieval features, ``assume_aligned``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gcrdp.methods.zeroshot  # noqa: F401  (registers "zero-shot")
from gcrdp.data.features import FeatureSet, ModalityFeatures
from gcrdp.errors import ConfigError, DataError
from gcrdp.methods.base import METHODS, FitData, build_method
from gcrdp.methods.zeroshot import ZeroShotMethod, detect_alignment
from tests.helpers import one_hot

SHA_A, SHA_B = "a" * 64, "b" * 64


def fingerprint(encoder, modality, sha, dim):
    """The fields of an encoder fingerprint that the check reads (as in CLIPImageEncoder /
    CLIPTextEncoder.fingerprint(): ``encoder``, ``weights_sha256``, ``pooled.dim``)."""
    return {"encoder": encoder, "modality": modality, "weights_sha256": sha, "pooled": {"dim": dim}}


def clip_meta(sha_img=SHA_A, sha_txt=SHA_A, names=("clip", "clip"), dim=6):
    return {
        "key": "k" * 64,
        "dtype": "float16",
        "key_inputs": {
            "format": 1,
            "dataset": "d" * 64,
            "dtype": "float16",
            "image_encoder": fingerprint(names[0], "image", sha_img, dim),
            "text_encoder": fingerprint(names[1], "text", sha_txt, dim),
        },
    }


def aligned_features(n_per_class=10, n_classes=4, dim=6, noise=0.3, seed=0, meta=None, dtype=np.float32, text_dim=None):
    """Image and text pooled features around shared class centres (one space), with locals."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = rng.normal(size=(n_classes, dim))
    img = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    txt = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    if text_dim is not None:
        txt = rng.normal(size=(len(labels), text_dim))
    local_i = rng.normal(size=(len(labels), 3, 5))
    mi = ModalityFeatures(local_i.astype(dtype), np.ones((len(labels), 3), bool), img.astype(dtype))
    mt = ModalityFeatures(local_i[:, :2].astype(dtype), np.ones((len(labels), 2), bool), txt.astype(dtype))
    fs = FeatureSet(mi, mt, tuple(f"s{i}" for i in range(len(labels))), dict(clip_meta(dim=dim) if meta is None else meta))
    return fs, labels


def fitdata(feats, labels, val=True):
    lab = one_hot(labels)
    idx = np.arange(len(labels))
    return FitData(
        train=feats.subset(idx[::2]),
        train_labels=lab[::2],
        oversample=np.zeros(len(idx[::2]), bool),
        val=feats.subset(idx[1::2]) if val else None,
        val_labels=lab[1::2] if val else None,
    )


# --------------------------------------------------------------------------- embeddings
def test_embeddings_are_normalised_pooled_features():
    feats, labels = aligned_features(dtype=np.float16)
    m = build_method("zero-shot")
    rep = m.fit(fitdata(feats, labels), seed=0)
    assert rep.epochs == 0 and rep.best_epoch == 0 and rep.best_val_map is not None
    assert rep.extra["alignment"].startswith("clip image and text encoders with the same weights")
    for got, mf in ((m.embed_images(feats.image), feats.image), (m.embed_texts(feats.text), feats.text)):
        ref = mf.pooled.astype(np.float64)
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        assert got.dtype == np.float32 and got.shape == mf.pooled.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_ranking_equals_brute_force_cosine():
    feats, labels = aligned_features(n_per_class=8, seed=3)
    m = build_method("zero-shot")
    m.fit(fitdata(feats, labels), seed=0)
    scores = m.embed_images(feats.image) @ m.embed_texts(feats.text).T
    img, txt = feats.image.pooled.astype(np.float64), feats.text.pooled.astype(np.float64)
    cos = np.array([[a @ b / np.sqrt(a @ a) / np.sqrt(b @ b) for b in txt] for a in img])
    np.testing.assert_allclose(scores, cos, atol=1e-5)
    np.testing.assert_array_equal(np.argsort(-scores, axis=1, kind="stable")[:, :5], np.argsort(-cos, axis=1, kind="stable")[:, :5])
    # and the metrics of the method equal those of the brute-force scores
    from gcrdp.evaluation import cross_modal_metrics, retrieval_metrics

    res = cross_modal_metrics(
        m.embed_images(feats.image), m.embed_texts(feats.text), labels, m.embed_images(feats.image), m.embed_texts(feats.text), labels
    )
    ref = retrieval_metrics(
        img / np.linalg.norm(img, axis=1, keepdims=True), txt / np.linalg.norm(txt, axis=1, keepdims=True), labels, labels
    )
    assert res["i2t"]["map"] == pytest.approx(ref["map"], abs=1e-6)
    assert res["i2t"]["map"] > 0.9  # aligned toy features


def test_embed_errors():
    feats, labels = aligned_features()
    m = build_method("zero-shot")
    with pytest.raises(RuntimeError, match="call fit"):
        m.embed_images(feats.image)
    m.fit(fitdata(feats, labels, val=False), seed=0)
    bad = ModalityFeatures.from_array(np.ones((2, 5), np.float32))
    with pytest.raises(DataError, match=r"text pooled features have dim 5, the method was fitted on 6-d"):
        m.embed_texts(bad)


# --------------------------------------------------------------------------- alignment
def test_pooled_dims_differ():
    feats, labels = aligned_features(text_dim=4)
    for opts in ({}, {"assume_aligned": True}):
        with pytest.raises(ConfigError, match=r"dims differ: image 6, text 4.*CLIP \(--clip DIR\)"):
            build_method("zero-shot", opts).fit(fitdata(feats, labels), seed=0)


def test_unaligned_encoders():
    meta = clip_meta(names=("efficientnet-lite0", "minilm-l6"), sha_txt=SHA_B)
    feats, labels = aligned_features(meta=meta)
    with pytest.raises(
        ConfigError,
        match=r"needs an aligned image-text encoder pair.*'efficientnet-lite0'"
        r".*'minilm-l6'.*CLIP \(--clip DIR\).*zero-shot\.assume_aligned=true",
    ):
        build_method("zero-shot").fit(fitdata(feats, labels), seed=0)
    rep = build_method("zero-shot", {"assume_aligned": True}).fit(fitdata(feats, labels), seed=0)
    assert rep.extra["alignment"].startswith("assumed (assume_aligned=true")


def test_clip_with_different_weights_is_not_aligned():
    feats, labels = aligned_features(meta=clip_meta(sha_txt=SHA_B))
    with pytest.raises(ConfigError, match="clip image and text encoders with different weights"):
        build_method("zero-shot").fit(fitdata(feats, labels), seed=0)
    assert detect_alignment(clip_meta(names=("clip", "minilm-l6")))[0] is False
    assert detect_alignment(
        {
            "key_inputs": {
                "image_encoder": {"name": "clip", "weights_sha256": SHA_A},
                "text_encoder": {"name": "clip", "weights_sha256": SHA_A},
            }
        }
    )[0]


def test_pre_extracted_features_of_unknown_origin():
    # what runner.load_features sets for a dataset's own features (e.g. Wikipedia SIFT/LDA)
    meta = {"key": "k", "source": "pre-extracted", "dtype": "float32", "key_inputs": {"pre_extracted": "k"}}
    feats, labels = aligned_features(meta=meta)
    with pytest.raises(ConfigError, match=r"does not say which encoders made them.*assume_aligned=true"):
        build_method("zero-shot").fit(fitdata(feats, labels), seed=0)
    assert detect_alignment({})[0] is None
    rep = build_method("zero-shot", {"assume_aligned": True}).fit(fitdata(feats, labels), seed=0)
    assert rep.extra["alignment"].startswith("assumed")


def test_clip_retrieval_folder_end_to_end(tmp_path):
    """A clip-retrieval folder (pre-extracted embeddings of one space) is accepted as aligned,
    through the real loader and run_experiment."""
    pytest.importorskip("pyarrow")
    from gcrdp.data.formats.clip_retrieval import export_clip_retrieval
    from gcrdp.data.registry import load_dataset
    from gcrdp.experiments import RunConfig, run_experiment

    feats, labels = aligned_features(n_per_class=12, n_classes=6, seed=5)
    n = len(labels)
    export_clip_retrieval(
        tmp_path / "cr",
        feats.image.pooled,
        feats.text.pooled,
        {
            "id": list(feats.sample_ids),
            "caption": [""] * n,
            "label": [f"c{c}" for c in labels],
            "split": ["test" if i % 3 == 0 else "train" for i in range(n)],
        },
    )
    opts = {"root": str(tmp_path / "cr"), "split_seed": 1}  # a draw with 3 of the 6 classes unseen
    ds = load_dataset("clip-retrieval", **opts)
    assert ds.features.meta["format"] == "clip-retrieval" and len(ds.class_split.unseen) == 3
    res = run_experiment(
        RunConfig(dataset="clip-retrieval", dataset_options=opts, shots=[0], seeds=[0], methods=["zero-shot"], device="cpu"),
        progress=False,
        dataset=ds,
    )
    rec = res["records"][0]
    assert rec["fit"]["epochs"] == 0 and "clip-retrieval" in rec["fit"]["alignment"]
    assert rec["test"]["mean_map"] > rec["chance"]["i2t"] + 0.3


# --------------------------------------------------------------------------- options, contract
def test_options_and_round_trip():
    assert "zero-shot" in METHODS
    with pytest.raises(ConfigError, match=r"Unknown method option\(s\) \['lr'\]. Accepted options: assume_aligned"):
        build_method("zero-shot", {"lr": 1e-3})
    with pytest.raises(ConfigError, match="assume_aligned must be true or false"):
        build_method("zero-shot", {"assume_aligned": "yes"})
    for opts in ({}, {"assume_aligned": True}):
        cfg = build_method("zero-shot", opts).config_dict()
        json.dumps(cfg)
        assert build_method("zero-shot", {k: v for k, v in cfg.items() if k != "method"}).config_dict() == cfg


def test_checkpoint_round_trip(tmp_path):
    from gcrdp.methods.persistence import check_checkpointable, load_method

    feats, labels = aligned_features()
    m = build_method("zero-shot")
    check_checkpointable(m)
    rep = m.fit(fitdata(feats, labels), seed=0)
    m.save(tmp_path / "ck", fit=rep.to_dict())
    back = load_method(tmp_path / "ck")
    assert isinstance(back, ZeroShotMethod)
    np.testing.assert_array_equal(back.embed_texts(feats.text), m.embed_texts(feats.text))
    with pytest.raises(DataError, match="image pooled features have dim 5"):
        back.embed_images(ModalityFeatures.from_array(np.ones((2, 5), np.float32)))
