"""``gcrdp serve``: a search index over HTTP — a JSON API (FastAPI, OpenAPI at ``/openapi.json``)
and a web page at ``/``.

API:

* ``GET /health`` — status, index, model, counts.
* ``GET /api/info`` — what is indexed: counts, the model, example queries from the collection's texts.
* ``GET /api/search?text=...&k=10`` — the images that match a text.
* ``POST /api/search/image`` (multipart ``file``, ``k``) — the texts that match an uploaded image.
* ``GET /api/item?modality=image&id=...`` — one item's metadata.
* ``GET /api/thumbnail?id=...`` — an indexed image, as a JPEG thumbnail.
* ``GET /favicon.ico`` — the page's icon (drawn in code).

Every result carries the item's id, its text (an image's own caption when the collection gave
it one: a manifest row's text, a Twemoji's name), its first label and all its labels.

Safe by default: the CLI binds to loopback unless told otherwise; uploads are limited in size
(``max_upload_bytes``), must declare an image content type and must decode as an image, each
failure a clear 4xx; files are served only for items in the index, looked up by id — no path
from a request reaches the file system; nothing is unpickled.
"""

# no `from __future__ import annotations` here: FastAPI reads the endpoint annotations at run
# time, and the endpoints' types are imported inside create_app (FastAPI is optional)
import functools
import io
import logging
import os
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import GcrdpError, MissingDependencyError

log = logging.getLogger("gcrdp.serve")

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
THUMBNAIL_PX = 256
MAX_IMAGE_PIXELS = 40_000_000  # decoded pixels (after a JPEG's reduced draft), read from the header before decoding
UPLOAD_DECODE_PX = 1024  # an upload is decoded and reduced to at most this side before it is embedded
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # raster decoders only: never EPS/PS or other plugins
IMAGE_WORKERS = 4  # image decodes (uploads, thumbnails) at once; more get 503 + Retry-After
IMAGE_WAIT_S = 0.5  # how long a request waits for a free image worker before its 503
THUMBNAIL_CACHE_BYTES = 32 * 1024 * 1024
MAX_QUERY_BYTES = 8192  # a longer query string gets 414
H11_MAX_EVENT_BYTES = 1024 * 1024 + 64 * 1024  # uvicorn's request-line + headers buffer: a 1 MB query still reaches the 414
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RELOAD_CHECK_S = 1.0  # CURRENT is looked at (one stat) at most this often
FORM_OVERHEAD = 64 * 1024


