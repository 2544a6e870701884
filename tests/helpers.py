"""Small seeded synthetic data shared by tests (no files, no encoders)."""

from __future__ import annotations

import numpy as np

from gcrdp.data.features import FeatureSet, ModalityFeatures


def synthetic_features(
    n_per_class: int = 20,
    n_classes: int = 6,
    image_dim: int = 12,
    text_dim: int = 8,
    image_L: int = 5,
    text_L: int = 4,
    noise: float = 0.5,
    seed: int = 0,
    dtype=np.float32,
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


def fit_data_by_class(feats, labels: np.ndarray, n_train_classes: int, **extra):
    """FitData of ``feats``: the first ``n_train_classes`` classes train, the others validate
    (one-hot labels; ``extra``: more FitData fields, e.g. class names)."""
    from gcrdp.methods import FitData

    y = one_hot(labels)
    train, val = np.flatnonzero(labels < n_train_classes), np.flatnonzero(labels >= n_train_classes)
    return FitData(
        train=feats.subset(train),
        train_labels=y[train],
        oversample=np.zeros(len(train), bool),
        val=feats.subset(val),
        val_labels=y[val],
        **extra,
    )


def heads_fitdata(seed: int = 0):
    """(features, one-hot labels, FitData): 12 synthetic classes, 8 to train, 4 to validate."""
    feats, labels = synthetic_features(n_per_class=12, n_classes=12, seed=seed)
    return feats, one_hot(labels), fit_data_by_class(feats, labels, 8)


def toy_run_dataset(n_per_class: int = 16, seed: int = 1):
    """(Dataset with pre-extracted features, its FeatureSet): 8 synthetic classes, c0–c4 seen,
    c5–c7 unseen, every fourth pair in the test split — for run_experiment without files."""
    from gcrdp.data import ClassSplit, Dataset, Sample

    feats, labels = synthetic_features(n_per_class=n_per_class, n_classes=8, noise=0.5, seed=seed)
    classes = [f"c{i}" for i in range(8)]
    samples = [
        Sample(id=sid, text=None, labels=(classes[c],), split="test" if i % 4 == 0 else "train")
        for i, (sid, c) in enumerate(zip(feats.sample_ids, labels, strict=True))
    ]
    ds = Dataset("toy", samples, classes, ClassSplit("toy", "1", tuple(classes[:5]), tuple(classes[5:])), features=feats)
    return ds, feats


def save_mat_v73(path, arrays: dict) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 after a 512-byte text header, every array
    stored transposed (column-major), as ``save -v7.3`` does for arrays over 2 GB."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in arrays.items():
            f[name] = np.ascontiguousarray(np.asarray(arr).T)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, written by a test".ljust(128, b" "))
