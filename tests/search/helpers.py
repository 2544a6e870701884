"""Shared fixtures of the search tests: a small class-clustered features file and a model
trained on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gcrdp.cli import main


def clustered_features(path: Path, n: int, seed: int) -> Path:
    """``n`` pairs of 6 classes (image dim 12, text dim 8) around seeded class centres, 30 % test
    (a usable generated class split at split_seed 0), as a pre-extracted features file."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), n // 6)
    ci, ct = rng.normal(size=(6, 12)), rng.normal(size=(6, 8))
    np.savez(
        path,
        image=(ci[labels] + 0.3 * rng.normal(size=(n, 12))).astype(np.float32),
        text=(ct[labels] + 0.3 * rng.normal(size=(n, 8))).astype(np.float32),
        labels=labels,
        classes=np.array([f"class-{i}" for i in range(6)]),
        split=np.array(["test" if i % 10 < 3 else "train" for i in range(n)]),
    )
    return path


def trained_model(root: Path, n: int, seed: int, epochs: int) -> tuple[Path, Path]:
    """A ``gap-infonce`` model trained for ``epochs`` on :func:`clustered_features`: (its
    checkpoint folder, the features file)."""
    path = clustered_features(root / "f.npz", n, seed)
    args = ["train", "--features", str(path), "--method", "gap-infonce", "--shots", "1", "--option", f"max_epochs={epochs}"]
    assert main([*args, "--checkpoint-dir", str(root / "ckpt"), "-q"]) == 0
    return root / "ckpt", path
