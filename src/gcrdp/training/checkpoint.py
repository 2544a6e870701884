"""Checkpoints: safetensors tensors + one JSON file per folder, written atomically. No pickle
anywhere (never ``torch.save``/``torch.load``), so loading a checkpoint cannot run code.

A checkpoint is a folder::

    <dir>/
      state.json             format (CHECKPOINT_FORMAT), kind ("training" or "final"), gcrdp
                             version, method name, method config (``config_dict()``), input dims,
                             seed, the tensor files' sizes and CRC-32 checksums, and
                             - training: data fingerprint, train config, epoch, best epoch, best
                               validation mAP, patience counter, stopped flag, seconds, history
                             - final: the fit report and (from ``gcrdp train``) the run info that
                               ``gcrdp evaluate --checkpoint`` needs (run config, split summary,
                               class names, feature cache key)
      model.safetensors      the method's ``model_.state_dict()`` (the last epoch's weights in a
                             training checkpoint; the restored best weights in a final one)
      optimizer.safetensors  training: Adam/AdamW state flattened to ``state.<param>.<key>``
                             tensors (``exp_avg``, ``exp_avg_sq``, ``step``, ...); the param
                             groups (lr, betas, ...) as JSON in the file's metadata
      best.safetensors       training, when a validation set gave a best epoch: its weights
                             (a hard link to model.safetensors of that epoch's checkpoint, so
                             it is never written twice)
      rng.safetensors        training: the torch RNG state as uint8 tensors (``cpu``, and
                             ``cuda`` when training on a GPU) so dropout continues exactly

``gcrdp train --checkpoint-dir DIR`` writes ``DIR/last`` (training, every epoch),
``DIR/final`` (the fitted method + run info) and ``DIR/results.json``.

**Atomic writes.** Everything is written into a hidden sibling ``.<name>.tmp-*`` folder, each
file fsynced, then the folder is renamed into place: the old folder is first renamed to
``.<name>.old``, the new one to ``<name>``, then the old one is deleted. A crash at any point
leaves the previous checkpoint complete: either at ``<name>``, or (a crash between the two
renames) at ``.<name>.old``, which readers fall back to and the next write renames back. Hidden
``.tmp-*`` leftovers are ignored by readers and deleted by the next write. One writer per
folder at a time.

**Validation on load.** A missing folder or file, a size or checksum mismatch, an unreadable
file, another format version, a method that is not registered and tensors whose names or
shapes do not fit the module rebuilt from the stored config each raise
:class:`~gcrdp.errors.DataError` (or :class:`~gcrdp.errors.ConfigError` for the method name)
with a message that names the folder and says what to do.

**Methods.** :func:`save_method` / :func:`load_method` work for any method that follows the
checkpoint contract of :mod:`gcrdp.methods.base` (``name``, ``config_dict()``,
``init_model(**input_dims)``, ``model_``, ``input_dims_``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import nn

from .. import __version__
from ..errors import ConfigError, DataError
from ..utils.io import fsync_dir
from .fit import FitData

#: Bump when the layout or the meaning of a stored field changes.
CHECKPOINT_FORMAT = "gcrdp-checkpoint/1"
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
BEST_FILE = "best.safetensors"
RNG_FILE = "rng.safetensors"
KINDS = ("training", "final")

#: What must match for a training checkpoint to be resumed (see :func:`training_identity`).
IDENTITY_KEYS = ("method", "method_config", "input_dims", "seed", "train_config", "data_fingerprint")

Tensors = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- file primitives


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "crc32": _crc32(data)}


def _crc32(data: bytes) -> str:
    """Checksum of a file's bytes: CRC-32 detects truncation and bit rot and is several times
    cheaper than SHA-256 on every per-epoch checkpoint; tampering is not the threat here, and
    safetensors files cannot carry code anyway."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _old_path(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def _recover(path: Path) -> None:
    """Finish or undo an interrupted swap (writer side): a lone ``.old`` is the last complete
    checkpoint and goes back in place; an ``.old`` beside a complete folder is stale."""
    old = _old_path(path)
    if old.is_dir():
        if not path.exists():
            os.rename(old, path)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_dir(path: str | Path, fill: Callable[[Path], None]) -> None:
    """Create folder ``path`` atomically: ``fill(tmp)`` writes (and fsyncs) the files into a
    hidden temporary sibling, which then replaces ``path`` (see the module docstring)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"Checkpoint path {path} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()) and not (path / STATE_FILE).is_file():
        raise ConfigError(
            f"{path} is a folder that is not a gcrdp checkpoint (no {STATE_FILE}); refusing to replace it. Choose a new or empty folder."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # (not mkdtemp: its 0700 mode would stick to the checkpoint)
    old = _old_path(path)
    try:
        fill(tmp)
        fsync_dir(tmp)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            if not path.exists() and old.is_dir():
                os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _resolve(path: Path) -> Path:
    """Reader side: the folder itself, or its ``.old`` twin after a crash between renames."""
    if path.is_dir():
        return path
    old = _old_path(path)
    if not path.exists() and (old / STATE_FILE).is_file():
        return old
    if path.exists():
        raise DataError(f"Checkpoint {path} is not a folder; a checkpoint is a folder holding {STATE_FILE} and {MODEL_FILE}.")
    raise DataError(
        f"Checkpoint folder not found: {path}. Train one with 'gcrdp train --checkpoint-dir DIR' (the final checkpoint is DIR/final)."
    )


def _header_metadata(data: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (8-byte little-endian header length, JSON)."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
    except (struct.error, ValueError) as exc:
        raise DataError(f"{where} is not a safetensors file ({exc}).") from None
    meta = header.get("__metadata__") or {}
    return dict(meta) if isinstance(meta, dict) else {}


def _shareless(tensors: Mapping[str, torch.Tensor]) -> Tensors:
    """Detached, contiguous CPU tensors with no two sharing memory (safetensors refuses
    shared storage, e.g. tied weights: those are copied)."""
    out: Tensors = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        if not torch.is_tensor(v):
            raise TypeError(f"checkpoint tensor {k!r} is a {type(v).__name__}, not a tensor")
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


# --------------------------------------------------------------------------- the checkpoint
@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint folder: ``state`` is ``state.json``; tensors load on demand."""

    path: Path
    state: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.state["kind"])

    def has(self, name: str) -> bool:
        return name in self.state["files"]

    def _bytes(self, name: str) -> bytes:
        where = self.path / name
        if name not in self.state["files"]:
            raise DataError(f"Checkpoint {self.path} has no {name} ({self.kind} checkpoint; files: {sorted(self.state['files'])}).")
        try:
            data = where.read_bytes()
        except OSError as exc:
            raise DataError(f"Cannot read {where}: {exc}. The checkpoint is incomplete; train again or use another checkpoint.") from None
        entry = self.state["files"][name]
        if len(data) != entry.get("bytes") or _crc32(data) != entry.get("crc32"):
            raise DataError(
                f"{where} is corrupt: its size or checksum differs from the one in "
                f"{STATE_FILE} ({len(data)} bytes, expected {entry.get('bytes')}). "
                "Train again or use another checkpoint."
            )
        return data

    def tensors(self, name: str, device: str | torch.device = "cpu") -> Tensors:
        data = self._bytes(name)
        try:
            out = _st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise DataError(f"{self.path / name} is not a readable safetensors file ({exc}).") from None
        return {k: v.to(device) for k, v in out.items()} if str(device) != "cpu" else out

    def metadata(self, name: str) -> dict[str, str]:
        return _header_metadata(self._bytes(name), str(self.path / name))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # no hard links here: copy
        shutil.copyfile(src, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())


