"""Vector search engines behind an index: FAISS (embedded, the default).

A backend holds one modality's vectors (rows 0..n-1, in the order they were added) and answers
top-k inner-product queries. The vectors arrive L2-normalised when the model scores by cosine,
so inner product is the model's own score.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, MissingDependencyError

EXACT = "Flat"
# Trainable indexes are trained on a seeded random sample of at most this many vectors
# (262,144 × 256 dims of float32 = 256 MiB); FAISS's k-means uses at most 256 per centroid anyway.
MAX_TRAIN = 1 << 18
# The lists of an on-disk index are built in shards of about this many bytes of codes and ids.
SHARD_BYTES = 256 << 20
ALIASES = {"ivf-pq": "IVF-PQ", "ivfpq": "IVF-PQ", "ivf-flat": "IVF-Flat", "ivfflat": "IVF-Flat"}


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("Search indexes need FAISS: pip install 'gcrdp[search]' (faiss-cpu).") from None
    return faiss


def resolve_index_type(index_type: str, n: int, dim: int) -> str:
    """A FAISS factory string for ``index_type``: ``"IVF-PQ"`` becomes ``IVF<nlist>,PQ<m>`` and
    ``"IVF-Flat"`` ``IVF<nlist>,Flat``, sized to a collection of ``n`` vectors of ``dim``: nlist
    the power of two nearest 4·√n (at most n/39, so that each list gets 39 training vectors), m
    the largest divisor of ``dim`` up to dim/4 (8-bit codes: dim/4 bytes a vector, 16× smaller
    than float32). Any other string is returned as it is."""
    alias = ALIASES.get(str(index_type).replace(" ", "").lower())
    if alias is None:
        return str(index_type)
    nlist = 2 ** int(round(np.log2(max(1.0, 4.0 * np.sqrt(max(1, n))))))
    nlist = max(1, min(nlist, int(n) // 39, 65536))
    if alias == "IVF-Flat":
        return f"IVF{nlist},Flat"
    m = max(d for d in range(1, max(1, int(dim) // 4) + 1) if int(dim) % d == 0)
    return f"IVF{nlist},PQ{m}"


@contextlib.contextmanager
def _quiet_c_stdout() -> Iterator[None]:
    """Silence what FAISS's C++ prints on stdout (on-disk lists announce their file there),
    which would mix into ``gcrdp search --json``."""
    import ctypes
    import sys

    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        yield
    finally:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


class FaissBackend:
    """A FAISS index over one modality's vectors.

    Args:
        dim: vector dimension.
        index_type: a FAISS factory string — ``"Flat"`` (exact, the default), or approximate:
            ``"HNSW32"``, ``"IVF1024,Flat"``, ``"IVF1024,PQ64"``, ``"OPQ64,IVF1024,PQ64"``, …
            (``faiss.index_factory``; :func:`resolve_index_type` turns ``"IVF-PQ"`` into one).
            A trainable index is trained on a seeded sample of the vectors it is built from
            (:meth:`add_from`), or on the first vectors given to :meth:`add`.
        nprobe: IVF lists searched per query (default: :func:`default_nprobe`).

    An on-disk index (:meth:`build_on_disk`) keeps its inverted lists in ``<name>.ivfdata``
    beside ``<name>.faiss``, memory-mapped when searched.
    """

    def __init__(self, dim: int, index_type: str = EXACT, *, nprobe: int | None = None) -> None:
        faiss = _faiss()
        self.dim, self.index_type = int(dim), str(index_type)
        self.path: Path | None = None  # the .faiss file of an on-disk index
        self._lock = threading.Lock()
        try:
            self.index = faiss.index_factory(self.dim, self.index_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(
                f"FAISS cannot build index type {index_type!r}: {str(exc).splitlines()[0]}. "
                "Examples: Flat, HNSW32, IVF1024,Flat, IVF1024,PQ64, IVF-PQ."
            ) from None
        self._no_polysemous_training()
        self.set_nprobe(nprobe)

    def _no_polysemous_training(self) -> None:
        """FAISS's factory turns on polysemous training for PQ codes (a code reordering for
        Hamming-distance filtering, which search here never uses): minutes for a PQ64 index
        instead of seconds, for the same search results. Off."""
        faiss = _faiss()
        subs = [faiss.downcast_index(self.index)]
        if isinstance(subs[0], faiss.IndexPreTransform):
            subs.append(faiss.downcast_index(subs[0].index))
        ivf = self._ivf()
        if ivf is not None:
            subs.append(faiss.downcast_index(ivf))
        for sub in subs:
            if hasattr(sub, "do_polysemous_training"):
                sub.do_polysemous_training = False

    @classmethod
    def from_trained(cls, index: Any, index_type: str, *, nprobe: int | None = None) -> FaissBackend:
        """A backend over ``index``, a trained, empty FAISS index (:meth:`trained_template` of
        another: the shards of one collection share their training, so that they can be merged)."""
        if int(index.ntotal) != 0 or not index.is_trained:
            raise DataError(f"A shard starts from a trained, empty index; this one holds {int(index.ntotal)} vectors.")
        self = cls.__new__(cls)
        self.path, self._lock = None, threading.Lock()
        self.index, self.dim, self.index_type = index, int(index.d), str(index_type)
        self.set_nprobe(nprobe)
        return self

    def trained_template(self) -> Any:
        """A trained, empty copy of this index, in a canonical form (no direct map, nprobe 1), so
        that two copies of the same training serialise to the same bytes (:func:`template_digest`)."""
        faiss = _faiss()
        if self.path is not None:  # on disk: the trained, empty index kept beside the lists
            out = faiss.read_index(str(self.path.with_suffix(".trained.faiss")))
        else:
            out = faiss.clone_index(self.index)
            out.reset()
        ivf = None
        with contextlib.suppress(RuntimeError):
            ivf = faiss.extract_index_ivf(out)
        if ivf is not None:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)
            ivf.nprobe = 1
        return out

    # ------------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def _ivf(self) -> Any:
        try:
            return _faiss().extract_index_ivf(self.index)
        except RuntimeError:
            return None

    @property
    def nlist(self) -> int | None:
        ivf = self._ivf()
        return None if ivf is None else int(ivf.nlist)

    @property
    def nprobe(self) -> int | None:
        ivf = self._ivf()
        return None if ivf is None else int(ivf.nprobe)

    def set_nprobe(self, nprobe: int | None) -> None:
        """IVF lists searched per query (None: :func:`default_nprobe`); other indexes ignore it."""
        ivf = self._ivf()
        if ivf is None:
            return
        value = default_nprobe(int(ivf.nlist)) if nprobe is None else int(nprobe)
        if value < 1:
            raise ConfigError(f"nprobe must be a positive integer, got {nprobe!r}.")
        _faiss().ParameterSpace().set_index_parameter(self.index, "nprobe", min(value, int(ivf.nlist)))

    def training_size(self, n: int, max_train: int = MAX_TRAIN) -> int:
        """How many of ``n`` vectors to train on: 0 when trained (or nothing to train), else
        ``min(n, max_train, max(64·nlist, 65,536))`` — 64 vectors a list (FAISS asks for 39, its
        k-means uses at most 256), and 256 per centroid for 8-bit PQ codebooks."""
        if self.index.is_trained:
            return 0
        nlist = self.nlist or 0
        return int(min(n, max_train, max(64 * nlist, 256 * 256)))

    def _check_trainable(self, n: int) -> None:
        n_lists = self.nlist
        if n_lists is not None and n < n_lists:
            raise ConfigError(
                f"Index type {self.index_type!r} needs at least {n_lists} vectors to train its "
                f"{n_lists} lists; this collection has {n}. Use Flat or fewer lists."
            )

    def train(self, vectors: np.ndarray) -> None:
        x = self._checked(vectors)
        self._check_trainable(len(x))
        self.index.train(x)

    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"vectors must be (n, {self.dim}), got {x.shape}.")
        return x

    # ------------------------------------------------------------------ filling
    def add(self, vectors: np.ndarray) -> None:
        """Add ``vectors`` as the next rows (an untrained index is first trained on them)."""
        if self.on_disk:
            raise DataError("An on-disk index is filled with build_on_disk, not add.")
        x = self._checked(vectors)
        if not self.index.is_trained:
            self.train(x)
        self.index.add(x)
        self._direct_map()

    def add_from(
        self,
        source: Any,
        start: int = 0,
        *,
        seed: int = 0,
        max_train: int = MAX_TRAIN,
        batch_rows: int | None = None,
    ) -> int:
        """Add rows ``start..n`` of a row source (:mod:`gcrdp.search.streaming`) in batches. An
        untrained index is first trained on a random sample of those rows drawn with ``seed``
        (:meth:`training_size` of them). Returns how many vectors it was trained on (0: none)."""
        from .streaming import batches, sample_rows, scan_rows

        if self.on_disk:
            raise DataError("An on-disk index is filled with build_on_disk, not add_from.")
        n = int(source.shape[0])
        size = self.training_size(n - start, max_train)
        if size:
            self._check_trainable(n - start)
            self.train(source[sample_rows(n - start, size, seed, start)])
        for a, b in batches(n, batch_rows or scan_rows(self.dim), start):
            self.index.add(self._checked(source[a:b]))
            self._direct_map()  # once, then kept up to date by each add (not rebuilt)
        return size

    @classmethod
    def build_on_disk(  # noqa: PLR0913 - keyword options of an on-disk IVF build (faiss' own)
        cls,
        source: Any,
        folder: Path,
        name: str,
        index_type: str,
        *,
        start: int = 0,
        previous: FaissBackend | None = None,
        work_dir: Path | None = None,
        seed: int = 0,
        max_train: int = MAX_TRAIN,
        nprobe: int | None = None,
        shard_rows: int | None = None,
        batch_rows: int | None = None,
        template: Any = None,
    ) -> tuple[FaissBackend, int]:
        """An IVF index whose inverted lists live on disk: ``folder/<name>.faiss`` (the
        quantizer, list offsets), ``folder/<name>.ivfdata`` (the lists, memory-mapped when
        searched) and ``folder/<name>.trained.faiss`` (the trained, empty index, for later adds).

        Rows ``start..n`` of ``source`` are added shard by shard (``shard_rows`` a shard; by
        default about 256 MiB of codes), each shard written to ``work_dir`` and freed; the
        shards — and the lists of ``previous``, an on-disk index being extended — are then merged
        into one file. A new index is trained first on a seeded sample (as :meth:`add_from`).
        ``template``: a trained, empty index to fill instead of training one (a shard's).
        Returns ``(the index, opened read-only, vectors trained on)``."""
        from .streaming import batches, sample_rows, scan_rows

        faiss = _faiss()
        n = int(source.shape[0])
        dim = int(source.shape[1])
        work = Path(work_dir or folder)
        trained = 0
        if previous is not None:
            if previous.path is None:
                raise DataError("Only an on-disk index can be extended on disk.")
            template = faiss.read_index(str(previous.path.with_suffix(".trained.faiss")))
            nprobe = previous.nprobe if nprobe is None else nprobe
        elif template is not None:
            if cls.from_trained(template, index_type)._ivf() is None:
                raise ConfigError(f"An on-disk index needs an IVF index type (IVF1024,Flat, IVF1024,PQ64, IVF-PQ…), got {index_type!r}.")
            template = faiss.clone_index(template)
        else:
            fresh = cls(dim, index_type, nprobe=nprobe)
            if fresh._ivf() is None:
                raise ConfigError(f"An on-disk index needs an IVF index type (IVF1024,Flat, IVF1024,PQ64, IVF-PQ…), got {index_type!r}.")
            trained = fresh.training_size(n - start, max_train)
            if trained:
                fresh._check_trainable(n - start)
                fresh.train(source[sample_rows(n - start, trained, seed, start)])
            template = fresh.index
        tmpl_ivf = faiss.extract_index_ivf(template)
        tmpl_ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # shards add with ids (their global rows)
        blob = faiss.serialize_index(template)
        per_row = int(tmpl_ivf.code_size) + 8
        shard = int(shard_rows or max(1, SHARD_BYTES // per_row))
        step = batch_rows or scan_rows(dim)
        shard_files: list[str] = []
        try:
            for k, (a, b) in enumerate(batches(n, shard, start)):
                part = faiss.deserialize_index(blob)
                for c, d in batches(b, step, a):
                    part.add_with_ids(np.ascontiguousarray(source[c:d], dtype=np.float32), np.arange(c, d, dtype=np.int64))
                path = work / f".{name}-shard{k:05d}.faiss"
                faiss.write_index(part, str(path))
                shard_files.append(str(path))
                del part
            lists = []
            if previous is not None:
                lists.append(faiss.extract_index_ivf(previous.index).invlists)
            keep = []  # the shard indexes stay alive while their lists are merged
            for f in shard_files:
                with _quiet_c_stdout():
                    part = faiss.read_index(f, faiss.IO_FLAG_MMAP)
                keep.append(part)
                lists.append(faiss.extract_index_ivf(part).invlists)
            merged = faiss.deserialize_index(blob)
            ivf = faiss.extract_index_ivf(merged)
            ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / f"{name}.ivfdata"))
            vec = faiss.InvertedListsPtrVector()
            for lst in lists:
                vec.push_back(lst)
            with _quiet_c_stdout():
                total = ondisk.merge_from_multiple(vec.data(), vec.size(), False)
            merged.ntotal = ivf.ntotal = total
            ivf.replace_invlists(ondisk, True)
            ondisk.this.disown()
            faiss.write_index(merged, str(folder / f"{name}.faiss"))
            faiss.write_index(faiss.deserialize_index(blob), str(folder / f"{name}.trained.faiss"))
            del merged, ivf, keep, lists, vec
        finally:
            for f in shard_files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)
        return cls.load(folder / f"{name}.faiss", index_type, nprobe=nprobe), trained

    # ------------------------------------------------------------------ reading
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, each (nq, min(k, ntotal)), best first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), self.ntotal)
        if k < 1:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, rows = self.index.search(q, k)
        return scores, rows

    def _direct_map(self) -> None:
        """IVF indexes give single vectors back (``vector(row)``, for ``--like``) only with a
        direct map (row → list and offset): made once, kept up to date by later adds and saved
        with the index; an on-disk index makes it when first needed (reading every list's ids)."""
        ivf = self._ivf()
        if ivf is None or int(ivf.direct_map.type) != int(_faiss().DirectMap.NoMap):
            return
        with self._lock:
            if int(ivf.direct_map.type) == int(_faiss().DirectMap.NoMap):
                ivf.make_direct_map()

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The stored vectors of rows ``start..stop`` (default all; approximate indexes give
        their reconstruction when they can)."""
        stop = self.ntotal if stop is None else min(int(stop), self.ntotal)
        start = min(int(start), stop)
        try:
            return self.index.reconstruct_n(start, stop - start)
        except RuntimeError:
            raise DataError(f"Index type {self.index_type!r} cannot give its vectors back.") from None

    def vector(self, row: int) -> np.ndarray:
        """The stored vector of ``row`` (1, dim)."""
        try:
            self._direct_map()
            return self.index.reconstruct(int(row))[None]
        except RuntimeError:
            raise DataError(f"Index type {self.index_type!r} cannot give its vectors back.") from None

    # ------------------------------------------------------------------ files
    def save(self, path: Path) -> None:
        """Write the index to ``path``; an on-disk index built elsewhere is linked (its files
        are never changed once written) into ``path``'s folder."""
        path = Path(path)
        if self.path is None:
            _faiss().write_index(self.index, str(path))
            return
        if self.path.resolve() == path.resolve():
            return
        for suffix in (".faiss", ".ivfdata", ".trained.faiss"):
            src, dst = self.path.with_suffix(suffix), path.with_suffix(suffix)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)

    @classmethod
    def load(cls, path: Path, index_type: str, *, nprobe: int | None = None) -> FaissBackend:
        faiss = _faiss()
        path = Path(path)
        self = cls.__new__(cls)
        self.path, self._lock = None, threading.Lock()
        if path.with_suffix(".ivfdata").is_file():  # on disk: lists memory-mapped, read-only
            with _quiet_c_stdout():
                self.index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
            self.path = path
        else:
            self.index = faiss.read_index(str(path))
        self.dim, self.index_type = int(self.index.d), index_type
        if nprobe is not None:
            self.set_nprobe(nprobe)
        return self


def template_digest(index: Any) -> str:
    """SHA-256 of a trained, empty index's bytes (:meth:`FaissBackend.trained_template`): two
    shards can be merged only when theirs are equal (the same quantizer and codebooks)."""
    import hashlib

    return hashlib.sha256(np.asarray(_faiss().serialize_index(index)).tobytes()).hexdigest()


def default_nprobe(nlist: int) -> int:
    """IVF lists searched per query by default: nlist/64, at least 8 (at most nlist)."""
    return max(1, min(int(nlist), max(8, int(nlist) // 64)))


def recall_at_k(approx: FaissBackend, vectors: Any, k: int = 10, n_queries: int = 1000, seed: int = 0) -> float:
    """Recall@k of ``approx`` against exact search on the same ``vectors`` (an array or any row
    source of :mod:`gcrdp.search.streaming`): the share of the exact top-k found by the
    approximate top-k, over up to ``n_queries`` of the vectors as queries; the exact reference
    is computed in batches."""
    from .streaming import recall_against_exact

    if approx.index_type == EXACT:
        return 1.0
    return recall_against_exact(approx.search, vectors, k=k, n_queries=n_queries, seed=seed)[0]


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
    """A FAISS-style index type as Milvus index parameters; ``DiskANN`` is Milvus's own on-disk
    graph index (the index on the query nodes' disks, for collections larger than their memory)."""
    t = index_type.replace(" ", "")
    if t.upper() == "FLAT":
        return "FLAT", {}
    if t.upper() == "DISKANN":
        return "DISKANN", {}
    if t.upper().startswith("HNSW"):
        m = t[4:] or "32"
        return "HNSW", {"M": int(m), "efConstruction": 200}
    ivf = re.fullmatch(r"IVF(\d+),(FLAT|PQ(\d+)(?:X(\d+))?)", t.upper())
    if ivf and ivf.group(2) == "FLAT":
        return "IVF_FLAT", {"nlist": int(ivf.group(1))}
    if ivf:
        return "IVF_PQ", {"nlist": int(ivf.group(1)), "m": int(ivf.group(3)), "nbits": int(ivf.group(4) or 8)}
    raise ConfigError(
        f"The Milvus backend takes index types Flat, HNSW<M>, IVF<n>,Flat, IVF<n>,PQ<m> (or IVF-PQ) or DiskANN; got {index_type!r}."
    )


_CLIENTS: dict[str, object] = {}
#: A Milvus name (collection, partition): a letter or ``_``, then letters, digits and ``_``.
_MILVUS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
#: Primary keys asked back per query when an interrupted load is resumed (Milvus answers a query
#: with at most 16,384 rows by default: ``quotaAndLimits.limits.maxQueryResultWindow``).
_QUERY_ROWS = 5000


def _client(uri: str):
    """One client per URI and process (Milvus Lite allows one opener of a .db file)."""
    if uri not in _CLIENTS:
        _CLIENTS[uri] = _pymilvus()(uri)
    return _CLIENTS[uri]


def check_milvus_options(*, shards: int | None = None, partition: str | None = None, batch_rows: int | None = None) -> None:
    """:class:`ConfigError` for a Milvus option that Milvus would refuse, named as the CLI names it."""
    for flag, value in (("--shards", shards), ("--batch-rows", batch_rows)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{flag} must be a positive integer, got {value!r}.")
    if partition is not None and not _MILVUS_NAME.fullmatch(str(partition)):
        raise ConfigError(
            f"--partition must be a Milvus partition name (a letter or _, then letters, digits or _, at most 255), got {partition!r}."
        )


class MilvusBackend:
    """One modality's vectors in a Milvus collection: Milvus Lite (``uri`` = a local ``.db``
    file, embedded) or a Milvus server or cluster (``uri`` = ``http://host:19530``). Rows are the
    primary keys 0..n-1; the count that belongs to the index is the one published with it, so
    rows inserted by an interrupted ``add`` are never returned and are removed on the next one
    (or kept and checked by ``add_from(..., resume=True)``).

    Args:
        shards: the collection's shards (``num_shards`` of ``create_collection``: the insert
            channels, spread over a cluster's data nodes), when this call creates it; Milvus
            cannot change them afterwards. None: Milvus's default (1).
        partition: the partition new rows go to (created when missing); None: ``_default``.
            Searches cover every partition.
        batch_rows: rows a single insert sends (default :attr:`insert_rows`).
    """

    shards: int | None = None
    partition: str | None = None
    batch_rows: int | None = None
    resumed_rows: int = 0

    def __init__(
        self,
        dim: int,
        index_type: str = EXACT,
        *,
        uri: str,
        collection: str | None = None,
        shards: int | None = None,
        partition: str | None = None,
        batch_rows: int | None = None,
    ) -> None:
        import secrets

        check_milvus_options(shards=shards, partition=partition, batch_rows=batch_rows)
        self.dim, self.index_type, self.uri = int(dim), str(index_type), str(uri)
        self.milvus_type, self.params = _milvus_index(self.index_type)
        self.collection = collection or f"gcrdp_{secrets.token_hex(6)}"
        self.shards, self.partition, self.batch_rows = shards, partition, batch_rows
        self._n = 0
        #: the rows each build or add put in, and where: ``[{"partition", "start", "stop"}]``
        self.loads: list[dict[str, Any]] = []
        #: rows found already in the collection (and checked) by the last resumed ``add_from``
        self.resumed_rows = 0
        c = _client(self.uri)
        if not c.has_collection(self.collection):
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            from pymilvus import DataType

            schema.add_field("row", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            index = c.prepare_index_params()
            index.add_index(field_name="vector", index_type=self.milvus_type, metric_type="IP", params=self.params)
            extra = {} if shards is None else {"num_shards": int(shards)}
            c.create_collection(self.collection, schema=schema, index_params=index, **extra)

    @property
    def num_shards(self) -> int | None:
        """The shards Milvus reports for the collection (Milvus Lite: always 1)."""
        got = _client(self.uri).describe_collection(self.collection)
        return None if not isinstance(got, dict) or got.get("num_shards") is None else int(got["num_shards"])

    def _partition(self) -> str:
        """The partition new rows go to, created when missing ("" for ``_default``)."""
        if self.partition is None:
            return ""
        c = _client(self.uri)
        if not c.has_partition(self.collection, self.partition):
            c.create_partition(self.collection, self.partition)
        return self.partition

    def _record_load(self, start: int, stop: int) -> None:
        if not hasattr(self, "loads"):
            self.loads = []
        name = self.partition or "_default"
        if self.loads and self.loads[-1]["partition"] == name and self.loads[-1]["stop"] == start:
            self.loads[-1]["stop"] = stop
        elif stop > start:
            self.loads.append({"partition": name, "start": start, "stop": stop})

    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def insert_rows(self) -> int:
        """Rows a single insert sends: at most 5,000 and about 16 MiB of float32."""
        return max(1, min(5000, (16 << 20) // (4 * self.dim)))

    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"vectors must be (n, {self.dim}), got {x.shape}.")
        return x

    def _insert(self, rows: np.ndarray, x: np.ndarray, upsert: bool = False) -> None:
        """Insert vectors ``x`` as primary keys ``rows``, :attr:`batch_rows` (default
        :attr:`insert_rows`) a request, into this load's partition (``upsert``: replacing a row
        already there — Milvus does not refuse a primary key twice on insert)."""
        step, part = self.batch_rows or self.insert_rows, self._partition()
        for a in range(0, len(x), step):
            self._insert_request(rows[a : a + step], x[a : a + step], part, upsert)

    def _insert_request(self, rows: np.ndarray, x: np.ndarray, partition: str, upsert: bool = False) -> None:
        """One insert (or upsert) request: vectors ``x`` as primary keys ``rows``."""
        data = [{"row": int(r), "vector": v.tolist()} for r, v in zip(rows, x)]
        send = _client(self.uri).upsert if upsert else _client(self.uri).insert
        if partition:
            send(self.collection, data, partition_name=partition)
        else:  # the collection's _default partition
            send(self.collection, data)

    def add(self, vectors: np.ndarray, *, flush: bool = True) -> None:
        x = self._checked(vectors)
        self._insert(np.arange(self._n, self._n + len(x)), x)
        self._record_load(self._n, self._n + len(x))
        self._n += len(x)
        if flush:
            _client(self.uri).flush(self.collection)

    def present(self, start: int, stop: int, *, vectors: bool = False) -> dict[int, Any]:
        """The rows ``start..stop`` already in the collection, by primary key (queried
        :data:`_QUERY_ROWS` keys at a time): ``{row: its vector}`` (``None`` without ``vectors``)."""
        c = _client(self.uri)
        c.load_collection(self.collection)
        out: dict[int, Any] = {}
        fields = ["row", "vector"] if vectors else ["row"]
        for a in range(int(start), int(stop), _QUERY_ROWS):
            where = f"row >= {a} and row < {min(a + _QUERY_ROWS, int(stop))}"
            got = c.query(self.collection, filter=where, output_fields=fields, consistency_level="Strong")  # every insert acknowledged
            for g in got:
                out[int(g["row"])] = np.asarray(g["vector"], np.float32) if vectors else None
        return out

    def add_from(self, source: Any, start: int = 0, *, batch_rows: int | None = None, resume: bool = False, **_: Any) -> int:
        """Insert rows ``start..n`` of a row source, read ``batch_rows`` at a time (default 4 ×
        :attr:`insert_rows`) and sent :attr:`batch_rows` a request, flushed once at the end
        (Milvus trains its own IVF lists). Returns 0 (nothing trained here).

        ``resume``: rows already in the collection (left by an interrupted load of these same
        rows) are found by primary key (a strongly consistent query: every acknowledged insert
        is seen) and not sent again; each one's stored vector must equal the one given here
        (else :class:`ConfigError`: the collection holds another load). Their number is
        :attr:`resumed_rows`. The rows sent are upserted, so that a row whose insert was in
        flight when the load stopped is never there twice."""
        from .streaming import batches

        n = int(source.shape[0])
        self._n, self.resumed_rows = int(start), 0
        for a, b in batches(n, batch_rows or 4 * (self.batch_rows or self.insert_rows), start):
            x = self._checked(source[a:b])
            rows = np.arange(a, b)
            if resume:
                have = self.present(a, b, vectors=True)
                if have:
                    keys = np.fromiter(have, np.int64, len(have))
                    stored = np.stack([have[int(k)] for k in keys])
                    given = x[keys - a]
                    bad = ~np.isclose(stored, given, rtol=1e-4, atol=1e-5).all(axis=1)
                    if bad.any():
                        raise ConfigError(
                            f"Milvus collection {self.collection!r} already holds rows {', '.join(str(int(k)) for k in keys[bad][:3])} "
                            "with other vectors than this build computes: it is not an interrupted load of the same items and model. "
                            "Build again without --resume (which starts over)."
                        )
                    self.resumed_rows += len(have)
                    todo = np.setdiff1d(rows, keys, assume_unique=True)
                    x, rows = x[todo - a], todo
            if len(rows):
                self._insert(rows, x, upsert=resume)
            self._record_load(self._n, b)
            self._n = b
        _client(self.uri).flush(self.collection)
        return 0

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

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The vectors of rows ``start..stop`` (default all), read 5,000 at a time."""
        stop = self._n if stop is None else min(int(stop), self._n)
        start = min(int(start), stop)
        c = _client(self.uri)
        c.load_collection(self.collection)
        out = np.zeros((stop - start, self.dim), np.float32)
        for a in range(start, stop, 5000):
            got = c.query(self.collection, filter=f"row >= {a} and row < {min(a + 5000, stop)}", output_fields=["row", "vector"])
            for g in got:
                out[int(g["row"]) - start] = g["vector"]
        return out

    def vector(self, row: int) -> np.ndarray:
        c = _client(self.uri)
        c.load_collection(self.collection)
        got = c.query(self.collection, filter=f"row == {int(row)}", output_fields=["vector"])
        return np.asarray([got[0]["vector"]], dtype=np.float32)

    def save(self, path: Path) -> None:
        import json

        record = {"uri": self.uri, "collection": self.collection, "ntotal": self._n, "dim": self.dim, "index_type": self.index_type}
        if self.shards is not None:
            record["shards"] = self.shards
        if self.loads and any(x["partition"] != "_default" for x in self.loads):
            record["loads"] = self.loads
        path.with_suffix(".milvus.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

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
        self.shards = info.get("shards")
        self.loads = [dict(x) for x in info.get("loads") or ([{"partition": "_default", "start": 0, "stop": self._n}] if self._n else [])]
        return self

    def trim(self) -> None:
        """Remove rows beyond the published count (left by an interrupted add)."""
        _client(self.uri).delete(self.collection, filter=f"row >= {self._n}")

    def drop(self) -> None:
        c = _client(self.uri)
        if c.has_collection(self.collection):
            c.drop_collection(self.collection)
