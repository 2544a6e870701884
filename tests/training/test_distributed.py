"""Distributed building blocks (issue 22 item 2): 2 ranks on CPU with gloo against one process.

One spawn of two processes (``file://`` rendezvous in a temporary folder) runs every collective
check and saves what each rank saw; the tests compare with the single-process computation on
the same global batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from gcrdp.errors import ConfigError
from gcrdp.losses import multi_positive_infonce, rdp_loss, symmetric_infonce
from gcrdp.training import distributed as gd
from gcrdp.training.batching import epoch_batches
from gcrdp.training.seeding import numpy_rng

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available in this build"
)

WORLD = 2
N, K, D, C = 7, 3, 8, 4  # 7 rows: ranks hold 4 and 3 (uneven shares on purpose)
TOL = 1e-6


def _data() -> dict[str, torch.Tensor]:
    """The global batch, the same in every process."""
    g = torch.Generator().manual_seed(1234)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)

    labels = (torch.rand(N, C, generator=g) < 0.35).to(torch.float32)
    labels[:, 0] = torch.tensor([1, 0, 0, 1, 0, 0, 1], dtype=torch.float32)
    return {
        "x": torch.randn(N, D, generator=g),
        "w": torch.randn(WORLD, N, D, generator=g),  # per-rank weights of the gather test objective
        "image": unit(N, D),
        "text": unit(N, D),
        "image_views": unit(N, K, D),
        "text_views": unit(N, K, D),
        "image_weights": torch.rand(N, K, generator=g) + 0.1,
        "text_weights": torch.rand(N, K, generator=g) + 0.1,
        "labels": labels,
        "class_ids": torch.tensor([0, 1, 2, 0, 1, 2, 0]),
    }


def _gather_objective(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A per-rank, non-linear objective of the gathered tensor."""
    return (y * w).sum() + (y.pow(2) * w.tanh()).sum()


def _losses() -> dict[str, tuple[Any, tuple[str, str], dict[str, Any]]]:
    """name → (loss function, its two embedding inputs, extra arguments)."""
    return {
        "infonce": (symmetric_infonce, ("image", "text"), {}),
        "mp_default": (multi_positive_infonce, ("image_views", "text_views"), {}),
        "mp_cross": (multi_positive_infonce, ("image_views", "text_views"), {"view_positives": "cross"}),
        "mp_class_weighted": (
            multi_positive_infonce,
            ("image_views", "text_views"),
            {"labels": "labels", "class_positives": True, "intra_modal_negatives": True, "weights": True},
        ),
        "mp_class_ids": (multi_positive_infonce, ("image_views", "text_views"), {"labels": "class_ids", "class_positives": True}),
        "rdp_distribution": (rdp_loss, ("image", "text"), {"threshold": 0.0}),
        "rdp_value": (rdp_loss, ("image", "text"), {"threshold": 0.0, "variant": "value"}),
    }


def _run_loss(name: str, data: dict[str, torch.Tensor], rows: slice | None) -> dict[str, torch.Tensor]:
    """The loss on ``rows`` of the global batch (``None`` = one process, the whole batch, no
    wrapper); returns the loss (times the world size for a rank's share) and the gradients."""
    fn, (a, b), extra = _losses()[name]
    extra = dict(extra)
    sl = slice(None) if rows is None else rows
    inputs = {k: data[k][sl].clone().requires_grad_(True) for k in (a, b)}
    tau = torch.tensor(0.07, requires_grad=True)
    kwargs: dict[str, Any] = {}
    if extra.pop("weights", False):
        kwargs["image_weights"] = data["image_weights"][sl]
        kwargs["text_weights"] = data["text_weights"][sl]
    labels = data[extra.pop("labels")][sl] if "labels" in extra else None
    kwargs.update(extra)
    args: tuple[Any, ...] = () if fn is rdp_loss else (tau,)
    if rows is None:
        if labels is not None:
            kwargs["labels"] = labels
        out = fn(inputs[a], inputs[b], *args, **kwargs)
        scale = 1
    else:
        out = gd.global_batch_loss(fn, inputs[a], inputs[b], *args, labels=labels, **kwargs)
        scale = WORLD
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    result = {"loss": loss.detach() * scale, "grad_a": inputs[a].grad, "grad_b": inputs[b].grad}
    if tau.grad is not None:
        result["grad_tau"] = tau.grad.clone()
    return result


def _towers() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(99)
    return torch.nn.Linear(D, 5), torch.nn.Linear(D, 5)


