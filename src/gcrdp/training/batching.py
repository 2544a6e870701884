"""Epoch batches with oversampling of the few unseen-class pairs."""

from __future__ import annotations

import numpy as np


def epoch_batches(
    n: int,
    batch_size: int,
    rng: np.random.Generator,
    oversample_idx: np.ndarray | None = None,
    repeats: int = 1,
    drop_last_below: int = 2,
) -> list[np.ndarray]:
    """Shuffle ``range(n)`` into batches; the pairs in ``oversample_idx`` appear ``repeats``
    times per epoch (each copy in a different batch where possible, never twice in one batch,
    since a duplicate pair would be its own negative in a contrastive loss).

    Batches smaller than ``drop_last_below`` are dropped (a contrastive batch needs two pairs).
    """
    order = rng.permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if oversample_idx is not None and len(oversample_idx) and repeats > 1 and batches:
        extra = np.tile(np.asarray(oversample_idx, dtype=np.int64), repeats - 1)
        extra = extra[rng.permutation(len(extra))]
        # deal the extra copies round-robin over batches, skipping batches that hold the pair
        members = [set(b.tolist()) for b in batches]
        added: list[list[int]] = [[] for _ in batches]
        start = 0
        for idx in extra.tolist():
            for step in range(len(batches)):
                j = (start + step) % len(batches)
                if idx not in members[j]:
                    members[j].add(idx)
                    added[j].append(idx)
                    start = j + 1
                    break
        batches = [np.concatenate([b, np.asarray(a, dtype=np.int64)]) if a else b for b, a in zip(batches, added)]
    return [b for b in batches if len(b) >= drop_last_below]
