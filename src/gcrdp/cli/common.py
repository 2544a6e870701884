"""Shared pieces of the command line: argument groups, config assembly, printing."""

from __future__ import annotations

import argparse
import difflib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# ----------------------------------------------------------------------------- methods
#: ``RunConfig().methods``: what ``run`` and ``train`` fit without --methods / --method.
DEFAULT_METHODS = ("gcrdp",)


def did_you_mean(word: str, choices: Sequence[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_methods(methods: Sequence[str], method_options: dict[str, dict[str, Any]]) -> None:
    """:class:`ConfigError` for an unknown method, a ``NAME@TAG`` that is neither a preset nor
    given options, or an option a method does not take — first from the generated table
    (:mod:`gcrdp.cli.method_options`, before the methods and torch are imported: an answer in a
    tenth of a second), then by the library's own check (:func:`gcrdp.methods.presets.check_entry`,
    which also checks the values), before any data is loaded."""
    for entry in methods:
        quick_check_entry(entry, method_options.get(entry))
    from ..methods.presets import check_entry

    for entry in methods:
        check_entry(entry, method_options.get(entry))


def quick_check_entry(entry: str, options: dict[str, Any] | None) -> None:
    """:func:`gcrdp.methods.presets.check_entry`'s checks of names and option keys (the same
    messages), from the generated table, without importing the methods."""
    from ..utils.options import flatten_options, unknown_method_message, unknown_option_message, unlabelled_entry_message
    from .method_options import METHOD_OPTIONS, PRESETS, RENAMED_OPTIONS

    name = entry.split("@", 1)[0]
    if name.lower() not in METHOD_OPTIONS:
        raise ConfigError(unknown_method_message(name, METHOD_OPTIONS))
    if "@" in entry and entry not in PRESETS and options is None:
        raise ConfigError(unlabelled_entry_message(entry, PRESETS))
    if options:
        accepted = list(METHOD_OPTIONS[name.lower()])
        unknown = sorted(set(flatten_options(options)) - set(accepted) - set(RENAMED_OPTIONS.get(name.lower(), ())))
        if unknown:
            raise ConfigError(unknown_option_message(entry, unknown, accepted))


def check_run_fields(raw: dict[str, Any]) -> None:
    """The checks of a run config dict (``run``, ``train``) before any data is loaded: the
    dataset name (torch-free), then its methods and their options (:func:`check_methods`).
    Values of the wrong type are left to :class:`~gcrdp.experiments.RunConfig`, which names them."""
    dataset = raw.get("dataset")
    if isinstance(dataset, str):
        from ..data.registry import list_datasets  # numpy and the loaders (~0.2 s), not torch

        names = list_datasets()
        if dataset.lower() not in names:
            raise ConfigError(f"Unknown dataset {dataset!r}{did_you_mean(dataset.lower(), names)}. Known datasets: {', '.join(names)}.")
    methods = raw.get("methods", list(DEFAULT_METHODS))
    options = raw.get("method_options") or {}
    if isinstance(methods, list) and all(isinstance(m, str) for m in methods) and isinstance(options, dict):
        check_methods(methods, {k: v for k, v in options.items() if isinstance(v, dict)})


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


def _option_target(key: str, methods: list[str]) -> tuple[str | None, str]:
    """``(method entry, option key)`` of an ``--option`` key: ``gap-infonce.lr`` → one method's
    ``lr``; ``flex-clip.generator.lr`` → ``generator.lr`` of ``flex-clip`` (a key of an option
    group; the method nests the dotted key); ``lr``, or ``generator.lr`` when it is an option of
    one of ``methods`` → ``(None, key)``, every method's. Another dotted key names a method that
    is not run: an error."""
    for m in sorted(methods, key=len, reverse=True):  # the longest entry first: gcrdp@k0.5.lam
        if key.startswith(f"{m}."):
            return m, key[len(m) + 1 :]
    if "." in key and not _is_group_option(key, methods):
        raise ConfigError(f"--option {key}=...: method {key.rpartition('.')[0]!r} is not among --methods {methods}.")
    return None, key


def _is_group_option(key: str, methods: list[str]) -> bool:
    """Whether dotted ``key`` (``generator.lr``) is an option of one of ``methods`` (from the
    generated table: no method is imported)."""
    from .method_options import METHOD_OPTIONS

    return any(key in METHOD_OPTIONS.get(m.split("@", 1)[0].lower(), ()) for m in methods)


def _method_options(items: Sequence[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--option lr=1e-3`` applies to every method; ``--option gap-infonce.lr=1e-3`` to one;
    ``--option flex-clip.generator.lr=1e-3`` to a key of one method's option group, kept dotted
    (``{"flex-clip": {"generator.lr": 1e-3}}``: it merges with a config file's ``"generator"``
    group, and the method nests it)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in _parse_assignments(items, "--option").items():
        method, name = _option_target(key, methods)
        for m in [method] if method is not None else methods:
            out.setdefault(m, {})[name] = value
    return out


def int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``low`` (checked as the flags are read, before any import)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{what} must be >= {low}, got {value}.")
        return value

    return parse


def fraction(text: str) -> float:
    """An argparse ``type``: a float in [0, 1) (``--val-fraction 0``: no validation)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}.")
    return value


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


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    """``--scheduler`` / ``--workers``: extract the missing features on a Dask cluster."""
    g = p.add_argument_group(
        "feature extraction on a Dask cluster (pip install 'gcrdp[dask]'; the cache folder must be shared by every worker)"
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="extract the missing items on the Dask cluster of this scheduler (tcp://HOST:8786): one task per shard, "
        "each publishing its cache chunk atomically; the same arrays as a local extraction",
    )
    g.add_argument(
        "--workers", type=int_at_least(1, "--workers"), default=None, metavar="N", help="the same on a local cluster of N worker processes"
    )


def _cluster(args: argparse.Namespace) -> str | int | None:
    """The Dask cluster the flags name: a scheduler address, a number of local workers, or None."""
    if args.scheduler is not None and args.workers is not None:
        raise ConfigError("--scheduler and --workers are two ways to name a Dask cluster; pass one.")
    return args.scheduler if args.scheduler is not None else args.workers


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
        "--extract-batch-size",
        type=int_at_least(1, "--extract-batch-size"),
        default=None,
        help="images per batch of feature extraction, texts twice as many (default 64)",
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
        type=fraction,
        default=None,
        help="share of the seen classes held out for validation (default 0.2; with "
        "--val-mode mirror at least 10 classes / 200 pairs, at most half; 0: no validation, the last epoch is kept)",
    )
    g.add_argument(
        "--val-mode",
        choices=["mirror", "zero-shot", "zero-shot-matched"],
        default=None,
        help="mirror (default): the validation classes get the run's N shots in "
        "training, as the unseen classes do; zero-shot: they get none; zero-shot-matched: mirror's "
        "validation classes and pairs, none of them trains (a control of the same size)",
    )
    g.add_argument(
        "--val-report-fraction",
        type=fraction,
        default=None,
        metavar="F",
        help="share of each validation class's pairs held out of the choice of epoch; the chosen model's mAP on them "
        "is recorded beside best_val_map (an unbiased validation figure; default 0: off)",
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
    g.add_argument("--k", dest="ks", type=int_at_least(1, "Cut-offs k"), nargs="+", default=None, help="also report mAP/P/R@k")
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
    """(first line, whole docstring) of a dataset loader's module, as plain text."""
    import inspect as _inspect

    from ..data.registry import DATASETS, list_datasets

    list_datasets()  # registers the built-in loaders
    loader = DATASETS.get(name)
    doc = plain_text(_inspect.getdoc(_inspect.getmodule(loader)) or _inspect.getdoc(loader) or "")
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first, doc


# ----------------------------------------------------------------------------- reST → plain text
_INLINE = re.compile(
    r"``(?P<lit>[^`]+?)``"  # ``literal``
    r"|:(?P<role>[\w.:-]+):`(?P<target>[^`]+)`"  # :func:`x`, :class:`~a.b.C`, :mod:`title <x>`
    r"|`(?P<ref>[^`]+)`__?"  # `text <url>`_
    r"|`(?P<interp>[^`]+)`"  # `interpreted`
    r"|\*\*(?P<bold>[^*]+?)\*\*"
    r"|(?<![\w*])\*(?P<em>[^*\s](?:[^*]*?[^*\s])?)\*(?![\w*])"
)
_LINK = re.compile(r"^(?P<text>.*?)\s*<(?P<url>[^<>]+)>$", re.S)
_BORDER = re.compile(r"^\s*=+(?:\s+=+)+\s*$")


def _inline(match: re.Match[str]) -> str:
    if match["lit"] is not None:
        return match["lit"]
    if match["target"] is not None:
        target = match["target"]
        link = _LINK.match(target)
        if link:
            return link["text"]
        return target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target
    if match["ref"] is not None:
        link = _LINK.match(match["ref"])
        return f"{link['text']} ({link['url']})" if link else match["ref"]
    return match["interp"] or match["bold"] or match["em"] or ""


def plain_text(doc: str) -> str:
    """A reST docstring as readable plain text (``gcrdp datasets NAME``): roles, double
    backquotes and emphasis marks dropped, ``::`` made ``:``, simple tables re-aligned without
    their ``===`` borders; literal blocks, paragraphs and line breaks kept."""
    lines = doc.splitlines()
    out: list[str] = []
    text: list[str] = []  # the running stretch of ordinary lines (inline markup may span lines)
    literal: int | None = None  # after a line ending in '::': its indent (deeper lines are verbatim)
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if literal is not None and (not line.strip() or indent > literal):
            out.append(line)
            i += 1
            continue
        literal = None
        if _BORDER.match(line):
            out.extend(_paragraphs(text))
            text = []
            end = i + 1
            while end < len(lines) and not (_BORDER.match(lines[end]) and (end + 1 == len(lines) or not lines[end + 1].strip())):
                end += 1
            out.extend(_table(lines[i : end + 1]))
            i = end + 1
            continue
        text.append(line)
        if line.rstrip().endswith("::"):
            out.extend(_paragraphs(text))
            text, literal = [], indent
        i += 1
    out.extend(_paragraphs(text))
    return "\n".join(out)


def _paragraphs(lines: list[str]) -> list[str]:
    """Ordinary lines without their inline markup; a closing ``::`` becomes ``:`` (or goes)."""
    if not lines:
        return []
    out = _INLINE.sub(_inline, "\n".join(lines)).split("\n")
    last = out[-1].rstrip()
    if last.endswith("::"):
        head = last[:-2]
        out[-1] = head.rstrip() if not head.strip() or head.endswith(" ") else head + ":"
        if not out[-1].strip():
            out.pop()
    return [line.rstrip() for line in out]


def _table(lines: list[str]) -> list[str]:
    """A reST simple table (``lines`` from its top border to its bottom one) as aligned columns."""
    border = lines[0]
    starts = [m.start() for m in re.finditer(r"=+", border)]
    rows = [
        [line[a : starts[k + 1]] if k + 1 < len(starts) else line[a:] for k, a in enumerate(starts)]
        for line in lines
        if not _BORDER.match(line)
    ]
    cells = [[_INLINE.sub(_inline, c).rstrip() for c in row] for row in rows]
    widths = [max((len(row[k]) for row in cells), default=0) for k in range(len(starts))]
    indent = " " * starts[0]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1]).rstrip() for row in cells]
