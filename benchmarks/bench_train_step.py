"""One GCRDP training step with the GMM module (K = 3, T = 3) against the same step with global
average pooling (``use_gmm=False``): same batch, same losses otherwise, same process.

    python benchmarks/bench_train_step.py [--batch 128] [--repeats 10] [--parts]

``--parts`` also times, in the same run, the pieces that decided the implementation: the GMM
layer alone (forward + backward) per modality, the multi-positive loss in its fast form against
the dense (2BK, 2BK) form, and torch's ``bmm`` on the small-K shapes of the EM in the layout
used against the transposed one.

Time: median over repeats of forward + backward + Adam step, the two variants interleaved.
Peak memory: each variant also runs in a fresh subprocess; the figure is the peak extra
resident memory of one step after a warm-up step (see ``peak_child``): activations, gradients
and temporaries (CPU tensors are not seen by tracemalloc). "Saved for backward" counts the
distinct tensors autograd keeps for the backward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from _proc import proc_status_kib


def make_batch(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.zeros(batch, 16, dtype=torch.bool)
    lengths = torch.randint(3, 17, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        text_mask[i, :n] = True
    labels = torch.zeros(batch, 57)
    labels[torch.arange(batch), torch.randint(0, 57, (batch,), generator=g)] = 1
    return {
        "image_local": torch.randn(batch, 49, 1280, generator=g).relu(),
        "image_mask": torch.ones(batch, 49, dtype=torch.bool),
        "text_local": torch.randn(batch, 16, 384, generator=g),
        "text_mask": text_mask,
        "labels": labels,
    }


def build(use_gmm: bool):
    from gcrdp.methods import build_method

    m = build_method("gcrdp", {"use_gmm": use_gmm})
    torch.manual_seed(0)
    model = m.init_model(image_dim=1280, text_dim=384, n_classes=57)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch):
        loss, _ = m._loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def saved_for_backward_mib(use_gmm: bool, batch: int) -> float:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one step (the
    activation memory that dominates a step's peak), counted with saved-tensor hooks."""
    from gcrdp.methods import build_method

    m = build_method("gcrdp", {"use_gmm": use_gmm})
    torch.manual_seed(0)
    model = m.init_model(image_dim=1280, text_dim=384, n_classes=57)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = m._loss(model, make_batch(batch))
    loss.backward()
    return sum(seen.values()) / 2**20


