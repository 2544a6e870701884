"""The ``gcrdp`` command line: thin commands over the library.

``main(argv) -> int`` never raises for a user's mistake: it prints one paragraph to stderr and
returns 2. Library code never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError, GcrdpError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------- helpers
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
    g.add_argument("--manifest", type=Path, default=None,
                   help="a CSV/JSONL manifest of your own data (sets --dataset manifest)")
    g.add_argument("--class-split", type=Path, default=None, help="JSON file of seen/unseen class names")
    g.add_argument("--root", type=Path, default=None,
                   help="the dataset's folder (wikipedia, pascal-sentence, nus-wide, xmedianet, folder)")
    g.add_argument("--features", dest="features_path", type=Path, default=None,
                   help="pre-extracted features file or folder of your own data (.npz, "
                        ".safetensors, .npy folder, .mat, .h5; sets --dataset features)")
    g.add_argument("--dataset-option", action="append", metavar="KEY=VALUE",
                   help="extra option of the dataset loader (repeatable; 'gcrdp datasets NAME' lists them)")
    g.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave bad samples out (listed in a report file) instead of failing")


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("features")
    g.add_argument("--image-encoder", default=None, help="default: efficientnet-lite0")
    g.add_argument("--text-encoder", default=None, help="default: minilm-l6")
    g.add_argument("--backend", default=None, help="image encoder inference backend: torch or onnx")
    g.add_argument("--feature-dtype", choices=["float16", "float32"], default=None,
                   help="storage dtype of cached features (computation is float32)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache folder (default: $GCRDP_CACHE_DIR or ~/.cache/gcrdp)")
    g.add_argument("--extract-batch-size", type=int, default=None,
                   help="images per batch of feature extraction, texts twice as many (default 64)")
    g.add_argument("--clip", type=Path, default=None, metavar="DIR",
                   help="use a local CLIP(-like) transformers folder for both modalities "
                        "(sets --image-encoder clip --text-encoder clip)")
    g.add_argument("--encoder-option", action="append", metavar="image.KEY=VALUE|text.KEY=VALUE",
                   help="option of the image or text encoder (repeatable)")


def _add_protocol_args(g: argparse._ArgumentGroup) -> None:
    """Flags shared by ``run`` and ``train``: protocol, validation share, cut-offs, device."""
    g.add_argument("--protocol", choices=["fewshot", "generalized", "standard"], default=None,
                   help="fewshot (default): train on the seen classes + N pairs per unseen class, "
                        "test on the unseen ones; generalized: the gallery also holds the seen "
                        "classes' test pairs; standard: every class seen")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="share of the seen classes held out for validation (default 0.2; with "
                        "--val-mode mirror at least 10 classes / 200 pairs, at most half)")
    g.add_argument("--val-mode", choices=["mirror", "zero-shot"], default=None,
                   help="mirror (default): the validation classes get the run's N shots in "
                        "training, as the unseen classes do; zero-shot: they get none")
    g.add_argument("--refit", action="store_true", default=None,
                   help="after each fit, refit on every seen-class pair (validation classes too) "
                        "with the epoch count / settings chosen on validation, and test that model")
    g.add_argument("--allow-small-classes", action="store_true", default=None,
                   help="run even when classes have fewer items than the protocol needs (by default "
                        "the run stops and names them: a class of one item is usually a label typo)")
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
            raise ConfigError(f"--features reads your own feature files; it cannot be combined with "
                              f"--dataset {args.dataset}.")
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
    mapping = {"image_encoder": args.image_encoder, "text_encoder": args.text_encoder,
               "encoder_backend": args.backend, "feature_dtype": args.feature_dtype,
               "cache_dir": str(args.cache_dir) if args.cache_dir else None,
               "extract_batch_size": args.extract_batch_size}
    out = {k: v for k, v in mapping.items() if v is not None}
    options: dict[str, dict[str, Any]] = {"image": {}, "text": {}}
    if args.clip is not None:
        for m in ("image", "text"):
            given = out.get(f"{m}_encoder")
            if given not in (None, "clip"):
                raise ConfigError(f"--clip uses CLIP for both modalities; it cannot be combined with "
                                  f"--{m}-encoder {given}.")
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


# --------------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    from ..experiments import RunConfig, format_instance_table, format_table, run_experiment

    raw = _load_config_file(args.config)
    raw.update(_dataset_fields(args))
    raw.update(_encoder_fields(args))
    for key in ("protocol", "shots", "seeds", "methods", "ks", "device", "val_fraction", "val_mode", "refit",
                "allow_small_classes"):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    if args.option:
        methods = raw.get("methods") or RunConfig().methods
        opts = raw.setdefault("method_options", {})
        for m, o in _method_options(args.option, list(methods)).items():
            opts.setdefault(m, {}).update(o)
    config = RunConfig.from_dict(raw)
    out_dir = args.output_dir or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}.")
    try:
        results = run_experiment(config, out_dir, progress=not args.quiet, jobs=args.jobs, resume=args.resume)
    except KeyboardInterrupt:
        if (out_dir / "fits").is_dir():
            print(f"gcrdp run: interrupted; every finished fit is kept in {out_dir / 'fits'}. Run the same "
                  "command again to continue.", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise
    name = results["resolved"].get("dataset_name") or config.dataset
    spread = (f"mean ± std over {len(config.seeds)} seeds" if len(config.seeds) > 1 else
              f"one seed ({config.seeds[0]}): no spread")
    title = f"{name} — protocol {config.protocol}, mAP@all in % ({spread}); chance = class prior"
    print(format_table(results["summary"], title=title))
    inst = format_instance_table(results["summary"], title=(
        "\ninstance level: recall@1/5/10 in % of each query's own pair (mean over seeds)"))
    if inst:
        print(inst)
    print(f"\nResults: {out_dir / 'results.json'}  ({results['timing']['total_seconds']:.0f} s)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One (method, shots, seed) with a checkpoint every epoch (resumable) and a final one."""
    from ..experiments import RunConfig, run_experiment

    raw = _load_config_file(args.config)
    raw.update(_dataset_fields(args))
    raw.update(_encoder_fields(args))
    for key in ("protocol", "ks", "device", "val_fraction", "val_mode", "refit", "allow_small_classes"):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    for key, value in (("shots", args.shots), ("seeds", args.seed), ("methods", args.method)):
        if value is not None:
            raw[key] = [value]
        else:
            raw.setdefault(key, [0] if key != "methods" else RunConfig().methods)
    if args.option:
        opts = raw.setdefault("method_options", {})
        for m, o in _method_options(args.option, list(raw["methods"])).items():
            opts.setdefault(m, {}).update(o)
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
            "value each, or 'gcrdp run' for grids.")
    out = args.checkpoint_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--checkpoint-dir {out} exists and is not a folder.")
    resumable = (out / "last" / "state.json").is_file()
    if resumable and args.resume and not args.quiet:
        print(f"gcrdp train: resuming from the checkpoint in {out / 'last'}", file=sys.stderr)
    try:
        results = run_experiment(config, out, progress=not args.quiet, checkpoints=lambda *_: out,
                                 resume=args.resume)
    except KeyboardInterrupt:
        if not (out / "last" / "state.json").is_file():
            raise  # nothing checkpointed yet: main() reports the interruption
        print(f"gcrdp train: interrupted; the last completed epoch is checkpointed in {out / 'last'}. "
              "Run the same command again to resume from it.", file=sys.stderr)
        return EXIT_INTERRUPTED
    rec = results["records"][0]
    fit = rec["fit"]
    resumed = fit.get("resumed_from_epoch")
    note = f", resumed after epoch {resumed}" if resumed is not None else (
        " (started afresh: --no-resume)" if resumable and not args.resume else "")
    print(f"{rec['method']} on {config.dataset}, protocol {config.protocol}, shots={rec['shots']}, "
          f"seed={rec['seed']}: {fit['epochs']} epochs, best epoch {fit['best_epoch']}{note}")
    val = fit.get("best_val_map")
    print(f"validation mean mAP {100 * val:.1f} (best epoch)" if val is not None else
          "validation: none (no validation pairs; the last epoch is kept)")
    test = {**rec["test"], "chance": rec["chance"]["i2t"]}
    print("test: " + "\n".join(_metric_lines(test, config.ks)))
    last = f"{out / 'last'} (training, every epoch), " if (out / "last").exists() else ""
    print(f"\ncheckpoints: {last}{out / 'final'} (fitted method)\n"
          f"results: {out / 'results.json'}  ({results['timing']['total_seconds']:.0f} s)")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from ..data.featurefiles import save_features_npz
    from ..data.registry import load_dataset
    from ..experiments import RunConfig
    from ..experiments.runner import load_features

    raw = {**_dataset_fields(args), **_encoder_fields(args)}
    config = RunConfig.from_dict(raw)
    dataset = load_dataset(config.dataset, **config.dataset_options)
    t0 = time.perf_counter()
    feats = load_features(dataset, config, progress=not args.quiet)
    print(f"{config.dataset}: {len(feats)} samples; image local {tuple(feats.image.local.shape)} "
          f"pooled {tuple(feats.image.pooled.shape)}; text local {tuple(feats.text.local.shape)} "
          f"pooled {tuple(feats.text.pooled.shape)}; {time.perf_counter() - t0:.1f} s")
    if feats.meta:
        where = feats.meta.get("cache_path")
        if where:
            got = feats.meta.get("items_extracted") or {}
            print(f"cache: {where} (extracted now: {got.get('image', 0)} images, {got.get('text', 0)} texts; "
                  "the rest from the cache)")
    if args.output is not None:
        save_features_npz(feats, dataset, args.output)
        print(f"written: {args.output}")
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
            print(f"grid {grid.name}: dataset {label!r} is not available here (its folder does not exist); "
                  "its runs are left out.", file=sys.stderr)
    cells = grid.cells()
    print(f"grid {grid.name}: {len(grid.datasets)} dataset(s) × {len(grid.methods)} method(s): "
          f"{len(cells)} runs into {grid.output_dir}", file=sys.stderr)
    try:
        out = run_grid(grid, progress=not args.quiet, rerun_changed=args.rerun_changed)
    except KeyboardInterrupt:
        print(f"gcrdp experiment: interrupted; every finished run is in {grid.output_dir / 'runs'}. "
              "Run the same command again to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{out['ran']} run(s) done now, {out['already_done']} were already done ({out['total']} in all): "
          f"{grid.output_dir / 'runs'}\nTables and figures: gcrdp report {grid.output_dir / 'runs'} --output "
          f"{grid.output_dir / 'report'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Tables (Markdown, CSV) and figures (PNG) from results files."""
    from ..experiments.grid import collect_results
    from ..experiments.report import write_report

    results = collect_results(args.results)
    bench = None
    if args.bench is not None:
        try:
            bench = json.loads(args.bench.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--bench {args.bench} is not a readable JSON file: {exc}") from None
    out = write_report(results, args.output, methods=args.methods, datasets=args.datasets,
                       plots=not args.no_plots, bench=bench)
    if args.embedding_map is not None:
        out["files"].append(str(_embedding_map(args)))
    print(out["markdown"])
    print("written: " + ", ".join(out["files"]))
    return 0


def _embedding_map(args: argparse.Namespace) -> Path:
    from ..experiments.saved import embedding_map

    return embedding_map(args.embedding_map, Path(args.output) / "embedding_map.png")


def cmd_export(args: argparse.Namespace) -> int:
    """Embed every sample of a trained model's dataset and write the embeddings in the
    clip-retrieval layout (img_emb/, text_emb/, metadata/), for FAISS/autofaiss and vector DBs."""
    from ..experiments.saved import export_run

    out, r = export_run(args.checkpoint, args.output, part_size=args.part_size, cache_dir=args.cache_dir,
                        device=args.device, progress=not args.quiet)
    print(f"{r.checkpoint.state['method']} embeddings of {len(r.dataset)} {r.config.dataset} samples "
          f"(dim {r.method.embed_images(r.features.image.subset([0])).shape[1]}) written to {out} "
          "(img_emb/, text_emb/, metadata/)")
    return 0


def _loader_summary(name: str) -> tuple[str, str]:
    """(first line, whole docstring) of a dataset loader's module."""
    import inspect as _inspect

    from ..data.registry import DATASETS

    loader = DATASETS.get(name)
    doc = _inspect.getdoc(_inspect.getmodule(loader)) or _inspect.getdoc(loader) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first, doc


def cmd_datasets(args: argparse.Namespace) -> int:
    """List the datasets (one line each), or show one: its options and formats."""
    import inspect as _inspect

    from ..data.registry import dataset_options, list_datasets

    if args.name is None:
        names = list_datasets()
        width = max(len(n) for n in names)
        print("Datasets (gcrdp datasets NAME shows the layouts and options of one):")
        for n in names:
            print(f"  {n:<{width}}  {_loader_summary(n)[0].replace('``', '')}")
        print("\nYour own data: --manifest FILE (csv/jsonl), --dataset folder --root DIR, "
              "--features FILE (.npz/.safetensors/.npy folder/.mat/.h5), --dataset clip-retrieval --root DIR.")
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


def _write_skipped(path: Path, dataset: Any) -> None:
    from ..utils.io import atomic_write_json

    atomic_write_json(path, {"dataset": dataset.name, "source": dataset.meta.get("source"),
                             "n_problems": len(dataset.meta.get("skipped") or []),
                             "skipped": dataset.meta.get("skipped") or []})


def _metric_lines(res: dict[str, Any], ks: Sequence[int] | None) -> list[str]:
    lines = [(f"I2T mAP {100 * res['i2t']['map']:.1f}   T2I mAP {100 * res['t2i']['map']:.1f}   "
              f"mean {100 * res['mean_map']:.1f}   chance {100 * res['chance']:.1f}   "
              f"({res['i2t']['n_queries']} queries, {res['i2t']['n_gallery']} gallery)")]
    inst = res.get("instance")
    if inst:
        cuts = [k for k in ("recall@1", "recall@5", "recall@10") if k in inst["i2t"]]
        lines.append("instance level (each query's own pair): " + "   ".join(
            f"{d.upper()} R@{'/'.join(c.split('@')[1] for c in cuts)} "
            + "/".join(f"{100 * inst[d][c]:.1f}" for c in cuts) for d in ("i2t", "t2i")))
    for k in ks or ():
        for d in ("i2t", "t2i"):
            m = res[d]
            lines.append(f"{d.upper()} @{k}: mAP {100 * m[f'map@{k}']:.1f}  P {100 * m[f'precision@{k}']:.1f}  "
                         f"R {100 * m[f'recall@{k}']:.1f}")
    return lines


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.files import evaluate_embedding_files
    from ..utils.io import atomic_write_json

    if (args.embeddings is None) == (args.checkpoint is None):
        raise ConfigError("gcrdp evaluate needs either an embeddings .npz file or --checkpoint DIR "
                          "(not both).")
    if args.checkpoint is not None:
        if args.gallery is not None:
            raise ConfigError("--gallery goes with an embeddings file; with --checkpoint the test "
                              "gallery is re-created from the stored run.")
        return _evaluate_checkpoint(args)
    if args.cache_dir is not None or args.device is not None:
        raise ConfigError("--cache-dir and --device go with --checkpoint.")
    res = evaluate_embedding_files(args.embeddings, args.gallery, ks=args.k or ())
    print("\n".join(_metric_lines(res, args.k)))
    if args.output is not None:
        atomic_write_json(args.output, {"embeddings": str(args.embeddings),
                                        "gallery": str(args.gallery) if args.gallery else None,
                                        "metrics": res})
    return 0


def _evaluate_checkpoint(args: argparse.Namespace) -> int:
    """Re-create the dataset, features and split of a ``gcrdp train`` run from its final
    checkpoint and evaluate the stored method on the test pairs."""
    from ..experiments.saved import evaluate_checkpoint
    from ..utils.io import atomic_write_json

    out = evaluate_checkpoint(args.checkpoint, ks=args.k or (), cache_dir=args.cache_dir, device=args.device,
                              progress=not args.quiet)
    res, split = out["metrics"], out["split"]
    print(f"{out['method']} on {out['restored'].config.dataset}, protocol {split['protocol']}, "
          f"shots={split['shots']}, seed={split['seed']} (checkpoint {out['checkpoint']})")
    print("\n".join(_metric_lines(res, args.k)))
    stored = out["stored_mean_map"]
    if stored is not None and stored != res["mean_map"]:
        print(f"note: the mean mAP stored at training time was {100 * stored:.2f}, now "
              f"{100 * res['mean_map']:.2f} (another device or library version?)", file=sys.stderr)
    if args.output is not None:
        atomic_write_json(args.output, {k: out[k] for k in ("checkpoint", "method", "method_config", "split",
                                                             "metrics")})
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Build (or --add to) a search index over a collection with a trained model."""
    from ..search import (
        Retriever,
        items_from_dataset,
        items_from_features,
        items_from_images,
        items_from_manifest,
        items_from_text_file,
    )

    sources = [x for x in (args.manifest, args.images, args.texts, args.features, args.dataset) if x is not None]
    if not sources:
        raise ConfigError("gcrdp index needs a collection: --manifest FILE, --images DIR and/or --texts FILE, "
                          "--features FILE, or --dataset NAME.")
    if (args.features is not None or args.dataset is not None) and len(sources) > 1:
        raise ConfigError("--features and --dataset each index a whole collection on their own; they cannot be "
                          "mixed with other inputs.")
    items, features = [], None
    if args.features is not None:
        items, features = items_from_features(args.features)
    if args.dataset is not None:
        items, features = items_from_dataset(args.dataset, **_parse_assignments(args.dataset_option,
                                                                                "--dataset-option"))
    if args.manifest is not None:
        items += items_from_manifest(args.manifest, skip_bad=bool(args.skip_bad))
    if args.images is not None:
        items += items_from_images(args.images)
    if args.texts is not None:
        items += items_from_text_file(args.texts)
    if not args.add and (args.checkpoint is None) == (args.clip is None):
        raise ConfigError("gcrdp index needs one model: --checkpoint DIR (a 'gcrdp train' folder) or --clip DIR "
                          "(a local CLIP folder, used as it is); or --add to extend an existing index.")
    t0 = time.perf_counter()
    r = Retriever.build(args.index, checkpoint=args.checkpoint, clip=args.clip, items=items, features=features,
                        index_type=args.index_type,
                        add=args.add, cache_dir=args.cache_dir or _default_cache(), device=args.device or "cpu",
                        progress=not args.quiet, backend=args.backend, uri=args.uri)
    info = r.info
    counts = ", ".join(f"{n} {m}s" for m, n in info["counts"].items())
    now = ", ".join(f"{n} {m}s" for m, n in info["added_now"].items()) or "nothing new"
    print(f"index {args.index}: {counts} ({now} added; {info['skipped_duplicates']} duplicates skipped), "
          f"{info['index_type']}, dim {info['dim']}, {time.perf_counter() - t0:.1f} s")
    inst = info.get("instance_recall")
    if inst:
        print(f"instance level ({inst['n_queries']} of the collection's {inst['n_pairs']} image-text pairs, each "
              "query's own pair): " + "   ".join(
                  f"{d.upper()} R@1/5/10 " + "/".join(f"{100 * inst[d][f'recall@{k}']:.1f}" for k in (1, 5, 10))
                  for d in ("i2t", "t2i")))
    if info.get("recall_at_10_vs_exact"):
        print("recall@10 against exact search: " + ", ".join(
            f"{m} {100 * v:.1f} %" for m, v in info["recall_at_10_vs_exact"].items()))
    return 0


def _default_cache() -> Path:
    from ..experiments.runner import default_cache_dir

    return default_cache_dir()


def cmd_search(args: argparse.Namespace) -> int:
    """Query an index by text (images come back) or by image (texts come back)."""
    from ..search import Retriever, format_hits

    if sum(x is not None for x in (args.text, args.image, args.like)) != 1:
        raise ConfigError("gcrdp search needs exactly one of --text \"…\", --image PATH or --like ID.")
    r = Retriever.load(args.index, device=args.device or "cpu")
    if args.like is not None:
        hits = r.search(like=args.like, like_modality=args.like_modality, k=args.k)
    elif args.text is not None:
        hits = r.search(text=args.text, k=args.k)
    else:
        hits = r.search(image=str(args.image), k=args.k)
    if args.json:
        for h in hits:
            print(json.dumps(h.to_dict(), ensure_ascii=False))
    else:
        print(format_hits(hits))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve an index over HTTP: the JSON API and the web page."""
    from ..search.server import serve

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}.")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"gcrdp serve: listening on {args.host}, reachable from other machines; the API has no "
              "authentication.", file=sys.stderr)
    print(f"gcrdp serve: http://{args.host}:{args.port}/  (API: /api/search, /openapi.json; ^C stops)",
          file=sys.stderr)
    serve(str(args.index), host=args.host, port=args.port, device=args.device or "cpu",
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcrdp", description="Few-shot cross-modal retrieval (GCRDP, baselines, benchmark protocol).")
    parser.add_argument("--version", action="version", version=f"gcrdp {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="few-shot retrieval over shots × seeds × methods; prints the table")
    p.add_argument("--config", type=Path, default=None, help="JSON run config; flags override its keys")
    _add_dataset_args(p)
    _add_encoder_args(p)
    g = p.add_argument_group("protocol and methods")
    _add_protocol_args(g)
    g.add_argument("--shots", type=int, nargs="+", default=None, help="default: 0 1 3 5")
    g.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 4")
    g.add_argument("--methods", nargs="+", default=None,
                   help="default: gcrdp (compare it with its base: --methods gap-infonce gcrdp)")
    g.add_argument("--option", action="append", metavar="[METHOD.]KEY=VALUE",
                   help="method option, e.g. lr=1e-3 or gap-infonce.max_epochs=30 (repeatable)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where results.json goes (default: runs/run-<time>)")
    p.add_argument("--jobs", type=int, default=1,
                   help="fits run at once in worker processes, each with cpu_count/JOBS threads "
                        "(default 1: one fit at a time with every thread)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the fits already finished in --output-dir by the same configuration "
                        "(default; a killed run continues, a run can grow); --no-resume refits all")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "train", help="train one method on one (dataset, shots, seed) with resumable checkpoints",
        description="Train one method on one (dataset, shots, seed), checkpointing every epoch. "
                    "DIR/last is the training checkpoint (weights, optimizer, counters, RNG; "
                    "replaced atomically after every epoch), DIR/final the fitted method with the "
                    "run info 'gcrdp evaluate --checkpoint DIR' needs, DIR/results.json the "
                    "resolved config, provenance and metrics. Running the same command again "
                    "after an interruption resumes from DIR/last and ends exactly as an "
                    "uninterrupted run would.")
    p.add_argument("--config", type=Path, default=None, help="JSON run config; flags override its keys")
    _add_dataset_args(p)
    _add_encoder_args(p)
    g = p.add_argument_group("protocol and method")
    _add_protocol_args(g)
    g.add_argument("--shots", type=int, default=None, help="N pairs per unseen class (default: 0)")
    g.add_argument("--seed", type=int, default=None, help="default: 0")
    g.add_argument("--method", default=None, help="default: gcrdp")
    g.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="method option, e.g. lr=1e-3 or max_epochs=30 (repeatable)")
    p.add_argument("--checkpoint-dir", type=Path, required=True,
                   help="DIR for last/ (every epoch), final/ and results.json")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from DIR/last when it exists (default); --no-resume starts afresh "
                        "and overwrites it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("extract", help="extract (or load cached) features of a dataset")
    _add_dataset_args(p)
    _add_encoder_args(p)
    p.add_argument("--output", type=Path, default=None, help="also export the features to this .npz")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("experiment", help="run a grid: datasets × shots × methods × seeds, one results file "
                                          "per run, resumable (finished runs are skipped)")
    p.add_argument("config", type=Path, help="grid config JSON (see gcrdp.experiments.grid)")
    p.add_argument("--output-dir", type=Path, default=None, help="default: the config's output_dir")
    p.add_argument("--datasets", nargs="+", default=None, help="run only these dataset labels of the grid")
    p.add_argument("--methods", nargs="+", default=None, help="run only these method entries of the grid")
    p.add_argument("--rerun-changed", action="store_true",
                   help="re-run cells whose stored file has another configuration (default: error)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("report", help="tables (Markdown, CSV) and figures (PNG) from results files")
    p.add_argument("results", type=Path, nargs="+", help="results.json files or folders (searched)")
    p.add_argument("--output", type=Path, required=True, help="folder for results.md, results.csv, *.png")
    p.add_argument("--methods", nargs="+", default=None,
                   help="the methods shown in the tables and curves, in this order (default: all, first seen first)")
    p.add_argument("--datasets", nargs="+", default=None, help="table order of the dataset labels")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--bench", type=Path, default=None,
                   help="JSON of benchmarks/bench_train_step.py --json: adds step_time.png")
    p.add_argument("--embedding-map", type=Path, default=None, metavar="CHECKPOINT",
                   help="a 'gcrdp train' checkpoint: adds embedding_map.png (t-SNE of its test embeddings)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="embed a trained model's dataset and write the embeddings in the "
                                      "clip-retrieval layout (for FAISS, autofaiss, Milvus, Qdrant)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a 'gcrdp train' checkpoint DIR (or DIR/final)")
    p.add_argument("--output", type=Path, required=True,
                   help="the folder to create: img_emb/img_emb_0.npy, text_emb/text_emb_0.npy, "
                        "metadata/metadata_0.parquet (must not exist or be empty)")
    p.add_argument("--part-size", type=int, default=None, help="rows per part file (default: one part)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: the stored one)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("index", help="build a search index over a collection with a trained model (FAISS)",
                       description="Embed a collection with a 'gcrdp train' model and write a search index "
                                   "folder (FAISS vectors, SQLite metadata, the model's fingerprint). Written "
                                   "atomically: an interrupted build leaves the previous index intact.")
    p.add_argument("index", type=Path, help="the index folder to create or replace (or extend with --add)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a 'gcrdp train' checkpoint DIR (or DIR/final)")
    p.add_argument("--clip", type=Path, default=None, metavar="DIR",
                   help="instead of --checkpoint: a local CLIP(-like) transformers folder, used as it is "
                        "(aligned encoders, no training)")
    p.add_argument("--manifest", type=Path, default=None, help="a manifest: each row's image and text")
    p.add_argument("--images", type=Path, default=None, help="a folder of images (recursively; labels optional)")
    p.add_argument("--texts", type=Path, default=None, help="a UTF-8 text file, one text per line")
    p.add_argument("--features", type=Path, default=None,
                   help="a pre-extracted features file (for a model trained on features made the same way)")
    p.add_argument("--dataset", default=None,
                   help="a registered dataset, e.g. twemoji (the demo's collection): every sample's image and text")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="option of --dataset (repeatable)")
    p.add_argument("--index-type", default="Flat",
                   help="FAISS factory string: Flat (exact, default), HNSW32, IVF1024,Flat, …; an approximate "
                        "index reports its recall@10 against exact search")
    p.add_argument("--add", action="store_true",
                   help="append to the existing index (skipping items already in it by content hash)")
    p.add_argument("--backend", choices=["faiss", "milvus"], default="faiss",
                   help="faiss (default: vectors in the index folder) or milvus (vectors in Milvus at --uri)")
    p.add_argument("--uri", default=None,
                   help="with --backend milvus: a local PATH.db (Milvus Lite, embedded) or http://HOST:19530 "
                        "(a Milvus server or cluster)")
    p.add_argument("--skip-bad", action="store_true", help="leave bad manifest rows out instead of failing")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: as gcrdp run)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="query an index: --text finds images, --image finds texts")
    p.add_argument("index", type=Path, help="an index folder written by 'gcrdp index'")
    p.add_argument("--text", default=None, help="a text query: the images that match it")
    p.add_argument("--image", type=Path, default=None, help="an image query: the texts that match it")
    p.add_argument("--like", default=None, metavar="ID",
                   help="query with an indexed item's own vector (the way to query pre-extracted features)")
    p.add_argument("--like-modality", choices=["image", "text"], default="image",
                   help="with --like: the item's side (default image: texts come back)")
    p.add_argument("--k", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="serve an index over HTTP: a JSON API and a search page at /")
    p.add_argument("index", type=Path, help="an index folder written by 'gcrdp index'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload (default 10 MB)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("datasets", help="list the datasets and their formats, or show one")
    p.add_argument("name", nargs="?", default=None, help="a dataset name: show its layouts and options")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("inspect", help="summarise a dataset: samples per split and class, feature "
                                       "dimensions, text lengths, problems found")
    _add_dataset_args(p)
    p.add_argument("--report", type=Path, default=None,
                   help="with --skip-bad: where the list of left-out samples goes "
                        "(default: <dataset>-skipped.json)")
    p.add_argument("--shots", type=int, default=5,
                   help="check the class sizes for runs of up to this many shots (default 5)")
    p.add_argument("--protocol", choices=["fewshot", "generalized", "standard"], default="fewshot",
                   help="check the class sizes for this protocol (default fewshot)")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("evaluate", help="retrieval metrics of embeddings in .npz files, or of a "
                                        "checkpoint written by 'gcrdp train'")
    p.add_argument("embeddings", type=Path, nargs="?", default=None,
                   help=".npz with 'image' (n,d), 'text' (n,d), 'labels' ((n,) or (n,C)); the queries")
    p.add_argument("--gallery", type=Path, default=None, help="gallery .npz (default: the queries themselves)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="instead of embeddings: a 'gcrdp train' checkpoint DIR (or DIR/final); its "
                        "dataset, features (cache) and split are re-created and the test pairs evaluated")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="with --checkpoint: feature cache folder (default: the stored one)")
    p.add_argument("--device", default=None, help="with --checkpoint: cpu, cuda or auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--k", type=int, nargs="+", default=None, help="also report mAP/P/R@k")
    p.add_argument("--output", type=Path, default=None, help="write the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except GcrdpError as exc:
        print(f"gcrdp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gcrdp: interrupted; nothing partial was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        import os

        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0


def entrypoint() -> None:  # console script
    sys.exit(main())