def write_checkpoint(
    path: str | Path,
    state: dict[str, Any],
    files: Mapping[str, tuple[Mapping[str, torch.Tensor], Mapping[str, str] | None]],
    links: Mapping[str, str | Path] | None = None,
) -> None:
    """Write a checkpoint folder atomically.

    Args:
        path: the folder (replaced as a whole).
        state: JSON-ready fields; ``format``, ``gcrdp_version`` and ``files`` are filled in.
        files: file name → (named tensors, optional string metadata), one safetensors file each.
        links: file name → a file with the same content to hard-link instead of writing it
            again (a copy where hard links are not supported): the name of one of ``files``, or
            the :class:`~pathlib.Path` of a file in an existing checkpoint folder (its size and
            checksum are taken from that folder's ``state.json``). Files are never modified
            after they are written, so sharing them between checkpoints is safe.
    """
    state = {"format": CHECKPOINT_FORMAT, "gcrdp_version": __version__, **state}
    if state.get("kind") not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {state.get('kind')!r}")
    blobs = {name: _st_save(_shareless(t), metadata=dict(m) if m else None) for name, (t, m) in files.items()}

    def fill(tmp: Path) -> None:
        entries = {name: _write_file(tmp / name, data) for name, data in blobs.items()}
        for name, src in (links or {}).items():
            if isinstance(src, str):
                _link_or_copy(tmp / src, tmp / name)
                entries[name] = dict(entries[src])
            else:
                src = Path(src)
                prev = json.loads((src.parent / STATE_FILE).read_text(encoding="utf-8"))
                _link_or_copy(src, tmp / name)
                entries[name] = dict(prev["files"][src.name])
        text = json.dumps({**state, "files": entries}, indent=1, allow_nan=False) + "\n"
        _write_file(tmp / STATE_FILE, text.encode("utf-8"))

    atomic_write_dir(path, fill)


