"""A tiny randomly initialised CLIP model folder, written with ``save_pretrained`` (no download).

:func:`make_clip_dir` writes what a real ``openai/clip-*`` snapshot holds, at toy size:
``config.json`` + ``model.safetensors`` (``CLIPModel``: hidden 32, 2 layers, 2 heads,
projection 16; 32 px images in 8 px patches → 16 patches; 16 text positions), the tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``, built from a byte-level BPE ``vocab.json`` /
``merges.txt`` written here) and ``preprocessor_config.json`` (PIL ``CLIPImageProcessor``).

The vocabulary covers lowercase ASCII words: every letter alone (inside a word) and with the
``</w>`` end-of-word suffix, a few merges (``cat``, ``dog``, ``photo``) and the two special tokens
with the highest ids, as in OpenAI CLIP. Other characters are unknown (``<|endoftext|>``).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

HIDDEN = 32
PROJECTION_DIM = 16
IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
MAX_POSITIONS = 16
MERGES = ["c a", "ca t</w>", "d o", "do g</w>", "p h", "o t", "ph ot", "phot o</w>"]


def clip_vocab() -> dict[str, int]:
    """The toy byte-level BPE vocabulary (token → id), special tokens last."""
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase:
            vocab[c + suffix] = len(vocab)
    for merge in MERGES:
        vocab[merge.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def write_vocab_files(folder: Path, vocab: dict[str, int], merges: list[str]) -> None:
    """Write ``vocab.json`` and ``merges.txt`` as ``CLIPTokenizer`` reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")


def make_clip_dir(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP model folder (weights from ``torch.manual_seed(seed)``) to
    ``folder`` and return it."""
    import torch
    import transformers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from gcrdp.encoders.clip import _image_processor_class

    folder = Path(folder)
    vocab = clip_vocab()
    with tempfile.TemporaryDirectory() as src:
        write_vocab_files(Path(src), vocab, MERGES)
        tokenizer = CLIPTokenizer.from_pretrained(src, local_files_only=True)
    tokenizer.save_pretrained(str(folder))

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": MAX_POSITIONS,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        projection_dim=PROJECTION_DIM,
    )
    CLIPModel(config).eval().save_pretrained(str(folder))
    processor = _image_processor_class(transformers)(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor.save_pretrained(str(folder))
    return folder
