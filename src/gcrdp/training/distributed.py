"""Building blocks for training on several processes with ``torch.distributed`` (issue 22).

Nothing here is used by a single-process run: every helper is the identity (or a no-op) when no
process group is initialised, so the default path is unchanged.

* :func:`distributed_env` / :func:`init_distributed` — the process group read from the
  environment: ``torchrun``'s ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``, or the variables ``srun`` sets for each task of a job step
  (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``) as a fallback; gloo on CPU,
  NCCL on GPU.
* :func:`gather_with_grad` — every rank's rows concatenated in rank order; the backward pass is
  the adjoint of the gather (the incoming gradients are summed over ranks and each rank keeps
  its own rows), so the objective that is differentiated is the **sum over ranks** of what each
  rank computes from the gathered tensor. Ranks may hold different numbers of rows.
* :func:`gather_labels` — the same without gradient (labels, class ids, masks).
* :func:`all_reduce_decision` — one boolean decision (e.g. early stopping) shared by all ranks.
* :func:`rank_batches` — each rank's share of the same seeded global batches as a
  single-process run (:func:`gcrdp.training.batching.epoch_batches` drawn from
  ``numpy_rng(seed, epoch)``), a contiguous slice of every global batch, so the gathered batch
  is the global batch in its single-process order.
* :func:`global_batch_loss` — a contrastive loss computed on the global batch. Each rank returns
  its **share** ``L / world_size`` of the global loss ``L``: the shares sum to ``L``, the
  gradient with respect to each rank's own inputs equals the single-process gradient of ``L``
  for those rows, and the parameter gradients **summed** over ranks equal the single-process
  parameter gradient (under ``DistributedDataParallel``, which averages, multiply the share by
  ``world_size`` — i.e. back-propagate ``L`` itself).

* :func:`is_main`, :func:`barrier`, :func:`broadcast_object`, :func:`main_first`,
  :func:`all_reduce_gradients`, :func:`broadcast_parameters`, :func:`rank_torch_seed` — what the
  training loop (:func:`gcrdp.training.fit_loop`) and the runner use to train one model on
  several ranks: rank 0 writes, every rank takes the same decisions.

``gcrdp train`` / ``gcrdp run`` under ``torchrun`` (or ``srun``) call :func:`init_distributed`;
see docs/scale.md § "Several machines: distributed training".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError, DataError
from .batching import epoch_batches
from .seeding import numpy_rng

DEFAULT_MASTER_PORT = 29500
#: how long a collective waits for the other ranks (``GCRDP_DIST_TIMEOUT_S`` overrides it): long
#: enough for rank 0 to extract the features while the others wait at a barrier
DEFAULT_TIMEOUT_S = 7200.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a distributed job, as read from the environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" or "slurm"


def _int_var(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"Environment variable {name} must be an integer, got {value!r}.") from None


def distributed_env(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The distributed job this process belongs to, or ``None`` for a plain single process.

    ``torchrun``'s variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``) win; those ``srun`` sets for the tasks of a job step (``SLURM_PROCID``,
    ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``) are the fallback — not the job's
    ``SLURM_NTASKS``, which a batch script sees too: a plain ``gcrdp run`` in an ``sbatch``
    script of several tasks is one process, not rank 0 of a world that never comes —, with
    ``MASTER_ADDR`` required (e.g. ``export MASTER_ADDR=$(scontrol show hostnames
    $SLURM_JOB_NODELIST | head -n1)``). ``MASTER_PORT`` defaults to 29500. A world of
    size 1 counts as no distributed job.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE"), _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        source = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        rank, world = _int_var(env, "SLURM_PROCID"), _int_var(env, "SLURM_STEP_NUM_TASKS")
        local = _int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        source = "slurm"
    else:
        return None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"Inconsistent distributed environment ({source}): rank {rank}, world size {world}, local rank {local}.")
    if world == 1:
        return None
    addr = env.get("MASTER_ADDR")
    if not addr:
        raise ConfigError(
            f"A distributed job ({source}, world size {world}) needs MASTER_ADDR, the host of rank 0; under SLURM, "
            "export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)."
        )
    port = _int_var(env, "MASTER_PORT") if "MASTER_PORT" in env else DEFAULT_MASTER_PORT
    return DistEnv(rank=rank, world_size=world, local_rank=local, master_addr=addr, master_port=port, source=source)


def default_backend(device: str) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` otherwise."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def init_distributed(
    device: str = "cpu",
    *,
    env: DistEnv | None = None,
    backend: str | None = None,
    init_method: str | None = None,
    timeout_s: float | None = None,
) -> DistEnv | None:
    """Initialise the default process group from the environment; ``None`` (and nothing done)
    when this is a single process. With a CUDA device, the process uses ``cuda:LOCAL_RANK``.

    ``init_method`` overrides the rendezvous (default ``tcp://MASTER_ADDR:MASTER_PORT``), e.g. a
    ``file://`` path in tests. ``timeout_s`` bounds every collective (default
    ``$GCRDP_DIST_TIMEOUT_S`` or :data:`DEFAULT_TIMEOUT_S`).
    """
    env = distributed_env() if env is None else env
    if env is None:
        return None
    if not dist.is_available():
        raise ConfigError("This PyTorch build has no torch.distributed; it cannot run a distributed job.")
    backend = backend or default_backend(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("The NCCL backend needs CUDA; use gloo on CPU.")
        torch.cuda.set_device(env.local_rank)
    if timeout_s is None:
        raw = os.environ.get("GCRDP_DIST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))
        try:
            timeout_s = float(raw)
        except ValueError:
            raise ConfigError(f"GCRDP_DIST_TIMEOUT_S must be a number of seconds, got {raw!r}.") from None
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method=init_method or f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    return env


def shutdown_distributed() -> None:
    """Destroy the default process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _comm_device(x: torch.Tensor | None = None) -> torch.device:
    """The device collectives run on: CUDA for NCCL, else the tensor's (CPU for gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return x.device if x is not None else torch.device("cpu")


def _row_counts(n: int, device: torch.device) -> list[int]:
    """Every rank's number of rows, in rank order."""
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, mine)
    return [int(c.item()) for c in counts]


