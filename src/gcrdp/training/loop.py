"""The training loop shared by the trainable methods: seeded batches with oversampling,
Adam, gradient clipping, validation mAP after every epoch, early stopping that restores the
best weights, and (optionally) a checkpoint after every epoch from which an interrupted fit
resumes exactly (:mod:`gcrdp.training.checkpoint`)."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.features import FeatureSet
from ..errors import ConfigError, DataError
from .batching import epoch_batches
from .checkpoint import (
    TrainingProgress,
    checkpoint_exists,
    load_training_checkpoint,
    save_training_checkpoint,
    training_identity,
)
from .config import TrainConfig, identity_options
from .distributed import (
    all_reduce_gradients,
    broadcast_object,
    broadcast_parameters,
    is_distributed,
    is_main,
    rank,
    rank_torch_seed,
    split_batch,
    world_size,
)
from .fit import FitData, FitReport
from .seeding import numpy_rng

log = logging.getLogger(__name__)

#: float16 training features up to this size (as float32) are upcast once per fit
UPCAST_ONCE_BYTES = 1 << 30

#: who is told about every epoch (see :func:`observe_epochs`)
EpochObserver = Callable[[dict[str, Any]], None]


class _Registration:
    """One :func:`observe_epochs` block's observer, and whether it has failed. The failure is
    kept here, on the registration, rather than in a set of ``id(observer)``: Python reuses the
    id of a dead object, so a new observer could be skipped for an old one's failure (and bound
    or builtin methods such as ``list.append`` cannot be weakly referenced)."""

    __slots__ = ("failed", "observer")

    def __init__(self, observer: EpochObserver) -> None:
        self.observer = observer
        self.failed = False


_OBSERVERS: contextvars.ContextVar[tuple[_Registration, ...]] = contextvars.ContextVar("gcrdp_epoch_observers", default=())


@contextlib.contextmanager
def observe_epochs(observer: EpochObserver | None) -> Iterator[None]:
    """Within the block, every :func:`fit_loop` calls ``observer(info)`` when it starts
    (``info["epoch"]`` is the last finished epoch: 0, or the resumed one) and after every epoch,
    with ``epoch``, ``max_epochs``, ``loss``, ``val_map`` (or ``None``), ``best_val_map``,
    ``best_epoch``, ``bad_epochs``, ``patience``, ``epoch_seconds`` and ``stopped``. Blocks
    nest: the observers of the enclosing blocks are called too (``None`` adds none). Progress
    displays hang on this; the loop does not depend on it."""
    token = _OBSERVERS.set(_OBSERVERS.get() + ((_Registration(observer),) if observer is not None else ()))
    try:
        yield
    finally:
        _OBSERVERS.reset(token)


def _notify(info: dict[str, Any]) -> None:
    """Tell the observers; one that fails (a closed terminal, a dead queue) is logged once and
    then skipped for the rest of its block — a display must never stop a fit."""
    for reg in _OBSERVERS.get():
        if reg.failed:
            continue
        try:
            reg.observer(info)
        except Exception as exc:  # noqa: BLE001
            reg.failed = True
            log.warning("progress display failed (%s); training goes on without it", exc)


#: a batch: features of the selected pairs as float32 tensors on the device
Batch = dict[str, torch.Tensor]
#: (model, batch) -> (loss, named loss parts for logging)
StepLoss = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
#: (features) -> (image embeddings, text embeddings), numpy float32
Embedder = Callable[[FeatureSet], tuple[np.ndarray, np.ndarray]]


def as_tensors(features: FeatureSet, labels: np.ndarray | None = None) -> Batch:
    """Zero-copy CPU tensor views of the feature arrays (dtype as stored, e.g. float16): local
    features and masks, and the encoders' pooled features (a frozen teacher for RDP)."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    out = {
        "image_local": t(features.image.local),
        "image_mask": t(features.image.mask),
        "text_local": t(features.text.local),
        "text_mask": t(features.text.mask),
        "image_pooled": t(features.image.pooled),
        "text_pooled": t(features.text.pooled),
    }
    if labels is not None:
        out["labels"] = t(labels)
    return out


def make_batch(tensors: Batch, idx: np.ndarray, device: str) -> Batch:
    """Gather rows ``idx`` of :func:`as_tensors` output; features become float32 on ``device``."""
    index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    return {
        k: v.index_select(0, index).to(device=device, dtype=torch.bool if v.dtype == torch.bool else torch.float32)
        for k, v in tensors.items()
    }


