"""Image loading and preprocessing for the image encoders.

Conventions (all recorded in :meth:`ImagePreprocessor.params`, hence in the encoder fingerprint
and the feature-cache key):

- EXIF orientation is applied (camera photos come out upright).
- Transparency (RGBA, LA, palette with a transparent colour) is composited on an opaque
  background, white by default (Twemoji PNGs are transparent outside the glyph); then RGB.
- Resize: ``"squash"`` (default) resizes to ``size × size`` ignoring the aspect ratio, so the whole
  image is seen; ``"center_crop"`` resizes the shorter side to ``size`` and crops the centre.
  Interpolation: PIL bilinear (antialiased when downscaling) by default.
- Normalisation: ``(value - mean) / std`` per channel on 0–255 values. ``"lite"`` (default) is
  mean 127, std 128, the inception-style scaling to about [-1, 1] that the EfficientNet-Lite
  ImageNet checkpoints were trained with; ``"imagenet"`` is the torchvision mean/std.

Output of :meth:`ImagePreprocessor.__call__`: (3, size, size) float32, channels first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, format_list

#: Named per-channel (mean, std) on 0–255 pixel values.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # EfficientNet-Lite (TF "edge" models): inception-style scaling, (x - 127) / 128.
    "lite": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    # torchvision ImageNet statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) × 255.
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}
RESIZE_MODES = ("squash", "center_crop")
INTERPOLATIONS = ("bilinear", "bicubic", "lanczos", "nearest")


def check_image_files(paths: Sequence[str | Path | None], ids: Sequence[str] | None = None) -> None:
    """Raise :class:`DataError` if any path is ``None``, missing or not a regular file.

    Checks every path before any work starts; the message lists the first few and a count."""
    absent, missing = [], []
    for i, p in enumerate(paths):
        label = ids[i] if ids is not None else str(i)
        if p is None:
            absent.append(label)
        elif not Path(p).is_file():
            missing.append(str(p))
    problems = []
    if absent:
        problems.append(f"{len(absent)} samples have no image: {format_list(absent)}")
    if missing:
        problems.append(f"{len(missing)} image files are missing: {format_list(missing)}")
    if problems:
        raise DataError(
            "Cannot extract image features: "
            + "; ".join(problems)
            + ". Fix the paths (relative paths are taken from the current directory) or drop "
            "these samples."
        )


def load_image(path: str | Path, background: tuple[int, int, int] = (255, 255, 255)):
    """Open an image file as an RGB ``PIL.Image`` (EXIF-rotated, transparency composited on
    ``background``). A missing or undecodable file raises :class:`DataError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    im: Image.Image
    try:
        with Image.open(path) as im:
            im.load()  # decode fully now: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            return to_rgb(im, background)
    except FileNotFoundError:
        raise DataError(f"Image file not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"Cannot decode image {path}: {exc}") from None


def to_rgb(im: Any, background: tuple[int, int, int] = (255, 255, 255)):
    """Convert a ``PIL.Image`` to RGB, compositing any transparency on ``background``."""
    from PIL import Image

    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


@dataclass(frozen=True)
class ImagePreprocessor:
    """PIL image or path → normalised (3, size, size) float32 array (see the module doc)."""

    size: int = 224
    resize: str = "squash"
    interpolation: str = "bilinear"
    normalization: str = "lite"
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 32:
            raise ConfigError(f"image size must be an integer >= 32, got {self.size!r}.")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}.")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {self.normalization!r}.")
        bg = tuple(self.background)
        if len(bg) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in bg):
            raise ConfigError(f"background must be three integers in 0..255, got {self.background!r}.")
        object.__setattr__(self, "background", bg)

    def params(self) -> dict[str, Any]:
        """Everything that changes the output, JSON-able (goes into the encoder fingerprint)."""
        mean, std = NORMALIZATIONS[self.normalization]
        return {
            "size": self.size,
            "resize": self.resize,
            "interpolation": f"PIL.{self.interpolation}",
            "normalization": self.normalization,
            "mean": list(mean),
            "std": list(std),
            "background": list(self.background),
            "exif_transpose": True,
            "layout": "CHW RGB",
        }

    def _resample(self) -> int:
        from PIL import Image

        return {
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS,
            "nearest": Image.Resampling.NEAREST,
        }[self.interpolation]

    def resize_image(self, im: Any):
        s = self.size
        if self.resize == "squash":
            return im.resize((s, s), self._resample()) if im.size != (s, s) else im
        w, h = im.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        im = im.resize((nw, nh), self._resample())
        left, top = (nw - s) // 2, (nh - s) // 2
        return im.crop((left, top, left + s, top + s))

    def __call__(self, image: Any) -> np.ndarray:
        """A path or PIL image → (3, size, size) float32 normalised array."""
        if isinstance(image, (str, Path)):
            im = load_image(image, self.background)
        else:
            im = to_rgb(image, self.background)
        im = self.resize_image(im)
        x: np.ndarray = np.asarray(im, dtype=np.float32)  # (H, W, 3) in 0..255
        mean, std = NORMALIZATIONS[self.normalization]
        x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, items: Iterable[Any]) -> np.ndarray:
        """Preprocess several items → (n, 3, size, size) float32."""
        arrays = [self(x) for x in items]
        if not arrays:
            return np.zeros((0, 3, self.size, self.size), np.float32)
        return np.stack(arrays)


def describe_items(items: Sequence[Any]) -> list[str]:
    return [str(x) if isinstance(x, (str, Path)) else f"<{type(x).__name__} #{i}>" for i, x in enumerate(items)]
