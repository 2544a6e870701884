"""Shared pieces of the command line: argument groups, config assembly, printing."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _parse_value(text: str) -> Any:
    """``KEY=VALUE`` values: JSON when it parses (numbers, true/false, null, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} must look like KEY=VALUE, got {item!r}.")
        out[key.strip()] = _parse_value(value)
    return out


def _method_options(items: Sequence[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--option lr=1e-3`` applies to every method; ``--option gap-infonce.lr=1e-3`` to one."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in _parse_assignments(items, "--option").items():
        method, dot, name = key.rpartition(".")
        targets = [method] if dot else methods
        for m in targets:
            if m not in methods:
                raise ConfigError(f"--option {key}=...: method {m!r} is not among --methods {methods}.")
            out.setdefault(m, {})[name] = value
    return out


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None, help="registered dataset name (default: twemoji)")
    g.add_argument("--manifest", type=Path, default=None, help="a CSV/JSONL manifest of your own data (sets --dataset manifest)")
    g.add_argument("--class-split", type=Path, default=None, help="JSON file of seen/unseen class names")
    g.add_argument("--root", type=Path, default=None, help="the dataset's folder (wikipedia, pascal-sentence, nus-wide, xmedianet, folder)")
    g.add_argument(
        "--features",
        dest="features_path",
        type=Path,
        default=None,
        help="pre-extracted features file or folder of your own data (.npz, .safetensors, .npy folder, .mat, .h5; sets --dataset features)",
    )
    g.add_argument(
        "--dataset-option",
        action="append",
        metavar="KEY=VALUE",
        help="extra option of the dataset loader (repeatable; 'gcrdp datasets NAME' lists them)",
    )
    g.add_argument(
        "--skip-bad", action="store_true", default=None, help="leave bad samples out (listed in a report file) instead of failing"
    )


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("features")
    g.add_argument("--image-encoder", default=None, help="default: efficientnet-lite0")
    g.add_argument("--text-encoder", default=None, help="default: minilm-l6")
    g.add_argument("--backend", default=None, help="image encoder inference backend: torch or onnx")
    g.add_argument(
        "--feature-dtype", choices=["float16", "float32"], default=None, help="storage dtype of cached features (computation is float32)"
    )
    g.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: $GCRDP_CACHE_DIR or ~/.cache/gcrdp)")
    g.add_argument(
        "--feature-storage",
        choices=["auto", "memory", "disk"],
        default=None,
        help="where the features live while training and evaluating: memory (the fastest, while they fit), "
        "disk (a feature store in the cache folder, read by row: memory no longer grows with the pairs), "
        "or auto (default: disk above 1 GiB of features)",
    )
    g.add_argument(
        "--extract-batch-size", type=int, default=None, help="images per batch of feature extraction, texts twice as many (default 64)"
    )
    g.add_argument(
        "--clip",
        type=Path,
        default=None,
        metavar="DIR",
        help="use a local CLIP(-like) transformers folder for both modalities (sets --image-encoder clip --text-encoder clip)",
    )
    g.add_argument(
        "--encoder-option",
        action="append",
        metavar="image.KEY=VALUE|text.KEY=VALUE",
        help="option of the image or text encoder (repeatable)",
    )


