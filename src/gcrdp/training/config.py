"""Optimisation settings shared by the trainable methods."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError

#: the numeric precisions of a fit's forward passes (``TrainConfig.precision``)
PRECISIONS = ("float32", "bf16")

#: options added after training checkpoints were first written, with their defaults: a training
#: checkpoint's identity (:func:`identity_options`) leaves them out at their default, so a fit
#: checkpointed before they existed — the same fit — still resumes
LATER_OPTION_DEFAULTS: dict[str, Any] = {"pca_dim": None, "precision": "float32"}


def identity_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the :data:`LATER_OPTION_DEFAULTS` that are at their default."""
    return {k: v for k, v in options.items() if not (k in LATER_OPTION_DEFAULTS and v == LATER_OPTION_DEFAULTS[k])}


@dataclass
class TrainConfig:
    """Adam with early stopping on validation mAP.

    Attributes:
        lr: Adam learning rate.
        weight_decay: decoupled weight decay (AdamW) — 0 is plain Adam.
        batch_size: pairs per batch before oversampled copies are added.
        max_epochs: upper bound on epochs.
        patience: stop after this many evaluations without a validation improvement.
        min_delta: improvement (in mAP fraction) that resets patience.
        oversample: how many times each few-shot unseen-class pair appears per epoch.
        grad_clip: max gradient norm (None: no clipping).
        eval_batch_size: batch size when embedding for validation/evaluation.
        precision: ``float32`` (default: nothing changes) or ``bf16``: the training forward pass
            and loss run under ``torch.autocast(device type, bfloat16)`` (the backward pass and
            the optimizer step stay float32, as do the parameters), and so do the method's
            embedding passes — validation and the final embeddings — so the model chosen on
            validation is scored as it was trained; embeddings are returned as float32. The
            GMM's EM runs in float32 inside (``model/gmm.py``). A device on which bf16 autocast
            fails is a :class:`~gcrdp.errors.ConfigError` at the start of the fit; a CPU without
            native bf16 (``torch.cpu._is_avx512_bf16_supported()``) runs it emulated, with a
            warning (same kind of numerics, likely slower) — never a silent float32 fallback.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 60
    patience: int = 5
    min_delta: float = 1e-4
    oversample: int = 4
    grad_clip: float | None = 5.0
    eval_batch_size: int = 512
    precision: str = "float32"

    def __post_init__(self) -> None:
        checks = [
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 2, ">= 2 (a contrastive batch needs two pairs)"),
            ("max_epochs", self.max_epochs >= 1, ">= 1"),
            ("patience", self.patience >= 1, ">= 1"),
            ("oversample", self.oversample >= 1, ">= 1"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "> 0 or None"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("precision", self.precision in PRECISIONS, f"one of {PRECISIONS}"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ConfigError(f"Training option {name} must be {want}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_options(options: dict[str, Any], *config_types: type) -> list[Any]:
    """Split a flat options dict over several dataclass configs; unknown keys are an error
    that lists the accepted ones."""
    options = dict(options)
    out = []
    accepted: list[str] = []
    for ct in config_types:
        names = {f.name for f in fields(ct)}
        accepted += sorted(names)
        kw = {k: options.pop(k) for k in list(options) if k in names}
        try:
            out.append(ct(**kw))
        except TypeError as exc:
            raise ConfigError(f"Invalid options for {ct.__name__}: {exc}") from None
    if options:
        raise ConfigError(f"Unknown method option(s) {sorted(options)}. Accepted options: {', '.join(accepted)}.")
    return out
