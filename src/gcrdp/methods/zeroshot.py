"""``zero-shot``: raw cosine similarity between the encoders' global (pooled) features — no
training at all (SPEC §4).

The method's notes — what it is, the choices made where the paper is silent, and how it is
tested — are in docs/methods/zero-shot.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..data.features import FeatureSet, ModalityFeatures
from ..errors import ConfigError, DataError
from ..training.config import split_options
from .base import METHODS, FitData, FitReport, MethodTags, check_fitted
from .persistence import load_method, save_method

#: Encoder names whose image and text towers share a space when the weights are the same.
ALIGNED_ENCODERS = ("clip",)
#: FeatureSet meta ``format`` values of pre-extracted features known to share a space.
ALIGNED_FORMATS = ("clip-retrieval",)


@dataclass
class ZeroShotConfig:
    """Settings of ``zero-shot``.

    Attributes:
        assume_aligned: accept features whose alignment cannot be detected from their meta
            (pre-extracted features known to share one space).
    """

    assume_aligned: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.assume_aligned, (bool, np.bool_)):
            raise ConfigError(f"zero-shot option assume_aligned must be true or false, got {self.assume_aligned!r}.")
        self.assume_aligned = bool(self.assume_aligned)


def _encoder_name(fp: Any) -> str | None:
    if not isinstance(fp, dict):
        return None
    name = fp.get("encoder", fp.get("name"))
    return str(name) if name is not None else None


def detect_alignment(meta: dict[str, Any]) -> tuple[bool | None, str]:
    """``(aligned, why)`` from a FeatureSet meta: True (known aligned), False (known not
    aligned) or None (cannot tell), with a human-readable reason."""
    meta = meta or {}
    fmt = meta.get("format")
    if fmt in ALIGNED_FORMATS:
        return True, f"pre-extracted {fmt} features (one model's shared embedding space)"
    ki = meta.get("key_inputs")
    if isinstance(ki, dict) and ("image_encoder" in ki or "text_encoder" in ki):
        fi, ft = ki.get("image_encoder"), ki.get("text_encoder")
        ni, nt = _encoder_name(fi), _encoder_name(ft)
        if ni in ALIGNED_ENCODERS and ni == nt:
            wi = fi.get("weights_sha256") if isinstance(fi, dict) else None
            wt = ft.get("weights_sha256") if isinstance(ft, dict) else None
            if wi and wi == wt:
                return True, f"{ni} image and text encoders with the same weights (sha256 {str(wi)[:12]}…)"
            return False, (
                f"{ni} image and text encoders with different weights (sha256 "
                f"{str(wi)[:12]}… vs {str(wt)[:12]}…): two models' spaces are not aligned"
            )
        return False, f"the image encoder {ni!r} and the text encoder {nt!r} are separate models"
    src = meta.get("source")
    return None, (
        f"the features' origin ({src!r}) does not say which encoders made them" if src else "the features carry no encoder information"
    )


class _ZeroShotModel(nn.Module):
    """No parameters; one buffer records the pooled dims the method was fitted on."""

    pooled_dims: torch.Tensor

    def __init__(self, image_dim: int, text_dim: int) -> None:
        super().__init__()
        self.register_buffer("pooled_dims", torch.tensor([int(image_dim), int(text_dim)], dtype=torch.int64))


class ZeroShotMethod:
    """Cosine between raw pooled features (module docstring)."""

    name = "zero-shot"

    def __init__(self, cfg: ZeroShotConfig | None = None, device: str = "cpu") -> None:
        self.cfg = cfg if cfg is not None else ZeroShotConfig()
        self.device = device  # unused: numpy on the CPU
        self.model_: _ZeroShotModel | None = None
        self.input_dims_: dict[str, int] | None = None
        self.alignment_: str | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], device: str = "cpu") -> ZeroShotMethod:
        (cfg,) = split_options(options, ZeroShotConfig)
        return cls(cfg, device)

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.name, **asdict(self.cfg)}

    def init_model(self, *, image_dim: int, text_dim: int) -> _ZeroShotModel:
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim)}
        self.model_ = _ZeroShotModel(int(image_dim), int(text_dim))
        return self.model_

    def check_aligned(self, train: FeatureSet) -> str:
        """Raise :class:`ConfigError` unless zero-shot similarity is meaningful on ``train``'s
        features (module docstring); return why it is."""
        di, dt = train.image.pooled_dim, train.text.pooled_dim
        if di != dt:
            raise ConfigError(
                f"zero-shot compares pooled image and text features directly, but their dims differ: "
                f"image {di}, text {dt}. It needs an aligned encoder pair such as CLIP (--clip DIR)."
            )
        aligned, why = detect_alignment(train.meta)
        if aligned:
            return why
        if self.cfg.assume_aligned:
            return f"assumed (assume_aligned=true; {why})"
        raise ConfigError(
            f"zero-shot similarity needs an aligned image-text encoder pair, and here {why}. Use an "
            "aligned pair such as CLIP (--clip DIR), or pass --option zero-shot.assume_aligned=true "
            "for features known to share one space."
        )

    def fit(self, data: FitData, *, seed: int, checkpoint_dir: str | Path | None = None, resume: bool = True) -> FitReport:
        """No training: check the pair is aligned (module docstring), record the dims and score
        the validation pairs when given. ``seed``, ``checkpoint_dir``, ``resume`` are unused."""
        t0 = time.perf_counter()
        why = self.check_aligned(data.train)
        self.init_model(image_dim=data.train.image.pooled_dim, text_dim=data.train.text.pooled_dim).eval()
        self.alignment_ = why
        best = None
        history: list[dict[str, float]] = []
        if data.val is not None and len(data.val) and data.val_labels is not None:
            from ..evaluation import cross_modal_metrics

            img, txt = self.embed_images(data.val.image), self.embed_texts(data.val.text)
            res = cross_modal_metrics(img, txt, data.val_labels, img, txt, data.val_labels)
            best = float(res["mean_map"])
            history.append({"epoch": 0, "val_map": round(best, 6)})
        return FitReport(
            epochs=0, best_epoch=0, best_val_map=best, seconds=time.perf_counter() - t0, history=history, extra={"alignment": why}
        )

    def refit_options(self, report: FitReport) -> dict[str, Any]:
        """Nothing is fitted, so nothing is chosen on validation."""
        return {}

    def tags(self) -> MethodTags:
        """Nothing trained: checkpointable (save/load), refit unchanged; nothing to resume."""
        return MethodTags(refit=True, checkpointable=True)

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, **kw: Any) -> Path:
        return save_method(self, path, **kw)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ZeroShotMethod:
        return cast(ZeroShotMethod, load_method(path, device, expect=cls))

    # ---------------------------------------------------------------- embed
    def _embed(self, features: ModalityFeatures, side: str) -> np.ndarray:
        check_fitted(self)
        assert self.model_ is not None  # check_fitted raised otherwise
        expect = int(self.model_.pooled_dims[0 if side == "image" else 1])
        if features.pooled_dim != expect:
            raise DataError(
                f"{self.name}: {side} pooled features have dim {features.pooled_dim}, the method was fitted on {expect}-d features."
            )
        X = np.asarray(features.pooled, dtype=np.float64)
        norm = np.linalg.norm(X, axis=1, keepdims=True)
        return (X / np.where(norm > 0, norm, 1.0)).astype(np.float32)

    def embed_images(self, features: ModalityFeatures) -> np.ndarray:
        """(n, d) float32: the L2-normalised pooled image features."""
        return self._embed(features, "image")

    def embed_texts(self, features: ModalityFeatures) -> np.ndarray:
        """(n, d) float32: the L2-normalised pooled text features."""
        return self._embed(features, "text")


@METHODS.register("zero-shot")
def _build(options: dict[str, Any], device: str) -> ZeroShotMethod:
    return ZeroShotMethod.from_options(options, device)
