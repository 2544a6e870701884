"""Benchmark of the GMM/EM forward (gcrdp.model.gmm.fit_gmm) against a naive broadcast EM.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_gmm.py                  # B=128, D=256, K=3, T=3, N=49 and 16
    PYTHONPATH=src python benchmarks/bench_gmm.py --sizes 49 --repeats 5

Two implementations of the same math (same floors, same mass_floor prior), measured in the
same run on float32 inputs ``x (B, N, D)`` with every point valid:

* ``ours``: :func:`gcrdp.model.gmm.fit_gmm` — squared distances and the M-step sums as batched
  matrix products of ``x`` and ``x²`` ``(B, N, D)``; no ``(B, N, K, D)`` tensor;
* ``naive``: the textbook broadcast version written below — ``x[:, :, None] - means[:, None]``
  ``(B, N, K, D)`` in every E-step and ``resp[..., None] * x[:, :, None]`` /
  ``resp[..., None] * (x - μ)²`` ``(B, N, K, D)`` in every M-step.

The two agree (checked in float64 before timing). For each, three regimes: ``forward`` under
``torch.no_grad`` (embedding), ``forward (grad)`` with autograd recording, and
``forward+backward`` (a loss on the views and the global embedding, backward into x and the
initial means). Times are the median of ``--repeats`` runs after one warm-up (the two
implementations alternate), with ``torch.set_num_threads(--threads)``.

Memory, three ways (torch's CPU allocator is invisible to ``tracemalloc``):

* ``peak RSS Δ``: a fresh subprocess (with ``MALLOC_MMAP_THRESHOLD_=65536``, so that glibc
  returns every freed tensor buffer to the system instead of caching it) builds the inputs, runs
  the call once on a tiny batch (to load the kernels), resets the kernel's peak-RSS counter
  (``/proc/self/clear_refs``), runs the call once on the real batch and reports
  ``VmHWM − VmRSS before`` — the peak extra resident memory of one call, inputs excluded
  (Linux only; elsewhere the ``ru_maxrss`` increase, which misses peaks below earlier ones);
* ``largest tensor``: the largest tensor any operation produced, forward and backward (a
  ``TorchDispatchMode`` sees every op), i.e. the biggest single temporary;
* ``saved for backward``: the bytes of the distinct tensors autograd keeps for the backward
  (``torch.autograd.graph.saved_tensors_hooks``), the floor of training memory.

A last table shows why :func:`fit_gmm` centres every set before the EM: the largest difference
of the float32 responsibilities from float64 ones, with and without the centring, for sets with
a common offset.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from _proc import proc_status_kib

from gcrdp.model.gmm import GMMConfig, GMMResult, fit_gmm, gmm_views

MODES = ("forward", "forward (grad)", "forward+backward")


# ----------------------------------------------------------------------------- naive reference
def naive_fit_gmm(x: torch.Tensor, init_means: torch.Tensor, cfg: GMMConfig) -> GMMResult:
    """Broadcast EM with (B, N, K, D) temporaries; same update as fit_gmm (all points valid)."""
    b, _, d = x.shape
    k = cfg.n_components
    eps = cfg.mass_floor
    means = init_means.expand(b, k, d)
    weights = x.new_full((b, k), 1.0 / k)
    variances = x.new_full((b, k, d), cfg.init_var)

    def e_step(weights, means, variances):
        diff = x[:, :, None, :] - means[:, None]  # (B, N, K, D)
        maha = (diff * diff / variances[:, None]).sum(-1)  # (B, N, K)
        log_prob = (
            -0.5 * (maha + variances.log().sum(-1)[:, None] + d * torch.log(torch.tensor(2 * torch.pi, dtype=x.dtype)))
            + weights.log()[:, None]
        )
        log_norm = torch.logsumexp(log_prob, -1)  # (B, N)
        return torch.exp(log_prob - log_norm[..., None]), log_norm.mean(1)

    for _ in range(cfg.n_iter):
        resp, _ = e_step(weights, means, variances)  # (B, N, K)
        nk = resp.sum(1)  # (B, K)
        new_means = ((resp[..., None] * x[:, :, None]).sum(1) + eps * means) / (nk + eps)[..., None]
        diff = x[:, :, None, :] - new_means[:, None]  # (B, N, K, D)
        sq = (resp[..., None] * diff * diff).sum(1) + eps * (variances - cfg.var_floor).clamp_min(0)
        variances = sq / (nk + eps)[..., None] + cfg.var_floor
        means = new_means
        weights = (nk + eps) / (nk + eps).sum(-1, keepdim=True)
    resp, ll = e_step(weights, means, variances)
    return GMMResult(weights, means, variances, resp, ll)


IMPLS: dict[str, Callable[[torch.Tensor, torch.Tensor, GMMConfig], GMMResult]] = {
    "ours": lambda x, init, cfg: fit_gmm(x, None, init, cfg),
    "naive": naive_fit_gmm,
}


# ----------------------------------------------------------------------------- one measurement
def make_inputs(b: int, n: int, d: int, k: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b, k, d, generator=g, dtype=dtype)
    x = centres[:, torch.arange(n) % k] + 0.5 * torch.randn(b, n, d, generator=g, dtype=dtype)
    init = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=dtype))[0].T.contiguous()  # (K, D)
    return x, init


def run_once(impl: str, mode: str, x: torch.Tensor, init: torch.Tensor, cfg: GMMConfig) -> None:
    fn = IMPLS[impl]
    if mode == "forward":
        with torch.no_grad():
            gmm_views(fn(x, init, cfg))
        return
    xg, ig = x.detach().requires_grad_(), init.detach().requires_grad_()
    views, glob = gmm_views(fn(xg, ig, cfg))
    if mode == "forward+backward":
        (views.sum() + glob.sum()).backward()


def largest_tensor_and_saved(impl: str, x, init, cfg) -> tuple[int, int]:
    """(bytes of the largest tensor any op produced in forward+backward, bytes saved for backward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.max = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.max = max(self.max, t.numel() * t.element_size())
            return out

    with Largest() as mode:
        run_once(impl, "forward+backward", x, init, cfg)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    xg, ig = x.detach().requires_grad_(), init.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        views, glob = gmm_views(IMPLS[impl](xg, ig, cfg))
    del views, glob
    return mode.max, sum(storages.values())


def rss_child(impl: str, mode: str, b: int, n: int, d: int, k: int, t: int, threads: int) -> None:
    torch.set_num_threads(threads)
    x, init = make_inputs(b, n, d, k)
    cfg = GMMConfig(n_components=k, n_iter=t)
    tiny_x, tiny_init = make_inputs(2, 4, d, k)
    run_once(impl, mode, tiny_x, tiny_init, cfg)  # load kernels, tiny sizes only
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = proc_status_kib("VmRSS")
        run_once(impl, mode, x, init, cfg)
        delta = proc_status_kib("VmHWM") - before
    except OSError:  # not Linux: coarser
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_once(impl, mode, x, init, cfg)
        delta = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"rss_delta_kib": delta}))