def _all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """All ranks' ``x`` (same trailing shape and dtype, any number of rows) concatenated in rank
    order, and the row counts. Rows are padded to the largest count for the collective."""
    device = _comm_device(x)
    counts = _row_counts(x.shape[0], device)
    most = max(counts)
    send = x.detach().to(device)
    if send.dtype == torch.bool:  # not every backend reduces/gathers bool
        send = send.to(torch.uint8)
    if send.shape[0] < most:
        send = torch.cat([send, send.new_zeros((most - send.shape[0], *send.shape[1:]))])
    parts = [torch.empty_like(send) for _ in counts]
    dist.all_gather(parts, send.contiguous())
    out = torch.cat([p[:c] for p, c in zip(parts, counts)]).to(device=x.device, dtype=x.dtype)
    return out, counts


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward is its adjoint: sum the gradient over ranks, keep own rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out, counts = _all_gather_rows(x)
        me = dist.get_rank()
        ctx.rows = (sum(counts[:me]), sum(counts[: me + 1]))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        device = _comm_device(grad)
        total = grad.detach().to(device).contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start, stop = ctx.rows
        return total[start:stop].to(grad.device)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order, differentiable.

    The gradient reaching each rank's ``x`` is the sum over ranks of the gradients of their
    objectives with respect to that rank's rows — what a single process would get by
    differentiating the sum of all ranks' objectives. Ranks may have different numbers of rows
    (same trailing shape and dtype). The identity outside a process group.
    """
    if not is_distributed():
        return x
    out = _GatherWithGrad.apply(x)
    assert isinstance(out, torch.Tensor)
    return out


def gather_labels(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order, without gradient (labels, ids,
    masks; any dtype, bool included). The identity outside a process group."""
    if not is_distributed():
        return x
    return _all_gather_rows(x)[0]


def all_reduce_decision(flag: bool, how: str = "any") -> bool:
    """One decision for all ranks: ``"any"`` rank's flag is True, ``"all"`` are, or ``"rank0"``'s.

    Every rank must call it at the same point (it is a collective), so no rank goes on waiting
    for another that stopped. ``flag`` itself outside a process group.
    """
    if how not in ("any", "all", "rank0"):
        raise ConfigError(f"all_reduce_decision: how must be 'any', 'all' or 'rank0', got {how!r}.")
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    if how == "rank0":
        dist.broadcast(t, src=0)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if how == "any" else dist.ReduceOp.MIN)
    return bool(t.item())


def split_batch(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of one global batch (sizes differ by at most one, the
    first ranks taking the extra rows); the shares in rank order concatenate to the batch."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"split_batch: rank {rank} is not in a world of size {world_size}.")
    # np.array_split's rule: earlier shares take the remainder
    base, extra = divmod(len(batch), world_size)
    sizes = np.array([base + (1 if r < extra else 0) for r in range(world_size)], dtype=np.int64)
    start = int(sizes[:rank].sum())
    return batch[start : start + int(sizes[rank])]


def rank_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    oversample_idx: np.ndarray | None = None,
    repeats: int = 1,
    drop_last_below: int = 2,
) -> list[np.ndarray]:
    """This rank's share of every global batch of ``epoch``.

    The global batches are exactly a single-process run's —
    ``epoch_batches(n, batch_size, numpy_rng(seed, epoch), ...)``, ``batch_size`` being the
    global batch size — so they change with the epoch and are the same on every rank; each
    rank takes :func:`split_batch`'s contiguous slice of each. Every rank gets the same number
    of batches (possibly an empty share of a tiny batch), so collectives stay in step.
    """
    batches = epoch_batches(n, batch_size, numpy_rng(seed, epoch), oversample_idx, repeats, drop_last_below)
    return [split_batch(b, rank, world_size) for b in batches]


