"""Commands that train: `gcrdp run`, `gcrdp train`, `gcrdp experiment`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import (
    DEFAULT_METHODS,
    EXIT_INTERRUPTED,
    _add_cluster_args,
    _add_dataset_args,
    _add_encoder_args,
    _add_protocol_args,
    _cluster,
    _dataset_fields,
    _encoder_fields,
    _load_config_file,
    _method_options,
    _metric_lines,
    check_run_fields,
    int_at_least,
)


def cmd_run(args: argparse.Namespace) -> int:
    raw = _load_config_file(args.config)
    raw.update(_dataset_fields(args))
    raw.update(_encoder_fields(args))
    for key in (
        "protocol",
        "shots",
        "seeds",
        "methods",
        "ks",
        "device",
        "val_fraction",
        "val_mode",
        "val_report_fraction",
        "refit",
        "allow_small_classes",
    ):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    if args.option:
        methods = raw.get("methods") or DEFAULT_METHODS
        opts = raw.setdefault("method_options", {})
        for m, o in _method_options(args.option, list(methods)).items():
            opts.setdefault(m, {}).update(o)
    check_run_fields(raw)  # before the library (torch) is imported: a typo is said at once

    from ..experiments import RunConfig

    config = RunConfig.from_dict(raw)  # its checks too answer before torch is imported
    from ..training.distributed import process_group

    with process_group(_dist_device(config.device)):  # under torchrun / srun: every rank trains each fit
        return _run(args, config)


def _dist_device(device: str) -> str:
    from ..training.seeding import resolve_device

    return resolve_device(device)


def _run(args: argparse.Namespace, config: Any) -> int:
    from ..experiments import format_instance_table, format_table, run_experiment
    from ..training.distributed import broadcast_object, is_main

    # one folder for every rank (rank 0's clock names it)
    out_dir = broadcast_object(args.output_dir or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S"))
    try:
        results = run_experiment(config, out_dir, progress=not args.quiet, jobs=args.jobs, resume=args.resume, cluster=_cluster(args))
    except KeyboardInterrupt:
        if (out_dir / "fits").is_dir():
            print(
                f"gcrdp run: interrupted; every finished fit is kept in {out_dir / 'fits'}. Run the same command again to continue.",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        raise
    if not is_main():
        return 0  # rank 0 prints
    name = results["resolved"].get("dataset_name") or config.dataset
    spread = f"mean ± SD over {len(config.seeds)} seeds" if len(config.seeds) > 1 else f"one seed ({config.seeds[0]}): no spread"
    title = f"{name} — protocol {config.protocol}, mAP@all in % ({spread}); chance = class prior"
    print(format_table(results["summary"], title=title))
    inst = format_instance_table(
        results["summary"], title=("\ninstance level: recall@1/5/10 in % of each query's own pair (mean over seeds)")
    )
    if inst:
        print(inst)
    print(f"\nResults: {out_dir / 'results.json'}  ({results['timing']['total_seconds']:.0f} s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One (method, shots, seed) with a checkpoint every epoch (resumable) and a final one."""
    raw = _load_config_file(args.config)
    raw.update(_dataset_fields(args))
    raw.update(_encoder_fields(args))
    for key in ("protocol", "ks", "device", "val_fraction", "val_mode", "val_report_fraction", "refit", "allow_small_classes"):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    for key, value in (("shots", args.shots), ("seeds", args.seed), ("methods", args.method)):
        if value is not None:
            raw[key] = [value]
        else:
            raw.setdefault(key, [0] if key != "methods" else list(DEFAULT_METHODS))
    if args.option:
        opts = raw.setdefault("method_options", {})
        for m, o in _method_options(args.option, list(raw["methods"])).items():
            opts.setdefault(m, {}).update(o)
    check_run_fields(raw)  # before the library (torch) is imported

    from ..experiments import RunConfig

    dataset_opts = raw.get("dataset_options") or {}
    # so that 'evaluate --checkpoint' and 'export' work from any folder
    for key in ("path", "class_split", "root", "features_file", "images_dir", "captions_file"):
        if isinstance(dataset_opts.get(key), str) and Path(dataset_opts[key]).expanduser().exists():
            dataset_opts[key] = str(Path(dataset_opts[key]).expanduser().resolve())
    config = RunConfig.from_dict(raw)
    if len(config.methods) != 1 or len(config.seeds) != 1 or (config.protocol != "standard" and len(config.shots) != 1):
        raise ConfigError(
            f"gcrdp train fits one (method, shots, seed); got methods={config.methods}, "
            f"shots={config.shots}, seeds={config.seeds}. Use --method, --shots and --seed with one "
            "value each, or 'gcrdp run' for grids."
        )
    out = args.checkpoint_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--checkpoint-dir {out} exists and is not a folder.")
    from ..training.distributed import process_group

    with process_group(_dist_device(config.device)):  # under torchrun / srun: every rank trains the fit
        return _train(args, config, out)


