"""Extraction at scale (issue 19): peak memory of extracting N images and texts, by N.

Writes N synthetic images (small random-pixel PNGs, all different) and N short synthetic texts
once, then, for every N and storage, runs one fresh process that loads the encoders
(EfficientNet-Lite0 with its default backend, MiniLM-L6), encodes one batch of images and one of
texts to warm up, and calls :func:`gcrdp.encoders.extract_features` on the first N samples with a fresh
cache. Reported per run: the features' size, the wall time of ``extract_features``, the resident
memory after warm-up (models loaded) and the process's peak resident memory (``VmHWM``).

``--src`` runs another checkout's ``src`` (e.g. the code before shards, exported with
``git archive``); a checkout whose ``extract_features`` has no ``storage`` gets none.

Usage::

    python benchmarks/bench_extract_scale.py --n 2000 10000 --storage disk memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = "red green blue small large old new bright dark round square soft stone river cloud tree house road bird dog cat boat".split()


def make_items(root: Path, n: int) -> None:
    """``n`` distinct 32 × 32 PNGs and ``n`` texts under ``root`` (kept between runs)."""
    import numpy as np
    from PIL import Image

    img = root / "images"
    img.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        p = img / f"{i:07d}.png"
        pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)  # drawn even when the file exists: same images
        if not p.exists():
            Image.fromarray(pixels).save(p)
    texts = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 9)) + f" number {i}" for i in range(n)]
    (root / "texts.json").write_text(json.dumps(texts))


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(Path(args.src).resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import inspect

    from gcrdp.data.types import Dataset, Sample
    from gcrdp.encoders import extract_features, get_image_encoder, get_text_encoder

    root, cache = Path(args.items), Path(args.cache)
    models = cache / "models"
    if Path(args.models).is_dir():  # the ONNX export, made once by the first run
        shutil.copytree(args.models, models, dirs_exist_ok=True)
    texts = json.loads((root / "texts.json").read_text())[: args.n]
    paths = sorted((root / "images").glob("*.png"))[: args.n]
    ds = Dataset("synthetic", [Sample(f"s{i}", t, ("c",), "train", p) for i, (p, t) in enumerate(zip(paths, texts))], ["c"])
    image = get_image_encoder(args.image_encoder, num_threads=args.threads, artifact_dir=models)
    text = get_text_encoder("minilm-l6", num_threads=args.threads)
    image.encode(paths[: args.batch_size], batch_size=args.batch_size, progress=False)  # a full batch: the runtimes' buffers
    text.encode(texts[: 2 * args.batch_size], batch_size=2 * args.batch_size, progress=False)
    if not Path(args.models).is_dir() and models.is_dir():
        shutil.copytree(models, args.models)
    warm = _status("VmRSS")
    kw = {"storage": args.storage} if "storage" in inspect.signature(extract_features).parameters else {}
    t = time.perf_counter()
    feats = extract_features(ds, image, text, cache_dir=cache, batch_size=args.batch_size, progress=False, **kw)
    wall = time.perf_counter() - t
    out = {
        "n": args.n,
        "storage": feats.meta.get("storage", "memory"),
        "features_gib": feats.nbytes / 2**30,
        "wall_s": wall,
        "rss_warm_mib": warm / 2**10,
        "peak_rss_mib": _status("VmHWM") / 2**10,
        "backend": getattr(image, "backend", "?"),
    }
    print(json.dumps(out))
    return 0


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--storage", nargs="+", default=["disk"], choices=["disk", "memory", "auto"])
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--src", default=str(HERE.parent / "src"), help="the gcrdp sources to measure (default: this checkout)")
    ap.add_argument("--label", default="this checkout", help="what --src is, for the table")
    ap.add_argument("--workdir", default=None, help="where the items and caches go (default: a temporary folder)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--items", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--models", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.n = args.n[0]
        args.storage = args.storage[0]
        return child(args)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gcrdp-scale-"))
    items = work / "items"
    make_items(items, max(args.n))
    what = f"{args.image_encoder} + minilm-l6, batch {args.batch_size}, {args.threads} threads"
    print(f"# extract_features peak memory, {args.label}: {what}")
    print(f"# {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} CPUs, load average before: {os.getloadavg()}")
    print()
    print("| code | storage | N | features (GiB) | extract_features (s) | RSS after model load (MiB) | peak RSS (MiB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for storage in args.storage:
        for n in args.n:
            cache = work / f"cache-{storage}-{n}"
            shutil.rmtree(cache, ignore_errors=True)
            cmd = [sys.executable, __file__, "--child", "--n", str(n), "--storage", storage, "--image-encoder", args.image_encoder]
            cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads), "--src", args.src]
            cmd += ["--items", str(items), "--cache", str(cache), "--models", str(work / "models")]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                return res.returncode
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(
                f"| {args.label} | {r['storage']} | {n} | {r['features_gib']:.2f} | {r['wall_s']:.0f} | "
                f"{r['rss_warm_mib']:.0f} | {r['peak_rss_mib']:.0f} |",
                flush=True,
            )
            shutil.rmtree(cache, ignore_errors=True)
    print()
    print(f"# image backend: {r['backend']}; load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
