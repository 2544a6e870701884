"""The main job: dataset → cached features → protocol splits over shots × seeds →
fit each method → evaluate I2T and T2I on the test pairs → one results file."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..data.features import FeatureSet
from ..data.store import AUTO_DISK_BYTES
from ..data.types import Dataset, split_label
from ..errors import ConfigError, DataError
from ..methods import FitData
from ..methods.base import MethodTags, method_tags
from ..methods.presets import build_entry, check_entry
from ..training.distributed import barrier, broadcast_object, is_distributed, is_main, main_first
from ..training.seeding import resolve_device
from ..utils.io import atomic_write_json
from ..utils.provenance import provenance
from .config import RunConfig

log = logging.getLogger(__name__)

RESULTS_FORMAT = "gcrdp-results/1"


def default_cache_dir() -> Path:
    env = os.environ.get("GCRDP_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "gcrdp"


# ``feature_storage="auto"`` keeps features in memory up to AUTO_DISK_BYTES bytes, on disk above
# (the constant lives in gcrdp.data.store, which extract_features reads too; imported above)


def resolve_storage(storage: str, features: FeatureSet) -> str:
    """``memory`` or ``disk`` for ``storage`` (``auto``: disk above :data:`AUTO_DISK_BYTES`)."""
    if storage == "auto":
        return "disk" if features.nbytes > AUTO_DISK_BYTES else "memory"
    if storage not in ("memory", "disk"):
        raise ConfigError(f"feature_storage must be 'auto', 'memory' or 'disk', got {storage!r}.")
    return storage


def place_features(features: FeatureSet, storage: str, cache_dir: Path) -> FeatureSet:
    """``features`` where ``storage`` says: read into memory, or in a feature store under
    ``cache_dir/stores`` (written once, reused while its sources are unchanged, rebuilt when
    damaged; :mod:`gcrdp.data.store`). The values, ids and meta are the same either way."""
    from ..data.store import open_or_build, store_key

    where = resolve_storage(storage, features)
    if where == "memory":
        out = features.in_memory()
        out.meta["storage"] = "memory"
        return out
    if features.meta.get("store"):
        return features
    key = store_key(features)
    path = cache_dir / "stores" / key[:32]
    log.info("feature store %s (%.2f GiB)", path, features.nbytes / 2**30)
    out, built = open_or_build(path, lambda: features, source=features.meta.get("source"))
    if built:
        log.info("wrote the feature store %s", path)
    out.meta = {**features.meta, **out.meta, "storage": "disk"}
    return out


def load_features(dataset: Dataset, config: RunConfig, progress: bool = True, cluster: str | int | None = None) -> FeatureSet:
    """Both modalities' features for ``dataset``: its own pre-extracted ones when it has them
    (``dataset.features``; the encoders are not used), else extracted by the configured
    encoders (or loaded from the cache); held where ``config.feature_storage`` says
    (:func:`place_features`). Pre-extracted features placed elsewhere replace
    ``dataset.features`` (same values and ids).

    ``cluster``: extract the missing items on Dask (:mod:`gcrdp.encoders.dask_extract`) — a
    scheduler address (``"tcp://host:8786"``) or a number of local worker processes; the same
    arrays as a local extraction."""
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    if dataset.features is not None:
        feats = place_features(dataset.features, config.feature_storage, cache)
        if "key" not in feats.meta:
            feats.meta.update({"key": feats.content_digest(), "source": "pre-extracted", "dtype": str(feats.image.local.dtype)})
            feats.meta["key_inputs"] = {"pre_extracted": feats.meta["key"]}
        dataset.features = feats
        return feats
    from ..encoders import EncoderSettings, build_image_encoder, build_text_encoder, extract_features

    settings = EncoderSettings.of(config)
    if cluster is not None:
        from ..encoders.dask_extract import extract_features_dask

        feats = extract_features_dask(
            dataset,
            settings.spec("image"),
            settings.spec("text"),
            cache_dir=cache,
            client=cluster if isinstance(cluster, str) else None,
            workers=cluster if isinstance(cluster, int) else None,
            dtype=config.feature_dtype,
            batch_size=config.extract_batch_size,
            progress=progress,
            storage=config.feature_storage,
        )
    else:
        feats = extract_features(
            dataset,
            build_image_encoder(settings),
            build_text_encoder(settings),
            cache_dir=cache,
            dtype=config.feature_dtype,
            batch_size=config.extract_batch_size,
            progress=progress,
            storage=config.feature_storage,
        )
    return place_features(feats, config.feature_storage, cache)


def class_name_features(class_names, config: RunConfig) -> np.ndarray:
    """(n_classes, d) float32 pooled embeddings of the class names by the run's text encoder
    (:func:`gcrdp.encoders.class_name_features` with the run's encoder settings)."""
    from ..encoders import EncoderSettings
    from ..encoders import class_name_features as embed_class_names

    return embed_class_names(class_names, EncoderSettings.of(config))


def evaluate_split(
    method: Any, features: FeatureSet, labels: np.ndarray, split: Any, ks: list[int] | tuple[int, ...] = ()
) -> dict[str, Any]:
    """Test metrics of a fitted ``method`` on ``split``'s test queries and gallery (I2T and
    T2I, :func:`~gcrdp.evaluation.cross_modal_metrics`); the gallery is embedded once more only
    when it differs from the queries."""
    from ..evaluation import cross_modal_metrics, instance_recall

    q, g = split.test_query, split.test_gallery
    qi, qt = method.embed_images(features.image.subset(q)), method.embed_texts(features.text.subset(q))
    if np.array_equal(q, g):
        gi, gt = qi, qt
    else:
        gi, gt = method.embed_images(features.image.subset(g)), method.embed_texts(features.text.subset(g))
    metric = method_tags(method).score_metric
    out = cross_modal_metrics(qi, qt, labels[q], gi, gt, labels[g], ks=ks, metric=metric)
    # instance level: each query's own pair (the same sample on the gallery side)
    where = {int(j): r for r, j in enumerate(g)}
    pair = np.array([where.get(int(i), -1) for i in q], dtype=np.int64)
    out["instance"] = {"i2t": instance_recall(qi, gt, pair, metric=metric), "t2i": instance_recall(qt, gi, pair, metric=metric)}
    return out


def fit_data_for(split: Any, features: FeatureSet, labels: np.ndarray, class_names) -> FitData:
    """What a method is fitted on for one protocol ``split``: its train pairs (the few-shot
    pairs of the unseen classes, and of the validation classes under the mirrored validation,
    marked for oversampling) and its validation pairs."""
    return FitData(
        train=features.subset(split.train),
        train_labels=labels[split.train],
        oversample=np.isin(split.train, split.oversampled),
        val=features.subset(split.val) if len(split.val) else None,
        val_labels=labels[split.val] if len(split.val) else None,
        class_names=tuple(class_names),
    )


def report_holdout(val: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split validation pairs ``val`` into (selection, report) (``RunConfig.val_report_fraction``):
    per class (a pair's first label), a seeded ``round(fraction × n)`` of its pairs report —
    at least one and never all, so a class of 2 pairs or more is on both sides; a class of one
    pair selects. Sorted index arrays; the same for every method of a (shots, seed)."""
    first = np.argmax(labels[val], axis=1) if len(val) else np.zeros(0, np.int64)
    report: list[np.ndarray] = []
    for c in np.unique(first):
        members = np.sort(val[first == c])
        if len(members) < 2:
            continue
        k = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        rng = np.random.default_rng([int(seed), 0x7265, int(c)])
        report.append(members[rng.permutation(len(members))[:k]])
    rep = np.sort(np.concatenate(report)) if report else np.zeros(0, np.int64)
    return np.setdiff1d(val, rep), rep


def refit_data_for(
    split: Any, features: FeatureSet, labels: np.ndarray, class_names, class_name_features: np.ndarray | None = None
) -> FitData:
    """The refit's training pairs (``RunConfig.refit``): every train and validation pair of the
    split — all seen-side train-split pairs and the unseen shots — with only the unseen shots
    oversampled, and no validation."""
    train = np.union1d(split.train, split.val)
    return FitData(
        train=features.subset(train),
        train_labels=labels[train],
        oversample=np.isin(train, split.fewshot),
        class_names=tuple(class_names),
        class_name_features=class_name_features,
    )


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation; the latter is ``None`` for one value (undefined)."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return float(arr.mean()), std


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, shots): mean and sample standard deviation (ddof=1; ``None`` with one seed)
    over seeds of the I2T, T2I and mean mAP (fractions), plus the chance level."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["shots"]), []).append(r)
    out = []
    for (method, shots), rs in groups.items():
        row: dict[str, Any] = {"method": method, "shots": shots, "n_seeds": len(rs), "seeds": [r["seed"] for r in rs]}
        for key, get in (
            ("i2t_map", lambda r: r["test"]["i2t"]["map"]),
            ("t2i_map", lambda r: r["test"]["t2i"]["map"]),
            ("mean_map", lambda r: r["test"]["mean_map"]),
        ):
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([get(r) for r in rs])
        for extra in sorted({k for r in rs for k in r["test"]["i2t"] if "@" in k}):
            for d in ("i2t", "t2i"):
                row[f"{d}_{extra}_mean"], row[f"{d}_{extra}_std"] = _mean_std([r["test"][d][extra] for r in rs])
        if all("instance" in r["test"] for r in rs):  # each query's own pair (CLIP-style recall@k)
            for d in ("i2t", "t2i"):
                for k in sorted(rs[0]["test"]["instance"][d]):
                    if k.startswith("recall@"):
                        row[f"instance_{d}_{k}_mean"], _ = _mean_std([r["test"]["instance"][d][k] for r in rs])
        vals = [r["fit"]["best_val_map"] for r in rs if r["fit"].get("best_val_map") is not None]
        if vals:
            row["val_map_mean"], row["val_map_std"] = _mean_std(vals)
        row["chance_i2t_mean"], _ = _mean_std([r["chance"]["i2t"] for r in rs])
        row["chance_t2i_mean"], _ = _mean_std([r["chance"]["t2i"] for r in rs])
        row["fit_seconds_mean"], _ = _mean_std([r["fit"]["seconds"] for r in rs])
        out.append(row)
    return out


@dataclass
class _FitContext:
    """What every fit of a run shares (sent once to each worker process)."""

    config: RunConfig
    features: FeatureSet
    labels: np.ndarray
    classes: tuple[str, ...]
    device: str
    name_feats: np.ndarray | None = None


def _fit_one(
    ctx: _FitContext, name: str, shots: int, seed: int, split: Any, folder: Path | None = None, resume: bool = True
) -> dict[str, Any]:
    """Fit method entry ``name`` on ``split`` (and refit it when the run says so) and evaluate it:
    one record of ``results.json``; with ``folder``, the fit is checkpointed there and saved as
    ``folder/final``. The method is built once for the fit (once more for a refit)."""
    method = build_entry(name, ctx.config.method_options.get(name), ctx.device)
    fit_data, report_idx = _fit_data(ctx, split, seed, method_tags(method))
    if folder is None:
        report = method.fit(fit_data, seed=seed)
    else:
        report = method.fit(fit_data, seed=seed, checkpoint_dir=Path(folder) / "last", resume=resume)
    if report_idx is not None:  # the chosen model on validation pairs the choice did not see
        _score_report_pairs(ctx, method, report, split, report_idx)
    refit = None
    if ctx.config.refit and len(split.val):
        method, refit = _refit(ctx, name, method, report, split, seed, fit_data.class_name_features)
    if not is_main():  # on several ranks, rank 0 evaluates the model (the same on every rank) and tells
        return cast(dict[str, Any], broadcast_object(None))
    rec = _record(ctx, (name, shots, seed), split, method, report, refit)
    if folder is not None:
        _save_final(ctx, (name, shots, seed), method, rec, Path(folder))
        rec["checkpoint"] = str(folder)
    return cast(dict[str, Any], broadcast_object(rec))


def _fit_data(ctx: _FitContext, split: Any, seed: int, tags: MethodTags) -> tuple[FitData, np.ndarray | None]:
    """The fit's data (:func:`fit_data_for`; the class-name features for a method whose tags
    ask for them) and the validation pairs held out to report on (``val_report_fraction``), or None."""
    config, features, labels = ctx.config, ctx.features, ctx.labels
    fit_data = fit_data_for(split, features, labels, ctx.classes)
    report_idx = None
    if config.val_report_fraction > 0 and len(split.val):
        select_idx, report_idx = report_holdout(split.val, labels, config.val_report_fraction, seed)
        fit_data.val, fit_data.val_labels = features.subset(select_idx), labels[select_idx]
    if tags.needs_class_name_features:
        fit_data.class_name_features = ctx.name_feats
    return fit_data, report_idx


def _score_report_pairs(ctx: _FitContext, method: Any, report: Any, split: Any, report_idx: np.ndarray) -> None:
    """``report_val_map``: the fitted model's validation mAP on the held-out report pairs."""
    from ..training.loop import validation_map

    def embed(f: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        return method.embed_images(f.image), method.embed_texts(f.text)

    held = ctx.features.subset(report_idx)
    metric = method_tags(method).score_metric
    report.extra["report_val_map"] = validation_map(embed, held, ctx.labels[report_idx], metric) if len(report_idx) >= 2 else None
    report.extra["n_val_select"], report.extra["n_val_report"] = len(split.val) - len(report_idx), len(report_idx)


def _refit(
    ctx: _FitContext, name: str, method: Any, report: Any, split: Any, seed: int, class_name_features: np.ndarray | None
) -> tuple[Any, dict[str, Any]]:
    """The method refitted on every train and validation pair with the options the fit chose
    (``RunConfig.refit``), and its ``refit`` entry of the record."""
    refit_opts = method.refit_options(report)
    method = build_entry(name, ctx.config.method_options.get(name), ctx.device, **refit_opts)
    refit_data = refit_data_for(split, ctx.features, ctx.labels, ctx.classes, class_name_features)
    refit_report = method.fit(refit_data, seed=seed)
    return method, {**refit_report.to_dict(), "options": refit_opts, "n_train": len(refit_data.train)}


def _record(
    ctx: _FitContext, task: tuple[str, int, int], split: Any, method: Any, report: Any, refit: dict[str, Any] | None
) -> dict[str, Any]:
    """The record of one fit: the method's config, the split, the fit (and refit) report, the
    test metrics beside the chance level."""
    from ..evaluation import chance_map

    name, shots, seed = task
    t0 = time.perf_counter()
    test = evaluate_split(method, ctx.features, ctx.labels, split, ks=ctx.config.ks)
    chance = chance_map(ctx.labels[split.test_query], ctx.labels[split.test_gallery])
    return {
        "method": name,
        "shots": shots,
        "seed": seed,
        "method_config": method.config_dict(),
        "split": split.summary(),
        "fit": report.to_dict(),
        **({"refit": refit} if refit is not None else {}),
        "eval_seconds": round(time.perf_counter() - t0, 3),
        "chance": {"i2t": chance, "t2i": chance},
        "test": test,
    }


def _save_final(ctx: _FitContext, task: tuple[str, int, int], method: Any, rec: dict[str, Any], folder: Path) -> None:
    """``folder/final``: the fitted method with the run info ``gcrdp evaluate --checkpoint`` needs."""
    from ..methods.persistence import save_method

    name, shots, seed = task
    config = ctx.config
    single = {
        **config.to_dict(),
        "shots": [shots],
        "seeds": [seed],
        "methods": [name],
        "method_options": {name: config.method_options.get(name, {})},
    }
    save_method(
        method,
        folder / "final",
        fit=rec["fit"],
        run={
            "config": single,
            "method_entry": name,
            "split": rec["split"],
            "class_names": list(ctx.classes),
            "features": {k: ctx.features.meta.get(k) for k in ("key", "key_inputs", "dtype")},
            "test": rec["test"],
        },
    )


_WORKER: dict[str, Any] = {}


def _threads_per_fit(jobs: int, n_tasks: int) -> int:
    """torch threads of each fit: all of them in-process, else a share per worker."""
    import torch

    if jobs <= 1 or n_tasks <= 1:
        return int(torch.get_num_threads())
    return max(1, (os.cpu_count() or 1) // min(jobs, n_tasks))


def _init_worker(ctx: _FitContext, threads: int, events: Any = None) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER["ctx"] = ctx
    _WORKER["events"] = events


def _fit_in_worker(task: tuple[str, int, int], split: Any) -> dict[str, Any]:
    from ..training.loop import observe_epochs

    name, shots, seed = task
    events = _WORKER.get("events")
    observer = None if events is None else (lambda info: events.put((task, info)))
    with observe_epochs(observer):
        return _fit_one(_WORKER["ctx"], name, shots, seed, split)


def task_label(name: str, shots: int, seed: int) -> str:
    """How a fit is named in progress lines: ``gcrdp 5-shot seed 1``."""
    return f"{name} {shots}-shot seed {seed}"


#: run config keys that do not change a fit's record (where files go, how features are batched)
#: run config keys added after resumable runs existed, left out of a fit's key at their default
_NEW_KEY_DEFAULTS: dict[str, Any] = {"val_report_fraction": 0.0}
_NOT_IN_FIT_KEY = (
    "methods",
    "shots",
    "seeds",
    "method_options",
    "cache_dir",
    "extract_batch_size",
    "allow_small_classes",
    "feature_storage",
)


def fit_key(config: RunConfig, entry: str, shots: int, seed: int, features_key: Any, dataset: Dataset | None = None) -> str:
    """What identifies one fit's record in a resumable ``gcrdp run`` folder: the run config
    without the lists of methods, shots and seeds (so a run can grow) and without what does not
    change a record, the entry's own options, the fit's coordinates, the features' key, and the
    dataset's content (ids, texts, labels, splits, image bytes) and class split."""
    from ..encoders.cache import cache_key

    cfg = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_FIT_KEY}
    for k, default in _NEW_KEY_DEFAULTS.items():  # keys added later: a stored fit at their default stays the same fit
        if cfg.get(k) == default:
            cfg.pop(k, None)
    data: dict[str, Any] = {}
    if dataset is not None:
        cs = dataset.class_split
        data = {"content": dataset.content_digest(), "class_split": None if cs is None else [cs.version, list(cs.seen), list(cs.unseen)]}
    return cache_key(
        {
            "config": cfg,
            "entry": entry,
            "options": config.method_options.get(entry, {}),
            "shots": shots,
            "seed": seed,
            "features": features_key,
            "dataset": data,
            "format": RESULTS_FORMAT,
        }
    )


class _DatasetKey:
    """The dataset's content digest (it reads every image file) computed once for all fits."""

    _digest: str | None

    def __init__(self, dataset: Dataset) -> None:
        self.class_split = dataset.class_split
        self._dataset, self._digest = dataset, None

    def content_digest(self) -> str:
        if self._digest is None:
            self._digest = self._dataset.content_digest()
        return self._digest


def _fit_file(output_dir: Path, name: str, shots: int, seed: int) -> Path:
    return output_dir / "fits" / name.replace("/", "_") / f"shots{shots}-seed{seed}.json"


def _load_done_fit(path: Path, key: str) -> dict[str, Any] | None:
    """The stored record at ``path`` when it belongs to fit ``key``; ``None`` when absent or
    unreadable (it is refitted); :class:`ConfigError` when it is another configuration's."""
    import json

    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        stored_key, rec = doc["fit_key"], doc["record"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is unreadable; that fit runs again.", path)
        return None
    if stored_key != key:
        raise ConfigError(
            f"{path.parent.parent.parent} holds finished fits of another configuration (e.g. {path.name} "
            "of another config, dataset content or encoders). Use another --output-dir, or pass "
            "--no-resume (resume=False) to start afresh there."
        )
    return rec


def _run_in_workers(
    shared: _FitContext, tasks: list[tuple[str, int, int]], splits: dict, jobs: int, finish: Callable[[dict[str, Any]], None], display: Any
) -> None:
    """Fit ``tasks`` in ``jobs`` spawned worker processes; their epochs reach ``display``
    through a queue, their records ``finish`` as each ends."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    manager = ctx.Manager() if display.bar_shown else None
    events = manager.Queue() if manager is not None else None
    threads = _threads_per_fit(jobs, len(tasks))

    def drain() -> None:
        while events is not None:
            try:
                task, info = events.get_nowait()
            except queue_mod.Empty:
                return
            display.epoch(task_label(*task), info)

    try:
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(shared, threads, events)
        ) as pool:
            pending = {pool.submit(_fit_in_worker, t, splits[(t[1], t[2])]) for t in submission_order(tasks)}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    drain()
                    for fut in done:
                        finish(fut.result())
            except BaseException:
                # a failed fit (or ^C): keep what finished, do not wait for the queued fits
                for fut in pending:
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        finish(fut.result())
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        if manager is not None:
            manager.shutdown()


def submission_order(tasks: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The fits of ``tasks`` (method, shots, seed) in the order the workers take them: most
    shots first (more training pairs: the longer fits), in their given order otherwise — the
    long fits start early and the short ones fill the workers at the end, instead of one long
    fit running alone last. The records are sorted afterwards, so this changes no output."""
    return sorted(tasks, key=lambda t: -t[1])


def plan_splits(dataset: Dataset, config: RunConfig, shot_values: Any, seeds: Any) -> dict[tuple[int, int], Any]:
    """The protocol split of every (shots, seed), made before any slow work so that a split that
    cannot be made (too few pairs for the shots, too few validation classes) stops the run first."""
    from ..data.protocol import make_split

    return {
        (s, seed): make_split(
            dataset,
            protocol=config.protocol,
            shots=s,
            seed=seed,
            val_fraction=config.val_fraction,
            val_mode=config.val_mode,
            val_min_classes=config.val_min_classes,
            val_min_pairs=config.val_min_pairs,
        )
        for s in shot_values
        for seed in seeds
    }


def _names(names: Any, limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def describe_splits(dataset: Dataset, splits: dict[tuple[int, int], Any]) -> str:
    """What a run trains, validates and tests on, printed at its start: the seen and unseen
    classes (counts and names), each seed's validation classes, the train/test pairs and where
    the class split and the train/test split come from."""
    first = next(iter(splits.values()))
    meta = dataset.meta
    n_train = sum(s.split == "train" for s in dataset.samples)
    pairs = f"{n_train} train / {len(dataset) - n_train} test pairs"
    rule = meta.get("split") or meta.get("split_source")
    if meta.get("split_generated") and rule:
        pairs += f" ({rule.split(':')[0]})"
    lines = [f"{dataset.name}: {len(dataset.classes)} classes, {pairs}; protocol {first.protocol}"]
    if first.protocol == "standard":
        lines.append(f"  every class seen; validation: {first.val_fraction:g} of each class's train pairs, held out")
        return "\n".join(lines)
    source = str(meta.get("class_split_source") or "the dataset's")
    lines.append(f"  class split {split_label(first.class_split_version)}: {source.split(';')[0]}")
    lines.append(f"  seen {len(first.seen_classes)}: {_names(first.seen_classes)}")
    lines.append(f"  unseen {len(first.unseen_classes)} (tested on): {_names(first.unseen_classes)}")
    if first.val_fraction == 0:
        lines.append("  validation: none (val_fraction 0; the last epoch is kept)")
    elif first.val_by == "pair":
        lines.append(f"  validation: {first.val_fraction:g} of each seen class's train pairs, held out")
    else:
        shots = min(s for s, _ in splits)
        by_seed = [(seed, sp.val_classes) for (s, seed), sp in splits.items() if s == shots]
        how = {
            "mirror": "they get the run's shots, as the unseen classes do",
            "zero-shot-matched": "mirror's classes and pairs, but none of them trains",
        }.get(first.val_mode, "none of them trains")
        lines.append(f"  validation classes (seen classes held out of training; {how}):")
        lines.extend(f"    seed {seed} ({len(classes)}): {_names(classes)}" for seed, classes in by_seed[:5])
        if len(by_seed) > 5:
            lines.append(f"    … and {len(by_seed) - 5} more seeds")
    return "\n".join(lines)


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
    jobs: int = 1,
    cluster: str | int | None = None,
) -> dict[str, Any]:
    """Run every (shots, seed, method) of ``config`` and return the results dict; when
    ``output_dir`` is given, write ``output_dir/results.json`` atomically at the end.

    ``dataset``/``features`` may be passed in (tests, notebooks) to skip loading/extraction.

    ``checkpoints(method entry, shots, seed) -> folder``: checkpoint the fits there (methods
    must be checkpointable, see :mod:`gcrdp.methods.base`): ``folder/last`` is the training
    checkpoint written every epoch (resumed when ``resume``), ``folder/final`` the fitted method
    with the run info that ``gcrdp evaluate --checkpoint`` needs; the record gets
    ``"checkpoint": folder``. ``gcrdp train`` is this with one (method, shots, seed).

    Resume: with ``output_dir`` (and no ``checkpoints``), every finished fit is also written to
    ``output_dir/fits/<entry>/shots<N>-seed<S>.json`` as it ends; a later call with the same
    ``output_dir`` and ``resume=True`` (the default) reuses the records of the fits whose
    configuration, dataset content and features are unchanged, so a killed ``gcrdp run``
    continues where it stopped, and a run can grow (more seeds, shots or methods). A stored fit
    of another configuration is an error; ``resume=False`` refits everything.

    ``progress``: feature-extraction bars, and a bar over the fits that follows each one epoch by
    epoch with a line printed per finished fit (:class:`gcrdp.experiments.progress.FitProgress`).

    ``cluster``: extract the missing features on Dask (a scheduler address or a number of local
    worker processes; :func:`load_features`).

    Several ranks (a ``torch.distributed`` process group, e.g. ``gcrdp run`` under ``torchrun``):
    every rank runs this with the same arguments; each fit is trained by all ranks together
    (:func:`gcrdp.training.fit_loop`); rank 0 extracts the features first (the others then read
    them from the cache), evaluates, shows progress and writes every file, and every rank
    returns the same results.

    ``jobs > 1`` fits that many (method, shots, seed) at once in worker processes, each with
    ``cpu_count // jobs`` torch threads (not with ``checkpoints``). Every fit is independent
    and seeded, so the records are those of a sequential run with that thread count (float
    round-off may differ between thread counts); they are returned in the sequential order,
    and ``on_record`` is called as each finishes.
    """
    _check_jobs(jobs)
    progress = progress and is_main()
    tags = _check_entries(config, checkpointed=checkpoints is not None)
    t_start = time.perf_counter()
    folder = _output_folder(output_dir)
    plan = _plan(config, dataset, tags)
    if progress:
        print(describe_splits(plan.dataset, plan.splits), file=sys.stderr, flush=True)
    t_data = time.perf_counter()
    features = _run_features(plan.dataset, config, features, progress, cluster)
    t_feat = time.perf_counter()
    shared = _fit_context(config, plan, features)
    tasks = _tasks(config, plan.shot_values)
    store = _FitStore(folder if checkpoints is None else None, config, plan.dataset, features, tasks)
    records, tasks = store.reuse(tasks, resume)
    display = _display(len(records), len(tasks), progress, folder)
    finish = _finisher(store, display, records, on_record)
    _collect(shared, tasks, plan.splits, jobs, checkpoints, resume, display, finish)
    order = {t: i for i, t in enumerate(_tasks(config, plan.shot_values))}
    records.sort(key=lambda r: order[(r["method"], r["shots"], r["seed"])])
    timing = {"data_seconds": round(t_data - t_start, 3), "features_seconds": round(t_feat - t_data, 3)}
    results = _results(config, plan, features, _threads_per_fit(jobs, len(tasks)), jobs, timing, records)
    results["timing"]["total_seconds"] = round(time.perf_counter() - t_start, 3)
    if folder is not None and is_main():
        _write_results(results, folder, plan.dataset, config)
    barrier()  # every rank returns once the results are written
    return results


# ----------------------------------------------------------------------------- run_experiment's steps
def _check_jobs(jobs: Any) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {jobs!r}.")
    if jobs > 1 and is_distributed():
        raise ConfigError(
            "--jobs runs fits side by side in one process's workers; on several ranks each fit uses all of them. Drop --jobs."
        )


def _check_entries(config: RunConfig, checkpointed: bool) -> dict[str, MethodTags]:
    """Every method entry of ``config`` checked before any slow work — a registered method, its
    options and their values, and what the run asks of it (a refit, checkpoints) against what it
    declares (:class:`~gcrdp.methods.base.MethodTags`) — and those declarations, by entry. Each
    entry's method is built once here."""
    from ..methods.persistence import check_checkpointable

    out: dict[str, MethodTags] = {}
    for m in config.methods:
        method = check_entry(m, config.method_options.get(m))
        tags = out[m] = method_tags(method)
        if config.refit and not tags.refit:
            raise ConfigError(
                f"refit: method {m!r} does not say how to refit without validation (tags: refit=False); run it without --refit."
            )
        if checkpointed and not tags.checkpointable:
            raise ConfigError(
                f"Method {m!r} cannot be checkpointed: it does not declare checkpointable=True (tags(); the checkpoint "
                "contract in gcrdp.methods.base)."
            )
        if checkpointed:
            check_checkpointable(method)
    return out


def _output_folder(output_dir: str | Path | None) -> Path | None:
    if output_dir is None:
        return None
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output-dir {folder} exists and is not a folder.")
    return folder


@dataclass
class _Plan:
    """A run's data and protocol splits, made before any slow work."""

    dataset: Dataset
    shot_values: list[int]
    splits: dict[tuple[int, int], Any]
    small: list[Any]
    device: str
    tags: dict[str, MethodTags]


def _plan(config: RunConfig, dataset: Dataset | None, tags: dict[str, MethodTags]) -> _Plan:
    """The dataset (loaded unless given), its checks, and every split before any slow work
    (extraction, training): e.g. too few pairs for the shots stops the run first."""
    from ..data.checks import check_class_sizes, check_class_split
    from ..data.registry import load_dataset

    device = resolve_device(config.device)
    if dataset is None:
        dataset = load_dataset(config.dataset, **config.dataset_options)
    shot_values = [0] if config.protocol == "standard" else list(config.shots)
    small = check_class_sizes(dataset, shot_values, config.protocol, allow=config.allow_small_classes)
    check_class_split(dataset, config.protocol, validate=config.val_fraction > 0)
    splits = plan_splits(dataset, config, shot_values, config.seeds)
    return _Plan(dataset, shot_values, splits, list(small), device, tags)


def _run_features(
    dataset: Dataset, config: RunConfig, features: FeatureSet | None, progress: bool, cluster: str | int | None
) -> FeatureSet:
    """The run's features (given, or :func:`load_features`), checked against the dataset."""
    if features is None:
        with main_first():  # on several ranks: rank 0 extracts into the cache, the others then read it
            features = load_features(dataset, config, progress=progress, cluster=cluster if is_main() else None)
    if len(features) != len(dataset):
        raise DataError(f"Features hold {len(features)} samples but the dataset has {len(dataset)}.")
    features.image.check_finite("image features")
    features.text.check_finite("text features")
    return features


def _fit_context(config: RunConfig, plan: _Plan, features: FeatureSet) -> _FitContext:
    """What every fit shares; the class names are embedded once when a method's tags ask for them."""
    labels = plan.dataset.label_matrix()
    name_feats = None
    if any(t.needs_class_name_features for t in plan.tags.values()):
        name_feats = class_name_features(plan.dataset.classes, config)
    return _FitContext(
        config=config, features=features, labels=labels, classes=tuple(plan.dataset.classes), device=plan.device, name_feats=name_feats
    )


def _tasks(config: RunConfig, shot_values: list[int]) -> list[tuple[str, int, int]]:
    """Every (method entry, shots, seed) of the run, in the order of its records."""
    return [(name, shots, seed) for shots in shot_values for seed in config.seeds for name in config.methods]


class _FitStore:
    """The finished fits of a resumable run folder (``folder/fits``; ``None``: none kept, e.g.
    with checkpoints): their keys, the records already there, each new one written as it ends."""

    def __init__(
        self, folder: Path | None, config: RunConfig, dataset: Dataset, features: FeatureSet, tasks: list[tuple[str, int, int]]
    ) -> None:
        self.folder = folder
        self.keys: dict[tuple[str, int, int], str] = {}
        if folder is not None:
            data_key = cast(Dataset, _DatasetKey(dataset))  # the content digest computed once for all fits
            self.keys = {(m, n, s): fit_key(config, m, n, s, features.meta.get("key"), data_key) for m, n, s in tasks}

    def reuse(self, tasks: list[tuple[str, int, int]], resume: bool) -> tuple[list[dict[str, Any]], list[tuple[str, int, int]]]:
        """(the stored records of ``tasks`` when ``resume``, the tasks left to fit); without
        ``resume`` the stored fits are removed first. On several ranks, rank 0's reading."""
        records: list[dict[str, Any]] = []
        tasks = list(tasks)
        if self.folder is not None and is_main():
            if not resume and (self.folder / "fits").is_dir():
                import shutil

                shutil.rmtree(self.folder / "fits")  # afresh: no stale fits left to refuse later
            for t in list(tasks) if resume else []:
                rec = _load_done_fit(_fit_file(self.folder, *t), self.keys[t])
                if rec is not None:
                    records.append(rec)
                    tasks.remove(t)
        records, tasks = broadcast_object((records, tasks))
        if records:
            log.info("resuming: %d of %d fits already done in %s", len(records), len(records) + len(tasks), self.folder)
        return records, tasks

    def write(self, rec: dict[str, Any]) -> None:
        if self.folder is not None and is_main():
            key = (rec["method"], rec["shots"], rec["seed"])
            atomic_write_json(_fit_file(self.folder, *key), {"fit_key": self.keys[key], "record": rec})


def _display(n_resumed: int, n_tasks: int, progress: bool, folder: Path | None) -> Any:
    """The progress bar over the fits (:class:`~gcrdp.experiments.progress.FitProgress`)."""
    from .progress import FitProgress

    display = FitProgress(n_resumed + n_tasks, initial=n_resumed, enabled=progress)
    if progress and n_resumed:
        display.note(f"resuming: {n_resumed} of {n_resumed + n_tasks} fits were already done in {folder}; running the other {n_tasks}")
    return display


def _finisher(
    store: _FitStore, display: Any, records: list[dict[str, Any]], on_record: Callable[[dict[str, Any]], None] | None
) -> Callable[[dict[str, Any]], None]:
    """What happens to each finished fit's record: kept in the run folder, shown, collected, logged, passed on."""

    def finish(rec: dict[str, Any]) -> None:
        store.write(rec)
        display.finished(rec, task_label(rec["method"], rec["shots"], rec["seed"]))
        records.append(rec)
        log.info(
            "%s shots=%d seed=%d: I2T %.1f T2I %.1f (val %.1f, %d epochs, %.1fs)",
            rec["method"],
            rec["shots"],
            rec["seed"],
            100 * rec["test"]["i2t"]["map"],
            100 * rec["test"]["t2i"]["map"],
            100 * (rec["fit"]["best_val_map"] or math.nan),
            rec["fit"]["epochs"],
            rec["fit"]["seconds"],
        )
        if on_record is not None:
            on_record(rec)

    return finish


def _collect(
    shared: _FitContext,
    tasks: list[tuple[str, int, int]],
    splits: dict[tuple[int, int], Any],
    jobs: int,
    checkpoints: Callable[[str, int, int], Path] | None,
    resume: bool,
    display: Any,
    finish: Callable[[dict[str, Any]], None],
) -> None:
    """Fit every task — in ``jobs`` worker processes, or one after the other here (with their
    checkpoint folders) — and ``finish`` each record."""
    from ..training.loop import EpochObserver, observe_epochs

    try:
        if jobs > 1 and len(tasks) > 1 and checkpoints is None:
            _run_in_workers(shared, tasks, splits, jobs, finish, display)
            return
        for name, shots, seed in tasks:
            folder = checkpoints(name, shots, seed) if checkpoints is not None else None
            label = task_label(name, shots, seed)
            with observe_epochs(cast(EpochObserver, lambda info, label=label: display.epoch(label, info))):
                rec = _fit_one(shared, name, shots, seed, splits[(shots, seed)], folder, resume)
            finish(rec)
    finally:
        display.close()


def _results(
    config: RunConfig, plan: _Plan, features: FeatureSet, threads: int, jobs: int, timing: dict[str, float], records: list
) -> dict[str, Any]:
    """The results document (``results.json``): config, what was resolved, provenance, timing, records, summary."""
    dataset = plan.dataset
    return {
        "format": RESULTS_FORMAT,
        "config": config.to_dict(),
        "resolved": {
            "dataset_name": dataset.name,
            "device": plan.device,
            "jobs": jobs,
            "torch_threads": threads,
            "n_samples": len(dataset),
            "n_classes": len(dataset.classes),
            "dataset_meta": dataset.meta,
            "features": features.meta,
            "small_classes_allowed": [sc.to_dict() for sc in plan.small],
            "feature_dims": {
                "image": [features.image.local.shape[1], features.image.dim],
                "text": [features.text.local.shape[1], features.text.dim],
            },
        },
        "provenance": provenance(),
        "timing": dict(timing),
        "records": records,
        "summary": summarize(records),
    }


def _write_results(results: dict[str, Any], folder: Path, dataset: Dataset, config: RunConfig) -> None:
    """``results.json`` and beside it the class split used, a generated test split and the
    skipped samples' report (each named in ``results["resolved"]``)."""
    resolved = results["resolved"]
    if dataset.class_split is not None and config.protocol != "standard":
        resolved["class_split_file"] = _write_class_split(folder, dataset)
    if dataset.meta.get("split_generated"):
        resolved["test_split_file"] = _write_test_split(folder, dataset)
    if dataset.meta.get("skipped"):
        resolved["skipped_report"] = _write_skipped(folder, dataset)
    atomic_write_json(folder / "results.json", results)


def _write_class_split(folder: Path, dataset: Dataset) -> str:
    from ..data.splits import class_split_document

    doc = class_split_document(
        cast(Any, dataset.class_split),
        note=(
            f"The class split this run used ({dataset.meta.get('class_split_source', 'dataset')}). "
            "Pass it as --class-split (dataset option class_split) to pin it in a rerun."
        ),
    )
    atomic_write_json(folder / "class_split.json", doc)
    return str(folder / "class_split.json")


def _write_test_split(folder: Path, dataset: Dataset) -> str:
    test_ids = [s.id for s in dataset.samples if s.split == "test"]
    atomic_write_json(
        folder / "test_split.json",
        {
            "dataset": dataset.name,
            "source": dataset.meta.get("source"),
            "rule": dataset.meta.get("split") or dataset.meta.get("split_source"),
            "note": "The data had no train/test split; this one was generated (seeded, stable per class). The other samples are train.",
            "n_train": len(dataset) - len(test_ids),
            "n_test": len(test_ids),
            "test": test_ids,
        },
    )
    return str(folder / "test_split.json")


def _write_skipped(folder: Path, dataset: Dataset) -> str:
    atomic_write_json(
        folder / "skipped.json",
        {
            "dataset": dataset.name,
            "source": dataset.meta.get("source"),
            "n_problems": len(dataset.meta["skipped"]),
            "skipped": dataset.meta["skipped"],
        },
    )
    return str(folder / "skipped.json")