class ImageRefused(Exception):
    """An image the server will not decode: ``status`` 413 (over the pixel cap) or 400 (not a
    raster image of an allowed format)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _open_image(source: Any) -> Any:
    """Open ``source`` with the allowed raster decoders only, a JPEG set to decode at a reduced
    scale, and its (decoded) size checked against the pixel cap — all before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(source, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise ImageRefused(413, f"the image has more than {MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageRefused(400, f"not a readable image (accepted: {', '.join(IMAGE_FORMATS)})") from None
    return im


def _reduced_rgb(im: Any, side: int) -> Any:
    """``im`` (just opened) decoded at reduced size: at most ``side`` pixels a side, EXIF-rotated,
    transparency onto white, RGB. Refuses an image over the pixel cap before decoding it."""
    from PIL import Image, ImageOps

    im.draft(None, (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale; a no-op elsewhere
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageRefused(413, f"the image has more than {MAX_IMAGE_PIXELS} pixels ({w}x{h})")
    alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if alpha else "RGB")
    im.thumbnail((side, side), reducing_gap=2.0)
    im = ImageOps.exif_transpose(im)
    if alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        im = canvas
    return im.convert("RGB")


def _thumbnail_bytes(path: str) -> bytes:
    """The JPEG thumbnail of the image file at ``path`` (memory bounded by the pixel cap)."""
    with _open_image(path) as src:
        thumb = _reduced_rgb(src, THUMBNAIL_PX)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class _LRU:
    """A thread-safe LRU of bytes, bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.size = int(max_bytes), 0
        self._d: "OrderedDict[Any, bytes]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: Any, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._d.pop(key, None)
            self.size += len(value) - (len(old) if old is not None else 0)
            self._d[key] = value
            while self.size > self.max_bytes:
                _, v = self._d.popitem(last=False)
                self.size -= len(v)

    def __len__(self) -> int:
        return len(self._d)


def _host_name(header: str) -> str:
    """The host of a Host header, lower case, without its port: ``[::1]:8000`` → ``::1``."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _has_body(scope: Any) -> bool:
    """Whether an HTTP request's method sends a body (``POST``, ``PUT``, ``PATCH``)."""
    return scope.get("method") in ("POST", "PUT", "PATCH")


def _error_response(status: int, detail: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import json

    body = json.dumps({"detail": detail}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, {"type": "http.response.body", "body": body}


class _Guard:
    """ASGI middleware in front of every route: the Host header must name a trusted host (400
    otherwise: DNS rebinding), the query string must stay under ``MAX_QUERY_BYTES`` (414), and a
    request body over ``limit`` bytes gets 413 before it is stored — by its Content-Length, or by
    counting the chunks of a body without one (the app's own answer is then dropped)."""

    def __init__(self, app: Any, limit: int, hosts: tuple[str, ...] | None) -> None:
        self.app, self.limit = app, int(limit)
        self.hosts = None if hosts is None or "*" in hosts else {_host_name(h) for h in hosts}

    @staticmethod
    async def _answer(send: Any, status: int, detail: str) -> None:
        start, body = _error_response(status, detail)
        await send(start)
        await send(body)

    def _refusal(self, scope: Any) -> tuple[int, str] | None:
        """(status, reason) of a request refused before the app sees it, or None."""
        headers = dict(scope.get("headers") or [])
        if self.hosts is not None and _host_name(headers.get(b"host", b"").decode("latin-1")) not in self.hosts:
            return 400, "this server does not answer for that Host header (gcrdp serve --allowed-host NAME adds one)"
        if scope["type"] != "http":
            return None
        if len(scope.get("query_string") or b"") > MAX_QUERY_BYTES:
            return 414, f"the query string is longer than {MAX_QUERY_BYTES} bytes"
        length = headers.get(b"content-length")
        if _has_body(scope) and length is not None and (not length.isdigit() or int(length) > self.limit):
            return 413, "the request body is larger than the upload limit"
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await self._answer(send, *refusal)
        elif scope["type"] == "http" and _has_body(scope):
            await self._counted(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _counted(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the app on a request with a body, counting its chunks: past ``limit`` bytes the
        client gets 413 (unless the app answered already) and the app's answer is dropped."""
        seen, started, refused = 0, False, False

        async def counted() -> Any:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    if not started:
                        await self._answer(send, 413, "the request body is larger than the upload limit")
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except Exception:
            if not refused:
                raise


class _Live:
    """The retriever being served, and a rebuilt index picked up without downtime: at most every
    ``RELOAD_CHECK_S``, one ``stat`` of ``INDEX/CURRENT``; when it changed, the new version is
    loaded in a background thread while the old one keeps answering, then swapped in."""

    def __init__(self, retriever: Any, loader: Callable[[], Any] | None) -> None:
        self.retriever, self.loader = retriever, loader
        self.generation = 0
        self._lock = threading.Lock()
        self._loading = False
        self._checked = time.monotonic()
        self._pointer = Path(retriever.index_dir) / "CURRENT"
        self._seen = self._signature()

    def _signature(self) -> Any:
        try:
            st = self._pointer.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def get(self) -> Any:
        if self.loader is not None and time.monotonic() - self._checked >= RELOAD_CHECK_S:
            self._checked = time.monotonic()
            sig = self._signature()
            with self._lock:
                if sig is not None and sig != self._seen and not self._loading:
                    self._seen, self._loading = sig, True
                    threading.Thread(target=self._reload, name="gcrdp-reload", daemon=True).start()
        return self.retriever

    def _reload(self) -> None:
        assert self.loader is not None
        try:
            new = self.loader()
            warm = getattr(getattr(new, "model", None), "warm", None)
            if callable(warm):
                warm()
        except Exception as exc:  # noqa: BLE001 - a broken rebuild must not take the old index down
            log.warning("gcrdp serve: the rebuilt index could not be loaded; still serving the previous one (%s)", type(exc).__name__)
        else:
            with self._lock:
                self.retriever, self.generation = new, self.generation + 1
            log.warning("gcrdp serve: now serving the rebuilt index (%s)", {m: b.ntotal for m, b in new.backends.items()})
        finally:
            with self._lock:
                self._loading = False


def _responses(*codes: int, ok: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, for the OpenAPI description."""
    what = {
        400: "a bad request: an unreadable image, a Host this server does not answer for",
        404: "no such item in this index",
        409: "the index holds nothing of the modality the query would find",
        410: "the indexed image file is no longer readable",
        413: "the upload, or the image's pixels, over the limit",
        414: "the query string is too long",
        415: "the upload does not declare an image type",
        422: "invalid parameters",
        503: "the server is busy with other image work: retry after the Retry-After seconds",
    }
    schema = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}
    out: dict[int | str, dict[str, Any]] = {
        c: {"description": what[c], "content": {"application/json": {"schema": schema}}} for c in (400, 414, *codes)
    }
    if ok is not None:
        out[200] = ok
    return out


def create_app(
    retriever: Any,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_k: int = 100,
    expose_paths: bool = True,
    allowed_hosts: tuple[str, ...] | list[str] | None = LOOPBACK_HOSTS,
    image_workers: int = IMAGE_WORKERS,
    reload: Callable[[], Any] | None = None,
) -> "Any":
    """The FastAPI application serving ``retriever`` (see the module docstring).
    ``expose_paths=False`` leaves the server's file paths out of every answer (``gcrdp serve``
    does so when it listens beyond loopback). ``allowed_hosts``: the names a request's Host
    header may give (loopback by default; ``None`` or ``"*"`` turns the check off).
    ``image_workers``: image decodes at once (more get 503). ``reload``: a function loading the
    index again, called when its ``CURRENT`` changes (``gcrdp serve`` passes one)."""
    try:
        from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
        from fastapi.responses import HTMLResponse, Response
    except ImportError:
        raise MissingDependencyError("gcrdp serve needs FastAPI and uvicorn: pip install 'gcrdp[serve]'.") from None

    app = FastAPI(
        title="gcrdp search",
        version="1",
        description="Search an index built by 'gcrdp index': images by text, texts by image.",
        docs_url=None,
        redoc_url=None,
    )  # the Swagger page loads from a CDN; the JSON is at /openapi.json

    live = _Live(retriever, reload)
    app.state.live = live
    cache: dict[Any, Any] = {}  # the info (per loaded index), made on first request
    thumbnails = _LRU(THUMBNAIL_CACHE_BYTES)
    app.state.thumbnails = thumbnails
    gate = _ImageGate(image_workers)

    @app.get("/health", responses=_responses())
    async def health() -> dict[str, Any]:
        # async: answered on the event loop, never queued behind image work in the thread pool
        r = live.get()
        return {
            "status": "ok",
            "index": str(r.index_dir) if expose_paths else r.index_dir.name,
            "backend": r.info.get("backend"),
            "index_type": r.info.get("index_type"),
            "method": r.info["model"].get("method"),
            "counts": {m: b.ntotal for m, b in r.backends.items()},
        }

    @app.get("/api/info", responses=_responses())
    def about() -> dict[str, Any]:
        """What the page shows before a search: counts, the model, example queries."""
        return _info_of(cache, live.get(), expose_paths)

    @app.get("/api/search", responses=_responses(409, 422))
    def search_text(text: str = Query(..., min_length=1, max_length=2000), k: int = Query(10, ge=1, le=max_k)) -> dict[str, Any]:
        r = live.get()
        if "image" not in r.backends:
            raise HTTPException(409, "this index holds no images to search by text")
        try:
            hits = r.search(text=text, k=_check_k(k, max_k))
        except GcrdpError as exc:
            raise HTTPException(400, _public(r, str(exc), expose_paths)) from None
        return {"query": {"text": text, "k": k}, "results": _hits_json(hits, expose_paths)}

    @app.post("/api/search/image", responses=_responses(409, 413, 415, 422, 503))
    def search_image(file: UploadFile = File(...), k: int = Form(10, ge=1, le=max_k)) -> dict[str, Any]:
        # a plain def: FastAPI runs it in a worker thread, so the model never blocks the event loop
        r = live.get()
        _check_k(k, max_k)
        if "text" not in r.backends:
            raise HTTPException(409, "this index holds no texts to search by image")
        data = _read_upload(file, max_upload_bytes)
        with gate.slot():
            hits = _search_by_image(r, _upload_query(data), k)
        return {"query": {"image": file.filename, "k": k}, "results": _hits_json(hits, expose_paths)}

    @app.get("/api/item", responses=_responses(404, 422))
    def item(id: str, modality: str = "image") -> dict[str, Any]:
        r = live.get()
        meta = r.item(modality, id)
        if meta is None:
            raise HTTPException(404, f"no {modality} with id {id!r} in this index")
        d: dict[str, Any] = r.describe(modality, int(meta[1]))
        return d | {"path": d["path"] if expose_paths else None, "labels": list(d["labels"])}

    @app.get(
        "/api/thumbnail",
        response_class=Response,
        responses=_responses(404, 410, 413, 422, 503, ok={"description": "a JPEG thumbnail", "content": {"image/jpeg": {}}}),
    )
    def thumbnail(id: str) -> Response:
        key = _thumbnail_key(live.get(), id)
        made = thumbnails.get(key)
        if made is None:
            with gate.slot():
                made = _thumbnail_of(id, key[0])
            thumbnails.put(key, made)
        return Response(made, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(_favicon(), media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})

    app.add_middleware(_Guard, limit=max_upload_bytes + FORM_OVERHEAD, hosts=None if allowed_hosts is None else tuple(allowed_hosts))
    return app


class _ImageGate:
    """At most ``workers`` image decodes (uploads, thumbnails) at once; a request that finds no
    free slot within :data:`IMAGE_WAIT_S` gets 503 with Retry-After."""

    def __init__(self, workers: int) -> None:
        self._free = threading.BoundedSemaphore(max(1, int(workers)))

    @contextmanager
    def slot(self) -> Iterator[None]:
        from fastapi import HTTPException

        if not self._free.acquire(timeout=IMAGE_WAIT_S):
            raise HTTPException(503, "the server is busy with other image work; retry shortly", headers={"Retry-After": "1"})
        try:
            yield
        finally:
            self._free.release()


def _public(r: Any, message: str, expose_paths: bool) -> str:
    """``message`` without the server's paths (the index's, a temporary file's) when they are hidden."""
    message = message.replace(tempfile.gettempdir(), "<tmp>")
    return message if expose_paths else message.replace(str(r.index_dir), r.index_dir.name)


def _hits_json(hits: list[Any], expose_paths: bool) -> list[dict[str, Any]]:
    """The results of a search as the API gives them: each hit, its thumbnail's URL (images) and its path unless hidden."""
    out = []
    for h in hits:
        d = h.to_dict() | {"thumbnail": f"/api/thumbnail?id={_q(h.id)}" if h.modality == "image" else None}
        if not expose_paths:
            d["path"] = None
        out.append(d)
    return out


def _check_k(k: int, max_k: int) -> int:
    from fastapi import HTTPException

    if not 1 <= k <= max_k:
        raise HTTPException(422, f"k must be between 1 and {max_k}")
    return k


def _read_upload(file: Any, max_upload_bytes: int) -> bytes:
    """The bytes of an uploaded image (an ``UploadFile``): 415 unless it declares an image type, 413 over the limit."""
    from fastapi import HTTPException

    if not (file.content_type or "").startswith("image/"):
        raise HTTPException(415, f"upload an image (got content type {file.content_type or 'none'!r})")
    data = file.file.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
        raise HTTPException(413, f"the image is larger than the limit of {max_upload_bytes} bytes")
    return data


def _thumbnail_key(r: Any, id: str) -> tuple[str, int, int]:
    """(path, mtime, size) of the indexed image ``id``'s file — the path stored at index time, never
    one from the request — the key of its cached thumbnail; 404 for an unknown id, 410 for a file gone."""
    from fastapi import HTTPException

    meta = r.item("image", id)
    if meta is None or not meta[3]:
        raise HTTPException(404, f"no image with id {id!r} in this index")
    path = meta[3]
    try:
        st = os.stat(path)
    except OSError:
        raise HTTPException(410, f"the image file of {id!r} is no longer readable") from None
    return (path, st.st_mtime_ns, st.st_size)


def _info_of(cache: dict[Any, Any], r: Any, expose_paths: bool) -> dict[str, Any]:
    """:func:`_index_info` of ``r``, made once per loaded index (a reloaded one gets its own) and kept in ``cache``."""
    made = cache.get("info")
    if made is None or made[0]() is not r:
        cache["info"] = made = (weakref.ref(r), _index_info(r, expose_paths))
    return made[1]


def _index_info(r: Any, expose_paths: bool) -> dict[str, Any]:
    """What ``/api/info`` says of the retriever ``r``: counts, the model, example queries."""
    fp = r.info["model"]
    settings = getattr(r.model, "encoder_settings", None)
    checkpoint = r.info.get("checkpoint")
    return {
        "index": str(r.index_dir) if expose_paths else r.index_dir.name,
        "counts": {m: b.ntotal for m, b in r.backends.items()},
        "model": {
            "method": fp.get("method"),
            "checkpoint": checkpoint if expose_paths else None,
            "name": _run_name(checkpoint),
            "encoders": None if fp.get("pre_extracted") or settings is None else f"{settings.image_encoder} + {settings.text_encoder}",
            "pre_extracted": bool(fp.get("pre_extracted")),
        },
        "index_type": r.info.get("index_type"),
        # text queries need images to find and an encoder to embed them
        "examples": r.examples() if "image" in r.backends and not fp.get("pre_extracted") else [],
    }


def _upload_query(data: bytes) -> Any:
    """The uploaded image ``data`` decoded at reduced size (RGB), or the HTTP error that refuses it."""
    from fastapi import HTTPException

    try:
        with _open_image(io.BytesIO(data)) as im:
            return _reduced_rgb(im, UPLOAD_DECODE_PX)  # decoded at reduced size, then re-encoded
    except ImageRefused as exc:
        raise HTTPException(exc.status, exc.detail) from None
    except Exception:  # noqa: BLE001 - any decoding failure is the client's
        raise HTTPException(400, "the upload is not a readable image") from None


def _search_by_image(r: Any, query: Any, k: int) -> list[Any]:
    """The hits of the decoded image ``query``, embedded from a temporary PNG file."""
    from fastapi import HTTPException

    fd, tmp = tempfile.mkstemp(suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            query.save(f, format="PNG")
        return r.search(image=tmp, k=k)
    except GcrdpError as exc:
        log.warning("gcrdp serve: an uploaded image could not be embedded (%s)", type(exc).__name__)
        raise HTTPException(400, "the upload could not be embedded as an image") from None
    finally:
        os.unlink(tmp)


def _thumbnail_of(id: str, path: str) -> bytes:
    """The JPEG thumbnail of the indexed image ``id`` (file ``path``), or the HTTP error that says why there is none."""
    from fastapi import HTTPException

    try:
        return _thumbnail_bytes(path)
    except ImageRefused as exc:
        status = 413 if exc.status == 413 else 410
        raise HTTPException(
            status, f"no thumbnail of {id!r}: {exc.detail}" if status == 413 else f"the image file of {id!r} is not readable"
        ) from None
    except Exception:  # noqa: BLE001 - a missing, changed or undecodable file: not the server's fault
        raise HTTPException(410, f"the image file of {id!r} is no longer readable") from None


def _run_name(checkpoint: str | None) -> str | None:
    """The name of the training run's folder: ``g5`` for ``ckpt/g5/final`` or ``ckpt/g5``."""
    if not checkpoint:
        return None
    parts = [x for x in checkpoint.replace("\\", "/").split("/") if x]
    if len(parts) > 1 and parts[-1] == "final":
        parts.pop()
    return parts[-1] if parts else None


@functools.lru_cache(maxsize=1)
def _favicon() -> bytes:
    """The page's icon, drawn here (once): a white magnifier on a dark rounded square (ICO, 16 and 32 px)."""
    from PIL import Image, ImageDraw

    size = 64  # drawn large, scaled down by the ICO writer
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rounded_rectangle((0, 0, size - 1, size - 1), radius=14, fill=(34, 34, 34, 255))
    d.ellipse((12, 10, 42, 40), outline=(255, 255, 255, 255), width=7)
    d.line((37, 35, 52, 50), fill=(255, 255, 255, 255), width=9)
    buf = io.BytesIO()
    im.save(buf, format="ICO", sizes=[(16, 16), (32, 32)])
    return buf.getvalue()


def _q(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")


def serve(
    index_dir: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    allowed_hosts: tuple[str, ...] | list[str] = (),
) -> None:
    """Load the index and serve it with uvicorn until interrupted. The Host header must name a
    loopback name, the bound address (unless a wildcard) or one of ``allowed_hosts``; a rebuilt
    index (its ``CURRENT`` switched) is loaded in the background and served once loaded."""
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError("gcrdp serve needs uvicorn: pip install 'gcrdp[serve]'.") from None
    from .retriever import Retriever

    r = Retriever.load(index_dir, device=device)
    r.model.warm()  # the encoders and heads load now, not on the first query
    local = host in LOOPBACK_HOSTS
    hosts = [*LOOPBACK_HOSTS, *([] if host in ("0.0.0.0", "::", "") else [host]), *allowed_hosts]
    app = create_app(
        r,
        max_upload_bytes=max_upload_bytes,
        expose_paths=local,
        allowed_hosts=hosts,
        reload=lambda: Retriever.load(index_dir, device=device),
    )
    uvicorn.run(app, host=host, port=port, **UVICORN_OPTIONS)


# How ``gcrdp serve`` runs uvicorn: no access log (warnings only), and an HTTP parser buffer (h11's
# request line and headers) large enough that a query string up to 1 MiB reaches the app's 414;
# beyond it uvicorn itself answers 400 and closes the connection.
UVICORN_OPTIONS: dict[str, Any] = {"log_level": "warning", "h11_max_incomplete_event_size": H11_MAX_EVENT_BYTES}


def uvicorn_config(app: Any, host: str, port: int) -> Any:
    """The ``uvicorn.Config`` of ``gcrdp serve`` (``UVICORN_OPTIONS``), for a server run in a thread."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, **UVICORN_OPTIONS)


PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gcrdp search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/favicon.ico">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{padding:16px 24px;background:#fff;border-bottom:1px solid #ddd}
h1{font-size:20px;margin:0 0 12px}
.row{display:flex;gap:12px;align-items:center;flex-wrap:wrap}
input[type=text]{flex:1;min-width:240px;padding:8px 10px;font-size:16px;border:1px solid #bbb;border-radius:6px}
button{padding:8px 14px;font-size:15px;border-radius:6px;border:1px solid #888;background:#fff;cursor:pointer}
button.on{background:#222;color:#fff}
#drop{border:2px dashed #aaa;border-radius:8px;padding:12px 18px;color:#666;display:none;flex:1;align-items:center;gap:14px}
#drop.hover{border-color:#222;color:#222}
#preview{width:72px;height:72px;object-fit:contain;background:#f0f0f0;border-radius:4px}
#about{margin:12px 24px 0;color:#444;font-size:14px}
#examples{margin-top:6px;display:flex;gap:8px;flex-wrap:wrap;align-items:center}
#examples button.example{padding:3px 10px;font-size:13px;border-color:#bbb;border-radius:14px}
#status{margin:10px 24px;color:#555;min-height:20px}
#status.error{color:#b00020;font-weight:600}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:14px;padding:0 24px 24px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px;font-size:13px}
.card img{width:100%;aspect-ratio:1;object-fit:contain;background:#f0f0f0;border-radius:4px}
.card .score{color:#666;float:right}
.card .text{margin-top:4px;font-size:14px;word-break:break-word}
.card .id{margin-top:4px;color:#777;font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.card .label{display:inline-block;margin:4px 4px 0 0;padding:1px 7px;border-radius:10px;background:#eef;color:#335;font-size:12px}
</style></head><body>
<header><h1>gcrdp search</h1>
<div class="row">
 <button id="mode-text" class="on" title="type a text, find images">text &rarr; images</button>
 <button id="mode-image" title="drop an image, find texts">image &rarr; texts</button>
 <input id="q" type="text" placeholder="describe what you look for, e.g. a red bicycle" autofocus>
 <div id="drop"><img id="preview" alt="" hidden><span>drop an image here, or <input id="file" type="file" accept="image/*"></span></div>
 <label>k <input id="k" type="number" value="12" min="1" max="100" style="width:60px"></label>
 <button id="go">search</button>
</div></header>
<div id="about"><div id="summary"></div><div id="examples"></div></div>
<div id="status"></div>
<div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
let mode = "text", seq = 0, previewUrl = null;
function el(tag, cls, text) {
  const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e;
}
function status(msg, error) { const s = $("status"); s.textContent = msg; s.className = error ? "error" : ""; }
function preview(file) {
  if (previewUrl) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
  const p = $("preview");
  if (file && (file.type || "").startsWith("image/")) {
    previewUrl = URL.createObjectURL(file); p.src = previewUrl; p.alt = "your image: " + file.name; p.hidden = false;
  } else { p.removeAttribute("src"); p.alt = ""; p.hidden = true; }
}
function setMode(m) {
  if (m === mode) return;
  mode = m; seq++;  // an answer still on its way belongs to the other mode: it is dropped
  $("mode-text").classList.toggle("on", m === "text");
  $("mode-image").classList.toggle("on", m === "image");
  $("q").style.display = m === "text" ? "" : "none";
  $("drop").style.display = m === "image" ? "flex" : "none";
  $("results").innerHTML = ""; $("file").value = ""; preview(null);
  status(m === "text" ? "Type a text: the images that match it come back."
                      : "Choose or drop an image: the texts that match it come back.", false);
}
function card(h) {
  const c = el("div", "card result " + h.modality); c.dataset.id = h.id;
  const head = el("div"); head.appendChild(el("b", "", "#" + h.rank)); head.appendChild(el("span", "score", h.score.toFixed(3)));
  c.appendChild(head);
  if (h.thumbnail) {
    const im = el("img"); im.src = h.thumbnail; im.alt = h.text || h.id; im.title = h.id;
    let tries = 0;  // a busy server answers 503 (Retry-After): try again a little later
    im.onerror = () => { if (++tries <= 3) setTimeout(() => { im.src = h.thumbnail + "&try=" + tries; }, 1000 * tries); };
    c.appendChild(im);
  }
  if (h.text) c.appendChild(el("div", "text", h.text));
  c.appendChild(el("div", "id", h.id));
  const labels = h.labels && h.labels.length ? h.labels : (h.label ? [h.label] : []);
  if (labels.length) { const ls = el("div", "labels"); for (const l of labels) ls.appendChild(el("span", "label", l)); c.appendChild(ls); }
  return c;
}
function show(data, what) {
  const box = $("results"); box.innerHTML = "";
  for (const h of data.results) box.appendChild(card(h));
  status(data.results.length + " results for " + what, false);
}
async function run(url, init, what) {
  const mine = ++seq;
  status("searching...", false);
  let resp, data;
  try { resp = await fetch(url, init); data = await resp.json().catch(() => ({})); }
  catch (e) { if (mine === seq) { $("results").innerHTML = ""; status("Error: " + e, true); } return; }
  if (mine !== seq) return;  // a newer search or a mode switch came since
  if (!resp.ok) { $("results").innerHTML = ""; status("Error: " + (data.detail || resp.statusText), true); return; }
  show(data, what);
}
function searchText() {
  const q = $("q").value.trim(); if (!q) { status("Type a query first.", true); return; }
  return run("/api/search?text=" + encodeURIComponent(q) + "&k=" + $("k").value, undefined, "\u201c" + q + "\u201d");
}
function searchImage(file) {
  if (!file) { status("Choose or drop an image first.", true); return; }
  preview(file);
  const form = new FormData(); form.append("file", file); form.append("k", $("k").value);
  return run("/api/search/image", {method: "POST", body: form}, file.name);
}
async function about() {
  const info = await (await fetch("/api/info")).json();
  const c = info.counts || {}, m = info.model || {};
  const parts = [];
  for (const [n, what] of [[c.image, "images"], [c.text, "texts"]]) if (n !== undefined) parts.push(n.toLocaleString("en") + " " + what);
  let model = "model " + m.method;
  const more = [];
  if (m.name) more.push("checkpoint " + m.name);
  if (m.encoders) more.push("encoders " + m.encoders);
  if (m.pre_extracted) more.push("pre-extracted features: query by indexed item");
  if (more.length) model += " (" + more.join("; ") + ")";
  $("summary").textContent = "Indexed: " + (parts.join(", ") || "nothing") + " \u00b7 " + model;
  const ex = $("examples"); ex.innerHTML = "";
  if (info.examples && info.examples.length) {
    ex.appendChild(el("span", "", "Try:"));
    for (const t of info.examples) {
      const b = el("button", "example", t); b.type = "button";
      b.onclick = () => { setMode("text"); $("q").value = t; searchText(); };
      ex.appendChild(b);
    }
  }
  if (!c.image && c.text) setMode("image");  // nothing to find by text
}
$("mode-text").onclick = () => setMode("text");
$("mode-image").onclick = () => setMode("image");
$("go").onclick = () => mode === "text" ? searchText() : searchImage($("file").files[0]);
$("q").addEventListener("keydown", (e) => { if (e.key === "Enter") searchText(); });
$("file").addEventListener("change", () => searchImage($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("hover"); });
drop.addEventListener("dragleave", () => drop.classList.remove("hover"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("hover"); searchImage(e.dataTransfer.files[0]); });
about().catch((e) => { $("summary").textContent = "Could not read what is indexed: " + e; });
</script></body></html>
"""
