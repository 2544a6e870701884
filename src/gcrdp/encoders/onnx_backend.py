"""Optional ONNX Runtime backend: export a torch module to ONNX once, cache the file, run it.

``onnx`` and ``onnxruntime`` are optional (``pip install 'gcrdp[onnx]'``) and imported lazily.
The exported file is cached under a directory of the caller's choosing, named by a key that
includes the weights digest, and written atomically (temporary file in the same directory,
fsync, ``os.replace``), so a crash mid-export leaves no file that looks finished.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError
from ..utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

ONNX_OPSET = 17


def onnxruntime_available() -> bool:
    """True when both ``onnx`` (needed to export) and ``onnxruntime`` can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def require_onnxruntime(purpose: str = "backend='onnx'") -> None:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"{purpose} needs the Python packages {', '.join(missing)}, which are not installed. "
            "Install them with: pip install 'gcrdp[onnx]' (or use backend='torch')."
        )


def export_onnx_bytes(module: Any, example: Any, input_name: str, output_name: str) -> bytes:
    """Export ``module`` (eval mode, one tensor in, one out, dynamic batch axis) to ONNX bytes.

    Uses the TorchScript-based exporter where the installed torch still has it (about 1 s for
    EfficientNet-Lite0) and the ``torch.export``-based one otherwise (about 10 s)."""
    import torch

    params = inspect.signature(torch.onnx.export).parameters
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            kwargs: dict[str, Any] = dict(
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
            )
            if "dynamo" in params:
                kwargs["dynamo"] = False
            torch.onnx.export(module, (example,), buf, **kwargs)  # type: ignore[arg-type]  # f: a file object works; torch annotates str | PathLike
            return buf.getvalue()
        except Exception as exc:  # exporter missing or failing in this torch: try the other one
            log.info("TorchScript ONNX export unavailable (%s); using the dynamo exporter", exc)
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            opset_version=ONNX_OPSET,
        )
        assert program is not None  # dynamo=True returns an ONNXProgram
        return program.model_proto.SerializeToString()


def export_onnx_graph(
    module: Any, args: tuple[Any, ...], input_names: list[str], output_name: str, dynamic_axes: dict[str, dict[int, str]]
) -> bytes:
    """Export ``module`` (eval mode; tensors ``args`` in, one tensor out) to ONNX bytes, with the
    named ``dynamic_axes`` of its inputs (``{"input_ids": {0: "batch", 1: "tokens"}}``).

    As :func:`export_onnx_bytes`: the TorchScript-based exporter where the installed torch has
    it, else the ``torch.export``-based one. A caller checks the export's outputs against the
    module before keeping it (tracing fixes Python-level branches to the example's)."""
    import torch

    params = inspect.signature(torch.onnx.export).parameters
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            buf = io.BytesIO()
            kwargs: dict[str, Any] = dict(
                input_names=list(input_names),
                output_names=[output_name],
                dynamic_axes={**dynamic_axes, output_name: {0: "batch"}},
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
            )
            if "dynamo" in params:
                kwargs["dynamo"] = False
            torch.onnx.export(module, args, buf, **kwargs)  # type: ignore[arg-type]  # f: a file object works
            return buf.getvalue()
        except Exception as exc:  # exporter missing or failing in this torch: try the other one
            log.info("TorchScript ONNX export unavailable (%s); using the dynamo exporter", exc)
        dims: dict[str, Any] = {}
        shapes = tuple(
            {axis: dims.setdefault(name, torch.export.Dim(name, min=1, max=1 << 16)) for axis, name in dynamic_axes.get(n, {}).items()}
            for n in input_names
        )
        program = torch.onnx.export(
            module,
            args,
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_shapes=shapes,
            dynamo=True,
            opset_version=ONNX_OPSET,
        )
        assert program is not None  # dynamo=True returns an ONNXProgram
        return program.model_proto.SerializeToString()


def onnx_session(model: str | Path | bytes, num_threads: int) -> Any:
    """An ONNX Runtime CPU session (``intra_op`` threads ``num_threads``, inter-op 1, every graph
    optimisation) on an ``.onnx`` file or its bytes."""
    require_onnxruntime()
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(num_threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """An ONNX Runtime CPU session for a single-input, single-output model.

    Args:
        model: path of the ``.onnx`` file, or its bytes.
        num_threads: intra-op threads (inter-op is 1: the graph is a chain).
    """

    def __init__(self, model: str | Path | bytes, num_threads: int) -> None:
        import onnxruntime as ort

        self.session = onnx_session(model, num_threads)
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]


def load_or_export(
    path: Path | None,
    build_module: Any,
    example: Any,
    input_name: str,
    output_name: str,
    num_threads: int,
) -> OnnxRunner:
    """Return a runner for the cached export at ``path``, exporting (atomically) if needed.

    ``build_module()`` returns the torch module to export and ``example`` is its example input
    (or a function returning it, so that torch is imported only when exporting). An unreadable
    cached file is re-exported with a warning; an unwritable directory falls back to an
    in-memory model."""
    require_onnxruntime()
    if path is not None and path.is_file():
        try:
            return OnnxRunner(path, num_threads)
        except Exception as exc:
            log.warning("Cached ONNX model %s is unreadable (%s); exporting it again.", path, exc)
    data = export_onnx_bytes(build_module(), example() if callable(example) else example, input_name, output_name)
    if path is not None:
        try:
            atomic_write_bytes(path, data)
            log.info("Exported ONNX model to %s", path)
        except OSError as exc:
            log.warning("Cannot write the ONNX model to %s (%s); keeping it in memory only.", path, exc)
    return OnnxRunner(data, num_threads)
