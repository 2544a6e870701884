"""``gcrdp serve``: a search index over HTTP — a JSON API (FastAPI, OpenAPI at ``/openapi.json``)
and a web page at ``/``.

API:

* ``GET /health`` — status, index, model, counts.
* ``GET /api/search?text=...&k=10`` — the images that match a text.
* ``POST /api/search/image`` (multipart ``file``, ``k``) — the texts that match an uploaded image.
* ``GET /api/item?modality=image&id=...`` — one item's metadata.
* ``GET /api/thumbnail?id=...`` — an indexed image, as a JPEG thumbnail.

Safe by default: the CLI binds to loopback unless told otherwise; uploads are limited in size
(``max_upload_bytes``), must declare an image content type and must decode as an image, each
failure a clear 4xx; files are served only for items in the index, looked up by id — no path
from a request reaches the file system; nothing is unpickled.
"""

# no `from __future__ import annotations` here: FastAPI reads the endpoint annotations at run
# time, and the endpoints' types are imported inside create_app (FastAPI is optional)
import io
import os
import tempfile
from typing import Any

from ..errors import GcrdpError, MissingDependencyError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
THUMBNAIL_PX = 256


MAX_IMAGE_PIXELS = 40_000_000
FORM_OVERHEAD = 64 * 1024


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before it is stored — by its
    Content-Length, or by counting the chunks of a body without one."""

    class _TooLarge(Exception):
        pass

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    async def _refuse(self, send: Any) -> None:
        body = b'{"detail":"the request body is larger than the upload limit"}'
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(send)
            return
        seen, started = 0, False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._TooLarge()
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except self._TooLarge:
            if not started:
                await self._refuse(send)


def create_app(retriever: Any, *, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_k: int = 100, expose_paths: bool = True) -> "Any":
    """The FastAPI application serving ``retriever`` (see the module docstring).
    ``expose_paths=False`` leaves the server's file paths out of every answer (``gcrdp serve``
    does so when it listens beyond loopback)."""
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

    def hits_json(hits: list[Any]) -> list[dict[str, Any]]:
        out = []
        for h in hits:
            d = h.to_dict() | {"thumbnail": f"/api/thumbnail?id={_q(h.id)}" if h.modality == "image" else None}
            if not expose_paths:
                d["path"] = None
            out.append(d)
        return out

    def check_k(k: int) -> int:
        if not 1 <= k <= max_k:
            raise HTTPException(422, f"k must be between 1 and {max_k}")
        return k

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "index": str(retriever.index_dir) if expose_paths else retriever.index_dir.name,
            "backend": retriever.info.get("backend"),
            "index_type": retriever.info.get("index_type"),
            "method": retriever.info["model"].get("method"),
            "counts": {m: b.ntotal for m, b in retriever.backends.items()},
        }

    @app.get("/api/search")
    def search_text(text: str = Query(..., min_length=1, max_length=2000), k: int = 10) -> dict[str, Any]:
        if "image" not in retriever.backends:
            raise HTTPException(409, "this index holds no images to search by text")
        try:
            hits = retriever.search(text=text, k=check_k(k))
        except GcrdpError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"query": {"text": text, "k": k}, "results": hits_json(hits)}

    @app.post("/api/search/image")
    def search_image(file: UploadFile = File(...), k: int = Form(10)) -> dict[str, Any]:
        # a plain def: FastAPI runs it in a worker thread, so the model never blocks the event loop
        check_k(k)
        if "text" not in retriever.backends:
            raise HTTPException(409, "this index holds no texts to search by image")
        if not (file.content_type or "").startswith("image/"):
            raise HTTPException(415, f"upload an image (got content type {file.content_type or 'none'!r})")
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"the image is larger than the limit of {max_upload_bytes} bytes")
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                    raise HTTPException(413, f"the image has more than {MAX_IMAGE_PIXELS} pixels")
                im.verify()
        except HTTPException:
            raise
        except Exception:  # noqa: BLE001 - any decoding failure is the client's
            raise HTTPException(400, "the upload is not a readable image") from None
        fd, tmp = tempfile.mkstemp(suffix=".img")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            hits = retriever.search(image=tmp, k=k)
        except GcrdpError as exc:
            raise HTTPException(400, str(exc)) from None
        finally:
            os.unlink(tmp)
        return {"query": {"image": file.filename, "k": k}, "results": hits_json(hits)}

    @app.get("/api/item")
    def item(id: str, modality: str = "image") -> dict[str, Any]:
        meta = retriever.item(modality, id)
        if meta is None:
            raise HTTPException(404, f"no {modality} with id {id!r} in this index")
        return {
            "modality": meta[0],
            "row": meta[1],
            "id": meta[2],
            "path": meta[3] if expose_paths else None,
            "text": meta[4],
            "label": meta[5],
            "hash": meta[6],
        }

    @app.get("/api/thumbnail")
    def thumbnail(id: str) -> Response:
        meta = retriever.item("image", id)
        if meta is None or not meta[3]:
            raise HTTPException(404, f"no image with id {id!r} in this index")
        try:
            from PIL import Image

            with Image.open(meta[3]) as src:  # the path stored at index time, never one from the request
                rgba = src.convert("RGBA")  # transparency onto white, as a page shows it
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            canvas.alpha_composite(rgba)
            thumb = canvas.convert("RGB")
            thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buf = io.BytesIO()
            thumb.save(buf, format="JPEG", quality=85)
        except Exception:  # noqa: BLE001 - a missing, changed or undecodable file: not the server's fault
            raise HTTPException(410, f"the image file of {id!r} is no longer readable") from None
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    app.add_middleware(_BodyLimit, limit=max_upload_bytes + FORM_OVERHEAD)
    return app


def _q(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")


def serve(
    index_dir: str, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", max_upload_bytes: int = MAX_UPLOAD_BYTES
) -> None:
    """Load the index and serve it with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError("gcrdp serve needs uvicorn: pip install 'gcrdp[serve]'.") from None
    from .retriever import Retriever

    r = Retriever.load(index_dir, device=device)
    local = host in ("127.0.0.1", "localhost", "::1")
    uvicorn.run(create_app(r, max_upload_bytes=max_upload_bytes, expose_paths=local), host=host, port=port, log_level="warning")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gcrdp search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{padding:16px 24px;background:#fff;border-bottom:1px solid #ddd}
h1{font-size:20px;margin:0 0 12px}
.row{display:flex;gap:12px;align-items:center;flex-wrap:wrap}
input[type=text]{flex:1;min-width:240px;padding:8px 10px;font-size:16px;border:1px solid #bbb;border-radius:6px}
button{padding:8px 14px;font-size:15px;border-radius:6px;border:1px solid #888;background:#fff;cursor:pointer}
button.on{background:#222;color:#fff}
#drop{border:2px dashed #aaa;border-radius:8px;padding:18px;text-align:center;color:#666;display:none;flex:1}
#drop.hover{border-color:#222;color:#222}
#status{margin:10px 24px;color:#555;min-height:20px}
#status.error{color:#b00020;font-weight:600}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:14px;padding:0 24px 24px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px;font-size:13px}
.card img{width:100%;aspect-ratio:1;object-fit:contain;background:#f0f0f0;border-radius:4px}
.card .score{color:#666;float:right}
.card .text{margin-top:4px;word-break:break-word}
</style></head><body>
<header><h1>gcrdp search</h1>
<div class="row">
 <button id="mode-text" class="on" title="type a text, find images">text &rarr; images</button>
 <button id="mode-image" title="drop an image, find texts">image &rarr; texts</button>
 <input id="q" type="text" placeholder="describe what you look for, e.g. a red bicycle" autofocus>
 <div id="drop">drop an image here, or <input id="file" type="file" accept="image/*"></div>
 <label>k <input id="k" type="number" value="12" min="1" max="100" style="width:60px"></label>
 <button id="go">search</button>
</div></header>
<div id="status"></div>
<div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
let mode = "text";
function setMode(m) {
  mode = m;
  $("mode-text").classList.toggle("on", m === "text");
  $("mode-image").classList.toggle("on", m === "image");
  $("q").style.display = m === "text" ? "" : "none";
  $("drop").style.display = m === "image" ? "block" : "none";
}
function status(msg, error) { const s = $("status"); s.textContent = msg; s.className = error ? "error" : ""; }
function show(data) {
  const box = $("results"); box.innerHTML = "";
  for (const h of data.results) {
    const c = document.createElement("div"); c.className = "card result";
    const head = document.createElement("div");
    head.innerHTML = "<b>#" + h.rank + "</b> <span class='score'>" + h.score.toFixed(3) + "</span>";
    c.appendChild(head);
    if (h.thumbnail) { const im = document.createElement("img"); im.src = h.thumbnail; im.alt = h.id; c.appendChild(im); }
    const t = document.createElement("div"); t.className = "text";
    t.textContent = (h.text || (h.path ? h.path.split("/").pop() : h.id)) + (h.label ? " [" + h.label + "]" : "");
    c.appendChild(t); box.appendChild(c);
  }
  status(data.results.length + " results", false);
}
async function answer(resp) {
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) { $("results").innerHTML = ""; status("Error: " + (data.detail || resp.statusText), true); return; }
  show(data);
}
async function searchText() {
  const q = $("q").value.trim(); if (!q) { status("Type a query first.", true); return; }
  status("searching...", false);
  await answer(await fetch("/api/search?text=" + encodeURIComponent(q) + "&k=" + $("k").value));
}
async function searchImage(file) {
  if (!file) { status("Choose or drop an image first.", true); return; }
  const form = new FormData(); form.append("file", file); form.append("k", $("k").value);
  status("searching...", false);
  await answer(await fetch("/api/search/image", {method: "POST", body: form}));
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
</script></body></html>
"""
