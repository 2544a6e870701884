"""Extraction on a local Dask cluster against one process: wall time and identical arrays.

``N`` random 224 × 224 RGB images (seeded) and ``N`` short captions are extracted with the
default encoders (efficientnet-lite0, minilm-l6) three ways, each into a fresh feature cache:

- *local*: :func:`gcrdp.encoders.extract_features` in this process (torch on every core);
- *dask*: :func:`gcrdp.encoders.dask_extract.extract_features_dask` with ``workers=W`` (a local
  cluster of W one-thread worker processes, started and closed by the call: included);
- *dask, cluster up*: the same on a cluster started beforehand (its start excluded; each
  worker still loads the models once).

``--worker-threads K`` gives each worker's encoders ``num_threads=K`` (default: all the cores
of the process, as locally — W workers on C cores then share them). Every variant's arrays are
compared with the local ones (``array_equal``). Prints one JSON object, with the machine and
its load average (``os.getloadavg``) before and after.

Usage::

    python benchmarks/bench_dask_extract.py --n 1024 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import numpy as np  # noqa: E402

from gcrdp.data.types import Dataset, Sample  # noqa: E402
from gcrdp.encoders import extract_features, get_image_encoder, get_text_encoder  # noqa: E402
from gcrdp.encoders.base import available_cpus  # noqa: E402
from gcrdp.encoders.dask_extract import EncoderSpec, extract_features_dask, open_cluster  # noqa: E402

WORDS = "a red green blue small large round square photo of the an with on near dog cat bird tree".split()


def make_dataset(root: Path, n: int, seed: int = 0) -> Dataset:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        path = root / "img" / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)).save(path)
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))) + f" {i}"
        samples.append(Sample(f"s{i}", text, ("c0",), "train", path))
    return Dataset("bench-dask", samples, ["c0"])


def same(a, b) -> bool:
    return a.sample_ids == b.sample_ids and all(
        np.array_equal(getattr(getattr(a, m), p), getattr(getattr(b, m), p)) for m in ("image", "text") for p in ("local", "mask", "pooled")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1024, help="images and captions (default 1024)")
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    ap.add_argument("--worker-threads", type=int, default=None, help="num_threads of each worker's encoders (default: all cores)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    load_before = os.getloadavg()
    out: dict = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": available_cpus()},
        "n": args.n,
        "workers": args.workers,
        "worker_threads": args.worker_threads or "all",
        "batch_size": args.batch_size,
    }
    options = {"num_threads": args.worker_threads} if args.worker_threads else {}
    specs = (EncoderSpec("image", "efficientnet-lite0", dict(options)), EncoderSpec("text", "minilm-l6", dict(options)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = make_dataset(root / "data", args.n)
        t0 = time.perf_counter()
        local = extract_features(
            ds,
            get_image_encoder("efficientnet-lite0"),
            get_text_encoder("minilm-l6"),
            cache_dir=root / "local",
            batch_size=args.batch_size,
            progress=False,
            storage="memory",
        )
        out["local_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        dask = extract_features_dask(
            ds, *specs, cache_dir=root / "dask", workers=args.workers, batch_size=args.batch_size, progress=False, storage="memory"
        )
        out["dask_s"] = round(time.perf_counter() - t0, 2)
        out["dask_equal"] = same(dask, local)
        out["shards"] = dask.meta["dask_shards"]
        t0 = time.perf_counter()
        with open_cluster(args.workers) as client:
            out["cluster_start_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            up = extract_features_dask(
                ds, *specs, cache_dir=root / "dask-up", client=client, batch_size=args.batch_size, progress=False, storage="memory"
            )
            out["dask_cluster_up_s"] = round(time.perf_counter() - t0, 2)
        out["dask_cluster_up_equal"] = same(up, local)
    out["speedup_vs_local"] = round(out["local_s"] / out["dask_s"], 2)
    out["speedup_vs_local_cluster_up"] = round(out["local_s"] / out["dask_cluster_up_s"], 2)
    out["loadavg_before"] = [round(x, 2) for x in load_before]
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
