"""Commands about results and saved models: `gcrdp report`, `gcrdp export`, `gcrdp evaluate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import _metric_lines


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
    out = write_report(results, args.output, methods=args.methods, datasets=args.datasets, plots=not args.no_plots, bench=bench)
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

    out, r = export_run(
        args.checkpoint, args.output, part_size=args.part_size, cache_dir=args.cache_dir, device=args.device, progress=not args.quiet
    )
    print(
        f"{r.checkpoint.state['method']} embeddings of {len(r.dataset)} {r.dataset.name} samples "
        f"(dim {r.method.embed_images(r.features.image.subset([0])).shape[1]}) written to {out} "
        "(img_emb/, text_emb/, metadata/)"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.files import evaluate_embedding_files
    from ..utils.io import atomic_write_json

    if (args.embeddings is None) == (args.checkpoint is None):
        raise ConfigError("gcrdp evaluate needs either an embeddings .npz file or --checkpoint DIR (not both).")
    if args.checkpoint is not None:
        if args.gallery is not None:
            raise ConfigError(
                "--gallery goes with an embeddings file; with --checkpoint the test gallery is re-created from the stored run."
            )
        return _evaluate_checkpoint(args)
    if args.cache_dir is not None or args.device is not None:
        raise ConfigError("--cache-dir and --device go with --checkpoint.")
    res = evaluate_embedding_files(args.embeddings, args.gallery, ks=args.k or ())
    print("\n".join(_metric_lines(res, args.k)))
    if args.output is not None:
        atomic_write_json(
            args.output, {"embeddings": str(args.embeddings), "gallery": str(args.gallery) if args.gallery else None, "metrics": res}
        )
    return 0


def _evaluate_checkpoint(args: argparse.Namespace) -> int:
    """Re-create the dataset, features and split of a ``gcrdp train`` run from its final
    checkpoint and evaluate the stored method on the test pairs."""
    from ..experiments.saved import evaluate_checkpoint
    from ..utils.io import atomic_write_json

    out = evaluate_checkpoint(args.checkpoint, ks=args.k or (), cache_dir=args.cache_dir, device=args.device, progress=not args.quiet)
    res, split = out["metrics"], out["split"]
    print(
        f"{out['method']} on {out['restored'].dataset.name}, protocol {split['protocol']}, "
        f"shots={split['shots']}, seed={split['seed']} (checkpoint {out['checkpoint']})"
    )
    print("\n".join(_metric_lines(res, args.k)))
    stored = out["stored_mean_map"]
    if stored is not None and stored != res["mean_map"]:
        print(
            f"note: the mean mAP stored at training time was {100 * stored:.2f}, now "
            f"{100 * res['mean_map']:.2f} (another device or library version?)",
            file=sys.stderr,
        )
    if args.output is not None:
        atomic_write_json(args.output, {k: out[k] for k in ("checkpoint", "method", "method_config", "split", "metrics")})
    return 0


def add_parsers(sub: Any) -> None:
    """The subcommands of this module."""
    p = sub.add_parser(
        "report",
        help="tables (Markdown, CSV) and figures (PNG) from results files",
        description="Tables in the paper's layout (results.md, results.csv) and figures (PNG) from "
        "the results files of 'gcrdp run' or 'gcrdp experiment' (searched in the folders given).",
    )
    p.add_argument("results", type=Path, nargs="+", help="results.json files or folders (searched)")
    p.add_argument("--output", type=Path, required=True, help="folder for results.md, results.csv, *.png")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="the methods shown in the tables and curves, in this order (default: all, first seen first)",
    )
    p.add_argument("--datasets", nargs="+", default=None, help="table order of the dataset labels")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--bench", type=Path, default=None, help="JSON of benchmarks/bench_train_step.py --json: adds step_time.png")
    p.add_argument(
        "--embedding-map",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="a 'gcrdp train' checkpoint: adds embedding_map.png (t-SNE of its test embeddings)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "export",
        help="embed a trained model's dataset and write the embeddings in the clip-retrieval layout (for FAISS, autofaiss, Milvus, Qdrant)",
        description="Embed every sample of the dataset a 'gcrdp train' checkpoint was trained on and write the "
        "embeddings in the clip-retrieval layout (img_emb/, text_emb/, metadata/), which FAISS, autofaiss, Milvus "
        "and Qdrant tools read.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a 'gcrdp train' checkpoint DIR (or DIR/final)")
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="the folder to create: img_emb/img_emb_0.npy, text_emb/text_emb_0.npy, "
        "metadata/metadata_0.parquet (must not exist or be empty)",
    )
    p.add_argument("--part-size", type=int, default=None, help="rows per part file (default: one part)")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: the stored one)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "evaluate",
        help="retrieval metrics of embeddings in .npz files, or of a checkpoint written by 'gcrdp train'",
        description="Retrieval metrics (I2T and T2I mAP@all, chance level, instance recall, --k cut-offs) of embeddings "
        "you computed (an .npz of image, text and labels), or of a 'gcrdp train' checkpoint, whose dataset, features "
        "and split are re-created to evaluate its test pairs.",
    )
    p.add_argument(
        "embeddings",
        type=Path,
        nargs="?",
        default=None,
        help=".npz with 'image' (n,d), 'text' (n,d), 'labels' ((n,) or (n,C)); the queries",
    )
    p.add_argument("--gallery", type=Path, default=None, help="gallery .npz (default: the queries themselves)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="instead of embeddings: a 'gcrdp train' checkpoint DIR (or DIR/final); its "
        "dataset, features (cache) and split are re-created and the test pairs evaluated",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="with --checkpoint: feature cache folder (default: the stored one)")
    p.add_argument("--device", default=None, help="with --checkpoint: cpu, cuda or auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--k", type=int, nargs="+", default=None, help="also report mAP/P/R@k")
    p.add_argument("--output", type=Path, default=None, help="write the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)
