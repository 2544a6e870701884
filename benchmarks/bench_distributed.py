"""Training on 2 ranks (``torchrun``, gloo) against one process, on the same machine (issue 22).

Builds seeded synthetic training features of the default encoders' shapes — image grids
(n, 49, 1280) and text tokens (n, 16, 384), float16, 50 classes — and fits a method for a few
epochs without validation (every epoch does the same work), in child processes:

* ``1 process``: one process with ``--threads`` torch threads (default: every core);
* ``1 process, threads/N``: one process with ``threads / N`` torch threads;
* ``N ranks``: ``torchrun --standalone --nproc_per_node=N``, each rank with
  ``threads / N`` torch threads, the same global batch.

It reports the seconds per epoch (the fit's own clock, after start-up), the ratio of the ranks
to one process, and the largest difference of the final embeddings of a probe set between the
ranks and one process, and — for scale — between the two thread counts of one process (without
dropout the fits are the same computation, so both are float round-off as the method amplifies
it)::

    python benchmarks/bench_distributed.py --pairs 4000 --epochs 3 --method gcrdp gap-infonce

On one 2-core machine a process already uses both cores, so 2 ranks cannot be faster here:
the figures measure what the distribution costs (the gathers, the gradient all-reduce, the
smaller matrix products), not the gain that more cores or machines bring.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (49, 1280)
TEXT_SHAPE = (16, 384)
N_CLASSES = 50
ROOT = Path(__file__).resolve().parents[1]


def _data(n: int, seed: int = 0):
    from gcrdp.data.features import FeatureSet, ModalityFeatures
    from gcrdp.methods import FitData

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=n)
    centres_i = rng.normal(size=(N_CLASSES, IMAGE_SHAPE[1])).astype(np.float32)
    centres_t = rng.normal(size=(N_CLASSES, TEXT_SHAPE[1])).astype(np.float32)

    def grid(centres: np.ndarray, shape: tuple[int, int]) -> ModalityFeatures:
        local = (centres[labels][:, None, :] + rng.normal(size=(n, *shape)).astype(np.float32)).astype(np.float16)
        mask = np.ones((n, shape[0]), bool)
        return ModalityFeatures(local, mask, local.astype(np.float32).mean(1))

    feats = FeatureSet(grid(centres_i, IMAGE_SHAPE), grid(centres_t, TEXT_SHAPE), [f"s{i}" for i in range(n)], {})
    y = np.zeros((n, N_CLASSES), bool)
    y[np.arange(n), labels] = True
    return feats, FitData(train=feats, train_labels=y, oversample=np.zeros(n, bool))


def worker(args: argparse.Namespace) -> None:
    """One fit (in each rank under torchrun); rank 0 writes the figures to ``args.out``."""
    import torch

    from gcrdp.methods import build_method
    from gcrdp.training.distributed import is_main, process_group, world_size

    torch.set_num_threads(args.threads)
    if args.em_dtype == "float64":
        _em_in_float64()
    with process_group("cpu"):
        feats, data = _data(args.pairs)
        opts = {"max_epochs": args.epochs, "batch_size": args.batch_size, "dropout": 0.0, **_options(args.option)}
        method = build_method(args.method, opts)
        t0 = time.perf_counter()
        report = method.fit(data, seed=0)
        seconds = time.perf_counter() - t0
        probe = feats.subset(np.arange(min(256, args.pairs)))
        emb = method.embed_images(probe.image)
        if is_main():
            np.save(Path(args.out).with_suffix(".npy"), emb)
            Path(args.out).write_text(
                json.dumps(
                    {
                        "ranks": world_size(),
                        "threads_per_rank": args.threads,
                        "seconds": seconds,
                        "epochs": report.epochs,
                        "seconds_per_epoch": seconds / max(report.epochs, 1),
                    }
                )
            )


def _em_in_float64() -> None:
    """Run every GMM's EM in float64 (the features come in and the fitted views go out in
    float32): the experiment of issue 23 item 4 — does float64 EM remove the SPEC ``gcrdp``'s
    sensitivity to round-off? A benchmark-only patch, not an option of the method."""
    from gcrdp.model import gmm

    forward = gmm.GMMLayer.forward

    def forward64(self, x, mask, *, final_e_step: bool = True):
        out = forward(self, x.double(), mask, final_e_step=final_e_step)
        return gmm.GMMResult(*(None if t is None else t.float() for t in out))

    gmm.GMMLayer.forward = forward64


def _options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` method options (JSON values: 32, 32.0, true, "cross")."""
    out = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _launch(args: argparse.Namespace, method: str, ranks: int, threads: int, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    launch = (
        [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    )
    cmd = [*launch, __file__, "--worker", "--method", method, "--pairs", str(args.pairs), "--epochs", str(args.epochs)]
    cmd += ["--batch-size", str(args.batch_size), "--threads", str(threads), "--out", str(out)]
    cmd += [a for kv in args.option for a in ("--option", kv)] + ["--em-dtype", args.em_dtype]
    subprocess.run(cmd, env=env, check=True, timeout=3600)
    res = json.loads(out.read_text())
    res["embeddings"] = np.load(out.with_suffix(".npy"))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--method", nargs="+", default=["gcrdp", "gap-infonce"])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the one process (shared out over ranks)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each pair of runs")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a method option (e.g. e_step_temperature=32)")
    p.add_argument(
        "--em-dtype", choices=["float32", "float64"], default="float32", help="float64: GMM EM in double precision (issue 23 item 4)"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.method = args.method[0]
        worker(args)
        return
    opts = f"; options {' '.join(args.option)}" if args.option else ""
    opts += "; EM in float64" if args.em_dtype == "float64" else ""
    print(f"# {args.pairs} pairs, {args.epochs} epochs, global batch {args.batch_size}{opts}; load {os.getloadavg()[0]:.1f}")
    few = max(1, args.threads // args.ranks)
    print(
        f"| method | 1 process × {args.threads} threads (s/epoch) | 1 process × {few} (s/epoch) | {args.ranks} ranks × {few} (s/epoch) "
        f"| ranks / 1 process | max Δ embedding, ranks vs 1 process | max Δ embedding, {args.threads} vs {few} threads |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.method:
            one, thin, many = [], [], []
            for r in range(args.repeats):  # interleaved, so that a change of load hits all three
                a = _launch(args, method, 1, args.threads, Path(tmp) / f"{method}-1-{r}.json")
                c = _launch(args, method, 1, few, Path(tmp) / f"{method}-t-{r}.json")
                b = _launch(args, method, args.ranks, few, Path(tmp) / f"{method}-n-{r}.json")
                one.append(a["seconds_per_epoch"])
                thin.append(c["seconds_per_epoch"])
                many.append(b["seconds_per_epoch"])
                diff = float(np.abs(a["embeddings"] - b["embeddings"]).max())
                threads_diff = float(np.abs(a["embeddings"] - c["embeddings"]).max())
            t1, tt, tn = (float(np.median(x)) for x in (one, thin, many))
            print(f"| {method} | {t1:.2f} | {tt:.2f} | {tn:.2f} | {tn / t1:.2f}× | {diff:.1e} | {threads_diff:.1e} |", flush=True)
    print(f"# load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