def gather_into(tensors: Batch, idx: np.ndarray, buffers: Batch) -> Batch:
    """:func:`make_batch` on the CPU for tensors already float32/bool, written into ``buffers``
    (per key, grown to the largest batch so far and reused): views of them, the same values as
    :func:`make_batch`'s fresh tensors. The previous batch's views are overwritten."""
    index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    n = len(index)
    out = {}
    for k, v in tensors.items():
        buf = buffers.get(k)
        if buf is None or buf.shape[0] < n or buf.dtype != v.dtype:
            buf = buffers[k] = torch.empty((n, *v.shape[1:]), dtype=v.dtype)
        view = buf[:n]
        torch.index_select(v, 0, index, out=view)
        out[k] = view if v.dtype in (torch.bool, torch.float32) else view.float()
    return out


class BatchReader:
    """The training pairs' batches: rows ``idx`` of every feature array (and the labels) as
    float32/bool tensors on ``device``.

    In-memory features are gathered from tensors upcast once to float32 when that copy stays
    under :data:`UPCAST_ONCE_BYTES`, else by numpy fancy indexing of the stored arrays. Features
    on disk (:mod:`gcrdp.data.lazy`) are read by row for each batch — only the batch's rows are
    in memory — and the next batch is read in a background thread while the current one trains.
    All give the same values: the stored rows, converted to float32."""

    def __init__(self, features: FeatureSet, labels: np.ndarray | None, device: str) -> None:
        self.device = device
        self.lazy = features.on_disk
        self.tensors: Batch | None = None
        if not self.lazy:
            tensors = as_tensors(features, labels)
            if sum(v.numel() for v in tensors.values() if v.dtype == torch.float16) * 4 <= UPCAST_ONCE_BYTES:
                self.tensors = {k: v.float() if v.dtype == torch.float16 else v for k, v in tensors.items()}
                return
        # on disk, or half precision too large to upcast once: each batch's rows are gathered
        # with numpy (torch's index_select of float16 on the CPU is several times slower)
        self.arrays: dict[str, Any] = {
            "image_local": features.image.local,
            "image_mask": features.image.mask,
            "text_local": features.text.local,
            "text_mask": features.text.mask,
            "image_pooled": features.image.pooled,
            "text_pooled": features.text.pooled,
        }
        if labels is not None:
            self.arrays["labels"] = labels

    def _read(self, idx: np.ndarray) -> Batch:
        out = {}
        for k, arr in self.arrays.items():
            rows = np.ascontiguousarray(arr[idx])
            t = torch.from_numpy(rows)
            out[k] = t.to(device=self.device, dtype=torch.bool if t.dtype == torch.bool else torch.float32)
        return out

    def batches(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        """The batches of ``batches`` (lists of row indices) in order."""
        if self.tensors is not None:
            if self.device != "cpu":
                for idx in batches:
                    yield make_batch(self.tensors, idx, self.device)
                return
            # on the CPU, every batch is gathered into the same buffers: a fresh tensor of a
            # batch's local features (tens of MB) costs page faults on every step, about 5x
            # the copy itself. A batch is used up (its step taken, its graph freed) before the
            # next is asked for, so no one reads a buffer after it is overwritten.
            buffers: Batch = {}
            for idx in batches:
                yield gather_into(self.tensors, idx, buffers)
            return
        if not self.lazy:
            for idx in batches:
                yield self._read(idx)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="gcrdp-batches") as pool:
            pending = pool.submit(self._read, batches[0]) if batches else None
            for i in range(len(batches)):
                assert pending is not None
                batch = pending.result()
                pending = pool.submit(self._read, batches[i + 1]) if i + 1 < len(batches) else None
                yield batch