def read_checkpoint(path: str | Path, kind: str | None = None) -> Checkpoint:
    """Open and validate a checkpoint folder's ``state.json`` (tensor files are checked when
    loaded). ``kind``: require ``"training"`` or ``"final"``."""
    path = _resolve(Path(path))
    state_path = path / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"Checkpoint {path} has no {STATE_FILE}: it is not a gcrdp checkpoint or "
            "its write was interrupted. Train again or use another folder."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"Checkpoint {state_path} is not valid JSON ({exc}).") from None
    if not isinstance(state, dict):
        raise DataError(f"Checkpoint {state_path} must hold a JSON object.")
    fmt = state.get("format")
    if fmt != CHECKPOINT_FORMAT:
        raise DataError(
            f"Checkpoint {path} has format {fmt!r}; this gcrdp ({__version__}) reads "
            f"{CHECKPOINT_FORMAT!r}. Re-train with this version (checkpoint written by "
            f"gcrdp {state.get('gcrdp_version', '?')})."
        )
    missing_keys = [k for k in ("kind", "method", "method_config", "input_dims", "files") if k not in state]
    if missing_keys:
        raise DataError(f"Checkpoint {state_path} lacks the field(s) {missing_keys}; it is corrupt.")
    if kind is not None and state["kind"] != kind:
        raise DataError(
            f"Checkpoint {path} is a {state['kind']} checkpoint, expected a {kind} one"
            + (" (use DIR/final, written at the end of 'gcrdp train')." if kind == "final" else ".")
        )
    files = state["files"]
    need = [MODEL_FILE] + ([OPTIMIZER_FILE, RNG_FILE] if state["kind"] == "training" else [])
    absent = [n for n in need if n not in files]
    absent += [n for n in files if not (path / n).is_file() and n not in absent]
    if absent:
        raise DataError(f"Checkpoint {path} is incomplete: missing {sorted(absent)}. Train again or use another checkpoint.")
    return Checkpoint(path, state)


def checkpoint_exists(path: str | Path) -> bool:
    """Whether ``path`` (or its ``.old`` twin after a crash) holds a ``state.json``."""
    path = Path(path)
    return (path / STATE_FILE).is_file() or (not path.exists() and (_old_path(path) / STATE_FILE).is_file())


# --------------------------------------------------------------------------- module weights
def state_tensors(model: nn.Module) -> Tensors:
    """``model.state_dict()`` as plain tensors (``_extra_state`` entries are not supported)."""
    return dict(model.state_dict())


def load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy ``tensors`` into ``model`` after checking names and shapes (clear error if not)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = (
            ([f"missing {missing[:5]}"] if missing else [])
            + ([f"unexpected {unexpected[:5]}"] if unexpected else [])
            + ([f"shape mismatch {'; '.join(shapes[:5])}"] if shapes else [])
        )
        raise DataError(
            f"{where} does not fit the model rebuilt from its config: "
            + ", ".join(parts)
            + ". It was written by another version of the method "
            "or for other inputs; train again."
        )
    model.load_state_dict(dict(tensors), strict=True)


# --------------------------------------------------------------------------- optimizer, RNG
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[Tensors, dict[str, str]]:
    """Flatten an optimizer's ``state_dict()``: tensors ``state.<param index>.<key>``; the
    param groups and any non-tensor per-parameter values as JSON metadata."""
    sd = opt.state_dict()
    tensors: Tensors = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            name = f"state.{pid}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value
            else:
                scalars[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"optimizer": type(opt).__name__, "param_groups": json.dumps(groups), "scalars": json.dumps(scalars)}
    return tensors, meta


