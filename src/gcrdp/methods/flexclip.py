"""``flex-clip``: FLEX-CLIP (Xie et al., 2024, "FLEX-CLIP: Feature-Level GEneration Network
Enhanced CLIP for X-shot Cross-modal Retrieval", arXiv:2411.17454) on frozen features.

The method's notes — what it is, the choices made where the paper is silent, and how it is
tested — are in docs/methods/flex-clip.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.features import FeatureSet, ModalityFeatures
from ..errors import ConfigError, DataError
from ..losses import multi_positive_infonce
from ..losses.generative import (  # noqa: F401  (re-exported: FLEX-CLIP's stage-1 terms)
    bce_critic_loss,
    bce_generator_loss,
    calibrated_nll,
    gaussian_kl,
    gradient_penalty,
    reconstruction_nll,
    vae_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from ..losses.regularizer import label_space_loss
from ..training.distributed import global_rows
from ..training.loop import Batch
from .base import METHODS, FitData, check_fitted
from .flexclip_generator import (  # noqa: F401  (re-exported: the stage-1 generator)
    DECODER_VARIANCES,
    GAN_LOSSES,
    ConditionalVAEGAN,
    GeneratorConfig,
    _derived_seed,
    class_conditions,
    fit_feature_generator,
)
from .trainable import TrainableHeadsMethod, label_dims

INPUTS = ("pooled", "local_mean")
GENERATE_FOR = ("unseen", "fewshot", "all_rare", "none")
PAIRINGS = ("generated", "mixed")
SKIPS = ("linear", "identity")
GATES = ("input", "vector", "fixed")
MODALITIES = ("image", "text")

# Tags that keep the random streams of stage 1 apart from each other and from fit_loop's.
_TAG_SAMPLE = 7104


# =============================================================================== configs
@dataclass
class FlexCLIPConfig:
    """Options of FLEX-CLIP (training settings of stage 2 live in TrainConfig). Defaults and
    their sources are in the module docstring and :meth:`FlexCLIPMethod` docs.

    Attributes:
        input: ``pooled`` (default) or ``local_mean`` (masked mean of the local features).
        normalize_input: L2-normalise the input features (both stages).
        generate_for: ``unseen`` (default), ``fewshot``, ``all_rare`` or ``none``.
        generate_val: with ``unseen``/``all_rare``, also generate for classes that occur in the
            validation labels (the default; see the module docstring).
        n_generate: pseudo pairs per target class: a positive integer or ``"median"``.
        max_generate: cap on ``n_generate`` (``"median"`` of a large dataset).
        rare_fraction: ``all_rare`` threshold as a fraction of the median seen-class count.
        pairing: ``generated`` or ``mixed``.
        generator: stage 1, a :class:`GeneratorConfig` (given as a dict of its fields:
            ``{"generator": {"lr": 1e-3, "steps": 200}}``, ``--option flex-clip.generator.lr=1e-3``).
            Their flat names before (``gen_lr``, ``kl_weight``, …: :data:`RENAMED_OPTIONS`) still
            work, with a warning.
        latent_dim, hidden_dim, dropout: the gated residual projection.
        skip: ``linear`` (default) or ``identity``.
        gate: ``input`` (default), ``vector`` or ``fixed``.
        gate_value: the gate of ``gate="fixed"`` (0 = skip path only, 1 = MLP path only).
        gate_bias: initial gate bias b_g (or θ of ``vector``); 0 → g ≈ ½ at the start.
        temperature: τ of the contrastive loss.
        class_positives: same-class candidates are positives too.
        label_weight: weight of the shared-classifier label loss (0: off).
    """

    input: str = "pooled"
    normalize_input: bool = True
    generate_for: str = "unseen"
    generate_val: bool = True
    n_generate: int | str = "median"
    max_generate: int = 200
    rare_fraction: float = 0.5
    pairing: str = "mixed"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    latent_dim: int = 256
    hidden_dim: int = 256
    dropout: float = 0.1
    skip: str = "linear"
    gate: str = "input"
    gate_value: float = 0.5
    gate_bias: float = 0.0
    temperature: float = 0.1
    class_positives: bool = True
    label_weight: float = 0.0

    def __post_init__(self) -> None:
        for name, allowed in (("input", INPUTS), ("generate_for", GENERATE_FOR), ("pairing", PAIRINGS), ("skip", SKIPS), ("gate", GATES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"flex-clip option {name} must be one of {allowed}, got {getattr(self, name)!r}")
        n = self.n_generate
        if not (n == "median" or (isinstance(n, int) and not isinstance(n, bool) and n >= 1)):
            raise ConfigError(f"flex-clip option n_generate must be a positive integer or 'median', got {n!r}")
        if self.max_generate < 1:
            raise ConfigError(f"flex-clip option max_generate must be >= 1, got {self.max_generate!r}")
        if not 0 < self.rare_fraction <= 1:
            raise ConfigError(f"flex-clip option rare_fraction must be in (0, 1], got {self.rare_fraction!r}")
        if not 0 <= self.gate_value <= 1:
            raise ConfigError(f"flex-clip option gate_value must be in [0, 1], got {self.gate_value!r}")
        if not 0 < self.temperature <= 10:
            raise ConfigError(f"flex-clip option temperature must be in (0, 10], got {self.temperature!r}")
        if self.label_weight < 0:
            raise ConfigError(f"flex-clip option label_weight must be >= 0, got {self.label_weight!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"flex-clip option dropout must be in [0, 1), got {self.dropout!r}")
        if self.latent_dim < 1 or self.hidden_dim < 1:
            raise ConfigError(f"flex-clip options latent_dim and hidden_dim must be >= 1, got {self.latent_dim!r}, {self.hidden_dim!r}")
        if isinstance(self.generator, Mapping):  # from options or a stored config_dict()
            self.generator = generator_config(self.generator)
        elif not isinstance(self.generator, GeneratorConfig):
            raise ConfigError(f"flex-clip option generator must be a group of options (a dict), got {self.generator!r}")


#: FLEX-CLIP's stage-1 options before they were nested under ``generator`` → their new key
RENAMED_OPTIONS: dict[str, str] = {
    **{f"gen_{k}": f"generator.{k}" for k in ("latent_dim", "hidden_dim", "steps", "batch_size", "lr")},
    **{k: f"generator.{k}" for k in ("kl_weight", "gan_loss", "gan_weight", "gp_weight", "n_critic", "decoder_variance")},
    "gen_sample_noise": "generator.sample_noise",
}


def generator_config(options: Mapping[str, Any]) -> GeneratorConfig:
    """The :class:`GeneratorConfig` of the ``generator`` option group; an unknown key is a
    :class:`ConfigError` naming the accepted ones."""
    accepted = [f.name for f in fields(GeneratorConfig)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"flex-clip has no option(s) {', '.join(repr(f'generator.{k}') for k in unknown)}. "
            f"Its generator options: {', '.join(f'generator.{k}' for k in accepted)}."
        )
    return GeneratorConfig(**options)


# =============================================================================== stage-2 model
def gated_residual(mlp_out: torch.Tensor, skip_out: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``normalize(g ⊙ h + (1 − g) ⊙ s)`` along the last axis; ``gate`` broadcasts to h's shape."""
    return F.normalize(gate * mlp_out + (1.0 - gate) * skip_out, dim=-1)


