"""Vector search engines behind an index: FAISS (embedded, the default).

A backend holds one modality's vectors (rows 0..n-1, in the order they were added) and answers
top-k inner-product queries. The vectors arrive L2-normalised when the model scores by cosine,
so inner product is the model's own score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, MissingDependencyError

EXACT = "Flat"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("Search indexes need FAISS: pip install 'gcrdp[search]' (faiss-cpu).") from None
    return faiss


class FaissBackend:
    """A FAISS index over one modality's vectors.

    Args:
        dim: vector dimension.
        index_type: a FAISS factory string — ``"Flat"`` (exact, the default), or approximate:
            ``"HNSW32"``, ``"IVF1024,Flat"``, ``"IVF256,PQ32"``, … (``faiss.index_factory``); an
            IVF index is trained on the vectors it is built from.
    """

    def __init__(self, dim: int, index_type: str = EXACT) -> None:
        faiss = _faiss()
        self.dim, self.index_type = int(dim), str(index_type)
        try:
            self.index = faiss.index_factory(self.dim, self.index_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(f"FAISS cannot build index type {index_type!r}: {str(exc).splitlines()[0]}. "
                              "Examples: Flat, HNSW32, IVF1024,Flat.") from None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"vectors must be (n, {self.dim}), got {x.shape}.")
        if not self.index.is_trained:
            n_lists = getattr(self.index, "nlist", None) or getattr(_faiss().extract_index_ivf(self.index), "nlist", 1)
            if len(x) < n_lists:
                raise ConfigError(f"Index type {self.index_type!r} needs at least {n_lists} vectors to train its "
                                  f"{n_lists} lists; this collection has {len(x)}. Use Flat or fewer lists.")
            self.index.train(x)
        self.index.add(x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each (nq, min(k, ntotal)), best first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), self.ntotal)
        if k < 1:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, rows = self.index.search(q, k)
        return scores, rows

    def vectors(self) -> np.ndarray:
        """Every stored vector (exact indexes; approximate ones reconstruct when they can)."""
        try:
            return self.index.reconstruct_n(0, self.ntotal)
        except RuntimeError:
            raise DataError(f"Index type {self.index_type!r} cannot give its vectors back.") from None

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, index_type: str) -> FaissBackend:
        faiss = _faiss()
        self = cls.__new__(cls)
        self.index = faiss.read_index(str(path))
        self.dim, self.index_type = int(self.index.d), index_type
        return self


def recall_at_k(approx: FaissBackend, vectors: np.ndarray, k: int = 10, n_queries: int = 1000,
                seed: int = 0) -> float:
    """Recall@k of ``approx`` against exact search on the same ``vectors``: the share of the
    exact top-k found by the approximate top-k, over up to ``n_queries`` of the vectors as queries."""
    if approx.index_type == EXACT:
        return 1.0
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)]
    exact = FaissBackend(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(q, k)
    _, got = approx.search(q, k)
    hits = sum(len(set(t.tolist()) & set(g.tolist())) for t, g in zip(truth, got))
    return hits / float(truth.size)
