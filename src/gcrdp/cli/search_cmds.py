"""Search commands: `gcrdp index`, `gcrdp search`, `gcrdp serve`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import _add_cluster_args, _cluster, _default_cache, _parse_assignments


def cmd_index(args: argparse.Namespace) -> int:
    """Build (or --add to) a search index over a collection with a trained model; with
    --workers N or --scheduler ADDRESS, the missing features are extracted on Dask first."""
    from ..encoders.dask_extract import use_cluster

    with use_cluster(_cluster(args)):
        return _build_index(args)


def _build_index(args: argparse.Namespace) -> int:
    from ..search import (
        Retriever,
        items_from_dataset,
        items_from_features,
        items_from_images,
        items_from_manifest,
        items_from_text_file,
    )

    sources = [x for x in (args.manifest, args.images, args.texts, args.features, args.dataset) if x is not None]
    if not sources:
        raise ConfigError(
            "gcrdp index needs a collection: --manifest FILE, --images DIR and/or --texts FILE, --features FILE, or --dataset NAME."
        )
    if (args.features is not None or args.dataset is not None) and len(sources) > 1:
        raise ConfigError("--features and --dataset each index a whole collection on their own; they cannot be mixed with other inputs.")
    items: list[Any] = []
    features: Any = None
    if args.features is not None:
        items, features = items_from_features(args.features)
    if args.dataset is not None:
        items, features = items_from_dataset(args.dataset, **_parse_assignments(args.dataset_option, "--dataset-option"))
    if args.manifest is not None:
        items += items_from_manifest(args.manifest, skip_bad=bool(args.skip_bad))
    if args.images is not None:
        items += items_from_images(args.images)
    if args.texts is not None:
        items += items_from_text_file(args.texts)
    if not args.add and (args.checkpoint is None) == (args.clip is None):
        raise ConfigError(
            "gcrdp index needs one model: --checkpoint DIR (a 'gcrdp train' folder) or --clip DIR "
            "(a local CLIP folder, used as it is); or --add to extend an existing index."
        )
    t0 = time.perf_counter()
    r = Retriever.build(
        args.index,
        checkpoint=args.checkpoint,
        clip=args.clip,
        items=items,
        features=features,
        index_type=args.index_type,
        add=args.add,
        cache_dir=args.cache_dir or _default_cache(),
        device=args.device or "cpu",
        progress=not args.quiet,
        backend=args.backend,
        uri=args.uri,
        on_disk=bool(args.on_disk),
        nprobe=args.nprobe,
        batch_size=args.batch_size,
        train_size=args.train_size,
        seed=args.train_seed,
        **_load_options(args),
    )
    info = r.info
    counts = ", ".join(f"{n} {m}s" for m, n in info["counts"].items())
    now = ", ".join(f"{n} {m}s" for m, n in info["added_now"].items()) or "nothing new"
    types = sorted(set((info.get("index_types") or {}).values()) or {info["index_type"]})
    kind = ", ".join(types) + (" (lists on disk)" if info.get("on_disk") else "")
    print(
        f"index {args.index}: {counts} ({now} added; {info['skipped_duplicates']} duplicates skipped), "
        f"{kind}, dim {info['dim']}, {time.perf_counter() - t0:.1f} s"
    )
    trained = (info.get("training") or {}).get("vectors")
    if trained and info.get("added_now"):
        print(
            "trained on a random sample (seed "
            + str(info["training"]["seed"])
            + "): "
            + ", ".join(f"{n} {m} vectors" for m, n in trained.items())
            + (f"; nprobe {', '.join(f'{m} {p}' for m, p in info['nprobe'].items())}" if info.get("nprobe") else "")
        )
    _print_load_summary(info)
    inst = info.get("instance_recall")
    if inst:
        print(
            f"instance level ({inst['n_queries']} of the collection's {inst['n_pairs']} image-text pairs, each "
            "query's own pair): "
            + "   ".join(
                f"{d.upper()} R@1/5/10 " + "/".join(f"{100 * inst[d][f'recall@{k}']:.1f}" for k in (1, 5, 10)) for d in ("i2t", "t2i")
            )
        )
    if info.get("recall_at_10_vs_exact"):
        print(
            "recall@10 against exact search: "
            + ", ".join(f"{m} {100 * v:.1f} %" for m, v in info["recall_at_10_vs_exact"].items())
            + (f" ({info['recall_queries']} of the collection's vectors as queries)" if info.get("recall_queries") else "")
        )
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` as ``(I, N)``; :class:`ConfigError` for anything else."""
    i, sep, n = str(text).partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or not 0 <= int(i) < int(n):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4 for the first of 4 shards), got {text!r}.")
    return int(i), int(n)


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `gcrdp index` for a cluster: Milvus batches, resume, shards and partition;
    FAISS shards and shared training."""
    return {
        "batch_rows": args.batch_rows,
        "resume": bool(args.resume),
        "shards": args.shards,
        "partition": args.partition,
        "shard": parse_shard(args.shard) if args.shard is not None else None,
        "trained": args.trained,
    }


def _print_load_summary(info: dict[str, Any]) -> None:
    milvus = info.get("milvus") or {}
    if milvus.get("resumed_rows"):
        print(
            "resumed: "
            + ", ".join(f"{n} {m} rows were already in Milvus (checked, not sent again)" for m, n in milvus["resumed_rows"].items())
        )
    shard = info.get("shard")
    if shard:
        print(
            f"shard {shard['index']}/{shard['of']}: "
            + ", ".join(f"{m} rows {shard['start'][m]}-{shard['stop'][m]} of {shard['total'][m]}" for m in shard["total"])
        )


def cmd_index_merge(args: argparse.Namespace) -> int:
    """Merge FAISS indexes built with --shard I/N into one index."""
    from ..search import merge_indexes

    t0 = time.perf_counter()
    info = merge_indexes(args.index, args.shards)
    counts = ", ".join(f"{n} {m}s" for m, n in info["counts"].items())
    types = ", ".join(sorted(set((info.get("index_types") or {}).values()) or {info["index_type"]}))
    print(
        f"index {args.index}: {counts} merged from {len(args.shards)} shards, {types}"
        + (" (lists on disk)" if info.get("on_disk") else "")
        + f", {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _add_load_arguments(p: argparse.ArgumentParser) -> None:
    """`gcrdp index`'s options for an index on a cluster (docs/search.md, "An index on a cluster")."""
    g = p.add_argument_group("an index on a cluster")
    g.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        metavar="N",
        help="rows added per batch: with --backend milvus, rows a single insert sends (default at most 5000 and ~16 MiB)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="with --backend milvus: continue a build or --add interrupted while it inserted, from the rows already in the "
        "collection (checked by primary key and vector); with nothing to resume, build as usual",
    )
    g.add_argument("--shards", type=int, default=None, metavar="N", help="with --backend milvus: the new collections' shards (num_shards)")
    g.add_argument(
        "--partition", default=None, metavar="NAME", help="with --backend milvus: the partition this load's rows go to (created if missing)"
    )
    g.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="index only the I-th of N contiguous blocks of the collection (from 0), to merge with 'gcrdp index-merge'",
    )
    g.add_argument(
        "--trained",
        type=Path,
        default=None,
        metavar="INDEX",
        help="fill a trained, empty copy of INDEX's FAISS index (its type and IVF quantizer) instead of training: "
        "the shards of an IVF index share shard 0's",
    )


