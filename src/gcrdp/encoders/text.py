"""What the text encoders share (:class:`~gcrdp.encoders.minilm.MiniLMEncoder`, its ONNX twin
and :class:`~gcrdp.encoders.clip.CLIPTextEncoder`): they batch texts by token length, longest
first (:func:`token_length_order`), and scatter each batch's hidden states back to the texts'
rows as local features, a mask and pooled features (:func:`encode_in_length_order`). Only the
model call that turns one batch of token ids into hidden states and pooled features differs.

Neither torch nor transformers is imported here: the ONNX twin uses this loop without them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..data.features import ModalityFeatures
from ..errors import DataError, format_list

#: texts tokenized at once by :func:`token_length_order` (only their lengths are kept)
ORDER_PIECE = 10_000

#: One batch through the model: its texts' token ids → (hidden states (B, T, d), pooled (B, d_pooled)), numpy.
RunBatch = Callable[[list[Sequence[int]]], tuple[np.ndarray, np.ndarray]]


def token_length_order(tokenizer: Any, texts: list[str], max_tokens: int) -> np.ndarray:
    """The order a length-sorting text encoder batches ``texts`` in: by token length (truncated
    at ``max_tokens``), longest first, stable. Lengths are taken a piece at a time, so no token
    list is held for every text at once."""
    lengths = np.empty(len(texts), np.int64)
    for start in range(0, len(texts), ORDER_PIECE):
        ids = tokenizer(texts[start : start + ORDER_PIECE], truncation=True, max_length=max_tokens, padding=False)
        lengths[start : start + len(ids["input_ids"])] = [len(x) for x in ids["input_ids"]]
    return np.argsort(-lengths, kind="stable")


def local_tokens(
    ids: Sequence[Sequence[int]], special: Sequence[Sequence[int]], include_special_tokens: bool, special_names: str
) -> list[np.ndarray]:
    """Per tokenized text, which of its tokens are local features (all of them, or all but the
    special ones); :class:`DataError` for texts left with none (``special_names`` names the
    special tokens in the message, e.g. ``"[CLS]/[SEP]"``)."""
    keep = [np.ones(len(x), bool) if include_special_tokens else ~np.asarray(s, bool) for x, s in zip(ids, special)]
    empty = [i for i, k in enumerate(keep) if not k.any()]
    if empty:
        raise DataError(
            f"{len(empty)} texts have no token besides {special_names} (positions "
            f"{format_list(empty)}); use include_special_tokens=True or drop them."
        )
    return keep


def encode_in_length_order(
    ids: Sequence[Sequence[int]],
    keep: Sequence[np.ndarray],
    run_batch: RunBatch,
    *,
    dims: tuple[int, int],
    batch_size: int,
    bar: Any,
) -> ModalityFeatures:
    """Encode tokenized texts (``ids``, in order) in batches of ``batch_size``, longest first.

    ``run_batch`` runs the model on one batch's token ids; the hidden states of the tokens
    ``keep`` (:func:`local_tokens`) become a text's local features — zero-padded to the most
    local tokens of the call, ``mask`` True on them — and ``dims`` are (local, pooled) widths.
    ``bar`` (a progress bar) advances by each batch's texts. Rows are in the order of ``ids``."""
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    n, (dim, pooled_dim) = len(ids), dims
    width = max((int(k.sum()) for k in keep), default=0)
    local = np.zeros((n, width, dim), np.float32)
    mask = np.zeros((n, width), bool)
    pooled = np.zeros((n, pooled_dim), np.float32)
    order = np.argsort(-lengths, kind="stable")
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        hidden, batch_pooled = run_batch([ids[i] for i in idx])
        pooled[idx] = batch_pooled
        for row, i in enumerate(idx):
            states = hidden[row, : lengths[i]][keep[i]]
            local[i, : len(states)] = states
            mask[i, : len(states)] = True
        bar.update(len(idx))
    return ModalityFeatures(local, mask, pooled)
