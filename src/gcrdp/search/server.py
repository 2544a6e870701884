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

    cache: dict[str, Any] = {}  # the info and the icon, made on first request

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

    @app.get("/api/info")
    def about() -> dict[str, Any]:
        """What the page shows before a search: counts, the model, example queries."""
        if "info" not in cache:
            fp = retriever.info["model"]
            config = getattr(retriever.model, "config", None)
            checkpoint = retriever.info.get("checkpoint")
            cache["info"] = {
                "index": str(retriever.index_dir) if expose_paths else retriever.index_dir.name,
                "counts": {m: b.ntotal for m, b in retriever.backends.items()},
                "model": {
                    "method": fp.get("method"),
                    "checkpoint": checkpoint if expose_paths else None,
                    "name": _run_name(checkpoint),
                    "encoders": None
                    if fp.get("pre_extracted") or config is None
                    else f"{getattr(config, 'image_encoder', '?')} + {getattr(config, 'text_encoder', '?')}",
                    "pre_extracted": bool(fp.get("pre_extracted")),
                },
                "index_type": retriever.info.get("index_type"),
                # text queries need images to find and an encoder to embed them
                "examples": retriever.examples() if "image" in retriever.backends and not fp.get("pre_extracted") else [],
            }
        return cache["info"]

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
        d: dict[str, Any] = retriever.describe(modality, int(meta[1]))
        return d | {"path": d["path"] if expose_paths else None, "labels": list(d["labels"])}

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

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        if "favicon" not in cache:
            cache["favicon"] = _favicon()
        return Response(cache["favicon"], media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})

    app.add_middleware(_BodyLimit, limit=max_upload_bytes + FORM_OVERHEAD)
    return app


def _run_name(checkpoint: str | None) -> str | None:
    """The name of the training run's folder: ``g5`` for ``ckpt/g5/final`` or ``ckpt/g5``."""
    if not checkpoint:
        return None
    parts = [x for x in checkpoint.replace("\\", "/").split("/") if x]
    if len(parts) > 1 and parts[-1] == "final":
        parts.pop()
    return parts[-1] if parts else None


def _favicon() -> bytes:
    """The page's icon, drawn here: a white magnifier on a dark rounded square (ICO, 16 and 32 px)."""
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
    index_dir: str, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", max_upload_bytes: int = MAX_UPLOAD_BYTES
) -> None:
    """Load the index and serve it with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError("gcrdp serve needs uvicorn: pip install 'gcrdp[serve]'.") from None
    from .retriever import Retriever

    r = Retriever.load(index_dir, device=device)
    r.model.warm()  # the encoders and heads load now, not on the first query
    local = host in ("127.0.0.1", "localhost", "::1")
    uvicorn.run(create_app(r, max_upload_bytes=max_upload_bytes, expose_paths=local), host=host, port=port, log_level="warning")


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
  if (h.thumbnail) { const im = el("img"); im.src = h.thumbnail; im.alt = h.text || h.id; im.title = h.id; c.appendChild(im); }
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
