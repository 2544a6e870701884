"""Working with a saved run: the model of a ``gcrdp train`` checkpoint with its dataset,
features and protocol split re-created and checked (:func:`restore_run`), evaluated again
(:func:`evaluate_checkpoint`), exported (:func:`export_run`) or mapped (:func:`embedding_map`).
The CLI's ``evaluate --checkpoint``, ``export`` and ``report --embedding-map`` are these."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError


@dataclass
class RestoredRun:
    """A ``gcrdp train`` run brought back: its final checkpoint, stored run info, config,
    dataset and features (checked against the stored ones), and the fitted method."""

    checkpoint: Any
    run: dict[str, Any]
    config: Any
    dataset: Any
    features: Any
    method: Any

    def split(self) -> Any:
        """The run's protocol split, re-created and checked against the stored digest."""
        from ..data.protocol import split_from_summary

        info = self.run["split"]
        split = split_from_summary(self.dataset, info)
        if info.get("digest") is not None and split.digest() != info["digest"]:
            raise DataError(
                f"The protocol split re-created for checkpoint {self.checkpoint.path} differs from "
                f"the one it was trained on (digest {split.digest()} vs {info.get('digest')}); the "
                "dataset or its class split changed."
            )
        return split


def restore_run(
    checkpoint: str | Path, *, cache_dir: str | Path | None = None, device: str | None = None, progress: bool = True
) -> RestoredRun:
    """The run whose final checkpoint is in ``checkpoint`` (or ``checkpoint/final``), with its
    dataset and features re-created (from the feature cache) and checked: the same classes, and
    features with the key the model was trained on."""
    from ..data.registry import load_dataset
    from ..methods.persistence import load_method
    from ..training.checkpoint import checkpoint_exists, read_checkpoint
    from ..training.seeding import resolve_device
    from .config import RunConfig
    from .runner import load_features

    checkpoint = Path(checkpoint)
    where = checkpoint / "final" if checkpoint_exists(checkpoint / "final") else checkpoint
    if where == checkpoint and checkpoint_exists(checkpoint / "last"):
        raise DataError(
            f"{checkpoint} holds a training checkpoint (last/) but no final one: the "
            "training did not finish. Run the same 'gcrdp train' command again to resume "
            "and finish it."
        )
    ckpt = read_checkpoint(where, kind="final")
    run = ckpt.state.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict) or "split" not in run:
        raise DataError(
            f"Checkpoint {ckpt.path} holds no run info (it was not written by 'gcrdp "
            "train'), so its dataset and split cannot be re-created. Load it in Python with "
            "gcrdp.methods.persistence.load_method and embed your own data."
        )
    raw = dict(run["config"])
    if cache_dir is not None:
        raw["cache_dir"] = str(cache_dir)
    if device is not None:
        raw["device"] = device
    config = RunConfig.from_dict(raw)
    dataset = load_dataset(config.dataset, **config.dataset_options)
    if list(dataset.classes) != list(run.get("class_names", [])):
        raise DataError(
            f"Dataset {config.dataset!r} now has other classes than when checkpoint "
            f"{ckpt.path} was trained ({len(dataset.classes)} vs "
            f"{len(run.get('class_names', []))}); the stored model cannot be used on it."
        )
    features = load_features(dataset, config, progress=progress)
    stored = run.get("features") or {}
    if stored.get("key") and features.meta.get("key") and stored["key"] != features.meta["key"]:
        old, new = stored.get("key_inputs") or {}, features.meta.get("key_inputs") or {}
        what = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)] or ["the cache key"]
        raise DataError(
            f"The features differ from those checkpoint {ckpt.path} was trained on "
            f"(changed: {', '.join(what)}): the dataset's content or the encoders "
            "changed since. Restore them, or train again."
        )
    method = load_method(ckpt, resolve_device(config.device))
    return RestoredRun(ckpt, run, config, dataset, features, method)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    ks: tuple[int, ...] | list[int] = (),
    cache_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The test metrics of a saved run, re-created: ``{"checkpoint", "method", "method_config",
    "split", "metrics", "stored_mean_map", "restored"}`` (``metrics`` as in a results record, with
    ``chance``; ``stored_mean_map`` the figure recorded at training time)."""
    from ..evaluation import chance_map
    from .runner import evaluate_split

    r = restore_run(checkpoint, cache_dir=cache_dir, device=device, progress=progress)
    split = r.split()
    labels = r.dataset.label_matrix()
    res = evaluate_split(r.method, r.features, labels, split, ks=ks)
    res["chance"] = chance_map(labels[split.test_query], labels[split.test_gallery])
    return {
        "checkpoint": str(r.checkpoint.path),
        "method": r.checkpoint.state["method"],
        "method_config": r.checkpoint.state["method_config"],
        "split": split.summary(),
        "metrics": res,
        "stored_mean_map": (r.run.get("test") or {}).get("mean_map"),
        "restored": r,
    }


def export_run(
    checkpoint: str | Path,
    output: str | Path,
    *,
    part_size: int | None = None,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
) -> tuple[Path, RestoredRun]:
    """Embed every sample of a saved run's dataset and write them in the clip-retrieval layout
    (:func:`gcrdp.data.formats.clip_retrieval.export_embeddings`); returns (the folder, the
    restored run). ``gcrdp export`` is this."""
    from ..data.formats.clip_retrieval import export_embeddings

    r = restore_run(checkpoint, cache_dir=cache_dir, device=device, progress=progress)
    return export_embeddings(r.method, r.dataset, r.features, output, part_size=part_size), r


def embedding_map(checkpoint: str | Path, output_png: str | Path) -> Path:
    """A t-SNE map of a saved run's test embeddings (:func:`gcrdp.experiments.report.plot_embedding_map`)."""
    from .report import plot_embedding_map

    r = restore_run(checkpoint, progress=False)
    split = r.split()
    q = split.test_query
    return plot_embedding_map(
        r.method, r.features.subset(q), r.dataset.label_matrix()[q], list(r.dataset.classes), Path(output_png), seed=r.run["split"]["seed"]
    )