def _train(args: argparse.Namespace, config: Any, out: Path) -> int:
    from ..experiments import run_experiment
    from ..training.distributed import broadcast_object, is_main

    resumable = broadcast_object((out / "last" / "state.json").is_file())
    if resumable and args.resume and not args.quiet and is_main():
        print(f"gcrdp train: resuming from the checkpoint in {out / 'last'}", file=sys.stderr)
    try:
        results = run_experiment(
            config, out, progress=not args.quiet, checkpoints=lambda *_: out, resume=args.resume, cluster=_cluster(args)
        )
    except KeyboardInterrupt:
        if not (out / "last" / "state.json").is_file():
            raise  # nothing checkpointed yet: main() reports the interruption
        print(
            f"gcrdp train: interrupted; the last completed epoch is checkpointed in {out / 'last'}. "
            "Run the same command again to resume from it.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not is_main():
        return 0  # rank 0 prints
    rec = results["records"][0]
    fit = rec["fit"]
    name = results["resolved"].get("dataset_name") or config.dataset
    resumed = fit.get("resumed_from_epoch")
    note = (
        f", resumed after epoch {resumed}"
        if resumed is not None
        else (" (started afresh: --no-resume)" if resumable and not args.resume else "")
    )
    print(
        f"{rec['method']} on {name}, protocol {config.protocol}, shots={rec['shots']}, "
        f"seed={rec['seed']}: {fit['epochs']} epochs, best epoch {fit['best_epoch']}{note}"
    )
    val = fit.get("best_val_map")
    print(
        f"validation mean mAP {100 * val:.1f} (best epoch)"
        if val is not None
        else "validation: none (no validation pairs; the last epoch is kept)"
    )
    test = {**rec["test"], "chance": rec["chance"]["i2t"]}
    print("test: " + "\n".join(_metric_lines(test, config.ks)))
    last = f"{out / 'last'} (training, every epoch), " if (out / "last").exists() else ""
    print(
        f"\ncheckpoints: {last}{out / 'final'} (fitted method)\n"
        f"results: {out / 'results.json'}  ({results['timing']['total_seconds']:.0f} s)"
    )
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run a grid (datasets × shots × methods × seeds), one results file per run, resumable."""
    from ..experiments.grid import Grid, run_grid

    grid = Grid.from_file(args.config)
    if args.output_dir is not None:
        grid.output_dir = args.output_dir
    if args.datasets:
        grid.select(args.datasets)
    if args.methods:
        grid.select_methods(args.methods)
    for label in grid.datasets:
        if not grid.available(label):
            print(
                f"grid {grid.name}: dataset {label!r} is not available here (its folder does not exist); its runs are left out.",
                file=sys.stderr,
            )
    cells = grid.cells()
    print(
        f"grid {grid.name}: {len(grid.datasets)} dataset(s) × {len(grid.methods)} method(s): {len(cells)} runs into {grid.output_dir}",
        file=sys.stderr,
    )
    try:
        out = run_grid(grid, progress=not args.quiet, rerun_changed=args.rerun_changed)
    except KeyboardInterrupt:
        print(
            f"gcrdp experiment: interrupted; every finished run is in {grid.output_dir / 'runs'}. Run the same command again to continue.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(
        f"{out['ran']} run(s) done now, {out['already_done']} were already done ({out['total']} in all): "
        f"{grid.output_dir / 'runs'}\nTables and figures: gcrdp report {grid.output_dir / 'runs'} --output "
        f"{grid.output_dir / 'report'}"
    )
    return 0


def add_parsers(sub: Any) -> None:
    """The subcommands of this module."""
    p = sub.add_parser(
        "run",
        help="few-shot retrieval over shots × seeds × methods; prints the table",
        description="Few-shot retrieval: for each shot count and seed, train every method on the seen classes plus N "
        "pairs per unseen class (early stopping on held-out seen classes), retrieve among the unseen classes' test "
        "pairs (I2T and T2I), and print mAP@all as mean ± std over the seeds beside the chance level. Every finished "
        "fit is kept in --output-dir, so a killed run continues. Method hyper-parameters are --option KEY=VALUE.",
    )
    p.add_argument("--config", type=Path, default=None, help="JSON run config; flags override its keys")
    _add_dataset_args(p)
    _add_encoder_args(p)
    _add_cluster_args(p)
    g = p.add_argument_group("protocol and methods")
    _add_protocol_args(g)
    g.add_argument("--shots", type=int_at_least(0, "Shots"), nargs="+", default=None, help="default: 0 1 3 5")
    g.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 4")
    g.add_argument("--methods", nargs="+", default=None, help="default: gcrdp (compare it with its base: --methods gap-infonce gcrdp)")
    g.add_argument(
        "--option",
        action="append",
        metavar="[METHOD.]KEY=VALUE",
        help="method option, e.g. lr=1e-3 or gap-infonce.max_epochs=30 (repeatable)",
    )
    p.add_argument("--output-dir", type=Path, default=None, help="where results.json goes (default: runs/run-<time>)")
    p.add_argument(
        "--jobs",
        type=int_at_least(1, "--jobs"),
        default=1,
        help="fits run at once in worker processes, each with cpu_count/JOBS threads (default 1: one fit at a time with every thread)",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse the fits already finished in --output-dir by the same configuration "
        "(default; a killed run continues, a run can grow); --no-resume refits all",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "train",
        help="train one method on one (dataset, shots, seed) with resumable checkpoints",
        description="Train one method on one (dataset, shots, seed), checkpointing every epoch. "
        "DIR/last is the training checkpoint (weights, optimizer, counters, RNG; "
        "replaced atomically after every epoch), DIR/final the fitted method with the "
        "run info 'gcrdp evaluate --checkpoint DIR' needs, DIR/results.json the "
        "resolved config, provenance and metrics. Running the same command again "
        "after an interruption resumes from DIR/last and ends exactly as an "
        "uninterrupted run would.",
    )
    p.add_argument("--config", type=Path, default=None, help="JSON run config; flags override its keys")
    _add_dataset_args(p)
    _add_encoder_args(p)
    _add_cluster_args(p)
    g = p.add_argument_group("protocol and method")
    _add_protocol_args(g)
    g.add_argument("--shots", type=int_at_least(0, "Shots"), default=None, help="N pairs per unseen class (default: 0)")
    g.add_argument("--seed", type=int, default=None, help="default: 0")
    g.add_argument("--method", default=None, help="default: gcrdp")
    g.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. lr=1e-3 or max_epochs=30 (repeatable)")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="DIR for last/ (every epoch), final/ and results.json")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from DIR/last when it exists (default); --no-resume starts afresh and overwrites it",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "experiment",
        help="run a grid: datasets × shots × methods × seeds, one results file per run, resumable (finished runs are skipped)",
        description="Run a grid of runs (datasets × shots × methods × seeds) described by a JSON config, one results file "
        "per run under OUTPUT_DIR/runs. Runs already finished are skipped, so the same command continues an "
        "interrupted grid; 'gcrdp report' turns the results into tables and figures.",
    )
    p.add_argument("config", type=Path, help="grid config JSON (see gcrdp.experiments.grid)")
    p.add_argument("--output-dir", type=Path, default=None, help="default: the config's output_dir")
    p.add_argument("--datasets", nargs="+", default=None, help="run only these dataset labels of the grid")
    p.add_argument("--methods", nargs="+", default=None, help="run only these method entries of the grid")
    p.add_argument("--rerun-changed", action="store_true", help="re-run cells whose stored file has another configuration (default: error)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_experiment)
