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
            raise ConfigError(
                f"FAISS cannot build index type {index_type!r}: {str(exc).splitlines()[0]}. Examples: Flat, HNSW32, IVF1024,Flat."
            ) from None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"vectors must be (n, {self.dim}), got {x.shape}.")
        if not self.index.is_trained:
            n_lists = getattr(self.index, "nlist", None)
            if n_lists is None:
                try:  # an IVF index behind a pre-transform; other untrained indexes (PQ…) need no lists
                    n_lists = int(_faiss().extract_index_ivf(self.index).nlist)
                except RuntimeError:
                    n_lists = 1
            if len(x) < int(n_lists):
                raise ConfigError(
                    f"Index type {self.index_type!r} needs at least {n_lists} vectors to train its "
                    f"{n_lists} lists; this collection has {len(x)}. Use Flat or fewer lists."
                )
            self.index.train(x)
        self.index.add(x)
        self._direct_map()

    def _direct_map(self) -> None:
        """IVF indexes give single vectors back (``vector(row)``, for ``--like``) only with a
        direct map."""
        faiss = _faiss()
        try:
            ivf = faiss.extract_index_ivf(self.index)
        except RuntimeError:
            return
        ivf.make_direct_map()

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

    def vector(self, row: int) -> np.ndarray:
        """The stored vector of ``row`` (1, dim)."""
        try:
            return self.index.reconstruct(int(row))[None]
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
        self._direct_map()
        return self


def recall_at_k(approx: FaissBackend, vectors: np.ndarray, k: int = 10, n_queries: int = 1000, seed: int = 0) -> float:
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


# --------------------------------------------------------------------------- Milvus
def _pymilvus():
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise MissingDependencyError(
            "The Milvus backend needs pymilvus (and milvus-lite for a local .db file): pip install 'gcrdp[milvus]'."
        ) from None
    return MilvusClient


def _milvus_index(index_type: str) -> tuple[str, dict]:
    """A FAISS-style index type as Milvus index parameters."""
    t = index_type.replace(" ", "")
    if t.upper() == "FLAT":
        return "FLAT", {}
    if t.upper().startswith("HNSW"):
        m = t[4:] or "32"
        return "HNSW", {"M": int(m), "efConstruction": 200}
    if t.upper().startswith("IVF") and t.upper().endswith(",FLAT"):
        return "IVF_FLAT", {"nlist": int(t[3:-5])}
    raise ConfigError(f"The Milvus backend takes index types Flat, HNSW<M> or IVF<n>,Flat; got {index_type!r}.")


_CLIENTS: dict[str, object] = {}


def _client(uri: str):
    """One client per URI and process (Milvus Lite allows one opener of a .db file)."""
    if uri not in _CLIENTS:
        _CLIENTS[uri] = _pymilvus()(uri)
    return _CLIENTS[uri]


class MilvusBackend:
    """One modality's vectors in a Milvus collection: Milvus Lite (``uri`` = a local ``.db``
    file, embedded) or a Milvus server or cluster (``uri`` = ``http://host:19530``). Rows are the
    primary keys 0..n-1; the count that belongs to the index is the one published with it, so
    rows inserted by an interrupted ``add`` are never returned and are removed on the next one."""

    def __init__(self, dim: int, index_type: str = EXACT, *, uri: str, collection: str | None = None) -> None:
        import secrets

        self.dim, self.index_type, self.uri = int(dim), str(index_type), str(uri)
        self.milvus_type, self.params = _milvus_index(self.index_type)
        self.collection = collection or f"gcrdp_{secrets.token_hex(6)}"
        self._n = 0
        c = _client(self.uri)
        if not c.has_collection(self.collection):
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            from pymilvus import DataType

            schema.add_field("row", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            index = c.prepare_index_params()
            index.add_index(field_name="vector", index_type=self.milvus_type, metric_type="IP", params=self.params)
            c.create_collection(self.collection, schema=schema, index_params=index)

    @property
    def ntotal(self) -> int:
        return self._n

    def add(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"vectors must be (n, {self.dim}), got {x.shape}.")
        c = _client(self.uri)
        for a in range(0, len(x), 5000):
            c.insert(self.collection, [{"row": self._n + a + i, "vector": v.tolist()} for i, v in enumerate(x[a : a + 5000])])
        self._n += len(x)
        c.flush(self.collection)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), self._n)
        scores = np.full((len(q), max(k, 0)), -np.inf, np.float32)
        rows = np.full((len(q), max(k, 0)), -1, np.int64)
        if k < 1:
            return scores, rows
        c = _client(self.uri)
        c.load_collection(self.collection)
        res = c.search(
            self.collection,
            data=[v.tolist() for v in q],
            limit=k,
            filter=f"row < {self._n}",
            search_params={"metric_type": "IP"},
            output_fields=["row"],
        )
        for i, hits in enumerate(res):
            for j, h in enumerate(hits[:k]):
                rows[i, j] = int(h["entity"]["row"])
                scores[i, j] = float(h["distance"])
        return scores, rows

    def vectors(self) -> np.ndarray:
        c = _client(self.uri)
        c.load_collection(self.collection)
        out = np.zeros((self._n, self.dim), np.float32)
        for a in range(0, self._n, 5000):
            got = c.query(self.collection, filter=f"row >= {a} and row < {min(a + 5000, self._n)}", output_fields=["row", "vector"])
            for g in got:
                out[int(g["row"])] = g["vector"]
        return out

    def vector(self, row: int) -> np.ndarray:
        c = _client(self.uri)
        c.load_collection(self.collection)
        got = c.query(self.collection, filter=f"row == {int(row)}", output_fields=["vector"])
        return np.asarray([got[0]["vector"]], dtype=np.float32)

    def save(self, path: Path) -> None:
        import json

        path.with_suffix(".milvus.json").write_text(
            json.dumps(
                {"uri": self.uri, "collection": self.collection, "ntotal": self._n, "dim": self.dim, "index_type": self.index_type},
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )

    @classmethod
    def load(cls, path: Path, index_type: str) -> MilvusBackend:
        import json

        info = json.loads(path.with_suffix(".milvus.json").read_text(encoding="utf-8"))
        if not _client(info["uri"]).has_collection(info["collection"]):
            raise DataError(
                f"The Milvus collection {info['collection']!r} of this index is missing at "
                f"{info['uri']} (dropped, or another Milvus): rebuild the index."
            )
        self = cls(info["dim"], info["index_type"], uri=info["uri"], collection=info["collection"])
        self._n = int(info["ntotal"])
        return self

    def trim(self) -> None:
        """Remove rows beyond the published count (left by an interrupted add)."""
        _client(self.uri).delete(self.collection, filter=f"row >= {self._n}")

    def drop(self) -> None:
        c = _client(self.uri)
        if c.has_collection(self.collection):
            c.drop_collection(self.collection)