def autocast_for(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """The context of a forward pass at ``precision`` (``TrainConfig.precision``): ``float32``
    changes nothing (a null context); ``bf16`` is ``torch.autocast`` to bfloat16 on ``device``'s
    type."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def check_precision(precision: str, device: str) -> None:
    """A :class:`~gcrdp.errors.ConfigError` when ``device`` cannot run ``precision``: bf16
    autocast is tried on a small matrix product. A CPU without native bf16 instructions runs it
    emulated: a ``RuntimeWarning`` says so (it is likely slower than float32), and it goes on."""
    if precision == "float32":
        return
    try:
        with autocast_for(precision, device):
            y = torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
        ok = y.dtype == torch.bfloat16
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"precision={precision!r} is not supported on device {device!r}: {exc}") from None
    if not ok:
        raise ConfigError(f"precision={precision!r}: autocast on device {device!r} did not compute in bfloat16")
    if torch.device(device).type == "cpu" and not torch.cpu._is_avx512_bf16_supported():
        warnings.warn(
            "precision='bf16' on a CPU without native bfloat16 instructions: it runs emulated, likely slower than float32",
            RuntimeWarning,
            stacklevel=3,
        )


def validation_map(embed: Embedder, features: FeatureSet, labels: np.ndarray, metric: str = "cosine") -> float:
    """Mean of I2T and T2I mAP@all on the validation pairs (queries = gallery), scored with
    ``metric`` (see :func:`gcrdp.evaluation.retrieval_metrics`)."""
    from ..evaluation import cross_modal_metrics

    img, txt = embed(features)
    res = cross_modal_metrics(img, txt, labels, img, txt, labels, metric=metric)
    return float(res["mean_map"])


def fit_loop(  # noqa: C901, PLR0913 - the training loop's steps in order, its keyword options documented
    model: nn.Module,
    step_loss: StepLoss,
    embed: Embedder,
    data: FitData,
    config: TrainConfig,
    *,
    seed: int,
    device: str = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    method_info: Mapping[str, Any] | None = None,
    metric: str = "cosine",
    global_batch: bool = False,
) -> FitReport:
    """Train ``model`` in place with ``step_loss``; early-stop on validation mAP computed with
    ``embed``; restore the weights of the best validation epoch. Returns a :class:`FitReport`.

    Batches are drawn from ``numpy_rng(seed, epoch)``; dropout draws from the torch global RNG,
    which the caller seeds (inside ``torch.random.fork_rng``) before building ``model``.

    Checkpoints and resume:
        checkpoint_dir: when given, a *training* checkpoint (weights, optimizer state, best
            weights so far, counters, history, torch RNG state; layout in
            :mod:`gcrdp.training.checkpoint`) replaces ``checkpoint_dir`` atomically at the end
            of every epoch (its cost per epoch is measured in docs/benchmarks.md). Without
            ``checkpoint_dir`` nothing is written.
        resume: when True and ``checkpoint_dir`` holds a training checkpoint, training goes on
            from the epoch after the stored one and ends with exactly the weights, history and
            metrics of an uninterrupted run (same seed). The checkpoint must belong to the same
            run — same ``method_info`` (method name, config, input dims), ``seed``, train
            config and training data (:func:`~gcrdp.training.checkpoint.data_fingerprint`) —
            or a :class:`~gcrdp.errors.ConfigError` says what differs. A checkpoint of a fit
            that already ended just restores its best weights. ``resume=False`` starts afresh
            and overwrites the checkpoint.
        method_info: ``{"method", "method_config", "input_dims"}`` of the calling method
            (:func:`~gcrdp.methods.persistence.method_info`), stored in the checkpoint and
            checked on resume.

    Precision: ``config.precision="bf16"`` runs ``step_loss`` (the forward pass and the loss)
    under :func:`autocast_for`; the backward pass, the clipping and the optimizer step act on the
    float32 parameters. ``embed`` is the caller's: it chooses its own precision
    (:class:`~gcrdp.methods.trainable.TrainableHeadsMethod` embeds at ``precision`` too).

    On several ranks (a ``torch.distributed`` process group, e.g. under ``torchrun``):
        every rank draws the same global batches (``config.batch_size`` is the global batch) and
        takes its contiguous share of each (:func:`~gcrdp.training.distributed.split_batch`);
        ``step_loss`` must compute the loss of the **global** batch by gathering its per-row
        outputs (:func:`~gcrdp.training.distributed.gather_with_grad`) — the caller says so with
        ``global_batch=True``, else a distributed fit is refused. Each rank back-propagates its
        share ``L / world_size``; the gradients are summed over ranks, so every rank takes the
        single-process step. Rank 0 alone computes the validation mAP and sends it to the
        others, so early stopping decides once for all; rank 0 alone writes the checkpoint,
        which every rank reads on resume — with any number of ranks, since it holds the whole
        model and optimizer. Dropout draws from a seed of (seed, epoch, rank). Without dropout,
        the fit is that of one process on the same global batches, up to float round-off.
    """
    n = len(data.train)
    if n < 2:
        raise DataError(f"Training needs at least 2 pairs, got {n}.")
    distributed = is_distributed()
    if distributed and not global_batch:
        raise ConfigError(
            f"{(method_info or {}).get('method', 'This method')} does not train on several ranks (its loss does not "
            "gather the global batch); run it in one process."
        )
    check_precision(config.precision, device)
    me, world = rank(), world_size()
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (
        torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        if config.weight_decay > 0
        else torch.optim.Adam(params, lr=config.lr)
    )
    over_idx = np.flatnonzero(data.oversample)
    # In memory: half-precision features are upcast once, not in every batch of every epoch,
    # while the float32 copy stays small. On disk: each batch's rows are read (and the next
    # batch prefetched). Same values either way: the batches are float32 on the device.
    reader = BatchReader(data.train, data.train_labels, device)
    has_val = data.val is not None and data.val_labels is not None and len(data.val) >= 2
    report = FitReport()
    best_state: dict[str, torch.Tensor] | None = None
    progress = TrainingProgress()
    identity: dict[str, Any] = {}
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        # options added later are left out at their default: older checkpoints of the same fit resume
        identity = training_identity(data, identity_options(config.to_dict()), seed, method_info)
        if resume and checkpoint_exists(checkpoint_dir):
            progress, best_state = load_training_checkpoint(checkpoint_dir, model=model, optimizer=opt, identity=identity, device=device)
            report.extra["resumed_from_epoch"] = progress.epoch
            log.info("resuming from %s after epoch %d", checkpoint_dir, progress.epoch)
    if distributed:
        broadcast_parameters(model)  # the same start everywhere (seeded alike, or the same checkpoint)
    report.history = list(progress.history)
    report.epochs, report.best_epoch = progress.epoch, progress.best_epoch
    best = progress.best_val_map if progress.best_val_map is not None else -math.inf
    bad = progress.bad_epochs
    first = progress.epoch + 1 if not progress.stopped else config.max_epochs + 1
    status = {"max_epochs": config.max_epochs, "patience": config.patience if has_val else None}
    _notify(
        {
            **status,
            "epoch": progress.epoch,
            "loss": None,
            "val_map": None,
            "best_val_map": progress.best_val_map,
            "best_epoch": progress.best_epoch,
            "bad_epochs": bad,
            "epoch_seconds": None,
            "stopped": progress.stopped,
            "start": True,
        }
    )
    for epoch in range(first, config.max_epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        rng = numpy_rng(seed, epoch)
        batches = epoch_batches(n, config.batch_size, rng, over_idx, config.oversample)
        sums: dict[str, float] = {}
        if distributed:  # this rank's share of every global batch; its own dropout draws
            torch.manual_seed(rank_torch_seed(seed, epoch, me))
        local = [split_batch(b, me, world) for b in batches] if distributed else batches
        for batch in reader.batches(local):
            with autocast_for(config.precision, device):  # float32: a null context
                loss, parts = step_loss(model, batch)  # distributed: the global batch's loss, the same on every rank
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch}: {parts}")
            opt.zero_grad(set_to_none=True)
            if distributed:
                (loss / world).backward()
                all_reduce_gradients(params)
            else:
                loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        entry = {"epoch": epoch, **{k: v / max(len(batches), 1) for k, v in sums.items()}}
        if has_val:
            model.eval()
            assert data.val is not None and data.val_labels is not None  # has_val
            # one score for every rank: rank 0's (the others' weights are the same)
            score = broadcast_object(validation_map(embed, data.val, data.val_labels, metric) if is_main() else None)
            entry["val_map"] = score
            if score > best + config.min_delta:
                best, bad = score, 0
                best_state = copy.deepcopy(model.state_dict())
                report.best_epoch = epoch
            else:
                bad += 1
        report.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in entry.items()})
        log.debug("epoch %d %s", epoch, entry)
        report.epochs = epoch
        stop = has_val and bad >= config.patience
        if checkpoint_dir is not None and is_main():
            done = TrainingProgress(
                epoch=epoch,
                best_epoch=report.best_epoch,
                best_val_map=best if math.isfinite(best) else None,
                bad_epochs=bad,
                stopped=stop or epoch == config.max_epochs,
                seconds=progress.seconds + time.perf_counter() - t0,
                history=report.history,
            )
            save_training_checkpoint(
                checkpoint_dir, model=model, optimizer=opt, best_state=best_state, progress=done, identity=identity, device=device
            )
        _notify(
            {
                **status,
                "epoch": epoch,
                "loss": entry.get("loss"),
                "val_map": entry.get("val_map"),
                "best_val_map": best if math.isfinite(best) else None,
                "best_epoch": report.best_epoch,
                "bad_epochs": bad,
                "epoch_seconds": time.perf_counter() - t_epoch,
                "stopped": stop or epoch == config.max_epochs,
                "start": False,
            }
        )
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        report.best_val_map = best
    else:
        report.best_epoch = report.epochs
    model.eval()
    report.seconds = progress.seconds + time.perf_counter() - t0
    return report
