"""CLIP image and text encoders (``transformers``), loaded from a local weights folder.

``model_dir`` is a folder written by ``CLIPModel.save_pretrained`` plus the tokenizer and image
processor (``CLIPProcessor.save_pretrained``), e.g. a downloaded ``openai/clip-vit-base-patch32``
snapshot::

    config.json                      model_type "clip"
    model.safetensors                (or pytorch_model.bin)
    tokenizer.json                   (or vocab.json + merges.txt)     text encoder
    preprocessor_config.json                                          image encoder

Nothing is ever downloaded: every ``from_pretrained`` call uses ``local_files_only=True``. A
missing folder, missing files (all named at once), a config that is not a CLIP config, weights
that do not fill the model, and a tokenizer that loads with an (almost) empty vocabulary — which
``CLIPTokenizer.from_pretrained`` silently does offline for a folder without vocabulary files —
are :class:`~gcrdp.errors.DataError`.

The full ``CLIPModel`` is loaded (the stand-alone ``CLIPVisionModelWithProjection`` /
``CLIPTextModelWithProjection`` classes can silently re-initialise the projection from a CLIP
checkpoint) and only the tower of the encoder's modality and its projection are kept.

Image output (:class:`CLIPImageEncoder`), with ``P = (image_size / patch_size) ** 2`` patches:
    local: (P, d_v) — the vision tower's last hidden state at the patch tokens, passed through
        the vision ``post_layernorm`` (the LayerNorm CLIP applies to the CLS token before the
        projection, so patch and CLS tokens are on the same scale; the raw residual stream has
        a few very large outlier channels). Patches in row-major grid order (index = row *
        grid + column). ``include_cls=True`` puts the CLS token first, giving (1 + P, d_v).
        Mask all True. ``d_v`` is the vision hidden size (768 for ViT-B/32).
    pooled: (projection_dim,) — ``CLIPModel.get_image_features``
        (``visual_projection(post_layernorm(CLS))``), L2-normalised.
    Preprocessing: the image is decoded like every gcrdp image encoder
    (:func:`~gcrdp.encoders.images.load_image`: EXIF orientation, transparency composited on
    white, RGB), then the folder's ``preprocessor_config.json`` is applied with the PIL backend
    of ``CLIPImageProcessor`` (resize shorter side, centre crop, CLIP mean/std by default).

Text output (:class:`CLIPTextEncoder`):
    local: (L, d_t) — the text tower's last hidden state (after its ``final_layer_norm``) at every
        token, ``<|startoftext|>`` and ``<|endoftext|>`` included by default
        (``include_special_tokens=False`` drops them); at most ``max_tokens`` tokens including
        the two special tokens (default: the model's ``max_position_embeddings``, 77 for
        OpenAI CLIP; longer texts are truncated and keep their ``<|endoftext|>``). Rows are
        zero-padded to the longest text of the call; ``mask`` is True on real tokens.
    pooled: (projection_dim,) — ``CLIPModel.get_text_features``
        (``text_projection`` of the ``<|endoftext|>`` token state), L2-normalised. Text
        tokens attend causally, so padding never changes a text's features.

Pooled image and text features share CLIP's joint space: their dot product is CLIP's cosine
similarity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.features import ModalityFeatures
from ..errors import ConfigError, DataError, format_list, optional_import
from .base import (
    ENCODERS_EXTRA,
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    check_batch_size,
    check_texts,
    progress_bar,
    resolve_threads,
    sha256_file,
    torch_threads,
)
from .images import check_image_files, describe_items, load_image, to_rgb
from .minilm import _quiet_transformers
from .text import encode_in_length_order, local_tokens, token_length_order

if TYPE_CHECKING:
    import torch

#: Bumped when gcrdp's way of computing CLIP features changes (part of the fingerprint).
CLIP_FEATURES_VERSION = 1

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_PREPROCESSOR_FILE = "preprocessor_config.json"
#: Text every real CLIP vocabulary encodes to known tokens (a tokenizer check at load time).
_PROBE_TEXT = "a photo of a cat"
_MIN_VOCAB = 3
_PURPOSE = "The clip encoders"


def check_clip_dir(path: Path, modality: str) -> tuple[Path, list[Path]]:
    """Return (weights file, modality files) of a local CLIP folder, or raise :class:`DataError`
    naming every missing file. The modality files are the tokenizer files present (text) or
    ``[preprocessor_config.json]`` (image)."""
    if not path.is_dir():
        raise DataError(
            f"CLIP model folder not found: {path}. Pass a local folder saved with "
            "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained (config.json, "
            "model.safetensors, tokenizer.json or vocab.json + merges.txt, "
            "preprocessor_config.json); nothing is downloaded."
        )
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    weights = [path / f for f in _WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        missing.append(" or ".join(_WEIGHT_FILES))
    if modality == "text":
        extra = [path / f for f in _TOKENIZER_FILES if (path / f).is_file()]
        names = {p.name for p in extra}
        if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= names:
            missing.append("tokenizer.json or vocab.json + merges.txt (the tokenizer)")
    else:
        extra = [path / _PREPROCESSOR_FILE]
        if not extra[0].is_file():
            missing.append(f"{_PREPROCESSOR_FILE} (the image processor)")
    if missing:
        raise DataError(
            f"CLIP model folder {path} is incomplete for the {modality} encoder: missing "
            f"{', '.join(missing)}. Save the full model with CLIPModel.save_pretrained and "
            "CLIPProcessor.save_pretrained into it (no file is downloaded at run time)."
        )
    return weights[0], extra


def read_clip_config(path: Path) -> Any:
    """The folder's ``transformers.CLIPConfig``; :class:`DataError` unless config.json is a
    readable config with ``model_type`` ``"clip"``."""
    file = path / "config.json"
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{file} is not a readable JSON model config ({exc}).") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type != "clip":
        raise DataError(
            f"{file} is not a CLIP config: model_type is {model_type!r}, expected 'clip'. Pass "
            "the folder of a full CLIPModel (vision and text towers), e.g. a saved "
            "openai/clip-vit-base-patch32."
        )
    transformers = optional_import("transformers", ENCODERS_EXTRA, _PURPOSE)
    try:
        return transformers.CLIPConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{file} is not a valid CLIP config ({exc}).") from None


def load_clip_model(path: Path) -> Any:
    """``CLIPModel`` from ``path`` in eval mode; :class:`DataError` if it cannot be loaded or the
    weights file leaves parameters uninitialised (they would be random)."""
    import torch

    transformers = optional_import("transformers", ENCODERS_EXTRA, _PURPOSE)
    try:
        with _quiet_transformers():
            model, info = transformers.CLIPModel.from_pretrained(  # float32 even if saved in 16 bit
                str(path), local_files_only=True, output_loading_info=True, dtype=torch.float32
            )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise DataError(
            f"Cannot load the CLIP model from {path}: {exc}. Check that config.json and the "
            "weights file belong together (re-save the folder with CLIPModel.save_pretrained)."
        ) from None
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        raise DataError(
            f"The weights in {path} do not fill the CLIP model described by its config.json: "
            f"{len(missing)} parameters missing ({format_list(missing, limit=3)}), "
            f"{len(mismatched)} of another shape ({format_list(mismatched, limit=3)}); they would "
            "be randomly initialised. Re-save the folder with CLIPModel.save_pretrained."
        )
    return model.eval()


def _image_processor_class(transformers: Any) -> Any:
    """The PIL-backed CLIP image processor (transformers >= 5 names it ``CLIPImageProcessorPil``;
    its ``CLIPImageProcessor`` needs torchvision). Older versions' ``CLIPImageProcessor`` is the
    PIL/numpy one."""
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    return cls if cls is not None else transformers.CLIPImageProcessor


def _normalise(x: torch.Tensor) -> np.ndarray:
    import torch

    return torch.nn.functional.normalize(x.float(), p=2, dim=1).numpy()


def _as_path(model_dir: Any) -> Path:
    if not isinstance(model_dir, (str, Path)):
        raise ConfigError(f"model_dir must be a path to a local CLIP folder, got {model_dir!r}.")
    return Path(model_dir)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")
    return value


# ============================================================================ image
@IMAGE_ENCODERS.register("clip")
class CLIPImageEncoder:
    """CLIP vision-tower patch tokens (post-LayerNorm) and the projected image embedding.

    Args:
        model_dir: a local CLIP folder (config.json, weights, preprocessor_config.json).
        include_cls: whether the CLS token is the first local feature (default: patches only).
        num_threads: CPU threads for inference; default: all CPUs this process may use.
    """

    modality = "image"
    name = "clip"
    backend = "torch"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        include_cls: bool = False,
        num_threads: int | None = None,
    ) -> None:
        self.model_dir = _as_path(model_dir)
        self.weights_file, (self.preprocessor_file,) = check_clip_dir(self.model_dir, "image")
        clip_config = read_clip_config(self.model_dir)
        config = clip_config.vision_config
        self.dim = int(config.hidden_size)
        self.image_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        self.projection_dim = int(clip_config.projection_dim)
        self.include_cls = _check_bool(include_cls, "include_cls")
        self.num_threads = resolve_threads(num_threads)
        self._processor: Any = None
        self._vision: Any = None
        self._projection: Any = None

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_local(self) -> int:
        return self.grid * self.grid + int(self.include_cls)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "modality": self.modality,
            "version": CLIP_FEATURES_VERSION,
            "weights_sha256": sha256_file(self.weights_file),
            "config_sha256": sha256_file(self.model_dir / "config.json"),
            "preprocessor_sha256": sha256_file(self.preprocessor_file),
            "preprocessing": {
                "decode": "gcrdp.load_image",
                "exif_transpose": True,
                "background": [255, 255, 255],
                "processor": "CLIPImageProcessor (PIL backend)",
            },
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "include_cls": self.include_cls,
            "backend": self.backend,
            "local": {
                "source": "vision last_hidden_state, post_layernorm",
                "tokens": ("CLS + " if self.include_cls else "") + "patches, row-major",
                "count": self.num_local,
                "dim": self.dim,
            },
            "pooled": {"source": "get_image_features, L2-normalised", "dim": self.projection_dim},
        }

    # ------------------------------------------------------------------ loading
    def load(self) -> CLIPImageEncoder:
        """Load the image processor and the vision tower now (otherwise done by the first
        :meth:`encode`)."""
        if self._vision is not None:
            return self
        transformers = optional_import("transformers", ENCODERS_EXTRA, _PURPOSE)
        try:
            processor = _image_processor_class(transformers).from_pretrained(str(self.model_dir), local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"Cannot load the CLIP image processor from {self.preprocessor_file}: {exc}") from None
        model = load_clip_model(self.model_dir)
        self._processor = processor
        self._vision, self._projection = model.vision_model, model.visual_projection
        return self

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        """RGB ``PIL.Image`` s → the processor's (B, 3, image_size, image_size) float32 tensor."""
        pixels = self._processor(images=list(images), return_tensors="pt")["pixel_values"]
        expected = (3, self.image_size, self.image_size)
        if tuple(pixels.shape[1:]) != expected:
            raise DataError(
                f"{self.preprocessor_file} produces images of shape {tuple(pixels.shape[1:])}, "
                f"but the model expects {expected} (vision_config.image_size "
                f"{self.image_size}). Fix size/crop_size in {_PREPROCESSOR_FILE}."
            )
        return pixels.float()

    # ------------------------------------------------------------------ encoding
    def encode(self, items: Sequence[Any], *, batch_size: int = 32, progress: bool = True) -> ModalityFeatures:
        """Encode images (paths or PIL images) in order.

        Returns local (n, P, d_v) float32 (P = number of patches, + 1 with ``include_cls``),
        mask (n, P) all True, pooled (n, projection_dim) float32 (L2-normalised). All paths are
        checked for existence before any work; undecodable files are collected over the whole
        list and reported together (:class:`DataError`)."""
        check_batch_size(batch_size)
        items = list(items)
        is_path = [x is None or isinstance(x, (str, Path)) for x in items]
        check_image_files([x for x, p in zip(items, is_path) if p], ids=[str(i) for i, p in enumerate(is_path) if p])
        n, count = len(items), self.num_local
        local = np.zeros((n, count, self.dim), np.float32)
        pooled = np.zeros((n, self.projection_dim), np.float32)
        start_token = 0 if self.include_cls else 1
        names = describe_items(items)
        bad: list[str] = []
        import torch

        with (
            torch_threads(self.num_threads),
            torch.inference_mode(),
            progress_bar(n, progress=progress, unit="img", desc=f"Encoding images ({self.name})") as bar,
        ):
            for start in range(0, n, batch_size):
                chunk = items[start : start + batch_size]
                images = []
                for j, item in enumerate(chunk):
                    try:
                        images.append(load_image(item) if isinstance(item, (str, Path)) else to_rgb(item))
                    except DataError as exc:
                        bad.append(f"{names[start + j]} ({exc})")
                if bad:  # keep decoding to report every bad file at once, skip the model
                    bar.update(len(chunk))
                    continue
                self.load()
                out = self._vision(pixel_values=self.pixel_values(images))
                tokens = self._vision.post_layernorm(out.last_hidden_state)  # (B, 1 + P, d_v)
                local[start : start + len(chunk)] = tokens[:, start_token:].numpy()
                pooled[start : start + len(chunk)] = _normalise(self._projection(out.pooler_output))
                bar.update(len(chunk))
        if bad:
            raise DataError(
                f"{len(bad)} of {n} images cannot be decoded (corrupt or not an image): "
                f"{format_list(bad, limit=3)}. Replace or drop these files."
            )
        return ModalityFeatures(local, np.ones((n, count), bool), pooled)


