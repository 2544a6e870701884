"""Small fake encoders whose rows depend on the composition of their batches (each row gets its
batch's mean added), so a test comparing arrays notices any change of batches. Importable by a
subprocess (the kill-and-resume test) as ``tests.encoders.fakes``."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from gcrdp.data.features import ModalityFeatures
from gcrdp.encoders.base import progress_bar


def _rng(data: bytes) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(data).digest()[:8], "little"))


class _Counting:
    def __init__(self, stall_at: int | None = None, marker: Path | None = None, report: bool = True) -> None:
        self.calls = self.items = 0
        self.sizes: list[int] = []
        self.stall_at, self.marker, self.report = stall_at, marker, report

    def _count(self, items) -> None:
        self.calls += 1
        self.items += len(items)
        self.sizes.append(len(items))
        if self.stall_at is not None and self.calls >= self.stall_at:  # the kill test: wait to be killed
            if self.marker is not None:
                self.marker.write_text(str(self.calls))
            time.sleep(120)
            raise SystemExit("stalled encoder was not killed")

    def _bar(self, n: int, progress: bool, unit: str):
        if self.report:
            return progress_bar(n, progress=progress, unit=unit, desc=f"Encoding ({self.name})")  # type: ignore[attr-defined]
        return _NoBar()


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


class BatchImageEncoder(_Counting):
    """4 local vectors of 6 dims per image from its bytes, plus the mean over its batch."""

    modality = "image"
    name = "batch-image"

    def fingerprint(self) -> dict:
        return {"encoder": self.name}

    def encode(self, items, *, batch_size=32, progress=True) -> ModalityFeatures:
        items = list(items)
        self._count(items)
        n = len(items)
        local = np.zeros((n, 4, 6), np.float32)
        with self._bar(n, progress, "img") as bar:
            for s in range(0, n, batch_size):
                base = np.stack([_rng(Path(p).read_bytes()).normal(size=(4, 6)) for p in items[s : s + batch_size]])
                local[s : s + batch_size] = base + base.mean(0)
                bar.update(len(base))
        return ModalityFeatures(local, np.ones((n, 4), bool), local.mean(1))


class BatchTextEncoder(_Counting):
    """One 5-dim 'token' per word (at most 5), plus the mean over its batch; batches texts by
    word count, longest first (``encode_order``), as the real text encoders do by tokens."""

    modality = "text"
    name = "batch-text"

    def fingerprint(self) -> dict:
        return {"encoder": self.name}

    @staticmethod
    def _lengths(items) -> np.ndarray:
        return np.array([min(5, len(t.split())) for t in items], np.int64)

    def encode_order(self, items) -> np.ndarray:
        return np.argsort(-self._lengths(items), kind="stable")

    def encode(self, items, *, batch_size=64, progress=True) -> ModalityFeatures:
        items = list(items)
        self._count(items)
        n = len(items)
        lengths = self._lengths(items)
        L = int(lengths.max()) if n else 1
        local = np.zeros((n, L, 5), np.float32)
        mask = np.zeros((n, L), bool)
        order = self.encode_order(items)
        with self._bar(n, progress, "text") as bar:
            for s in range(0, n, batch_size):
                idx = order[s : s + batch_size]
                shift = np.mean([_rng(items[i].encode()).normal(size=5) for i in idx], axis=0)
                for i in idx:
                    k = int(lengths[i])
                    local[i, :k] = _rng(items[i].encode()).normal(size=(k, 5)) + shift
                    mask[i, :k] = True
                bar.update(len(idx))
        return ModalityFeatures(local, mask, local.sum(1) / mask.sum(1, keepdims=True))
