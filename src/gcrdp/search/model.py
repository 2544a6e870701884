"""The model an index embeds with: a method trained by ``gcrdp train`` (its final checkpoint),
with the encoders of the run that trained it. Both modalities land in the method's shared space;
the index and every query use the same :class:`SearchModel`, which its fingerprint pins."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError


def _folder_digest(path: Path) -> str:
    """SHA-256 over the names and bytes of the files of a checkpoint folder (sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class SearchModel:
    """A trained method plus its encoders (see the module docstring).

    ``fingerprint`` names everything that decides an embedding: the checkpoint's bytes, the
    method and its options, both encoders' fingerprints and the feature storage dtype.
    """

    method: Any
    config: Any  # RunConfig of the training run
    fingerprint: dict[str, Any]
    checkpoint: Path | None
    _encoders: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "cpu") -> SearchModel:
        """The model of a ``gcrdp train`` checkpoint folder (``DIR`` or ``DIR/final``)."""
        from ..experiments import RunConfig
        from ..methods.persistence import load_method
        from ..training.checkpoint import checkpoint_exists, read_checkpoint

        checkpoint = Path(checkpoint).expanduser().resolve()  # stored in the index: valid from any folder
        where = checkpoint / "final" if checkpoint_exists(checkpoint / "final") else checkpoint
        if not checkpoint_exists(where):
            raise DataError(
                f"{checkpoint} holds no gcrdp checkpoint (expected {checkpoint}/final from 'gcrdp train --checkpoint-dir DIR')."
            )
        ckpt = read_checkpoint(where, kind="final")
        run = ckpt.state.get("run")
        if not isinstance(run, dict) or not isinstance(run.get("config"), dict):
            raise DataError(
                f"Checkpoint {ckpt.path} holds no run info (it was not written by 'gcrdp train'), so the encoders that feed it are unknown."
            )
        config = RunConfig.from_dict(dict(run["config"]))
        pre_extracted = bool((run.get("features") or {}).get("key_inputs", {}).get("pre_extracted"))
        method = load_method(ckpt, device)
        metric = getattr(method, "score_metric", "cosine")
        if metric not in ("cosine", "dot"):
            raise ConfigError(
                f"{ckpt.state['method']} scores with {metric!r}, which a vector index cannot search; train it with score='global'."
            )
        model = cls(method=method, config=config, checkpoint=ckpt.path, fingerprint={})
        model.fingerprint = {
            "checkpoint_sha256": _folder_digest(ckpt.path),
            "method": ckpt.state["method"],
            "method_config": ckpt.state.get("method_config"),
            "metric": metric,
            "image_encoder": None if pre_extracted else model.encoder("image").fingerprint(),
            "text_encoder": None if pre_extracted else model.encoder("text").fingerprint(),
            "feature_dtype": config.feature_dtype,
            "pre_extracted": pre_extracted,
        }
        return model

    @property
    def pre_extracted(self) -> bool:
        """Trained on pre-extracted features: it embeds features files, not images and texts."""
        return bool(self.fingerprint.get("pre_extracted"))

    def embed_features(self, modality: str, features: Any) -> np.ndarray:
        """(n, d) float32 embeddings of one modality's pre-extracted features (ModalityFeatures)."""
        emb = self.method.embed_images(features) if modality == "image" else self.method.embed_texts(features)
        return self._finish(emb)

    def _finish(self, emb: Any) -> np.ndarray:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if self.metric == "cosine":
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb

    @classmethod
    def from_encoders(
        cls,
        *,
        image_encoder: str = "clip",
        text_encoder: str = "clip",
        image_encoder_options: dict[str, Any] | None = None,
        text_encoder_options: dict[str, Any] | None = None,
        feature_dtype: str = "float16",
        assume_aligned: bool = False,
    ) -> SearchModel:
        """A model without training: the cosine of an *aligned* encoder pair's pooled features
        (CLIP from a local folder: ``image_encoder_options={"model_dir": DIR}``, the same for
        text) — the ``zero-shot`` method. Refused for encoders that do not share one space."""
        from ..experiments import RunConfig
        from ..methods.zeroshot import ZeroShotMethod, detect_alignment

        config = RunConfig(
            image_encoder=image_encoder,
            text_encoder=text_encoder,
            image_encoder_options=dict(image_encoder_options or {}),
            text_encoder_options=dict(text_encoder_options or {}),
            feature_dtype=feature_dtype,
            methods=["zero-shot"],
        )
        model = cls(method=ZeroShotMethod(), config=config, checkpoint=None, fingerprint={})  # type: ignore[arg-type]
        fi, ft = model.encoder("image").fingerprint(), model.encoder("text").fingerprint()
        aligned, why = detect_alignment({"key_inputs": {"image_encoder": fi, "text_encoder": ft}})
        if not aligned and not assume_aligned:
            raise ConfigError(
                f"Searching with the encoders alone needs an aligned image-text pair, and here {why}. "
                "Use CLIP (--clip DIR), or train a model and pass --checkpoint."
            )
        model.fingerprint = {
            "method": "zero-shot",
            "metric": "cosine",
            "image_encoder": fi,
            "text_encoder": ft,
            "feature_dtype": feature_dtype,
        }
        return model

    def encoders_config(self) -> dict[str, Any]:
        """What :meth:`from_encoders` needs to re-create this model (stored in an index)."""
        c = self.config
        return {
            "image_encoder": c.image_encoder,
            "text_encoder": c.text_encoder,
            "image_encoder_options": c.image_encoder_options,
            "text_encoder_options": c.text_encoder_options,
            "feature_dtype": c.feature_dtype,
        }

    @property
    def metric(self) -> str:
        return str(self.fingerprint.get("metric", "cosine"))

    def encoder(self, modality: str) -> Any:
        """The run's image or text encoder (built once)."""
        if modality not in self._encoders:
            from ..encoders import get_image_encoder, get_text_encoder
            from ..experiments.runner import build_encoder

            if modality == "image":
                kw = dict(self.config.image_encoder_options)
                if self.config.encoder_backend:
                    kw["backend"] = self.config.encoder_backend
                self._encoders[modality] = build_encoder(get_image_encoder, self.config.image_encoder, kw, "image")
            else:
                self._encoders[modality] = build_encoder(
                    get_text_encoder, self.config.text_encoder, dict(self.config.text_encoder_options), "text"
                )
        return self._encoders[modality]

    def embed(
        self, modality: str, items: list[Any], *, cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """(n, d) float32 embeddings of image paths or texts in the shared space, L2-normalised
        when the method scores by cosine (so that inner product = the method's score)."""
        from ..encoders.cache import encode_items

        if self.pre_extracted:
            raise ConfigError(
                f"The model at {self.checkpoint} was trained on pre-extracted features, so it "
                "cannot embed new images or texts. Index a features file made the same way "
                "(--features) and query with --like ID."
            )
        feats, _ = encode_items(
            self.encoder(modality),
            list(items),
            cache_dir=cache_dir,
            dtype=self.config.feature_dtype,
            batch_size=batch_size if modality == "image" else 2 * batch_size,
            progress=progress,
        )
        if getattr(self.method, "model_", True) is None:  # zero-shot: nothing fitted, the dims come now
            self.method.init_model(feats.pooled_dim, feats.pooled_dim)
        return self.embed_features(modality, feats)
