"""Commands about data: `gcrdp extract`, `gcrdp datasets`, `gcrdp inspect`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    _add_cluster_args,
    _add_dataset_args,
    _add_encoder_args,
    _cluster,
    _dataset_fields,
    _encoder_fields,
    _loader_summary,
    _write_skipped,
)


def cmd_extract(args: argparse.Namespace) -> int:
    from ..data.formats.featurefiles import save_features
    from ..data.registry import load_dataset
    from ..experiments import RunConfig
    from ..experiments.runner import load_features

    raw = {**_dataset_fields(args), **_encoder_fields(args)}
    config = RunConfig.from_dict(raw)
    dataset = load_dataset(config.dataset, **config.dataset_options)
    t0 = time.perf_counter()
    feats = load_features(dataset, config, progress=not args.quiet, cluster=_cluster(args))
    print(
        f"{config.dataset}: {len(feats)} samples; image local {tuple(feats.image.local.shape)} "
        f"pooled {tuple(feats.image.pooled.shape)}; text local {tuple(feats.text.local.shape)} "
        f"pooled {tuple(feats.text.pooled.shape)}; {time.perf_counter() - t0:.1f} s"
    )
    if feats.meta:
        where = feats.meta.get("cache_path")
        if where:
            got = feats.meta.get("items_extracted") or {}
            print(f"cache: {where} (extracted now: {got.get('image', 0)} images, {got.get('text', 0)} texts; the rest from the cache)")
    if args.output is not None:
        save_features(feats, dataset, args.output)
        print(f"written: {args.output}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """List the datasets (one line each), or show one: its options and formats."""
    import inspect as _inspect

    from ..data.registry import dataset_options, list_datasets

    if args.name is None:
        names = list_datasets()
        width = max(len(n) for n in names)
        print("Datasets (gcrdp datasets NAME shows the layouts and options of one):")
        for n in names:
            print(f"  {n:<{width}}  {_loader_summary(n)[0]}")
        print(
            "\nYour own data: --manifest FILE (csv/jsonl), --dataset folder --root DIR, "
            "--features FILE (.npz/.safetensors/.npy folder/.mat/.h5), --dataset clip-retrieval --root DIR."
        )
        return 0
    _, doc = _loader_summary(args.name)
    print(doc)
    print("\nOptions (--dataset-option KEY=VALUE, or --root/--skip-bad/--class-split):")
    for k, v in dataset_options(args.name).items():
        print(f"  {k}" + (" (required)" if v is _inspect.Parameter.empty else f" = {v!r}"))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Load a dataset and summarise it; problems make the load fail (exit 2) unless --skip-bad."""
    from ..data.inspect import format_summary, summarize_dataset
    from ..data.registry import load_dataset
    from ..experiments import RunConfig
    from ..utils.io import atomic_write_json

    raw = _dataset_fields(args)
    config = RunConfig.from_dict(raw)
    dataset = load_dataset(config.dataset, **config.dataset_options)
    summary = summarize_dataset(dataset, shots=args.shots, protocol=args.protocol)
    print(format_summary(summary))
    skipped = dataset.meta.get("skipped") or []
    if skipped:
        report = args.report or Path(f"{dataset.name}-skipped.json")
        _write_skipped(report, dataset)
        print(f"\nleft out {len(skipped)} bad sample problem(s): listed in {report}", file=sys.stderr)
    if args.json is not None:
        atomic_write_json(args.json, summary)
        print(f"summary: {args.json}")
    return 0


def add_parsers(sub: Any) -> None:
    """The subcommands of this module."""
    p = sub.add_parser(
        "extract",
        help="extract (or load cached) features of a dataset",
        description="Extract the features of a dataset with the frozen encoders, or load them from the cache (per image "
        "and per text: changing one row re-extracts one item), and print their shapes; --output also exports them.",
    )
    _add_dataset_args(p)
    _add_encoder_args(p)
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="also export the features: to a .npz file (built in memory), or to a new folder of .npy "
        "files (streamed; large ones are read back row by row by --features DIR)",
    )
    _add_cluster_args(p)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "datasets",
        help="list the datasets and their formats, or show one",
        description="List the registered datasets with one line each, or describe one: the layouts its loader reads, "
        "its checks and its options (--dataset-option KEY=VALUE).",
    )
    p.add_argument("name", nargs="?", default=None, help="a dataset name: show its layouts and options")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser(
        "inspect",
        help="summarise a dataset: samples per split and class, feature dimensions, text lengths, problems found",
        description="Load a dataset and summarise it: samples per split and class, the seen/unseen class split, feature "
        "dimensions, text lengths, and the problems found (label typos, classes too small for --shots, duplicates). "
        "Bad samples make the load fail (exit 2) unless --skip-bad.",
    )
    _add_dataset_args(p)
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="with --skip-bad: where the list of left-out samples goes (default: <dataset>-skipped.json)",
    )
    p.add_argument("--shots", type=int, default=5, help="check the class sizes for runs of up to this many shots (default 5)")
    p.add_argument(
        "--protocol",
        choices=["fewshot", "generalized", "standard"],
        default="fewshot",
        help="check the class sizes for this protocol (default fewshot)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    p.set_defaults(func=cmd_inspect)