def load_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], where: str) -> None:
    """Inverse of :func:`optimizer_tensors` into a freshly built ``opt`` over the same params."""
    if meta.get("optimizer") != type(opt).__name__:
        raise DataError(
            f"{where} holds {meta.get('optimizer')!r} state, the training uses "
            f"{type(opt).__name__} (weight_decay > 0 selects AdamW); train afresh."
        )
    try:
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta.get("scalars", "{}"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{where}: unreadable optimizer metadata ({exc}).") from None
    current = opt.state_dict()["param_groups"]
    if len(groups) != len(current) or any(len(a["params"]) != len(b["params"]) for a, b in zip(groups, current, strict=True)):
        raise DataError(f"{where}: the optimizer state covers other parameters than the model's; train afresh.")
    for g, c in zip(groups, current, strict=True):
        for k, v in c.items():
            if isinstance(v, tuple) and isinstance(g.get(k), list):
                g[k] = tuple(g[k])
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in {**tensors, **scalars}.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, st in state.items():
        if pid >= len(params):
            raise DataError(f"{where}: optimizer state for parameter {pid}, the model has {len(params)}.")
        for key, value in st.items():
            if torch.is_tensor(value) and value.dim() and tuple(value.shape) != tuple(params[pid].shape):
                raise DataError(
                    f"{where}: optimizer {key} of parameter {pid} has shape {tuple(value.shape)}, the parameter {tuple(params[pid].shape)}."
                )
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_tensors(device: str) -> Tensors:
    """The torch RNG state(s) that dropout draws from on ``device``."""
    out = {"cpu": torch.get_rng_state()}
    if str(device).startswith("cuda"):
        out["cuda"] = torch.cuda.get_rng_state(torch.device(device))
    return out


def restore_rng(tensors: Mapping[str, torch.Tensor], device: str) -> None:
    torch.set_rng_state(tensors["cpu"].to(torch.uint8))
    if str(device).startswith("cuda") and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"].to(torch.uint8), torch.device(device))


# --------------------------------------------------------------------------- training state
def data_fingerprint(data: FitData) -> str:
    """A cheap digest of what a fit sees: sizes, dtypes, sample ids, labels, the oversampling
    mask and the feature values of up to 16 evenly spaced rows per part and modality (about
    2 MB hashed for Twemoji-sized features; a changed split or encoder changes it)."""
    h = hashlib.sha256(b"gcrdp-fitdata-v1\0")

    def put(a: np.ndarray) -> None:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())

    for part, feats, labels in (("train", data.train, data.train_labels), ("val", data.val, data.val_labels)):
        h.update(part.encode() + b"\0")
        if feats is None:
            h.update(b"none")
            continue
        h.update("\0".join(feats.sample_ids).encode("utf-8"))
        if labels is not None:
            put(np.asarray(labels))
        rows = np.unique(np.linspace(0, max(len(feats) - 1, 0), num=min(len(feats), 16)).astype(np.int64))
        for mod in (feats.image, feats.text):
            put(mod.local[rows])
            put(mod.mask[rows])
            put(mod.pooled[rows])
    put(np.asarray(data.oversample, dtype=bool))
    return h.hexdigest()[:32]