def cmd_search(args: argparse.Namespace) -> int:
    """Query an index by text (images come back) or by image (texts come back)."""
    from ..search import Retriever, format_hits

    if sum(x is not None for x in (args.text, args.image, args.like)) != 1:
        raise ConfigError('gcrdp search needs exactly one of --text "…", --image PATH or --like ID.')
    r = Retriever.load(args.index, device=args.device or "cpu", nprobe=args.nprobe)
    hits: Any  # one query: one ranked list
    if args.like is not None:
        hits = r.search(like=args.like, like_modality=args.like_modality, k=args.k)
    elif args.text is not None:
        hits = r.search(text=args.text, k=args.k)
    else:
        hits = r.search(image=str(args.image), k=args.k)
    if args.json:
        for h in hits:
            print(json.dumps(h.to_dict(), ensure_ascii=False))
    else:
        print(format_hits(hits))
    return 0


def check_port(host: str, port: int) -> None:
    """:class:`ConfigError` naming ``--port`` when ``host:port`` cannot be bound (in use, or not
    an address of this machine) — said before the URL is announced, not by uvicorn seconds later."""
    import errno
    import socket

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({exc}).") from None
    family, _type, _proto, _name, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"Port {port} on {host} is already in use (another gcrdp serve or server?). Pass another one, e.g. --port {port + 1}."
                ) from None
            raise ConfigError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --host or --port.") from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve an index over HTTP: the JSON API and the web page."""
    from ..search.server import serve

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}.")
    check_port(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"gcrdp serve: listening on {args.host}, reachable from other machines; the API has no authentication.", file=sys.stderr)
        if args.host in ("0.0.0.0", "::") and not args.allowed_host:
            print(
                "gcrdp serve: only requests to a loopback name are answered (Host header); "
                "add the names clients use with --allowed-host NAME.",
                file=sys.stderr,
            )
    print(f"gcrdp serve: http://{args.host}:{args.port}/  (API: /api/search, /openapi.json; ^C stops)", file=sys.stderr)
    serve(
        str(args.index),
        host=args.host,
        port=args.port,
        device=args.device or "cpu",
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        allowed_hosts=tuple(args.allowed_host or ()),
    )
    return 0