# ============================================================================ text
@TEXT_ENCODERS.register("clip")
class CLIPTextEncoder:
    """CLIP text-tower token states and the projected text embedding.

    Args:
        model_dir: a local CLIP folder (config.json, weights, tokenizer files).
        max_tokens: token limit including ``<|startoftext|>``/``<|endoftext|>`` (truncation
            beyond it); default and maximum: the model's ``max_position_embeddings``.
        include_special_tokens: whether the start/end tokens are local features.
        num_threads: CPU threads for inference; default: all CPUs this process may use.
    """

    modality = "text"
    name = "clip"
    backend = "torch"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_tokens: int | None = None,
        include_special_tokens: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.model_dir = _as_path(model_dir)
        self.weights_file, self.tokenizer_files = check_clip_dir(self.model_dir, "text")
        clip_config = read_clip_config(self.model_dir)
        config = clip_config.text_config
        self.dim = int(config.hidden_size)
        self.projection_dim = int(clip_config.projection_dim)
        self.vocab_size = int(config.vocab_size)
        self.model_eos_token_id = config.eos_token_id
        limit = int(config.max_position_embeddings)
        if max_tokens is None:
            max_tokens = limit
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 3 <= max_tokens <= limit:
            raise ConfigError(
                f"max_tokens must be an integer in 3..{limit} (the model's max_position_embeddings) or None, got {max_tokens!r}."
            )
        self.max_tokens = max_tokens
        self.include_special_tokens = _check_bool(include_special_tokens, "include_special_tokens")
        self.num_threads = resolve_threads(num_threads)
        self._tokenizer: Any = None
        self._text: Any = None
        self._projection: Any = None

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "modality": self.modality,
            "version": CLIP_FEATURES_VERSION,
            "weights_sha256": sha256_file(self.weights_file),
            "config_sha256": sha256_file(self.model_dir / "config.json"),
            "tokenizer_sha256": {p.name: sha256_file(p) for p in self.tokenizer_files},
            "max_tokens": self.max_tokens,
            "include_special_tokens": self.include_special_tokens,
            "strip_text": True,
            "backend": self.backend,
            "local": {"source": "text last_hidden_state (after final_layer_norm)", "dim": self.dim},
            "pooled": {"source": "get_text_features, L2-normalised", "dim": self.projection_dim},
        }

    # ------------------------------------------------------------------ loading
    def _check_tokenizer(self, tok: Any) -> None:
        where = f"The tokenizer in {self.model_dir}"
        vocab = tok.get_vocab()
        if len(vocab) < _MIN_VOCAB:
            raise DataError(
                f"{where} has an empty vocabulary ({len(vocab)} entries: "
                f"{format_list(sorted(vocab))}); offline loading of a folder without usable "
                "tokenizer.json / vocab.json + merges.txt gives that. Re-save the tokenizer with "
                "CLIPTokenizer.save_pretrained."
            )
        probe = tok(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if not probe or all(i == tok.unk_token_id for i in probe):
            raise DataError(
                f"{where} encodes {_PROBE_TEXT!r} to nothing but unknown tokens; its vocabulary "
                f"({len(vocab)} entries) is not a CLIP vocabulary. Re-save the tokenizer."
            )
        if max(vocab.values()) >= self.vocab_size:
            raise DataError(
                f"{where} has token ids up to {max(vocab.values())} but the model's "
                f"text_config.vocab_size is {self.vocab_size}: tokenizer and weights do not "
                "belong together."
            )
        if tok.bos_token_id is None or tok.eos_token_id is None:
            raise DataError(f"{where} has no start/end-of-text token (bos_token/eos_token); CLIP needs both.")
        # eos_token_id 2 is the legacy config value: the model then pools at the highest id
        eos = self.model_eos_token_id
        if eos is not None and eos != 2 and eos != tok.eos_token_id:
            raise DataError(
                f"{where} has end-of-text id {tok.eos_token_id}, the model's text_config "
                f"eos_token_id is {eos}: the text embedding would be read at the wrong token. "
                "Use the tokenizer saved with these weights."
            )

    def load(self) -> CLIPTextEncoder:
        """Load the tokenizer and the text tower now (otherwise done by the first
        :meth:`encode`)."""
        if self._text is not None:
            return self
        transformers = optional_import("transformers", ENCODERS_EXTRA, _PURPOSE)
        try:
            tok = transformers.CLIPTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        except Exception as exc:  # tokenizers raises a bare Exception for a broken vocabulary
            raise DataError(
                f"Cannot load the CLIP tokenizer from {self.model_dir}: {exc}. Check "
                "tokenizer.json / vocab.json + merges.txt (re-save with "
                "CLIPTokenizer.save_pretrained)."
            ) from None
        self._check_tokenizer(tok)
        model = load_clip_model(self.model_dir)
        self._tokenizer = tok
        self._text, self._projection = model.text_model, model.text_projection
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
        """Encode texts in order. Returns local (n, L, d_t) float32 (L = longest text of the
        call in tokens, at most ``max_tokens``), mask (n, L) bool, pooled (n, projection_dim)
        float32 (L2-normalised).

        Texts are processed in length order to limit padding; results do not depend on
        ``batch_size`` (beyond float rounding, about 1e-6)."""
        check_batch_size(batch_size)
        texts = self._check_texts(list(items))
        self.load()
        enc = self._tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=False, return_special_tokens_mask=True)
        ids = enc["input_ids"]
        keep = local_tokens(ids, enc["special_tokens_mask"], self.include_special_tokens, "<|startoftext|>/<|endoftext|>")
        import torch

        with (
            torch_threads(self.num_threads),
            torch.inference_mode(),
            progress_bar(len(texts), progress=progress, unit="text", desc=f"Encoding texts ({self.name})") as bar,
        ):
            dims = (self.dim, self.projection_dim)
            return encode_in_length_order(ids, keep, self._run_batch, dims=dims, batch_size=batch_size, bar=bar)

    def _run_batch(self, batch_ids: list[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """One batch: the text tower's last hidden states (B, T, d_t) and the L2-normalised projections."""
        batch = self._tokenizer.pad({"input_ids": batch_ids}, padding=True, return_tensors="pt")
        out = self._text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state.numpy(), _normalise(self._projection(out.pooler_output))