def peak_child(use_gmm: bool, batch: int) -> float:
    """Peak extra resident memory (MiB) of one training step after a warm-up step, in this
    (fresh) process: the kernel's peak-RSS counter is reset after the warm-up (Linux
    ``/proc/self/clear_refs``; run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns
    freed tensor buffers instead of caching them). Elsewhere: the ``ru_maxrss`` growth."""
    b = make_batch(batch)
    step = build(use_gmm)
    step(b)  # warm-up: optimizer state, kernels
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = proc_status_kib("VmRSS")
        step(b)
        return (proc_status_kib("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step(b)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB on Linux


def _median_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def parts(batch: int, repeats: int) -> None:
    import torch.nn.functional as F

    from gcrdp.losses.multi_positive import _dense_multi_positive_infonce, multi_positive_infonce
    from gcrdp.model.gmm import GMMLayer, gmm_views

    b = make_batch(batch)
    torch.manual_seed(0)
    layer = GMMLayer(256)
    print("\n| piece | time (ms) |\n|---|---|")
    for name, n, mask in (("image", 49, b["image_mask"]), ("text", 16, b["text_mask"])):
        x = torch.randn(batch, n, 256, requires_grad=True)

        def em():
            views, g = gmm_views(layer(x, mask, final_e_step=False))
            (views.sum() + g.sum()).backward()

        print(f"| GMM layer forward+backward, {name} (N = {n}) | {_median_ms(em, repeats):.1f} |")
    vi = F.normalize(torch.randn(batch, 3, 256), dim=-1).requires_grad_()
    vt = F.normalize(torch.randn(batch, 3, 256), dim=-1).requires_grad_()
    fast = lambda: multi_positive_infonce(vi, vt, 0.2).backward()  # noqa: E731
    dense = lambda: _dense_multi_positive_infonce(  # noqa: E731
        vi, vt, 0.2, None, class_positives=False, intra_modal_negatives=False
    ).backward()
    print(f"| multi-positive InfoNCE K = 3, fast form, forward+backward | {_median_ms(fast, repeats):.1f} |")
    print(f"| multi-positive InfoNCE K = 3, dense (2BK, 2BK) form | {_median_ms(dense, repeats):.1f} |")
    n, d, k = 49, 256, 3
    x, a = torch.randn(batch, n, d), torch.randn(batch, k, d)
    g_nk, g_kn = torch.randn(batch, n, k), torch.randn(batch, k, n)
    shapes = [
        ("(B,K,D) @ (B,N,D)ᵀ -> (B,K,N) (used)", lambda: torch.bmm(a, x.transpose(1, 2))),
        ("(B,N,D) @ (B,K,D)ᵀ -> (B,N,K)", lambda: torch.bmm(x, a.transpose(1, 2))),
        ("(B,K,N) @ (B,N,D) -> (B,K,D) (used)", lambda: torch.bmm(g_kn, x)),
        ("(B,N,D)ᵀ @ (B,N,K) -> (B,D,K) (autograd's weight grad of the other layout)", lambda: torch.bmm(x.transpose(1, 2), g_nk)),
        ("(B,N,K) @ (B,K,D) -> (B,N,D), contiguous (used in backward)", lambda: torch.bmm(g_nk, a)),
    ]
    for label, fn in shapes:
        print(f"| bmm {label}, N = {n} | {_median_ms(fn, 3 * repeats):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--parts", action="store_true", help="also time the pieces (see the docstring)")
    ap.add_argument("--child", choices=["gmm", "gap"])
    ap.add_argument(
        "--json",
        type=str,
        default=None,
        help="also write the step times (ms), medians and peaks to this JSON file (input of 'gcrdp report --bench')",
    )
    args = ap.parse_args()
    if args.child:  # peak-memory probe in a fresh process
        print(json.dumps({"peak_mib": peak_child(args.child == "gmm", args.batch)}))
        return
    batch = make_batch(args.batch)
    steps = {"gap": build(False), "gmm": build(True)}
    for s in steps.values():
        s(batch)
    times: dict[str, list[float]] = {"gap": [], "gmm": []}
    for _ in range(args.repeats):
        for name, s in steps.items():
            t0 = time.perf_counter()
            s(batch)
            times[name].append(time.perf_counter() - t0)
    peaks = {}
    for name in ("gap", "gmm"):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--batch", str(args.batch)], capture_output=True, text=True, check=True, env=env
        ).stdout
        peaks[name] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    saved = {name: saved_for_backward_mib(name == "gmm", args.batch) for name in ("gap", "gmm")}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| step | time (ms) | saved for backward (MiB) | peak RSS Δ of a step (MiB) |\n|---|---|---|---|")
    for name, label in (("gap", "GAP (use_gmm=false)"), ("gmm", "GMM (K=3, T=3)")):
        print(f"| {label} | {1000 * med[name]:.0f} | {saved[name]:.0f} | {peaks[name]:.0f} |")
    print(f"\nGMM / GAP time ratio: {med['gmm'] / med['gap']:.2f}")
    if args.json:
        doc = {
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "n_components": 3,
            "times_ms": {k: [1000 * t for t in v] for k, v in times.items()},
            "median_ms": {k: 1000 * v for k, v in med.items()},
            "ratio": med["gmm"] / med["gap"],
            "peak_mib": peaks,
            "saved_for_backward_mib": saved,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    if args.parts:
        parts(args.batch, args.repeats)


if __name__ == "__main__":
    main()
