"""The resolved configuration of ``gcrdp run`` (written next to every result)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError

PROTOCOLS = ("fewshot", "generalized", "standard")


@dataclass
class RunConfig:
    """Everything that determines a run's results.

    Attributes:
        dataset: registered dataset name (``gcrdp datasets`` lists them).
        dataset_options: keyword options of the dataset loader (e.g. ``{"path": ...}``).
        protocol: ``fewshot`` (SPEC §1), ``generalized`` or ``standard``.
        shots: N values; 0 is zero-shot (ignored by the standard protocol).
        seeds: one run per seed; a seed fixes the shot draw and the initialisation.
        methods: registered method names.
        method_options: per method name, its options (architecture and training settings).
        image_encoder, text_encoder: registered encoder names.
        image_encoder_options, text_encoder_options: keyword options of the encoders (e.g.
            ``{"model_dir": ...}`` for ``clip``).
        encoder_backend: inference backend for extraction (``None``: the encoder's default).
        feature_dtype: storage dtype of cached features (computation is float32).
        cache_dir: feature cache folder (``None``: ``$GCRDP_CACHE_DIR`` or ``~/.cache/gcrdp``).
        feature_storage: ``memory`` (the features are held in memory: the fastest while they
            fit), ``disk`` (a feature store in the cache folder, read by row: memory does not
            grow with the number of pairs; :mod:`gcrdp.data.store`) or ``auto`` (disk when the
            features exceed :data:`gcrdp.experiments.runner.AUTO_DISK_BYTES`). Results are
            the same either way.
        val_fraction: fraction of seen classes (few-shot) or of train pairs (standard) held
            out for validation.
        val_mode: ``mirror`` (the validation classes get the run's shots in training, like
            the unseen classes), ``zero-shot`` (they get none; the first protocol) or
            ``zero-shot-matched`` (mirror's validation classes and pairs, none of them trains:
            the control that tells the protocol from the validation's size).
        val_min_classes, val_min_pairs: with ``mirror``, the fewest validation classes and
            pairs to aim for (at most half of the seen classes are held out).
        val_report_fraction: share of each validation class's pairs held out of model
            selection (seeded, stratified by class; 0 = off): the fit early-stops on the other
            pairs, and the chosen model's mAP on these — a validation figure that the choice
            of epoch did not see — is recorded as ``fit.report_val_map`` beside
            ``best_val_map`` (the maximum over epochs of the selection pairs' score, optimistic).
        refit: after each fit, fit the method again on every seen-side train pair (the
            validation classes' pairs too) and the unseen shots, with the settings chosen on
            validation (the early-stopped epoch count, CCA's ridge) and no validation; the
            refitted model is the one tested. The validation classes otherwise never train.
        allow_small_classes: run even when classes have fewer items than the protocol needs
            (:func:`gcrdp.data.checks.small_classes`; default: stop and name them).
        ks: extra cut-offs for mAP@k, precision@k and recall@k.
        device: ``cpu``, ``cuda`` or ``auto``.
        extract_batch_size: batch size of feature extraction.
    """

    dataset: str = "twemoji"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    protocol: str = "fewshot"
    shots: list[int] = field(default_factory=lambda: [0, 1, 3, 5])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    methods: list[str] = field(default_factory=lambda: ["gcrdp"])
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_encoder: str = "efficientnet-lite0"
    text_encoder: str = "minilm-l6"
    image_encoder_options: dict[str, Any] = field(default_factory=dict)
    text_encoder_options: dict[str, Any] = field(default_factory=dict)
    encoder_backend: str | None = None
    feature_dtype: str = "float16"
    cache_dir: str | None = None
    feature_storage: str = "auto"
    val_fraction: float = 0.2
    val_mode: str = "mirror"
    val_min_classes: int = 10
    val_min_pairs: int = 200
    val_report_fraction: float = 0.0
    refit: bool = False
    allow_small_classes: bool = False
    ks: list[int] = field(default_factory=list)
    device: str = "auto"
    extract_batch_size: int = 64

    def __post_init__(self) -> None:
        self.shots = [int(s) for s in self.shots]
        self.seeds = [int(s) for s in self.seeds]
        self.ks = [int(k) for k in self.ks]
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"Unknown protocol {self.protocol!r}. Known protocols: {', '.join(PROTOCOLS)}.")
        if not self.shots:
            raise ConfigError("At least one shot value is needed (e.g. --shots 0 1 3 5).")
        if any(s < 0 for s in self.shots):
            raise ConfigError(f"Shots must be >= 0, got {self.shots}.")
        if not self.seeds:
            raise ConfigError("At least one seed is needed (e.g. --seeds 0 1 2).")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.shots)) != len(self.shots):
            raise ConfigError(f"Shots and seeds must not repeat, got shots={self.shots} seeds={self.seeds}.")
        if not self.methods:
            raise ConfigError("At least one method is needed (e.g. --methods gap-infonce).")
        self._check_settings()

    def _check_settings(self) -> None:
        """The checks of the settings after the grid's (shots, seeds, methods), in this order."""
        if any(k < 1 for k in self.ks):
            raise ConfigError(f"Cut-offs k must be >= 1, got {self.ks}.")
        if self.feature_dtype not in ("float16", "float32"):
            raise ConfigError(f"feature_dtype must be 'float16' or 'float32', got {self.feature_dtype!r}.")
        if self.feature_storage not in ("auto", "memory", "disk"):
            raise ConfigError(f"feature_storage must be 'auto', 'memory' or 'disk', got {self.feature_storage!r}.")
        if not 0.0 <= self.val_fraction < 1.0:  # 0: no validation (every fit keeps its last epoch)
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        if self.val_mode not in ("mirror", "zero-shot", "zero-shot-matched"):
            raise ConfigError(f"val_mode must be 'mirror', 'zero-shot' or 'zero-shot-matched', got {self.val_mode!r}.")
        if not 0.0 <= self.val_report_fraction < 1.0:
            raise ConfigError(f"val_report_fraction must be in [0, 1), got {self.val_report_fraction}.")
        if self.val_min_classes < 0 or self.val_min_pairs < 0:
            raise ConfigError(f"val_min_classes and val_min_pairs must be >= 0, got {self.val_min_classes} and {self.val_min_pairs}.")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}.")
        unknown = sorted(set(self.method_options) - set(self.methods))
        if unknown:
            raise ConfigError(f"Options given for method(s) {unknown} that are not run (methods: {self.methods}).")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(raw) - known)
        if extra:
            raise ConfigError(f"Unknown run config key(s) {extra}. Known keys: {', '.join(sorted(known))}.")
        return cls(**raw)
