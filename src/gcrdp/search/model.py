"""The model an index embeds with: a method trained by ``gcrdp train`` (its final checkpoint),
with the encoders of the run that trained it. Both modalities land in the method's shared space;
the index and every query use the same :class:`SearchModel`, which its fingerprint pins.

**The query path.** A search embeds one query (or a few), and importing torch and transformers
for that took most of a ``gcrdp search`` (docs/benchmarks.md, "Search start-up"). Where the
model allows it, queries are embedded without either library, by ONNX Runtime:

* the text encoder's ONNX twin (:class:`~gcrdp.encoders.minilm.MiniLMOnnxEncoder`: the
  transformer's export, tokenized with ``tokenizers``), the image encoder's ONNX backend;
* the method's projection of one modality's local features ("query heads", exported here).

Each export is checked against torch when it is written and not kept if it differs by more than
its tolerance (1e-4 on any value; measured differences are about 1e-6), so query vectors equal
the torch path's to float rounding. The files live in ``$GCRDP_CACHE_DIR/models`` (default
``~/.cache/gcrdp/models``): the encoders' named by their weights' digests, the heads by the
checkpoint's digest and a digest of gcrdp's own source, with a JSON record written last that
also holds the fingerprint computed when the checkpoint was loaded with torch — so a changed
checkpoint, other encoder weights or other gcrdp code never use a stale export. They are written
(atomically) whenever a checkpoint is loaded with torch: by ``gcrdp index``, or by the first
search of a model. Embedding without a feature cache (``cache_dir=None``: queries) takes the
query path when it is there; embedding through the cache (index builds) always runs the
encoders and the method in torch. ``GCRDP_QUERY_PATH=torch`` turns the query path off (the
behaviour before it existed, for comparisons); a GPU ``device`` never takes it.

Methods whose embedding is the trainable heads' own (``gcrdp``, ``gap-infonce``) get query heads;
the others embed queries in torch as before (their indexes still open without torch, which is
all a ``--like`` query needs). CLIP (``--clip``) always runs in torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DataError

if TYPE_CHECKING:  # imported where used: opening an index or a --like query need no encoder
    from ..encoders.factory import EncoderSettings

#: images per encoder batch when :meth:`SearchModel.embed` builds an index (texts: twice as many)
EMBED_BATCH = 64

log = logging.getLogger(__name__)

#: ``GCRDP_QUERY_PATH``: ``auto`` (default: ONNX Runtime where exported) or ``torch`` (always torch).
QUERY_PATH_ENV = "GCRDP_QUERY_PATH"
QUERY_PATHS = ("auto", "torch")
#: Version of the query heads' files and record; part of their names.
HEADS_FORMAT = 1
#: Largest absolute difference of an embedding value allowed between a query head and torch.
HEAD_TOLERANCE = 1e-4
_STATE_FILE = "state.json"


def _folder_digest(path: Path) -> str:
    """SHA-256 over the names and bytes of the files of a checkpoint folder (sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _encoder_settings(source: Any) -> EncoderSettings:
    """:meth:`EncoderSettings.of <gcrdp.encoders.factory.EncoderSettings.of>` ``source``."""
    from ..encoders.factory import EncoderSettings

    return EncoderSettings.of(source)


def query_path_mode() -> str:
    """``GCRDP_QUERY_PATH`` (``auto`` or ``torch``); :class:`ConfigError` for another value."""
    mode = os.environ.get(QUERY_PATH_ENV, "").strip().lower() or "auto"
    if mode not in QUERY_PATHS:
        raise ConfigError(f"{QUERY_PATH_ENV} must be one of {QUERY_PATHS}, got {mode!r}.")
    return mode


#: The gcrdp code a query-heads record depends on (folders, or files), relative to the package:
#: how a checkpoint is read and its fingerprint made, the methods and their modules (what a head
#: computes), the features container and the export.
CODE_PARTS = (
    "methods",
    "model",
    "training",
    "losses",
    "experiments/config.py",
    "data/features.py",
    "encoders/onnx_backend.py",
    "search/model.py",
    "__init__.py",
)
_CODE_DIGEST: list[str] = []


def code_digest() -> str:
    """SHA-256 over the names and bytes of the ``.py`` files of :data:`CODE_PARTS` (once per
    process): query heads written by other code are not used."""
    if not _CODE_DIGEST:
        root = Path(__file__).resolve().parents[1]
        files = sorted({f for part in CODE_PARTS for f in ((root / part).rglob("*.py") if (root / part).is_dir() else [root / part])})
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        _CODE_DIGEST.append(h.hexdigest())
    return _CODE_DIGEST[0]


def _resolve_checkpoint(checkpoint: Path) -> Path | None:
    """``DIR/final`` or ``DIR`` when it holds a state file; None otherwise (then the torch path
    reads it: a crashed write's ``.old`` twin, or the error for a folder without a checkpoint)."""
    for where in (checkpoint / "final", checkpoint):
        if (where / _STATE_FILE).is_file():
            return where
    return None


# ----------------------------------------------------------------------------- query heads
class QueryHeads:
    """The query-path record of one checkpoint: ``<key>.json`` (written last) and the ONNX
    projections ``<key>.<modality>.onnx`` in the models folder; see the module docstring."""

    def __init__(self, record: Path, data: dict[str, Any]) -> None:
        self.record, self.data = record, data
        self._runners: dict[str, Any] = {}

    @staticmethod
    def record_path(checkpoint_sha256: str, folder: Path | None = None) -> Path:
        from ..encoders.base import default_artifact_dir
        from ..encoders.onnx_backend import ONNX_OPSET

        root = folder if folder is not None else default_artifact_dir()
        return root / f"query-heads-{checkpoint_sha256[:32]}-{code_digest()[:16]}-opset{ONNX_OPSET}-v{HEADS_FORMAT}.json"

    @classmethod
    def find(cls, checkpoint_sha256: str) -> QueryHeads | None:
        """The record of a checkpoint with these bytes made by this code, or None."""
        from ..encoders.factory import EncoderSettings

        path = cls.record_path(checkpoint_sha256)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = (
            isinstance(data, dict)
            and data.get("format") == HEADS_FORMAT
            and isinstance(data.get("fingerprint"), dict)
            and data["fingerprint"].get("checkpoint_sha256") == checkpoint_sha256
            and isinstance(data.get("settings"), dict)
            and all(k in data["settings"] for k in EncoderSettings.FIELDS)
            and isinstance(data.get("heads"), dict)
        )
        return cls(path, data) if ok else None

    @classmethod
    def write(cls, model: SearchModel) -> QueryHeads:
        """Export the heads of ``model`` (loaded with torch) that can be exported and check them;
        then write the record (the fingerprint, the encoder settings, each head's file, input
        dim, digest and measured difference)."""
        from ..utils.io import atomic_write_bytes, atomic_write_json

        fp = model.fingerprint
        path = cls.record_path(fp["checkpoint_sha256"])
        heads: dict[str, Any] = {}
        if not model.pre_extracted and _exportable(model.method):
            for modality in ("text", "image"):
                try:
                    data, dim, worst = _export_head(model.method, modality)
                except Exception as exc:  # noqa: BLE001 - an optional accelerator: never fatal
                    log.warning(
                        "Cannot export the %s projection of %s to ONNX (%s); its queries run in torch.", modality, fp["method"], exc
                    )
                    continue
                if not worst <= HEAD_TOLERANCE:
                    log.warning("The ONNX %s projection differs from torch by %.2g (> %g); not kept.", modality, worst, HEAD_TOLERANCE)
                    continue
                file = path.with_name(f"{path.stem}.{modality}.onnx")
                atomic_write_bytes(file, data)
                heads[modality] = {
                    "file": file.name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "input_dim": dim,
                    "max_difference": worst,
                }
        import torch

        record = {
            "format": HEADS_FORMAT,
            "checkpoint": str(model.checkpoint),
            "fingerprint": fp,
            "settings": model._settings().to_dict(),
            "heads": heads,
            "torch": torch.__version__,
        }
        atomic_write_json(path, record)
        # one record per checkpoint: those of other gcrdp code (or formats) go
        for old in path.parent.glob(f"query-heads-{fp['checkpoint_sha256'][:32]}-*"):
            if not old.name.startswith(path.stem + "."):
                old.unlink(missing_ok=True)
        return cls(path, record)

    def head(self, modality: str, num_threads: int) -> Any:
        """A callable features → embeddings for ``modality``, or None without an exported head
        (or with a file that is missing or not the one recorded)."""
        if modality not in self._runners:
            info = self.data["heads"].get(modality)
            runner = None
            if isinstance(info, dict):
                file = self.record.with_name(str(info.get("file")))
                try:
                    data = file.read_bytes()
                except OSError:
                    data = b""
                if hashlib.sha256(data).hexdigest() == info.get("sha256"):
                    runner = _Head(data, int(info["input_dim"]), modality, str(self.data["fingerprint"].get("method")), num_threads)
                else:
                    log.warning("Query head %s is missing or altered; %s queries run in torch.", file, modality)
            self._runners[modality] = runner
        return self._runners[modality]


def _exportable(method: Any) -> bool:
    """Whether the method embeds through the trainable heads' own ``_embed`` (one batch of local
    features → ``_encode_batch``), which is what a query head reproduces."""
    from ..methods.trainable import TrainableHeadsMethod

    return (
        isinstance(method, TrainableHeadsMethod)
        and type(method)._embed is TrainableHeadsMethod._embed
        and getattr(method, "model_", None) is not None
        and str(getattr(method, "device", "cpu")) == "cpu"
    )


def _export_head(method: Any, modality: str) -> tuple[bytes, int, float]:
    """ONNX bytes of ``method``'s projection of ``modality`` (local features (B, L, d), every
    one valid → embeddings), its input dim, and its largest difference to the method's own
    embedding on seeded inputs of several sizes."""
    import torch

    from ..data.features import ModalityFeatures
    from ..encoders.onnx_backend import export_onnx_graph, onnx_session

    model = method.model_
    input_pca = getattr(method, "_input_pca", None)
    pca = input_pca(model, modality) if input_pca is not None else None  # pca_dim: raw tokens → k dims first
    dim = int(pca.in_dim if pca is not None else (model.image_head if modality == "image" else model.text_head).in_dim)

    class _Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, local: torch.Tensor) -> torch.Tensor:
            mask = torch.ones(local.shape[:2], dtype=torch.bool, device=local.device)
            if pca is not None:
                local = pca(local)
            return method._encode_batch(self.model, modality, local, mask).float()

    example = torch.zeros(2, 5, dim)
    data = export_onnx_graph(_Head().eval(), (example,), ["local"], "embedding", {"local": {0: "batch", 1: "points"}})
    session = onnx_session(data, 1)
    rng = np.random.default_rng(0)
    worst = 0.0
    for n, length in ((1, 1), (1, 2), (1, 7), (3, 5), (1, 49), (2, 128)):
        x = rng.normal(0.0, 1.0, size=(n, length, dim)).astype(np.float16).astype(np.float32)
        if modality == "image":
            x = np.abs(x * 2).astype(np.float32)  # image grid features are in [0, 6]
        mask = np.ones((n, length), bool)
        ref = method._embed(ModalityFeatures(x, mask, np.zeros((n, dim), np.float32)), modality)
        got = session.run(None, {"local": x})[0]
        worst = max(worst, float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf"))
    return data, dim, worst


class _Head:
    """A query head: the valid local features of each item → the method's embedding."""

    def __init__(self, data: bytes, input_dim: int, modality: str, method: str, num_threads: int) -> None:
        self.data, self.input_dim, self.modality, self.method, self.num_threads = data, input_dim, modality, method, num_threads
        self._session: Any = None

    def load(self) -> _Head:
        if self._session is None:
            from ..encoders.onnx_backend import onnx_session

            self._session = onnx_session(self.data, self.num_threads)
        return self

    def __call__(self, features: Any) -> np.ndarray:
        if features.dim != self.input_dim:
            raise DataError(f"{self.method}: {self.modality} features have dim {features.dim}, the model expects {self.input_dim}")
        self.load()
        local, mask = features.local, np.asarray(features.mask, bool)
        run = lambda x: self._session.run(None, {"local": np.ascontiguousarray(x, np.float32)})[0]  # noqa: E731
        if mask.all():  # every item has as many features (image grids, one text): one batch
            return run(local)
        return np.concatenate([run(local[i][mask[i]][None]) for i in range(len(local))], axis=0)


# ----------------------------------------------------------------------------- the model
class SearchModel:
    """A trained method plus its encoders (see the module docstring).

    ``fingerprint`` names everything that decides an embedding: the checkpoint's bytes, the
    method and its options, both encoders' fingerprints and the feature storage dtype.

    ``method`` and ``config`` (the training run's config) are loaded (with torch) when first
    used: a model read through its query heads needs neither to embed queries. Its encoders are
    built from ``settings`` (:class:`~gcrdp.encoders.factory.EncoderSettings`; default: those
    of ``config``) by the one encoder factory of :mod:`gcrdp.encoders.factory`.
    """

    def __init__(
        self,
        method: Any = None,
        config: Any = None,  # the training run's config: a RunConfig, or its dict
        fingerprint: dict[str, Any] | None = None,
        checkpoint: Path | None = None,
        *,
        device: str = "cpu",
        settings: EncoderSettings | Mapping[str, Any] | None = None,
        heads: QueryHeads | None = None,
    ) -> None:
        self._method, self._config = method, config
        self.fingerprint: dict[str, Any] = fingerprint if fingerprint is not None else {}
        self.checkpoint = checkpoint
        self.device = device
        self._encoder_settings = _encoder_settings(settings) if settings is not None else None
        self._heads = heads
        self._encoders: dict[str, Any] = {}
        self._query: dict[str, Any] = {}
        #: ``GCRDP_QUERY_PATH`` when the model was made: whether it may embed queries without torch
        self.query_mode = query_path_mode()

    def __repr__(self) -> str:
        return f"SearchModel(method={self.fingerprint.get('method')!r}, checkpoint={str(self.checkpoint)!r})"

    # ---------------------------------------------------------------- what torch loads
    @property
    def method(self) -> Any:
        """The fitted method (loaded from the checkpoint on first use)."""
        if self._method is None:
            from ..methods.persistence import load_method
            from ..training.checkpoint import read_checkpoint

            if self.checkpoint is None:
                raise ConfigError("This search model has no checkpoint to load its method from.")
            self._method = load_method(read_checkpoint(self.checkpoint, kind="final"), self.device)
        return self._method

    @property
    def config(self) -> Any:
        """The training run's config (as given, or the dict stored in the checkpoint, read on first use)."""
        if self._config is None:
            from ..training.checkpoint import read_checkpoint

            if self.checkpoint is None:
                raise ConfigError("This search model has no checkpoint to read its run config from.")
            self._config = dict(read_checkpoint(self.checkpoint, kind="final").state["run"]["config"])
        return self._config

    @property
    def encoder_settings(self) -> EncoderSettings:
        """What the model's encoders are built from (:class:`~gcrdp.encoders.factory.EncoderSettings`):
        the training run's, or those given (a model read through its query heads: their record's)."""
        return self._settings()

    def _settings(self) -> EncoderSettings:
        """The encoder settings (those of the run config unless given)."""
        if self._encoder_settings is None:
            self._encoder_settings = _encoder_settings(self.config)
        return self._encoder_settings

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "cpu") -> SearchModel:
        """The model of a ``gcrdp train`` checkpoint folder (``DIR`` or ``DIR/final``): read
        through its query heads when they exist for these bytes (no torch), else loaded with
        torch — which then writes the query heads for the next time."""
        checkpoint = Path(checkpoint).expanduser().resolve()  # stored in the index: valid from any folder
        light = cls._from_query_heads(checkpoint, device)
        if light is not None:
            return light
        model = cls._load_with_torch(checkpoint, device)
        model._prepare_query_path()
        return model

    @classmethod
    def _from_query_heads(cls, checkpoint: Path, device: str) -> SearchModel | None:
        if device != "cpu" or query_path_mode() == "torch":
            return None
        where = _resolve_checkpoint(checkpoint)
        if where is None:
            return None
        heads = QueryHeads.find(_folder_digest(where))
        if heads is None:
            return None
        model = cls(checkpoint=where, fingerprint={}, device=device, settings=heads.data["settings"], heads=heads)
        fp = dict(heads.data["fingerprint"])
        if not fp.get("pre_extracted"):  # the encoders are outside the checkpoint: their fingerprints are taken now
            fp["image_encoder"] = model.encoder("image").fingerprint()
            fp["text_encoder"] = model.encoder("text").fingerprint()
        model.fingerprint = fp
        return model

    @classmethod
    def _load_with_torch(cls, checkpoint: Path, device: str) -> SearchModel:
        from ..methods.base import method_tags
        from ..methods.persistence import load_method
        from ..training.checkpoint import checkpoint_exists, read_checkpoint

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
        config = dict(run["config"])
        settings = _encoder_settings(config)
        pre_extracted = bool((run.get("features") or {}).get("key_inputs", {}).get("pre_extracted"))
        method = load_method(ckpt, device)
        metric = method_tags(method).score_metric  # declared, not probed (issue 24)
        if metric not in ("cosine", "dot"):
            raise ConfigError(
                f"{ckpt.state['method']} scores with {metric!r}, which a vector index cannot search; train it with score='global'."
            )
        model = cls(method=method, config=config, checkpoint=ckpt.path, fingerprint={}, device=device, settings=settings)
        model.fingerprint = {
            "checkpoint_sha256": _folder_digest(ckpt.path),
            "method": ckpt.state["method"],
            "method_config": ckpt.state.get("method_config"),
            "metric": metric,
            "image_encoder": None if pre_extracted else model.encoder("image").fingerprint(),
            "text_encoder": None if pre_extracted else model.encoder("text").fingerprint(),
            "feature_dtype": settings.feature_dtype,
            "pre_extracted": pre_extracted,
        }
        return model

    def _prepare_query_path(self) -> None:
        """Write the query heads of a model loaded with torch, and the query encoders' exports
        (see the module docstring); a failure is logged, never raised."""
        if self.device != "cpu" or self.query_mode == "torch":
            return
        from ..encoders.onnx_backend import onnxruntime_available

        if not onnxruntime_available():
            return
        try:
            self._heads = QueryHeads.write(self)
            heads = self._heads.data["heads"]
            if not self.pre_extracted:
                from ..encoders.efficientnet import EfficientNetLite0Encoder
                from ..encoders.minilm import MiniLMEncoder

                text = self.encoder("text")
                if "text" in heads and isinstance(text, MiniLMEncoder):
                    text.export_onnx()
                image = self._new_encoder("image")  # at the default models folder, where queries look
                if "image" in heads and isinstance(image, EfficientNetLite0Encoder) and image.backend == "onnx":
                    image.load()
        except Exception as exc:  # noqa: BLE001 - an optional accelerator: never fatal
            log.warning("The ONNX query path of %s was not prepared (%s); its queries run in torch.", self.checkpoint, exc)

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
        from ..encoders.factory import EncoderSettings
        from ..methods.zeroshot import ZeroShotMethod, detect_alignment

        settings = EncoderSettings(
            image_encoder=image_encoder,
            text_encoder=text_encoder,
            image_encoder_options=dict(image_encoder_options or {}),
            text_encoder_options=dict(text_encoder_options or {}),
            feature_dtype=feature_dtype,
        )
        model = cls(method=ZeroShotMethod(), checkpoint=None, fingerprint={}, settings=settings)
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
        s = self._settings().to_dict()
        return {k: s[k] for k in ("image_encoder", "text_encoder", "image_encoder_options", "text_encoder_options", "feature_dtype")}

    @property
    def metric(self) -> str:
        return str(self.fingerprint.get("metric", "cosine"))

    def _new_encoder(self, modality: str) -> Any:
        return self._settings().build(modality)

    def encoder(self, modality: str) -> Any:
        """The run's image or text encoder (built once)."""
        if modality not in self._encoders:
            self._encoders[modality] = self._new_encoder(modality)
        return self._encoders[modality]

    # ---------------------------------------------------------------- embedding
    def query_path(self, modality: str) -> tuple[Any, Any] | None:
        """``(encoder, head)`` that embed ``modality`` without torch — the encoder's ONNX twin or
        ONNX backend with its export present, and the method's query head — or None."""
        if modality not in self._query:
            self._query[modality] = None
            if self.device == "cpu" and self.query_mode != "torch" and not self.pre_extracted:
                if self._heads is None and "checkpoint_sha256" in self.fingerprint:
                    self._heads = QueryHeads.find(self.fingerprint["checkpoint_sha256"])
                enc = self._query_encoder(modality)
                head = self._heads.head(modality, _threads(enc)) if self._heads is not None and enc is not None else None
                if head is not None:
                    self._query[modality] = (enc, head)
        return self._query[modality]

    def _query_encoder(self, modality: str) -> Any:
        from ..encoders.efficientnet import EfficientNetLite0Encoder
        from ..encoders.minilm import MiniLMEncoder

        enc = self.encoder(modality)
        if isinstance(enc, MiniLMEncoder):
            twin = enc.onnx_twin()
            if twin is None:
                return None
            try:
                return twin.load()
            except Exception as exc:  # noqa: BLE001 - an unreadable export: the torch path answers
                log.warning("Cannot load the ONNX text model %s (%s); text queries run in torch.", twin.model, exc)
                return None
        if isinstance(enc, EfficientNetLite0Encoder) and enc.backend == "onnx" and enc.onnx_path().is_file():
            return enc  # (an unreadable export is exported again by the encoder)
        return None

    def warm(self) -> SearchModel:
        """Load now what queries need (each modality's encoder and projection, one query's worth
        of work), so that the first query answers as fast as the next: ``gcrdp serve`` at start-up."""
        if self.pre_extracted:
            return self
        from PIL import Image

        dummy = {"text": "warm up", "image": Image.new("RGB", (64, 64), "white")}
        for modality in ("text", "image"):
            path = self.query_path(modality)
            enc = path[0] if path is not None else self.encoder(modality)
            feats = enc.encode([dummy[modality]], batch_size=1, progress=False)
            if path is not None:
                path[1](feats)
            else:
                if getattr(self.method, "model_", True) is None:  # zero-shot: nothing fitted, the dims come now
                    self.method.init_model(image_dim=feats.pooled_dim, text_dim=feats.pooled_dim)
                self.embed_features(modality, feats)
        return self

    def extract_on_cluster(
        self, modality: str, parts: list[list[Any]], *, cache_dir: str | Path, client: Any, progress: bool = False
    ) -> int:
        """Extract into the feature cache ``cache_dir``, on the Dask cluster of ``client``
        (:func:`gcrdp.encoders.dask_extract.extract_items_dask`), the items of ``parts``: one
        list of image paths or texts per later :meth:`embed` call with this cache (default batch
        size), in the batches those calls would encode, so that they read every row from the
        cache — the rows they would have computed. Returns the items written now."""
        if self.pre_extracted:
            return 0  # embed() says why it cannot embed items
        from ..encoders.dask_extract import extract_items_dask

        s = self._settings()
        return extract_items_dask(
            s.spec(modality),
            parts,
            cache_dir=cache_dir,
            client=client,
            dtype=s.feature_dtype,
            batch_size=EMBED_BATCH if modality == "image" else 2 * EMBED_BATCH,
            progress=progress,
        )

    def embed(
        self,
        modality: str,
        items: list[Any],
        *,
        cache_dir: str | Path | None = None,
        batch_size: int = EMBED_BATCH,
        progress: bool = False,
    ) -> np.ndarray:
        """(n, d) float32 embeddings of image paths or texts in the shared space, L2-normalised
        when the method scores by cosine (so that inner product = the method's score). Without
        ``cache_dir`` (queries), through the :meth:`query_path` when there is one."""
        from ..encoders.cache import encode_items

        if self.pre_extracted:
            raise ConfigError(
                f"The model at {self.checkpoint} was trained on pre-extracted features, so it "
                "cannot embed new images or texts. Index a features file made the same way "
                "(--features) and query with --like ID."
            )
        query = self.query_path(modality) if cache_dir is None else None
        feats, _ = encode_items(
            query[0] if query is not None else self.encoder(modality),
            list(items),
            cache_dir=cache_dir,
            dtype=self._settings().feature_dtype,
            batch_size=batch_size if modality == "image" else 2 * batch_size,
            progress=progress,
        )
        if query is not None:
            return self._finish(query[1](feats))
        if getattr(self.method, "model_", True) is None:  # zero-shot: nothing fitted, the dims come now
            self.method.init_model(image_dim=feats.pooled_dim, text_dim=feats.pooled_dim)
        return self.embed_features(modality, feats)


def _threads(encoder: Any) -> int:
    from ..encoders.base import available_cpus

    inner = getattr(encoder, "encoder", encoder)
    return int(getattr(inner, "num_threads", 0) or available_cpus())