def global_batch_loss(
    loss_fn: Callable[..., Any],
    image: torch.Tensor,
    text: torch.Tensor,
    *args: Any,
    labels: torch.Tensor | None = None,
    gather_kwargs: tuple[str, ...] = ("image_weights", "text_weights"),
    **kwargs: Any,
) -> Any:
    """``loss_fn`` on the global batch; each rank gets its share ``L / world_size``.

    ``image`` and ``text`` (this rank's rows, first dimension the local batch) are gathered with
    their gradients, ``labels`` (if given, passed as ``labels=``) without, and so are the
    keyword tensors named in ``gather_kwargs`` that are not None (per-row view weights of
    :func:`gcrdp.losses.multi_positive_infonce`). Other arguments (temperature, options) are
    passed unchanged and must be the same on every rank.

    Returns what ``loss_fn`` returns with the loss (the value, or the first element of a tuple
    such as :func:`gcrdp.losses.rdp_loss`'s) divided by ``world_size``: the shares sum to the
    global loss; the gradient with respect to this rank's ``image``/``text`` rows is the
    single-process gradient of the global loss for those rows; parameter gradients summed over
    ranks are the single-process ones. Outside a process group this is ``loss_fn`` itself.
    """
    if not is_distributed():
        if labels is not None:
            kwargs["labels"] = labels
        return loss_fn(image, text, *args, **kwargs)
    if image.shape[0] != text.shape[0]:
        raise DataError(f"global_batch_loss: image and text must have the same rows, got {image.shape[0]} and {text.shape[0]}.")
    g_image, g_text = gather_with_grad(image), gather_with_grad(text)
    if labels is not None:
        kwargs["labels"] = gather_labels(labels)
    for name in gather_kwargs:
        if kwargs.get(name) is not None:
            kwargs[name] = gather_with_grad(kwargs[name])
    out = loss_fn(g_image, g_text, *args, **kwargs)
    w = world_size()
    if isinstance(out, tuple):
        return (out[0] / w, *out[1:])
    return out / w


# --------------------------------------------------------------- what the loop and runner use
def is_main() -> bool:
    """True on rank 0 (and in a plain process): the rank that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank; ``obj`` itself outside a
    process group. Every rank must call it at the same point."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first; the other ranks run it once rank 0 is done (e.g. extract the
    features into the shared cache once, then read them). If rank 0 fails in the block, its error
    reaches the others as a :class:`~gcrdp.errors.ConfigError` instead of a hang."""
    if not is_distributed():
        yield
        return
    if is_main():
        try:
            yield
        except BaseException as exc:
            broadcast_object(f"{type(exc).__name__}: {exc}")
            raise
        broadcast_object(None)
    else:
        failed = broadcast_object(None)
        if failed is not None:
            raise ConfigError(f"Rank 0 failed ({failed}); this rank stops too.")
        yield


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in one flat buffer (a missing gradient
    counts as zeros and is filled in). After it, every rank holds the same gradients: those of
    the sum of the ranks' objectives. A no-op outside a process group."""
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    device = _comm_device(params[0].grad)
    flat = torch.cat([p.grad.detach().reshape(-1).to(device) for p in params])  # type: ignore[union-attr]
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        g = p.grad
        assert g is not None
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (a no-op outside a process
    group), so that all ranks start from the same weights."""
    if not is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        data = t.data
        comm = data.to(_comm_device(data))
        dist.broadcast(comm, src=src)
        if comm is not data:
            data.copy_(comm)


def rank_torch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of ``rank``'s random draws (dropout) in ``epoch``: different on every rank
    and epoch, a pure function of the three, so a resumed or repeated fit draws the same."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank), 0x6463]).generate_state(1)[0])


def global_rows(x: torch.Tensor | None, *, grad: bool = True) -> torch.Tensor | None:
    """The global batch's rows of a per-row tensor: :func:`gather_with_grad` (``grad``) or
    :func:`gather_labels`; ``None`` stays ``None``. What a method's loss calls on every per-row
    output and input it uses, so that the same loss code trains on one rank or several."""
    if x is None:
        return None
    return gather_with_grad(x) if grad else gather_labels(x)


@contextlib.contextmanager
def process_group(device: str = "cpu") -> Iterator[DistEnv | None]:
    """The process group of a distributed launch (``torchrun``, ``srun``) for the block, or
    ``None`` in a plain process (then nothing is done): what ``gcrdp run`` / ``gcrdp train``
    wrap their work in."""
    env = init_distributed(device)
    try:
        yield env
    finally:
        if env is not None:
            shutdown_distributed()