def add_parsers(sub: Any) -> None:
    """The subcommands of this module."""
    p = sub.add_parser(
        "index",
        help="build a search index over a collection with a trained model (FAISS)",
        description="Embed a collection with a 'gcrdp train' model and write a search index "
        "folder (FAISS vectors, SQLite metadata, the model's fingerprint). Written "
        "atomically: an interrupted build leaves the previous index intact.",
    )
    p.add_argument("index", type=Path, help="the index folder to create or replace (or extend with --add)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a 'gcrdp train' checkpoint DIR (or DIR/final)")
    p.add_argument(
        "--clip",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead of --checkpoint: a local CLIP(-like) transformers folder, used as it is (aligned encoders, no training)",
    )
    p.add_argument("--manifest", type=Path, default=None, help="a manifest: each row's image and text")
    p.add_argument("--images", type=Path, default=None, help="a folder of images (recursively; labels optional)")
    p.add_argument("--texts", type=Path, default=None, help="a UTF-8 text file, one text per line")
    p.add_argument(
        "--features", type=Path, default=None, help="a pre-extracted features file (for a model trained on features made the same way)"
    )
    p.add_argument(
        "--dataset", default=None, help="a registered dataset, e.g. twemoji (the demo's collection): every sample's image and text"
    )
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="option of --dataset (repeatable)")
    p.add_argument(
        "--index-type",
        default="Flat",
        help="FAISS factory string: Flat (exact, default), HNSW32, IVF1024,Flat, IVF1024,PQ64, …, or IVF-PQ "
        "(IVF<nlist>,PQ<dim/4> sized to the collection); with --backend milvus also DiskANN (on the query nodes' disks); "
        "an approximate index reports its recall@10 against exact search",
    )
    p.add_argument(
        "--on-disk",
        action="store_true",
        help="with an IVF index type: build the inverted lists shard by shard into a file of the index folder, "
        "memory-mapped when searched (for collections larger than memory)",
    )
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (default nlist/64, at least 8)")
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        metavar="N",
        help="a trainable index (IVF, PQ) is trained on a random sample of at most N vectors (default 262144)",
    )
    p.add_argument("--train-seed", type=int, default=0, help="seed of the training sample (default 0)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="items embedded and added per batch (default 256 images, 1024 texts, ~64 MiB of feature rows)",
    )
    p.add_argument("--add", action="store_true", help="append to the existing index (skipping items already in it by content hash)")
    p.add_argument(
        "--backend",
        choices=["faiss", "milvus"],
        default="faiss",
        help="faiss (default: vectors in the index folder) or milvus (vectors in Milvus at --uri)",
    )
    p.add_argument(
        "--uri",
        default=None,
        help="with --backend milvus: a local PATH.db (Milvus Lite, embedded) or http://HOST:19530 (a Milvus server or cluster)",
    )
    _add_load_arguments(p)
    p.add_argument("--skip-bad", action="store_true", help="leave bad manifest rows out instead of failing")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: as gcrdp run)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_cluster_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "index-merge",
        help="merge FAISS indexes built with 'gcrdp index --shard I/N' into one index",
        description="Merge the N shards of a collection (each built with 'gcrdp index SHARD --shard I/N'; the shards of an "
        "IVF index with --trained SHARD_0) into one index: IVF lists merged into one on-disk file "
        "(faiss.contrib.ondisk.merge_ondisk), Flat vectors concatenated. Rows in shard order: those of one build.",
    )
    p.add_argument("index", type=Path, help="the merged index folder to create (or to give a new version)")
    p.add_argument("shards", type=Path, nargs="+", help="the shard index folders, each shard once (in any order)")
    p.set_defaults(func=cmd_index_merge)

    p = sub.add_parser(
        "search",
        help="query an index: --text finds images, --image finds texts",
        description="Query an index written by 'gcrdp index': a text finds the images that match it, an image the texts "
        "that match it, --like ID queries with an indexed item's own vector. Prints the top --k hits as a table (or JSON lines).",
    )
    p.add_argument("index", type=Path, help="an index folder written by 'gcrdp index'")
    p.add_argument("--text", default=None, help="a text query: the images that match it")
    p.add_argument("--image", type=Path, default=None, help="an image query: the texts that match it")
    p.add_argument(
        "--like", default=None, metavar="ID", help="query with an indexed item's own vector (the way to query pre-extracted features)"
    )
    p.add_argument(
        "--like-modality", choices=["image", "text"], default="image", help="with --like: the item's side (default image: texts come back)"
    )
    p.add_argument("--k", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (default: the index's)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="serve an index over HTTP: a JSON API and a search page at /")
    p.add_argument("index", type=Path, help="an index folder written by 'gcrdp index'")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image upload (default 10 MB)")
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a name the Host header may give besides loopback's and the --host address (repeatable; "
        "with --host 0.0.0.0 add the names clients use, e.g. --allowed-host search.example.org)",
    )
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.set_defaults(func=cmd_serve)