def peak_rss_mib(impl: str, mode: str, b: int, n: int, d: int, k: int, t: int, threads: int) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", impl, mode, str(b), str(n), str(d), str(k), str(t), str(threads)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_delta_kib"] / 1024


def median_times(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; the functions alternate, so drifting load hits all."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def check_agreement(b: int, n: int, d: int, k: int, t: int) -> float:
    x, init = make_inputs(b, n, d, k, dtype=torch.float64)
    cfg = GMMConfig(n_components=k, n_iter=t)
    ours, naive = fit_gmm(x, None, init, cfg), naive_fit_gmm(x, init, cfg)
    return max(float((a - c).abs().max()) for a, c in zip(ours, naive))


def float32_accuracy(offsets=(0.0, 3.0, 10.0), b: int = 32, n: int = 49, d: int = 256) -> list[str]:
    """Why fit_gmm centres each set: float32 vs float64 results, with and without centring.

    Sets of 3 clusters (centres 0.3·N(0, 1), noise 0.1) shifted by a common offset, relative
    anchors; the uncentred variant runs the same private E/M functions on the raw x."""
    from gcrdp.model.gmm import (  # private: the uncentred variant
        _e_step,
        _m_step,
        _stats,
    )

    def uncentred(x, init, cfg):
        mask = torch.ones(x.shape[:2], dtype=torch.bool)
        stats = _stats(x)
        w, mu, var = x.new_full((b, 3), 1 / 3), init, x.new_full((b, 3, d), cfg.init_var)
        for _ in range(cfg.n_iter):
            resp, _ = _e_step(stats, mask, w, mu, var)
            w, mu, var = _m_step(stats, resp, cfg, mu, var)
        return _e_step(stats, mask, w, mu, var)[0].transpose(1, 2)  # (B, K, N) -> (B, N, K)

    rows = ["| common offset | max abs Δ resp, centred (used) | max abs Δ resp, uncentred |", "|---:|---:|---:|"]
    g = torch.Generator().manual_seed(0)
    cfg = GMMConfig()
    for off in offsets:
        c = 0.3 * torch.randn(b, 3, d, generator=g, dtype=torch.float64)
        x = c[:, torch.arange(n) % 3] + 0.1 * torch.randn(b, n, d, generator=g, dtype=torch.float64) + off
        q = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))[0].T
        init = x.mean(1, keepdim=True) + q  # relative anchors, (B, K, D)
        ref = fit_gmm(x, None, init, cfg).resp
        ours = fit_gmm(x.float(), None, init.float(), cfg).resp
        unc = uncentred(x.float(), init.float(), cfg)
        rows.append(f"| {off:g} | {(ours - ref).abs().max():.1e} | {(unc - ref).abs().max():.1e} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--sizes", type=int, nargs="+", default=[49, 16], help="set sizes N")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts to time (memory: the first)")
    p.add_argument("--rss-child", nargs=8, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        impl, mode, *nums = args.rss_child
        rss_child(impl, mode, *map(int, nums))
        return
    b, d, k, t = args.batch, args.dim, args.k, args.iters
    cfg = GMMConfig(n_components=k, n_iter=t)
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; B={b}, D={d}, K={k}, T={t}, float32; median of {args.repeats}; "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    print("\n| N | mode | threads | ours (ms) | naive (ms) | speed-up | peak RSS Δ ours (MiB) | peak RSS Δ naive (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    extra = []
    for n in args.sizes:
        diff = check_agreement(8, n, d, k, t)
        assert diff < 1e-9, diff
        x, init = make_inputs(b, n, d, k)
        for mode in MODES:
            rss = {impl: peak_rss_mib(impl, mode, b, n, d, k, t, args.threads[0]) for impl in IMPLS}
            for threads in args.threads:
                torch.set_num_threads(threads)
                tm = median_times({impl: functools.partial(run_once, impl, mode, x, init, cfg) for impl in IMPLS}, args.repeats)
                print(
                    f"| {n} | {mode} | {threads} | {1e3 * tm['ours']:.1f} | "
                    f"{1e3 * tm['naive']:.1f} | {tm['naive'] / tm['ours']:.1f}x | "
                    f"{rss['ours']:.0f} | {rss['naive']:.0f} |",
                    flush=True,
                )
        sizes = {impl: largest_tensor_and_saved(impl, x, init, cfg) for impl in IMPLS}
        extra.append((n, diff, sizes))
    print(
        "\n| N | largest tensor ours (MiB) | largest tensor naive (MiB) | saved for backward ours "
        "(MiB) | saved for backward naive (MiB) | max |ours - naive| (float64) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n, diff, s in extra:
        print(
            f"| {n} | {s['ours'][0] / 2**20:.1f} | {s['naive'][0] / 2**20:.1f} | "
            f"{s['ours'][1] / 2**20:.1f} | {s['naive'][1] / 2**20:.1f} | {diff:.1e} |"
        )
    print("\nfloat32 vs float64 responsibilities (B=32, N=49, D=256, K=3, T=3):\n")
    print("\n".join(float32_accuracy()))
    print(
        f"\nx itself: {b * args.sizes[0] * d * 4 / 2**20:.1f} MiB at N={args.sizes[0]}; "
        f"one (B, N, K, D) float32 tensor: {b * args.sizes[0] * k * d * 4 / 2**20:.1f} MiB; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
