"""The training batches: gathered into reused buffers on the CPU, the same values as fresh
tensors (``make_batch``), for every batch size in an epoch and every dtype kept."""

from __future__ import annotations

import numpy as np
import torch

from gcrdp.training.loop import BatchReader, gather_into, make_batch
from tests.helpers import synthetic_features


def test_reused_buffers_give_the_values_of_fresh_tensors():
    feats, labels = synthetic_features(n_per_class=9, n_classes=5, seed=3)
    onehot = np.eye(5, dtype=np.float32)[labels]
    reader = BatchReader(feats, onehot, "cpu")
    assert reader.tensors is not None
    rng = np.random.default_rng(0)
    order = rng.permutation(len(feats))
    batches = [order[:16], order[16:32], order[32:40], order[40:]]  # the last ones smaller
    seen = []
    for idx, batch in zip(batches, reader.batches(batches)):
        fresh = make_batch(reader.tensors, idx, "cpu")
        assert batch.keys() == fresh.keys()
        for k in fresh:
            assert batch[k].dtype == fresh[k].dtype and batch[k].shape == fresh[k].shape
            assert torch.equal(batch[k], fresh[k]), k
        seen.append(batch["image_local"].data_ptr())
    assert len(set(seen)) == 1  # one buffer for every batch


def test_a_buffer_grows_to_a_larger_batch():
    x = {"a": torch.arange(60, dtype=torch.float32).reshape(20, 3), "m": torch.arange(20) % 2 == 0}
    buffers: dict[str, torch.Tensor] = {}
    small = gather_into(x, np.array([3, 1]), buffers)
    assert torch.equal(small["a"], x["a"][[3, 1]]) and torch.equal(small["m"], x["m"][[3, 1]])
    big = gather_into(x, np.arange(19, 4, -1), buffers)
    assert torch.equal(big["a"], x["a"][list(range(19, 4, -1))]) and buffers["a"].shape[0] == 15