@dataclass
class TrainingProgress:
    """The loop's counters after ``epoch`` completed epochs (stored in ``state.json``).

    ``best_val_map`` is None while no validation epoch has been scored; ``bad_epochs`` is the
    patience counter; ``stopped`` is True once early stopping (or ``max_epochs``) ended the fit.
    """

    epoch: int = 0
    best_epoch: int = 0
    best_val_map: float | None = None
    bad_epochs: int = 0
    stopped: bool = False
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def training_identity(
    data: FitData, train_config: dict[str, Any], seed: int, method_info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint (:data:`IDENTITY_KEYS`)."""
    info = dict(method_info or {})
    return {
        "method": info.get("method"),
        "method_config": info.get("method_config"),
        "input_dims": info.get("input_dims") or {"image_dim": data.train.image.dim, "text_dim": data.train.text.dim},
        "seed": int(seed),
        "train_config": dict(train_config),
        "data_fingerprint": data_fingerprint(data),
    }


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _previous_best(path: Path, best_epoch: int) -> Path | None:
    """``path/best.safetensors`` when the checkpoint there holds the weights of ``best_epoch``."""
    try:
        prev = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        prev.get("format") == CHECKPOINT_FORMAT
        and prev.get("kind") == "training"
        and prev.get("best_epoch") == best_epoch
        and BEST_FILE in prev.get("files", {})
        and (path / BEST_FILE).is_file()
    )
    return path / BEST_FILE if ok else None


def save_training_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    best_state: Mapping[str, torch.Tensor] | None,
    progress: TrainingProgress,
    identity: Mapping[str, Any],
    device: str,
) -> None:
    """Write the training checkpoint (layout in the module docstring) atomically.

    ``best_state`` must be the weights of epoch ``progress.best_epoch``. They are written only
    when neither this epoch's weights (best epoch = this epoch) nor the previous checkpoint's
    ``best.safetensors`` (same best epoch) holds them already; otherwise that file is
    hard-linked, so a checkpoint costs about one model and one optimizer state of writing.
    """
    path = Path(path)
    opt_t, opt_m = optimizer_tensors(optimizer)
    files: dict[str, tuple[Mapping[str, torch.Tensor], Mapping[str, str] | None]] = {
        MODEL_FILE: (state_tensors(model), None),
        OPTIMIZER_FILE: (opt_t, opt_m),
        RNG_FILE: (rng_tensors(device), None),
    }
    links: dict[str, str | Path] = {}
    if best_state is not None:
        prev = _previous_best(path, progress.best_epoch)
        if progress.best_epoch == progress.epoch:
            links[BEST_FILE] = MODEL_FILE
        elif prev is not None:
            links[BEST_FILE] = prev
        else:
            files[BEST_FILE] = (best_state, None)
    state = {"kind": "training", **dict(identity), **asdict(progress)}
    write_checkpoint(path, state, files, links)


def load_training_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    identity: Mapping[str, Any],
    device: str,
) -> tuple[TrainingProgress, Tensors | None]:
    """Restore ``model``, ``optimizer`` and the torch RNG from the training checkpoint at
    ``path``; return the progress counters and the best-so-far weights (or None).

    Raises:
        ConfigError: the checkpoint belongs to another run (method, config, seed, input dims
            or training data differ) — resuming it would silently mix two runs.
        DataError: a missing, corrupt or incompatible checkpoint.
    """
    ckpt = read_checkpoint(path, kind="training")
    diffs = [
        f"{k}: checkpoint {_canon(ckpt.state.get(k))[:120]}, now {_canon(identity.get(k))[:120]}"
        for k in IDENTITY_KEYS
        if _canon(ckpt.state.get(k)) != _canon(identity.get(k))
    ]
    if diffs:
        raise ConfigError(
            f"The training checkpoint in {ckpt.path} belongs to another run, so it cannot be "
            f"resumed: " + "; ".join(diffs) + ". Use another checkpoint folder, or start afresh "
            "with --no-resume (resume=False), which overwrites it."
        )
    known = {f for f in TrainingProgress.__dataclass_fields__}
    try:
        progress = TrainingProgress(**{k: ckpt.state[k] for k in known})
    except KeyError as exc:
        raise DataError(f"Checkpoint {ckpt.path / STATE_FILE} lacks the field {exc}; it is corrupt.") from None
    if progress.best_val_map is not None and not math.isfinite(progress.best_val_map):
        raise DataError(f"Checkpoint {ckpt.path / STATE_FILE}: best_val_map is not finite.")
    load_weights(model, ckpt.tensors(MODEL_FILE, device), str(ckpt.path / MODEL_FILE))
    load_optimizer(optimizer, ckpt.tensors(OPTIMIZER_FILE, device), ckpt.metadata(OPTIMIZER_FILE), str(ckpt.path / OPTIMIZER_FILE))
    best = None
    if ckpt.has(BEST_FILE):
        best = ckpt.tensors(BEST_FILE, device)
        expected = model.state_dict()
        if set(best) != set(expected) or any(best[k].shape != expected[k].shape for k in expected):
            raise DataError(f"{ckpt.path / BEST_FILE} does not fit the model; train afresh.")
    restore_rng(ckpt.tensors(RNG_FILE), device)
    return progress, best
