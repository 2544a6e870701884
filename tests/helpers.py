"""Small seeded synthetic data shared by tests (no files, no encoders)."""

from __future__ import annotations

import numpy as np

from gcrdp.data.features import FeatureSet, ModalityFeatures


def synthetic_features(
    n_per_class: int = 20, n_classes: int = 6, image_dim: int = 12, text_dim: int = 8,
    image_L: int = 5, text_L: int = 4, noise: float = 0.5, seed: int = 0, dtype=np.float32,
    latent_dim: int = 3,
) -> tuple[FeatureSet, np.ndarray]:
    """Class-clustered local features in two unaligned spaces; returns (features, int labels).

    Each class has a latent code z; image features are ``A z`` and text features ``B z`` (fixed
    random A, B) plus noise, so a map learned on some classes carries over to new ones.
    Texts have a variable number of valid tokens (padding masked out)."""
    rng = np.random.default_rng(seed)
    n = n_per_class * n_classes
    labels = np.repeat(np.arange(n_classes), n_per_class)
    z = rng.normal(size=(n_classes, latent_dim))
    ci = z @ rng.normal(size=(latent_dim, image_dim))
    ct = z @ rng.normal(size=(latent_dim, text_dim))
    img = ci[labels][:, None, :] + noise * rng.normal(size=(n, image_L, image_dim))
    txt = ct[labels][:, None, :] + noise * rng.normal(size=(n, text_L, text_dim))
    tmask = np.zeros((n, text_L), bool)
    lengths = rng.integers(1, text_L + 1, size=n)
    for i, length in enumerate(lengths):
        tmask[i, :length] = True
    txt[~tmask] = 0.0
    image = ModalityFeatures(img.astype(dtype), np.ones((n, image_L), bool), img.mean(1).astype(dtype))
    text = ModalityFeatures(txt.astype(dtype), tmask, (txt.sum(1) / lengths[:, None]).astype(dtype))
    return FeatureSet(image, text, tuple(f"s{i}" for i in range(n))), labels


def one_hot(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    return np.eye(n_classes, dtype=bool)[labels]