def _add_protocol_args(g: argparse._ArgumentGroup) -> None:
    """Flags shared by ``run`` and ``train``: protocol, validation share, cut-offs, device."""
    g.add_argument(
        "--protocol",
        choices=["fewshot", "generalized", "standard"],
        default=None,
        help="fewshot (default): train on the seen classes + N pairs per unseen class, "
        "test on the unseen ones; generalized: the gallery also holds the seen "
        "classes' test pairs; standard: every class seen",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of the seen classes held out for validation (default 0.2; with "
        "--val-mode mirror at least 10 classes / 200 pairs, at most half)",
    )
    g.add_argument(
        "--val-mode",
        choices=["mirror", "zero-shot"],
        default=None,
        help="mirror (default): the validation classes get the run's N shots in "
        "training, as the unseen classes do; zero-shot: they get none",
    )
    g.add_argument(
        "--refit",
        action="store_true",
        default=None,
        help="after each fit, refit on every seen-class pair (validation classes too) "
        "with the epoch count / settings chosen on validation, and test that model",
    )
    g.add_argument(
        "--allow-small-classes",
        action="store_true",
        default=None,
        help="run even when classes have fewer items than the protocol needs (by default "
        "the run stops and names them: a class of one item is usually a label typo)",
    )
    g.add_argument("--k", dest="ks", type=int, nargs="+", default=None, help="also report mAP/P/R@k")
    g.add_argument("--device", default=None, help="cpu, cuda or auto (default)")


def _dataset_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    options = _parse_assignments(args.dataset_option, "--dataset-option")
    if args.manifest is not None and args.features_path is not None:
        raise ConfigError("--manifest and --features are two kinds of your own data; pass one.")
    if args.manifest is not None:
        if args.dataset not in (None, "manifest"):
            raise ConfigError(f"--manifest reads your own data; it cannot be combined with --dataset {args.dataset}.")
        fields["dataset"] = "manifest"
        options["path"] = str(args.manifest)
    elif args.features_path is not None:
        if args.dataset not in (None, "features"):
            raise ConfigError(f"--features reads your own feature files; it cannot be combined with --dataset {args.dataset}.")
        fields["dataset"] = "features"
        options["path"] = str(args.features_path)
    elif args.dataset is not None:
        fields["dataset"] = args.dataset
    if args.root is not None:
        options["root"] = str(args.root)
    if args.skip_bad:
        options["skip_bad"] = True
    if args.class_split is not None:
        options["class_split"] = str(args.class_split)
    if options:
        fields["dataset_options"] = options
    return fields


def _encoder_fields(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {
        "image_encoder": args.image_encoder,
        "text_encoder": args.text_encoder,
        "encoder_backend": args.backend,
        "feature_dtype": args.feature_dtype,
        "cache_dir": str(args.cache_dir) if args.cache_dir else None,
        "feature_storage": args.feature_storage,
        "extract_batch_size": args.extract_batch_size,
    }
    out = {k: v for k, v in mapping.items() if v is not None}
    options: dict[str, dict[str, Any]] = {"image": {}, "text": {}}
    if args.clip is not None:
        for m in ("image", "text"):
            given = out.get(f"{m}_encoder")
            if given not in (None, "clip"):
                raise ConfigError(f"--clip uses CLIP for both modalities; it cannot be combined with --{m}-encoder {given}.")
            out[f"{m}_encoder"] = "clip"
            options[m]["model_dir"] = str(args.clip.expanduser().resolve())
    for key, value in _parse_assignments(args.encoder_option, "--encoder-option").items():
        modality, dot, name = key.partition(".")
        if not dot or modality not in options or not name:
            raise ConfigError(f"--encoder-option must look like image.KEY=VALUE or text.KEY=VALUE, got {key!r}.")
        options[modality][name] = value
    for m in ("image", "text"):
        if options[m]:
            out[f"{m}_encoder_options"] = options[m]
    return out


def _load_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Config file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must hold a JSON object, got {type(raw).__name__}.")
    return raw


def _metric_lines(res: dict[str, Any], ks: Sequence[int] | None) -> list[str]:
    lines = [
        (
            f"I2T mAP {100 * res['i2t']['map']:.1f}   T2I mAP {100 * res['t2i']['map']:.1f}   "
            f"mean {100 * res['mean_map']:.1f}   chance {100 * res['chance']:.1f}   "
            f"({res['i2t']['n_queries']} queries, {res['i2t']['n_gallery']} gallery)"
        )
    ]
    inst = res.get("instance")
    if inst:
        cuts = [k for k in ("recall@1", "recall@5", "recall@10") if k in inst["i2t"]]
        lines.append(
            "instance level (each query's own pair): "
            + "   ".join(
                f"{d.upper()} R@{'/'.join(c.split('@')[1] for c in cuts)} " + "/".join(f"{100 * inst[d][c]:.1f}" for c in cuts)
                for d in ("i2t", "t2i")
            )
        )
    for k in ks or ():
        for d in ("i2t", "t2i"):
            m = res[d]
            lines.append(
                f"{d.upper()} @{k}: mAP {100 * m[f'map@{k}']:.1f}  P {100 * m[f'precision@{k}']:.1f}  R {100 * m[f'recall@{k}']:.1f}"
            )
    return lines


def _default_cache() -> Path:
    from ..experiments.runner import default_cache_dir

    return default_cache_dir()


def _write_skipped(path: Path, dataset: Any) -> None:
    from ..utils.io import atomic_write_json

    atomic_write_json(
        path,
        {
            "dataset": dataset.name,
            "source": dataset.meta.get("source"),
            "n_problems": len(dataset.meta.get("skipped") or []),
            "skipped": dataset.meta.get("skipped") or [],
        },
    )


def _loader_summary(name: str) -> tuple[str, str]:
    """(first line, whole docstring) of a dataset loader's module."""
    import inspect as _inspect

    from ..data.registry import DATASETS

    loader = DATASETS.get(name)
    doc = _inspect.getdoc(_inspect.getmodule(loader)) or _inspect.getdoc(loader) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first, doc