class GatedResidualProjection(nn.Module):
    """One modality's gated residual projection (module docstring, stage 2)."""

    gate_fixed: torch.Tensor  # buffer of the fixed gate

    def __init__(self, in_dim: int, cfg: FlexCLIPConfig) -> None:
        super().__init__()
        out = cfg.latent_dim
        if cfg.skip == "identity" and in_dim != out:
            raise ConfigError(
                f"flex-clip skip='identity' needs input dim = latent_dim, got input dim {in_dim} "
                f"and latent_dim {out}; set latent_dim={in_dim} or skip='linear'."
            )
        self.in_dim, self.out_dim, self.mode = in_dim, out, cfg.gate
        self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden_dim, out))
        self.skip = nn.Linear(in_dim, out) if cfg.skip == "linear" else nn.Identity()
        if cfg.gate == "input":
            self.gate = nn.Linear(in_dim, out)
            nn.init.constant_(self.gate.bias, cfg.gate_bias)
        elif cfg.gate == "vector":
            self.gate_logit = nn.Parameter(torch.full((out,), float(cfg.gate_bias)))
        else:
            self.register_buffer("gate_fixed", torch.tensor(float(cfg.gate_value)))

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """g in [0, 1]: (B, out) for ``input``, (out,) for ``vector``, a scalar for ``fixed``."""
        if self.mode == "input":
            return torch.sigmoid(self.gate(x))
        if self.mode == "vector":
            return torch.sigmoid(self.gate_logit)
        return self.gate_fixed

    def forward_with_gate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeddings (B, out) unit rows, gate values g)."""
        g = self.gate_values(x)
        return gated_residual(self.mlp(x), self.skip(x), g), g

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_dim) -> (B, out) unit rows
        return self.forward_with_gate(x)[0]


class FlexCLIPModel(nn.Module):
    """The retrieval model: one gated residual projection per modality (+ the optional shared
    label classifier)."""

    def __init__(self, image_dim: int, text_dim: int, n_classes: int, cfg: FlexCLIPConfig) -> None:
        super().__init__()
        self.normalize_input = cfg.normalize_input
        self.image_head = GatedResidualProjection(image_dim, cfg)
        self.text_head = GatedResidualProjection(text_dim, cfg)
        self.classifier = nn.Linear(cfg.latent_dim, n_classes) if cfg.label_weight > 0 and n_classes > 0 else None

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize_input else x

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_head(self._prep(x))

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_head(self._prep(x))

    def encode_with_gates(self, image: torch.Tensor, text: torch.Tensor):
        """-> (image embeddings, text embeddings, image gates, text gates)."""
        (zi, gi), (zt, gt) = self.image_head.forward_with_gate(self._prep(image)), self.text_head.forward_with_gate(self._prep(text))
        return zi, zt, gi, gt


# =============================================================================== plumbing
def input_vectors(feats: ModalityFeatures, mode: str, normalize: bool = False, chunk: int = 4096) -> np.ndarray:
    """(n, d) float32 input vectors of a modality: the pooled features, or the masked mean of
    the local ones; optionally L2-normalised."""
    if mode == "pooled":
        out = np.asarray(feats.pooled, dtype=np.float32)
    else:
        parts = []
        for s in range(0, len(feats), chunk):
            loc = np.asarray(feats.local[s : s + chunk], dtype=np.float32)
            w = feats.mask[s : s + chunk].astype(np.float32)
            parts.append(np.einsum("nld,nl->nd", loc, w) / np.maximum(w.sum(1, keepdims=True), 1.0))
        out = np.concatenate(parts, axis=0) if parts else np.zeros((0, feats.dim), np.float32)
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def _as_set(x: np.ndarray) -> ModalityFeatures:
    """Vectors (n, d) as sets of one local feature (local = pooled = x)."""
    return ModalityFeatures(x[:, None, :], np.ones((x.shape[0], 1), bool), x)


@dataclass
class TargetPlan:
    """Which classes get how many pseudo pairs."""

    classes: np.ndarray  # (k,) class indices
    n_per_class: int
    seen: np.ndarray  # (s,) indices of the seen classes
    median_seen: float


def plan_targets(data: FitData, cfg: FlexCLIPConfig) -> TargetPlan:
    """The target classes of ``cfg.generate_for`` and ``n_generate`` (module docstring)."""
    y = np.asarray(data.train_labels, dtype=bool)
    over = np.asarray(data.oversample, dtype=bool)
    n_classes = y.shape[1]
    seen_counts = y[~over].sum(0)
    seen = np.flatnonzero(seen_counts > 0)
    fewshot = np.setdiff1d(np.flatnonzero(y[over].any(0)), seen)
    median = float(np.median(seen_counts[seen])) if seen.size else float(max(y.sum(0).max(initial=0), 1))
    if cfg.generate_for == "none":
        targets = np.zeros(0, np.int64)
    elif cfg.generate_for == "fewshot":
        targets = fewshot
    else:
        targets = np.setdiff1d(np.arange(n_classes), seen)  # few-shot classes + classes with no pair
        if cfg.generate_for == "all_rare":
            rare = seen[seen_counts[seen] < cfg.rare_fraction * median]
            targets = np.union1d(targets, rare)
        if not cfg.generate_val and data.val_labels is not None:
            val_only = np.setdiff1d(np.flatnonzero(np.asarray(data.val_labels, bool).any(0)), fewshot)
            targets = np.setdiff1d(targets, val_only)
    n = cfg.n_generate if cfg.n_generate != "median" else max(1, round(median))
    return TargetPlan(np.asarray(targets, np.int64), int(min(n, cfg.max_generate)), seen, median)


class FlexCLIPMethod(TrainableHeadsMethod):
    """FLEX-CLIP behind the common method interface (module docstring); checkpointable.

    ``fit`` needs ``FitData.class_name_features`` (the runner fills it because
    ``needs_class_name_features`` is True); ``init_model(image_dim=, text_dim=, n_classes=)``.
    """

    name = "flex-clip"
    config_type = FlexCLIPConfig
    needs_class_name_features: ClassVar[bool] = True
    renamed_options: ClassVar[dict[str, str]] = RENAMED_OPTIONS

    def __init__(self, cfg=None, train=None, device: str = "cpu") -> None:
        super().__init__(cfg, train, device)
        self.generators_: dict[str, ConditionalVAEGAN] = {}

    # ------------------------------------------------------------------ model
    def init_model(self, *, image_dim: int, text_dim: int, n_classes: int) -> FlexCLIPModel:
        """Build the untrained retrieval model (initialised from the torch global RNG)."""
        self.input_dims_ = {"image_dim": int(image_dim), "text_dim": int(text_dim), "n_classes": int(n_classes)}
        self.model_ = FlexCLIPModel(int(image_dim), int(text_dim), int(n_classes), self.cfg).to(self.device)
        return self.model_

    def _input_dim(self, feats: ModalityFeatures) -> int:
        return feats.pooled_dim if self.cfg.input == "pooled" else feats.dim

    def _model_dims(self, data: FitData) -> dict[str, int]:
        dims = {"image_dim": self._input_dim(data.train.image), "text_dim": self._input_dim(data.train.text)}
        return label_dims(dims, data)

    def _embed_dim(self) -> int:
        return self.cfg.latent_dim

    # ------------------------------------------------------------------ stage 1
    def _check_names(self, data: FitData) -> np.ndarray:
        names = data.class_name_features
        n_classes = int(np.asarray(data.train_labels).shape[1])
        if names is None:
            raise ConfigError(
                "flex-clip conditions its feature generator on class-name embeddings, but "
                "FitData.class_name_features is None. The experiment runner fills it (the method sets "
                "needs_class_name_features=True); when calling fit() yourself, pass "
                "class_name_features=gcrdp.experiments.runner.class_name_features(class_names, config) "
                "or any (n_classes, d) array."
            )
        names = np.asarray(names, dtype=np.float32)
        if names.ndim != 2 or names.shape[0] != n_classes or not np.isfinite(names).all():
            raise DataError(
                f"flex-clip: class_name_features must be a finite ({n_classes}, d) array (one row per "
                f"label column), got shape {names.shape}."
            )
        return names

    def augment(self, data: FitData, seed: int) -> tuple[FitData, dict[str, Any]]:
        """Stage 1: the training set of stage 2 — the real pairs as input vectors plus the
        pseudo pairs of the target classes — and a summary for the fit report. Deterministic
        given ``seed`` (module docstring)."""
        cfg = self.cfg
        names = self._check_names(data) if cfg.generate_for != "none" else None
        t0 = time.perf_counter()
        y = np.asarray(data.train_labels, dtype=bool)
        real = {m: input_vectors(getattr(data.train, m), cfg.input, cfg.normalize_input) for m in MODALITIES}
        plan = plan_targets(data, cfg)
        info: dict[str, Any] = {
            "generate_for": cfg.generate_for,
            "n_target_classes": int(plan.classes.size),
            "target_classes": [data.class_names[i] if i < len(data.class_names) else int(i) for i in plan.classes.tolist()],
            "n_per_class": plan.n_per_class if plan.classes.size else 0,
            "median_seen_count": plan.median_seen,
        }
        self.generators_ = {}
        if plan.classes.size == 0:
            info.update(n_generated=0, seconds=round(time.perf_counter() - t0, 3))
            feats = FeatureSet(_as_set(real["image"]), _as_set(real["text"]), data.train.sample_ids)
            return FitData(
                train=feats,
                train_labels=y,
                oversample=np.asarray(data.oversample, bool),
                val=data.val,
                val_labels=data.val_labels,
                class_names=data.class_names,
                class_name_features=data.class_name_features,
            ), info
        assert names is not None  # generate_for == "none" has no target classes: returned above
        cond_train = class_conditions(y, names)
        gcfg = cfg.generator
        reps = np.repeat(plan.classes, plan.n_per_class)  # (k·n,) class of each pseudo pair
        cond_gen = torch.as_tensor(class_conditions(np.eye(y.shape[1], dtype=bool)[reps], names), device=self.device)
        fake: dict[str, np.ndarray] = {}
        losses: dict[str, dict[str, float]] = {}
        for tag, m in enumerate(MODALITIES):
            model, losses[m] = fit_feature_generator(real[m], cond_train, gcfg, seed=seed, tag=tag, device=self.device)
            self.generators_[m] = model
            g = torch.Generator(device=self.device)
            g.manual_seed(_derived_seed(seed, _TAG_SAMPLE, tag))
            fake[m] = np.concatenate(
                [model.sample(cond_gen[s : s + 4096], g).float().cpu().numpy() for s in range(0, len(reps), 4096)], axis=0
            )
        gen_img, gen_txt = fake["image"], fake["text"]
        if cfg.pairing == "mixed":
            gen_img, gen_txt = gen_img.copy(), gen_txt.copy()
            for c in plan.classes.tolist():
                own = np.flatnonzero(y[:, c])
                if own.size == 0:
                    continue
                rows = np.flatnonzero(reps == c)
                for k, r in enumerate(rows.tolist()):
                    src = own[(k // 2) % own.size]
                    if k % 2 == 0:
                        gen_txt[r] = real["text"][src]
                    else:
                        gen_img[r] = real["image"][src]
        counters = np.concatenate([np.arange(plan.n_per_class)] * plan.classes.size)
        ids = tuple(data.train.sample_ids) + tuple(f"flexclip-gen:{c}:{k}" for c, k in zip(reps.tolist(), counters.tolist()))
        feats = FeatureSet(_as_set(np.concatenate([real["image"], gen_img])), _as_set(np.concatenate([real["text"], gen_txt])), ids)
        labels = np.concatenate([y, np.eye(y.shape[1], dtype=bool)[reps]])
        oversample = np.concatenate([np.asarray(data.oversample, bool), np.zeros(len(reps), bool)])
        info.update(n_generated=len(reps), generator_losses=losses, seconds=round(time.perf_counter() - t0, 3))
        return FitData(
            train=feats,
            train_labels=labels,
            oversample=oversample,
            val=data.val,
            val_labels=data.val_labels,
            class_names=data.class_names,
            class_name_features=data.class_name_features,
        ), info

    # ------------------------------------------------------------------ fit
    def _prepare(self, data: FitData, seed: int) -> tuple[FitData, dict[str, dict[str, Any]]]:
        """Stage 1 (generation, deterministic from ``seed``; re-run on resume): stage 2 trains on
        the augmented pairs (module docstring); its summary is the report's ``generation``."""
        augmented, info = self.augment(data, seed)
        return augmented, {"generation": info}

    def _loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        model = cast(FlexCLIPModel, model)
        img, txt, g_img, g_txt = model.encode_with_gates(batch["image_local"][:, 0], batch["text_local"][:, 0])  # (B, D)
        # the global batch's rows (this rank's alone in one process)
        img, txt = cast(torch.Tensor, global_rows(img)), cast(torch.Tensor, global_rows(txt))
        g_img, g_txt = cast(torch.Tensor, global_rows(g_img, grad=False)), cast(torch.Tensor, global_rows(g_txt, grad=False))
        labels = global_rows(batch.get("labels"), grad=False)
        con = multi_positive_infonce(
            img[:, None], txt[:, None], self.cfg.temperature, labels, class_positives=self.cfg.class_positives and labels is not None
        )
        parts = {"contrastive": float(con.detach())}
        loss = con
        if model.classifier is not None and labels is not None:
            lab = 0.5 * (label_space_loss(model.classifier(img), labels) + label_space_loss(model.classifier(txt), labels))
            loss = loss + self.cfg.label_weight * lab
            parts["label"] = float(lab.detach())
        parts["gate_image"], parts["gate_text"] = float(g_img.detach().mean()), float(g_txt.detach().mean())
        return loss, parts

    # ------------------------------------------------------------------ embed
    @torch.inference_mode()
    def _embed(self, feats: ModalityFeatures, which: str) -> np.ndarray:
        model = check_fitted(self)
        model.eval()
        head = model.image_head if which == "image" else model.text_head
        if self._input_dim(feats) != head.in_dim:
            raise DataError(
                f"{self.name}: {which} {self.cfg.input} features have dim {self._input_dim(feats)}, the model expects {head.in_dim}"
            )
        x = input_vectors(feats, self.cfg.input)
        encode = model.encode_image if which == "image" else model.encode_text
        bs = self.train.eval_batch_size
        out = [encode(torch.from_numpy(x[s : s + bs]).to(self.device)).float().cpu().numpy() for s in range(0, len(x), bs)]
        return np.concatenate(out, axis=0) if out else np.zeros((0, self._embed_dim()), np.float32)


@METHODS.register("flex-clip")
def _build(options: dict[str, Any], device: str) -> FlexCLIPMethod:
    return FlexCLIPMethod.from_options(options, device)


__all__ = [
    "ConditionalVAEGAN",
    "FlexCLIPConfig",
    "FlexCLIPMethod",
    "FlexCLIPModel",
    "GatedResidualProjection",
    "GeneratorConfig",
    "bce_critic_loss",
    "bce_generator_loss",
    "class_conditions",
    "fit_feature_generator",
    "gated_residual",
    "gaussian_kl",
    "gradient_penalty",
    "input_vectors",
    "plan_targets",
    "reconstruction_nll",
    "vae_loss",
    "wgan_critic_loss",
    "wgan_generator_loss",
]
