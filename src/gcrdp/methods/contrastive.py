"""``gap-infonce``: projection heads over local features, global average pooling and the
symmetric cross-modal InfoNCE loss — GCRDP with its GMM and RDP parts switched off."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.features import FeatureSet, ModalityFeatures
from ..errors import ConfigError, DataError
from ..losses import symmetric_infonce
from ..model import ProjectionHead, masked_mean
from ..training.checkpoint import load_method, method_info, save_method
from ..training.config import TrainConfig, split_options
from ..training.loop import Batch, fit_loop
from ..training.seeding import resolve_device
from .base import METHODS, FitData, FitReport


@dataclass
class HeadsConfig:
    """Architecture and loss settings of the contrastive heads.

    Attributes:
        latent_dim: D, the shared space.
        hidden_dim: width of the heads' hidden layer.
        num_layers: 1 (linear) or 2 (MLP) layers per head.
        dropout: dropout inside the heads.
        temperature: InfoNCE temperature τ.
    """

    latent_dim: int = 256
    hidden_dim: int = 256
    num_layers: int = 2
    dropout: float = 0.1
    temperature: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"temperature must be in (0, 10], got {self.temperature}")


class DualHeads(nn.Module):
    """One projection head per modality; a sample's embedding is the L2-normalised masked
    mean of its projected local features."""

    def __init__(self, image_dim: int, text_dim: int, cfg: HeadsConfig) -> None:
        super().__init__()
        kw = dict(out_dim=cfg.latent_dim, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers,
                  dropout=cfg.dropout)
        self.image_head = ProjectionHead(image_dim, **kw)
        self.text_head = ProjectionHead(text_dim, **kw)

    def encode_image(self, local: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(masked_mean(self.image_head(local), mask), dim=-1)  # (B, D)

    def encode_text(self, local: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(masked_mean(self.text_head(local), mask), dim=-1)  # (B, D)


class ContrastiveHeadsMethod:
    """GAP + symmetric InfoNCE over projected local features (see module docstring).

    Checkpointable (contract in :mod:`gcrdp.methods.base`): ``init_model(image_dim, text_dim)``,
    ``fit(..., checkpoint_dir=, resume=)``, ``save(path)`` / ``ContrastiveHeadsMethod.load(path)``.
    """

    name = "gap-infonce"

    def __init__(self, heads: HeadsConfig | None = None, train: TrainConfig | None = None,
                 device: str = "cpu") -> None:
        self.heads = heads or HeadsConfig()
        self.train = train or TrainConfig()
        self.device = resolve_device(device)
        self.model_: DualHeads | None = None
        self.input_dims_: dict[str, int] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], device: str = "cpu") -> ContrastiveHeadsMethod:
        heads, train = split_options(options, HeadsConfig, TrainConfig)
        return cls(heads, train, device)

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.name, **asdict(self.heads), **self.train.to_dict()}

    # ------------------------------------------------------------------ fit
    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        img = model.encode_image(batch["image_local"], batch["image_mask"])
        txt = model.encode_text(batch["text_local"], batch["text_mask"])
        loss = symmetric_infonce(img, txt, self.heads.temperature)
        return loss, {"infonce": float(loss.detach())}

    def init_model(self, image_dim: int, text_dim: int) -> DualHeads:
        """Build the untrained heads (initialised from the torch global RNG) on the device."""
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim)}
        self.model_ = DualHeads(int(image_dim), int(text_dim), self.heads).to(self.device)
        return self.model_

    def fit(self, data: FitData, *, seed: int, checkpoint_dir: str | Path | None = None,
            resume: bool = True) -> FitReport:
        """Train on ``data``; with ``checkpoint_dir``, checkpoint every epoch and (``resume``)
        continue an interrupted fit there (see :func:`~gcrdp.training.fit_loop`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.init_model(data.train.image.dim, data.train.text.dim)  # validation embeds through it
            report = fit_loop(model, self._loss, self._embed_pair, data, self.train, seed=seed,
                              device=self.device, checkpoint_dir=checkpoint_dir, resume=resume,
                              method_info=method_info(self))
        return report

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path, **kw: Any) -> Path:
        """Write the fitted method as a final checkpoint folder (see
        :func:`gcrdp.training.checkpoint.save_method`)."""
        return save_method(self, path, **kw)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ContrastiveHeadsMethod:
        """Rebuild a method saved with :meth:`save` (weights on ``device``)."""
        return load_method(path, device, expect=cls)

    # ---------------------------------------------------------------- embed
    def _check_fitted(self) -> DualHeads:
        if self.model_ is None:
            raise RuntimeError(f"{self.name}: call fit() before embedding")
        return self.model_

    @torch.inference_mode()
    def _embed(self, feats: ModalityFeatures, which: str) -> np.ndarray:
        model = self._check_fitted()
        model.eval()
        expect = model.image_head.in_dim if which == "image" else model.text_head.in_dim
        if feats.dim != expect:
            raise DataError(f"{self.name}: {which} features have dim {feats.dim}, the model expects {expect}")
        enc = model.encode_image if which == "image" else model.encode_text
        out = []
        bs = self.train.eval_batch_size
        for s in range(0, len(feats), bs):
            loc = torch.from_numpy(np.ascontiguousarray(feats.local[s:s + bs])).to(self.device, torch.float32)
            msk = torch.from_numpy(np.ascontiguousarray(feats.mask[s:s + bs])).to(self.device)
            out.append(enc(loc, msk).float().cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, self.heads.latent_dim), np.float32)

    def _embed_pair(self, features: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        return self.embed_images(features.image), self.embed_texts(features.text)

    def embed_images(self, features: ModalityFeatures) -> np.ndarray:
        return self._embed(features, "image")

    def embed_texts(self, features: ModalityFeatures) -> np.ndarray:
        return self._embed(features, "text")


@METHODS.register("gap-infonce")
def _build(options: dict[str, Any], device: str) -> ContrastiveHeadsMethod:
    return ContrastiveHeadsMethod.from_options(options, device)