def _param_grads(data: dict[str, torch.Tensor], rows: slice | None, mode: str = "single") -> list[torch.Tensor]:
    """Parameter gradients of InfoNCE over two linear towers: one process on the whole batch
    (``single``), or this rank's rows with the parameter gradients all-reduced (``sum``), or
    under ``DistributedDataParallel`` (which averages) back-propagating share × world size."""
    img_tower, txt_tower = _towers()
    model = torch.nn.ModuleDict({"img": img_tower, "txt": txt_tower})
    sl = slice(None) if rows is None else rows
    if mode == "ddp":

        class Both(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return self.m["img"](a), self.m["txt"](b)

        wrapped = torch.nn.parallel.DistributedDataParallel(Both())
        a, b = wrapped(data["image"][sl], data["text"][sl])
    else:
        a, b = model["img"](data["image"][sl]), model["txt"](data["text"][sl])
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    if mode == "single":
        symmetric_infonce(a, b, 0.1).backward()
    else:
        share = gd.global_batch_loss(symmetric_infonce, a, b, 0.1)
        (share * gd.world_size() if mode == "ddp" else share).backward()
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    if mode == "sum":
        for g in grads:
            dist.all_reduce(g)
    return grads


def _shares() -> list[slice]:
    sizes = [len(gd.split_batch(np.arange(N), r, WORLD)) for r in range(WORLD)]
    starts = np.cumsum([0, *sizes])
    return [slice(int(starts[r]), int(starts[r + 1])) for r in range(WORLD)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    env = gd.DistEnv(rank=rank, world_size=WORLD, local_rank=rank, master_addr="127.0.0.1", master_port=0, source="torchrun")
    gd.init_distributed("cpu", env=env, init_method=f"file://{init_file}", timeout_s=60)
    try:
        data = _data()
        rows = _shares()[rank]
        res: dict[str, Any] = {"rank": gd.rank(), "world": gd.world_size(), "is_distributed": gd.is_distributed()}
        # gather_with_grad: forward and backward
        x = data["x"][rows].clone().requires_grad_(True)
        y = gd.gather_with_grad(x)
        _gather_objective(y, data["w"][rank]).backward()
        res["gathered"], res["gather_grad"] = y.detach(), x.grad
        # a rank with no rows (a tiny last batch split over ranks)
        e = data["x"][:3].clone() if rank == 0 else data["x"][:0].clone()
        e.requires_grad_(True)
        ye = gd.gather_with_grad(e)
        (ye * data["w"][rank][:3]).sum().backward()
        res["empty_gathered"], res["empty_grad"] = ye.detach(), e.grad
        # gather_labels: any dtype, uneven rows
        res["labels"] = gd.gather_labels(data["labels"][rows])
        res["bool"] = gd.gather_labels(data["labels"][rows] > 0)
        res["ids"] = gd.gather_labels(data["class_ids"][rows])
        # one decision for all ranks
        flag = rank == 1
        res["decisions"] = {how: gd.all_reduce_decision(flag, how) for how in ("any", "all", "rank0")}
        res["losses"] = {name: _run_loss(name, data, rows) for name in _losses()}
        res["params_sum"] = _param_grads(data, rows, "sum")
        res["params_ddp"] = _param_grads(data, rows, "ddp")
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    finally:
        gd.shutdown_distributed()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("dist")
    torch.multiprocessing.spawn(_worker, args=(str(folder / "rendezvous"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max()) if a.numel() else 0.0


def test_process_group_seen_by_helpers(ranks: list[dict[str, Any]]) -> None:
    assert [(r["rank"], r["world"], r["is_distributed"]) for r in ranks] == [(0, 2, True), (1, 2, True)]


def test_gather_with_grad_forward_and_backward(ranks: list[dict[str, Any]]) -> None:
    data = _data()
    x = data["x"].clone().requires_grad_(True)
    sum(_gather_objective(x, data["w"][r]) for r in range(WORLD)).backward()  # type: ignore[union-attr]
    assert x.grad is not None
    for r, rows in enumerate(_shares()):
        assert torch.equal(ranks[r]["gathered"], data["x"])  # the concatenation in rank order, exactly
        # the two ranks' contributions are summed in another order than in one process: float32 round-off
        assert _max_diff(ranks[r]["gather_grad"], x.grad[rows]) <= TOL * max(1.0, float(x.grad.abs().max()))


def test_gather_with_an_empty_share(ranks: list[dict[str, Any]]) -> None:
    data = _data()
    assert all(torch.equal(r["empty_gathered"], data["x"][:3]) for r in ranks)
    assert torch.equal(ranks[0]["empty_grad"], data["w"][0][:3] + data["w"][1][:3])
    assert ranks[1]["empty_grad"].shape == (0, D)


def test_gather_labels_and_decision(ranks: list[dict[str, Any]]) -> None:
    data = _data()
    for r in ranks:
        assert torch.equal(r["labels"], data["labels"])
        assert r["bool"].dtype == torch.bool and torch.equal(r["bool"], data["labels"] > 0)
        assert torch.equal(r["ids"], data["class_ids"])
        assert r["decisions"] == {"any": True, "all": False, "rank0": False}


@pytest.mark.parametrize("name", list(_losses()))
def test_global_batch_loss_equals_single_process(ranks: list[dict[str, Any]], name: str) -> None:
    """Each rank's share × world size is the single-process loss; the gradient w.r.t. each rank's
    rows is the single-process gradient; the temperature gradients summed over ranks are the
    single-process one (what an all-reduce SUM of parameter gradients gives)."""
    ref = _run_loss(name, _data(), None)
    assert float(ref["loss"]) > 0.0
    for r, rows in enumerate(_shares()):
        got = ranks[r]["losses"][name]
        assert abs(float(got["loss"]) - float(ref["loss"])) <= TOL
        assert _max_diff(got["grad_a"], ref["grad_a"][rows]) <= TOL
        assert _max_diff(got["grad_b"], ref["grad_b"][rows]) <= TOL
    if "grad_tau" in ref:
        summed = sum(ranks[r]["losses"][name]["grad_tau"] for r in range(WORLD))
        assert abs(float(summed) - float(ref["grad_tau"])) <= TOL * max(1.0, abs(float(ref["grad_tau"])))


def test_parameter_gradients_equal_single_process(ranks: list[dict[str, Any]]) -> None:
    """Replicated towers: the parameter gradients summed over ranks (or averaged by DDP when
    each rank back-propagates share × world size) are the single-process gradients."""
    ref = _param_grads(_data(), None)
    assert len(ref) == 4
    for r in ranks:
        for mode in ("params_sum", "params_ddp"):
            assert len(r[mode]) == len(ref)
            for got, want in zip(r[mode], ref):
                assert _max_diff(got, want) <= TOL * max(1.0, float(want.abs().max()))  # summation order: round-off


# ---- single process: no process group ---------------------------------------------------------


def test_helpers_are_identity_without_process_group() -> None:
    assert not dist.is_initialized()
    assert (gd.is_distributed(), gd.rank(), gd.world_size()) == (False, 0, 1)
    data = _data()
    x = data["x"]
    assert gd.gather_with_grad(x) is x and gd.gather_labels(x) is x
    assert gd.all_reduce_decision(True) is True and gd.all_reduce_decision(False, "all") is False
    tau = torch.tensor(0.07)
    assert torch.equal(
        gd.global_batch_loss(symmetric_infonce, data["image"], data["text"], tau), symmetric_infonce(data["image"], data["text"], tau)
    )
    with pytest.raises(ConfigError):
        gd.all_reduce_decision(True, "most")


def test_distributed_env_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    assert gd.distributed_env() is None and gd.init_distributed("cpu") is None  # a plain process: nothing done
    assert not dist.is_initialized()
    assert gd.distributed_env({}) is None
    assert gd.distributed_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    env = gd.distributed_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "1234"})
    assert env == gd.DistEnv(1, 4, 1, "node0", 1234, "torchrun")
    slurm = gd.distributed_env({"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1"})
    assert slurm == gd.DistEnv(3, 8, 1, "n1", gd.DEFAULT_MASTER_PORT, "slurm")
    # torchrun's variables win over SLURM's
    both = gd.distributed_env({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "MASTER_ADDR": "a"})
    assert both is not None and (both.rank, both.world_size, both.source) == (0, 2, "torchrun")
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        gd.distributed_env({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"})
    # a batch script of a job of 4 tasks, not started by srun: a plain process
    assert gd.distributed_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "17"}) is None
    assert gd.distributed_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"}) is None
    with pytest.raises(ConfigError):
        gd.distributed_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "a"})
    with pytest.raises(ConfigError):
        gd.distributed_env({"RANK": "x", "WORLD_SIZE": "2"})
    assert gd.default_backend("cuda:0") == "nccl" and gd.default_backend("cpu") == "gloo"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_batches_cover_every_index_once_per_epoch(world: int) -> None:
    n, batch_size, seed = 103, 16, 7  # last global batch has 7 rows: nothing dropped
    orders = []
    for epoch in range(3):
        shares = [gd.rank_batches(n, batch_size, seed, epoch, r, world) for r in range(world)]
        assert len({len(s) for s in shares}) == 1  # every rank steps through the same number of batches
        single = epoch_batches(n, batch_size, numpy_rng(seed, epoch))
        for j, batch in enumerate(single):  # the shares in rank order are the single-process batch
            assert np.array_equal(np.concatenate([s[j] for s in shares]), batch)
            assert max(len(s[j]) for s in shares) - min(len(s[j]) for s in shares) <= 1
        flat = np.concatenate([b for s in shares for b in s])
        assert np.array_equal(np.sort(flat), np.arange(n))  # every index exactly once
        orders.append(np.concatenate(single))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])  # stepped per epoch
    assert all(
        np.array_equal(a, b) for a, b in zip(orders, [np.concatenate(epoch_batches(n, batch_size, numpy_rng(seed, e))) for e in range(3)])
    )


def test_split_batch_rejects_bad_rank() -> None:
    with pytest.raises(ConfigError):
        gd.split_batch(np.arange(4), 2, 2)
