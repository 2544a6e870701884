"""The search index's exported query head of a ``pca_dim`` model (issue 25) takes raw features:
the model's PCA basis is part of the exported graph, which equals the method's own embedding."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from gcrdp.methods import FitData, build_method  # noqa: E402
from gcrdp.search.model import _export_head  # noqa: E402
from tests.helpers import one_hot, synthetic_features  # noqa: E402


@pytest.mark.parametrize("name", ["gap-infonce", "gcrdp"])
def test_the_exported_head_of_a_pca_model_takes_raw_features(name):
    feats, labels = synthetic_features(n_per_class=10, n_classes=6, seed=1)
    y = one_hot(labels)
    data = FitData(train=feats, train_labels=y, oversample=np.zeros(len(feats), bool))
    method = build_method(name, {"pca_dim": 4, "max_epochs": 1, "hidden_dim": 16, "latent_dim": 8})
    method.fit(data, seed=0)
    _, dim, worst = _export_head(method, "image")
    assert dim == feats.image.dim  # raw features in, not the k reduced dimensions
    assert worst < 1e-4
    _, text_dim, text_worst = _export_head(method, "text")
    assert text_dim == feats.text.dim and text_worst < 1e-4
