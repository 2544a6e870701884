"""The main job: dataset → cached features → protocol splits over shots × seeds →
fit each method → evaluate I2T and T2I on the test pairs → one results file."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.features import FeatureSet
from ..data.types import Dataset
from ..errors import ConfigError, DataError
from ..methods import METHODS, FitData, build_method
from ..training.seeding import resolve_device
from ..utils.io import atomic_write_json
from ..utils.provenance import provenance
from .config import RunConfig

log = logging.getLogger(__name__)

RESULTS_FORMAT = "gcrdp-results/1"


def default_cache_dir() -> Path:
    env = os.environ.get("GCRDP_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "gcrdp"


def load_features(dataset: Dataset, config: RunConfig, progress: bool = True) -> FeatureSet:
    """Both modalities' features for ``dataset``: its own pre-extracted ones when it has them
    (``dataset.features``; the encoders are not used), else extracted by the configured
    encoders (or loaded from the cache)."""
    if dataset.features is not None:
        feats = dataset.features
        if "key" not in feats.meta:
            feats.meta.update({"key": feats.content_digest(), "source": "pre-extracted",
                               "dtype": str(feats.image.local.dtype)})
            feats.meta["key_inputs"] = {"pre_extracted": feats.meta["key"]}
        return feats
    from ..encoders import extract_features, get_image_encoder, get_text_encoder

    image_kw = dict(config.image_encoder_options)
    if config.encoder_backend:
        image_kw["backend"] = config.encoder_backend
    image_enc = _build_encoder(get_image_encoder, config.image_encoder, image_kw, "image")
    text_enc = _build_encoder(get_text_encoder, config.text_encoder, dict(config.text_encoder_options), "text")
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return extract_features(dataset, image_enc, text_enc, cache_dir=cache, dtype=config.feature_dtype,
                            batch_size=config.extract_batch_size, progress=progress)


def _build_encoder(factory: Callable[..., Any], name: str, options: dict[str, Any], modality: str) -> Any:
    try:
        return factory(name, **options)
    except TypeError as exc:  # an option the encoder does not take
        raise ConfigError(f"The {modality} encoder {name!r} does not accept the options "
                          f"{sorted(options)}: {exc}") from None


def class_name_texts(class_names) -> list[str]:
    """The text a class name is embedded from: separators as spaces (``food-fruit`` → ``food fruit``)."""
    return [str(c).replace("-", " ").replace("_", " ").strip() or str(c) for c in class_names]


def class_name_features(class_names, config: RunConfig) -> np.ndarray:
    """(n_classes, d) float32 pooled embeddings of the class names by the run's text encoder
    (also for pre-extracted datasets: the names only condition a method, they need not share
    the features' space)."""
    from ..encoders import get_text_encoder

    enc = _build_encoder(get_text_encoder, config.text_encoder, dict(config.text_encoder_options), "text")
    feats = enc.encode(class_name_texts(class_names), batch_size=64, progress=False)
    return np.ascontiguousarray(feats.pooled, dtype=np.float32)


def method_base_name(entry: str) -> str:
    """``"gcrdp@k5"`` → ``"gcrdp"``: an entry may label a variant of a registered method (its
    options are ``method_options["gcrdp@k5"]``), so one run can compare settings of one method."""
    return entry.split("@", 1)[0]


def evaluate_split(method: Any, features: FeatureSet, labels: np.ndarray, split: Any,
                   ks: list[int] | tuple[int, ...] = ()) -> dict[str, Any]:
    """Test metrics of a fitted ``method`` on ``split``'s test queries and gallery (I2T and
    T2I, :func:`~gcrdp.evaluation.cross_modal_metrics`); the gallery is embedded once more only
    when it differs from the queries."""
    from ..evaluation import cross_modal_metrics

    q, g = split.test_query, split.test_gallery
    qi, qt = method.embed_images(features.image.subset(q)), method.embed_texts(features.text.subset(q))
    if np.array_equal(q, g):
        gi, gt = qi, qt
    else:
        gi, gt = method.embed_images(features.image.subset(g)), method.embed_texts(features.text.subset(g))
    return cross_modal_metrics(qi, qt, labels[q], gi, gt, labels[g], ks=ks)


def fit_data_for(split: Any, features: FeatureSet, labels: np.ndarray, class_names) -> FitData:
    """What a method is fitted on for one protocol ``split``: its train pairs (the few-shot
    pairs of the unseen classes, and of the validation classes under the mirrored validation,
    marked for oversampling) and its validation pairs."""
    return FitData(
        train=features.subset(split.train), train_labels=labels[split.train],
        oversample=np.isin(split.train, split.oversampled),
        val=features.subset(split.val) if len(split.val) else None,
        val_labels=labels[split.val] if len(split.val) else None,
        class_names=tuple(class_names),
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, shots): mean and sample standard deviation (ddof=1) over seeds of the
    I2T, T2I and mean mAP (fractions), plus the chance level."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["shots"]), []).append(r)
    out = []
    for (method, shots), rs in groups.items():
        row: dict[str, Any] = {"method": method, "shots": shots, "n_seeds": len(rs),
                               "seeds": [r["seed"] for r in rs]}
        for key, get in (("i2t_map", lambda r: r["test"]["i2t"]["map"]),
                         ("t2i_map", lambda r: r["test"]["t2i"]["map"]),
                         ("mean_map", lambda r: r["test"]["mean_map"])):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([get(r) for r in rs])
        for extra in sorted({k for r in rs for k in r["test"]["i2t"] if "@" in k}):
            for d in ("i2t", "t2i"):
                row[f"{d}_{extra}_mean"], row[f"{d}_{extra}_std"] = _mean_std([r["test"][d][extra] for r in rs])
        vals = [r["fit"]["best_val_map"] for r in rs if r["fit"].get("best_val_map") is not None]
        if vals:
            row["val_map_mean"], row["val_map_std"] = _mean_std(vals)
        row["chance_i2t_mean"], _ = _mean_std([r["chance"]["i2t"] for r in rs])
        row["chance_t2i_mean"], _ = _mean_std([r["chance"]["t2i"] for r in rs])
        row["fit_seconds_mean"], _ = _mean_std([r["fit"]["seconds"] for r in rs])
        out.append(row)
    return out


def run_experiment(
    config: RunConfig,
    output_dir: str | Path | None = None,
    *,
    progress: bool = True,
    dataset: Dataset | None = None,
    features: FeatureSet | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    checkpoints: Callable[[str, int, int], Path] | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Run every (shots, seed, method) of ``config`` and return the results dict; when
    ``output_dir`` is given, write ``output_dir/results.json`` atomically at the end.

    ``dataset``/``features`` may be passed in (tests, notebooks) to skip loading/extraction.

    ``checkpoints(method entry, shots, seed) -> folder``: checkpoint the fits there (methods
    must be checkpointable, see :mod:`gcrdp.methods.base`): ``folder/last`` is the training
    checkpoint written every epoch (resumed when ``resume``), ``folder/final`` the fitted method
    with the run info that ``gcrdp evaluate --checkpoint`` needs; the record gets
    ``"checkpoint": folder``. ``gcrdp train`` is this with one (method, shots, seed).
    """
    from ..data.protocol import make_split
    from ..data.registry import load_dataset
    from ..evaluation import chance_map
    from ..training.checkpoint import check_checkpointable, save_method

    for m in config.methods:
        METHODS.get(method_base_name(m))  # fail fast on unknown names, before any slow work
        if checkpoints is not None:
            check_checkpointable(build_method(method_base_name(m), config.method_options.get(m)))
    t_start = time.perf_counter()
    if output_dir is not None:
        output_dir = Path(output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise ConfigError(f"--output-dir {output_dir} exists and is not a folder.")
    device = resolve_device(config.device)
    if dataset is None:
        dataset = load_dataset(config.dataset, **config.dataset_options)
    t_data = time.perf_counter()
    if features is None:
        features = load_features(dataset, config, progress=progress)
    if len(features) != len(dataset):
        raise DataError(f"Features hold {len(features)} samples but the dataset has {len(dataset)}.")
    features.image.check_finite("image features")
    features.text.check_finite("text features")
    t_feat = time.perf_counter()
    labels = dataset.label_matrix()
    shot_values = [0] if config.protocol == "standard" else config.shots

    # Validate every split before training anything (e.g. too few pairs for the shots).
    splits = {(s, seed): make_split(dataset, protocol=config.protocol, shots=s, seed=seed,
                                    val_fraction=config.val_fraction, val_mode=config.val_mode,
                                    val_min_classes=config.val_min_classes,
                                    val_min_pairs=config.val_min_pairs)
              for s in shot_values for seed in config.seeds}

    records: list[dict[str, Any]] = []
    name_feats: list[np.ndarray] = []  # computed once, when a method asks for them
    for shots in shot_values:
        for seed in config.seeds:
            split = splits[(shots, seed)]
            fit_data = fit_data_for(split, features, labels, dataset.classes)
            q, g = split.test_query, split.test_gallery
            q_labels, g_labels = labels[q], labels[g]
            chance = chance_map(q_labels, g_labels)
            for name in config.methods:
                method = build_method(method_base_name(name), config.method_options.get(name), device)
                if getattr(method, "needs_class_name_features", False):
                    if not name_feats:
                        name_feats.append(class_name_features(dataset.classes, config))
                    fit_data.class_name_features = name_feats[0]
                folder = checkpoints(name, shots, seed) if checkpoints is not None else None
                if folder is None:
                    report = method.fit(fit_data, seed=seed)
                else:
                    report = method.fit(fit_data, seed=seed, checkpoint_dir=Path(folder) / "last", resume=resume)
                t0 = time.perf_counter()
                test = evaluate_split(method, features, labels, split, ks=config.ks)
                rec = {
                    "method": name, "shots": shots, "seed": seed,
                    "method_config": method.config_dict(),
                    "split": split.summary(),
                    "fit": report.to_dict(),
                    "eval_seconds": round(time.perf_counter() - t0, 3),
                    "chance": {"i2t": chance, "t2i": chance_map(q_labels, g_labels)},
                    "test": test,
                }
                if folder is not None:
                    single = {**config.to_dict(), "shots": [shots], "seeds": [seed], "methods": [name],
                              "method_options": {name: config.method_options.get(name, {})}}
                    save_method(method, Path(folder) / "final", fit=rec["fit"], run={
                        "config": single, "method_entry": name, "split": rec["split"],
                        "class_names": list(dataset.classes),
                        "features": {k: features.meta.get(k) for k in ("key", "key_inputs", "dtype")},
                        "test": test})
                    rec["checkpoint"] = str(folder)
                records.append(rec)
                log.info("%s shots=%d seed=%d: I2T %.1f T2I %.1f (val %.1f, %d epochs, %.1fs)",
                         name, shots, seed, 100 * test["i2t"]["map"], 100 * test["t2i"]["map"],
                         100 * (report.best_val_map or math.nan), report.epochs, report.seconds)
                if on_record is not None:
                    on_record(rec)
    results = {
        "format": RESULTS_FORMAT,
        "config": config.to_dict(),
        "resolved": {"device": device, "n_samples": len(dataset), "n_classes": len(dataset.classes),
                     "dataset_meta": dataset.meta, "features": features.meta,
                     "feature_dims": {"image": [features.image.local.shape[1], features.image.dim],
                                      "text": [features.text.local.shape[1], features.text.dim]}},
        "provenance": provenance(),
        "timing": {"data_seconds": round(t_data - t_start, 3),
                   "features_seconds": round(t_feat - t_data, 3),
                   "total_seconds": round(time.perf_counter() - t_start, 3)},
        "records": records,
        "summary": summarize(records),
    }
    if output_dir is not None:
        if dataset.meta.get("skipped"):
            atomic_write_json(output_dir / "skipped.json", {
                "dataset": dataset.name, "source": dataset.meta.get("source"),
                "n_problems": len(dataset.meta["skipped"]), "skipped": dataset.meta["skipped"]})
            results["resolved"]["skipped_report"] = str(output_dir / "skipped.json")
        atomic_write_json(output_dir / "results.json", results)
    return results
