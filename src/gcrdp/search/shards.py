"""Merging FAISS indexes built in shards into one index.

A collection too large for one machine's build is indexed in ``n`` shards, each on a machine of
its own: ``gcrdp index SHARD_i --shard i/n`` (``Retriever.build(..., shard=(i, n))``) indexes the
``i``-th of ``n`` contiguous blocks of each modality's items, a complete index of its own. The
shards of an IVF index must share one trained quantizer (and PQ codebooks): shard 0 trains (or any
index of the same model and type does), the others fill a trained, empty copy of it
(``--trained SHARD_0``). :func:`merge_indexes` (``gcrdp index-merge OUT SHARD_0 … SHARD_n-1``)
then writes one index whose rows are shard 0's, then shard 1's, … — the rows of one build of the
whole collection:

* **IVF** (``IVF<n>,Flat``, ``IVF<n>,PQ<m>``, ``IVF-PQ``, …): the shards' inverted lists are merged
  into one on-disk list file, ``<modality>.ivfdata``, with each shard's row ids shifted by the
  rows of the shards before it — ``faiss.contrib.ondisk.merge_ondisk(..., shift_ids=True)``
  for shards whose lists are in their ``.faiss`` file; the same merge
  (``OnDiskInvertedLists.merge_from_multiple``) over the mapped lists of on-disk shards. The
  merged index is an on-disk index (searched memory-mapped; ``--add`` extends it).
* **Flat** (and other types that give their vectors back, e.g. ``HNSW32``): the shards' vectors
  are added, in shard order, to a new index of the same type.

The metadata rows are concatenated with the same row offsets; the merge checks that the shards
are the ``n`` blocks of one collection (its digest), each once, built with the same model, index
type and training, and that their ids are unique.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .backends import FaissBackend, _faiss, _quiet_c_stdout, template_digest
from .retriever import (
    INDEX_FORMAT,
    MODALITIES,
    _build_lock,
    _current,
    _index_types,
    _load_backends,
    _new_version,
    _read_checksums,
    _read_metadata,
    _reader_lock,
    _verify_all,
    _write_metadata,
)
from .streaming import batches, scan_rows


@contextlib.contextmanager
def _open_shards(paths: Sequence[Path]) -> Iterator[list[tuple[Path, dict[str, Any], dict[str, Any], list[tuple]]]]:
    """Each shard's (folder, index.json, backends, metadata rows), checked against its checksums
    and held (reader locks) while the merge reads it."""
    with contextlib.ExitStack() as stack:
        out = []
        for path in paths:
            version = _current(path)
            if not stack.enter_context(_reader_lock(version)):
                raise DataError(f"Index {path} changed while it was opened for the merge; run the merge again.")
            _verify_all(path, version, _read_checksums(path, version))
            info = json.loads((version / "index.json").read_text(encoding="utf-8"))
            if info.get("format") != INDEX_FORMAT:
                raise DataError(f"{path}: unknown index format {info.get('format')!r}.")
            out.append((path, info, _load_backends(version, info), _read_metadata(version / "items.sqlite")))
        yield out


def _check_shards(shards: list[tuple[Path, dict[str, Any], dict[str, Any], list[tuple]]]) -> list[tuple]:
    """The shards in shard order, after checking that they are the ``n`` shards of one collection
    built alike; :class:`ConfigError` naming the first that is not."""
    for path, info, _b, _r in shards:
        if info.get("backend", "faiss") != "faiss":
            raise ConfigError(f"{path} is a Milvus index: only FAISS shards are merged (a Milvus collection is one index already).")
        if not isinstance(info.get("shard"), dict):
            raise ConfigError(f"{path} is not a shard: build each shard with gcrdp index --shard I/N.")
    first = shards[0][1]
    n = int(first["shard"]["of"])
    for path, info, _b, _r in shards:
        for key, what in (("model", "model"), ("index_types", "index types"), ("dim", "dimension")):
            if info.get(key) != first.get(key):
                raise ConfigError(f"{path} was built with another {what} than {shards[0][0]}: every shard needs the same.")
        if info["shard"]["of"] != n or info["shard"]["collection"] != first["shard"]["collection"]:
            raise ConfigError(
                f"{path} is a shard of another collection (or another number of shards) than {shards[0][0]}: "
                "build every shard from the same collection with the same N in --shard I/N."
            )
    got = sorted(int(info["shard"]["index"]) for _p, info, _b, _r in shards)
    if got != list(range(n)):
        missing = sorted(set(range(n)) - set(got))
        twice = sorted({i for i in got if got.count(i) > 1})
        raise ConfigError(
            f"The merge needs each of the {n} shards once: "
            + (f"missing {', '.join(f'{i}/{n}' for i in missing)}" if missing else "")
            + ("; " if missing and twice else "")
            + (f"given twice {', '.join(f'{i}/{n}' for i in twice)}" if twice else "")
            + "."
        )
    ordered = sorted(shards, key=lambda s: int(s[1]["shard"]["index"]))
    for m in MODALITIES:
        digests = set()
        for path, info, backends, _r in ordered:
            start, stop = info["shard"]["start"].get(m), info["shard"]["stop"].get(m)
            if m in backends and backends[m].ntotal != (stop or 0) - (start or 0):
                raise DataError(f"{path}: {backends[m].ntotal} {m} vectors where its shard record says rows {start} to {stop}.")
            if m in backends and backends[m].nlist is not None:
                digests.add(template_digest(backends[m].trained_template()))
        if len(digests) > 1:
            raise ConfigError(
                f"The shards' {m} indexes were trained apart (different IVF quantizers or codebooks) and cannot be merged: "
                f"build shard 0 first, then the others with --trained {ordered[0][0]}."
            )
    return ordered


def merge_indexes(index_dir: str | Path, shards: Sequence[str | Path]) -> dict[str, Any]:
    """Merge FAISS indexes built in shards (``Retriever.build(..., shard=(i, n))``) into one
    index at ``index_dir`` (a new index, or a new version of it): rows in shard order, the rows
    of one build of the whole collection. IVF types give an on-disk index (lists merged with
    ``faiss.contrib.ondisk.merge_ondisk``), others a new index of the same type filled with the
    shards' vectors. Returns its ``index.json``."""
    index_dir = Path(index_dir).expanduser()
    paths = [Path(p).expanduser() for p in shards]
    if not paths:
        raise ConfigError("index-merge needs the shards to merge: gcrdp index-merge OUT SHARD_0 SHARD_1 …")
    resolved = [p.resolve() for p in paths]
    if index_dir.resolve() in resolved:
        raise ConfigError(f"The merged index {index_dir} cannot be one of the shards; write it to a new folder.")
    t0 = time.perf_counter()
    with _open_shards(paths) as opened, _build_lock(index_dir):
        ordered = _check_shards(opened)
        first = ordered[0][1]
        types = _index_types(first)
        with _new_version(index_dir) as version:
            counts: dict[str, int] = {}
            on_disk = False
            for m in MODALITIES:
                parts = [(p, b[m]) for p, _i, b, _r in ordered if m in b]
                if not parts:
                    continue
                if parts[0][1].nlist is not None:
                    counts[m] = _merge_ivf(parts, version.tmp, m)
                    on_disk = True
                else:
                    counts[m] = _merge_by_vectors(parts, version.tmp, m, types[m])
            rows: list[tuple] = []
            offsets = dict.fromkeys(MODALITIES, 0)
            for _path, _info, backends, meta in ordered:
                for r in meta:
                    rows.append((r[0], int(r[1]) + offsets[r[0]], *r[2:]))
                for m, b in backends.items():
                    offsets[m] += b.ntotal
            for m in MODALITIES:
                ids = [r[2] for r in rows if r[0] == m]
                if len(set(ids)) != len(ids):
                    twice = next(i for i, c in Counter(ids).items() if c > 1)
                    raise DataError(f"The shards hold the same {m} id more than once (e.g. {twice!r}); ids must be unique per modality.")
            _write_metadata(version.tmp / "items.sqlite", rows)
            probes = {m: b.nprobe for m, b in ordered[0][2].items() if b.nprobe is not None}
            kept = ("checkpoint", "encoders", "model", "index_type", "index_types", "metric", "dim", "training", "gcrdp_version")
            info = {k: first.get(k) for k in kept}
            info.update(
                format=INDEX_FORMAT,
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                backend="faiss",
                uri=None,
                on_disk=on_disk,
                nprobe=probes or None,
                counts=counts,
                added_now=dict(counts),
                skipped_duplicates=0,
                recall_at_10_vs_exact=None,
                instance_recall=None,
                embed_seconds=round(time.perf_counter() - t0, 3),
                merged_from=[
                    {"index": str(p.resolve()), "version": _current(p).name, "shard": f"{i['shard']['index']}/{i['shard']['of']}"}
                    for p, i, _b, _r in ordered
                ],
            )
            (version.tmp / "index.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info


def _merge_ivf(parts: list[tuple[Path, FaissBackend]], folder: Path, modality: str) -> int:
    """The shards' inverted lists merged into ``folder/<modality>.ivfdata`` (ids shifted by the
    rows of the shards before); writes ``<modality>.faiss`` and ``<modality>.trained.faiss``."""
    from faiss.contrib.ondisk import merge_ondisk

    faiss = _faiss()
    template = parts[0][1].trained_template()
    merged = faiss.clone_index(template)
    target = str(folder / f"{modality}.ivfdata")
    if not any(b.on_disk for _p, b in parts):  # the lists are in the shards' .faiss files
        with _quiet_c_stdout():
            merge_ondisk(merged, [str(_current(p) / f"{modality}.faiss") for p, _b in parts], target, shift_ids=True)
    else:  # on-disk shards: their lists are opened (mapped) already; the same merge
        ivf = faiss.extract_index_ivf(merged)
        ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, target)
        vec = faiss.InvertedListsPtrVector()
        for _p, b in parts:
            vec.push_back(faiss.extract_index_ivf(b.index).invlists)
        with _quiet_c_stdout():
            total = ondisk.merge_from_multiple(vec.data(), vec.size(), True)
        merged.ntotal = ivf.ntotal = total
        ivf.replace_invlists(ondisk, True)
        ondisk.this.disown()
    nprobe = parts[0][1].nprobe
    if nprobe is not None:
        faiss.extract_index_ivf(merged).nprobe = nprobe
    expected = sum(b.ntotal for _p, b in parts)
    if int(merged.ntotal) != expected:
        raise DataError(f"The merged {modality} index holds {int(merged.ntotal)} vectors where the shards hold {expected}.")
    faiss.write_index(merged, str(folder / f"{modality}.faiss"))
    faiss.write_index(template, str(folder / f"{modality}.trained.faiss"))
    return expected


def _merge_by_vectors(parts: list[tuple[Path, FaissBackend]], folder: Path, modality: str, index_type: str) -> int:
    """A new index of ``index_type`` filled with the shards' vectors in shard order."""
    out = FaissBackend(parts[0][1].dim, index_type)
    if not out.index.is_trained:
        raise ConfigError(f"Index type {index_type!r} needs training and is not IVF: its shards cannot be merged (use Flat, HNSW or IVF).")
    for _p, b in parts:
        for a, c in batches(b.ntotal, scan_rows(b.dim)):
            out.add(b.vectors(a, c))
    out.save(folder / f"{modality}.faiss")
    return out.ntotal
