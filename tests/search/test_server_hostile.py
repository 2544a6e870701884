"""gcrdp serve against hostile requests (issue 21): pixel bombs, EPS declared as PNG, too many
image requests at once, a foreign Host header, oversized chunked bodies and query strings, leaked
paths, and a rebuilt index picked up while serving. The hostile images are made here, small on
disk (a PNG of zeros compresses ~1000:1). Most tests serve a stand-in retriever (no model), so
they run in a second; the reload test builds a real index."""

from __future__ import annotations

import asyncio
import http.client
import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.search.test_search import trained  # noqa: F401  (the module fixture: a trained model + manifest)

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

LOCAL = "http://127.0.0.1"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_of_zeros(width: int, height: int, rows: int | None = None) -> bytes:
    """A grey PNG of ``width`` x ``height`` black pixels, compressed row by row (never held
    decoded); ``rows`` < height writes only that many rows (a bomb refused by its header alone)."""
    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + one byte a pixel
    idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _image(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format=fmt)
    return buf.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nnewpath 0 0 moveto 10 10 lineto stroke showpage\n%%EOF\n"


class StandIn:
    """A retriever without a model: images by id from ``images``, searches recorded (and held
    while ``hold`` is set)."""

    def __init__(self, index_dir: Path, images: dict[str, Path]) -> None:
        self.index_dir, self.images = index_dir, images
        self.info = {"backend": "faiss", "index_type": "Flat", "model": {"method": "stand-in"}}
        self.backends = {"image": SimpleNamespace(ntotal=len(images)), "text": SimpleNamespace(ntotal=1)}
        self.model = None
        self.queries: list[tuple[int, int]] = []
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        self.error: Exception | None = None

    def item(self, modality: str, id: str) -> tuple | None:
        p = self.images.get(id) if modality == "image" else None
        return None if p is None else ("image", 0, id, str(p), None, None, "hash", None)

    def search(self, *, image: str | None = None, k: int = 10, **_: object) -> list:
        from PIL import Image

        if image is None:  # a text query: nothing found
            return []
        with Image.open(image) as im:  # what the model would be given
            self.queries.append(im.size)
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(10)
        if self.error is not None:
            raise self.error
        return []

    def describe(self, modality: str, row: int) -> dict:
        id = next(iter(self.images))
        path = str(self.images[id])
        return {"modality": modality, "row": row, "id": id, "path": path, "text": None, "label": None, "labels": (), "hash": "h"}

    def examples(self) -> list[str]:
        return []


@pytest.fixture
def stand_in(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_of_zeros(8000, 8000))  # 64 MP, ~62 KB on disk
    (folder / "small.png").write_bytes(_image("PNG", (300, 200)))
    (folder / "eps.png").write_bytes(EPS)
    from PIL import Image

    Image.new("L", (7000, 6000), 90).save(folder / "big.jpg", quality=70)  # 42 MP: over the cap, but decoded at 1/8
    images = {p.stem: p for p in folder.iterdir()}
    idx = tmp_path / "secret-place" / "idx"
    idx.mkdir(parents=True)
    return StandIn(idx, images)


def _client(r, **kw):
    from fastapi.testclient import TestClient

    from gcrdp.search.server import create_app

    return TestClient(create_app(r, max_upload_bytes=200_000, **kw), base_url=LOCAL)


def test_the_stand_in_eps_is_a_real_eps():
    from PIL import Image

    with Image.open(io.BytesIO(EPS)) as im:  # what an unrestricted open would hand to Ghostscript
        assert im.format == "EPS"


# 1. thumbnails: the pixel cap before decoding, a JPEG's reduced draft, a cache


def test_a_thumbnail_of_a_pixel_bomb_is_refused_before_decoding(stand_in):
    c = _client(stand_in)
    t = time.perf_counter()
    got = c.get("/api/thumbnail", params={"id": "bomb"})
    assert got.status_code == 413 and "pixels" in got.json()["detail"]
    assert time.perf_counter() - t < 1.0  # not decoded (it took 3 s and 0.8 GB)
    ok = c.get("/api/thumbnail", params={"id": "small"})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"


def test_a_large_jpeg_is_thumbnailed_from_its_reduced_draft(stand_in):
    """42 MP is over the 40 MP cap, but a JPEG decodes at 1/8 scale (0.7 MP): a thumbnail."""
    from PIL import Image

    got = _client(stand_in).get("/api/thumbnail", params={"id": "big"})
    assert got.status_code == 200
    with Image.open(io.BytesIO(got.content)) as im:
        assert max(im.size) == 256


def test_thumbnails_are_cached(stand_in, monkeypatch):
    from gcrdp.search import server

    made = []
    real = server._thumbnail_bytes
    monkeypatch.setattr(server, "_thumbnail_bytes", lambda path: made.append(path) or real(path))
    c = _client(stand_in)
    first = c.get("/api/thumbnail", params={"id": "small"})
    again = c.get("/api/thumbnail", params={"id": "small"})
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert len(made) == 1
    stand_in.images["small"].write_bytes(_image("PNG", (301, 200)))  # a changed file is made again
    assert c.get("/api/thumbnail", params={"id": "small"}).status_code == 200 and len(made) == 2


def test_the_thumbnail_cache_is_bounded():
    from gcrdp.search.server import _LRU

    lru = _LRU(100)
    for i in range(10):
        lru.put(i, b"x" * 30)
    assert lru.size <= 100 and len(lru) == 3 and lru.get(9) and lru.get(0) is None


# 2. a limit on image work: 503 + Retry-After, /health still fast


def test_image_work_over_the_limit_gets_503_and_health_stays_fast(stand_in):
    import httpx

    from gcrdp.search.server import create_app

    app = create_app(stand_in, image_workers=1)
    stand_in.hold = threading.Event()

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL, timeout=10) as c:
            first = asyncio.create_task(c.post("/api/search/image", files={"file": ("a.png", _image("PNG", (40, 40)), "image/png")}))
            for _ in range(200):  # the first upload holds the only image worker
                if stand_in.entered.is_set():
                    break
                await asyncio.sleep(0.01)
            try:
                second = await asyncio.wait_for(
                    c.post("/api/search/image", files={"file": ("b.png", _image("PNG", (40, 40)), "image/png")}), 3
                )
                thumb = await asyncio.wait_for(c.get("/api/thumbnail", params={"id": "small"}), 3)
                t = time.perf_counter()
                health = await asyncio.wait_for(c.get("/health"), 3)
                health_s = time.perf_counter() - t
            finally:
                stand_in.hold.set()
            return await first, second, thumb, health, health_s

    first, second, thumb, health, health_s = asyncio.run(scenario())
    assert first.status_code == 200
    for busy in (second, thumb):
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["detail"]
    assert health.status_code == 200 and health_s < 0.5


# 3. uploads: the pixel cap (413), reduced decoding, raster formats only, no paths in messages


def test_a_png_bomb_upload_gets_413_not_400(stand_in):
    bomb = png_of_zeros(40000, 40000, rows=20)  # 1.6 GP declared, a few KB sent
    got = _client(stand_in).post("/api/search/image", files={"file": ("q.png", bomb, "image/png")})
    assert got.status_code == 413 and "pixels" in got.json()["detail"]
    assert not stand_in.queries


def test_uploads_are_decoded_at_reduced_size(stand_in):
    for fmt, size in (("PNG", (3000, 2000)), ("JPEG", (4000, 3000))):
        got = _client(stand_in).post("/api/search/image", files={"file": ("q", _image(fmt, size), "image/png")})
        assert got.status_code == 200
    assert all(max(s) <= 1024 for s in stand_in.queries) and len(stand_in.queries) == 2


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_raster_formats_are_accepted(stand_in, fmt):
    got = _client(stand_in).post("/api/search/image", files={"file": ("q", _image(fmt, (64, 48)), "image/png")})
    assert got.status_code == 200 and stand_in.queries == [(64, 48)]


def test_eps_declared_as_png_is_refused_and_never_decoded(stand_in):
    c = _client(stand_in)
    got = c.post("/api/search/image", files={"file": ("q.png", EPS, "image/png")})
    assert got.status_code == 400 and not stand_in.queries
    assert "EPS" not in got.json()["detail"] or "not a readable image" in got.json()["detail"]
    assert c.get("/api/thumbnail", params={"id": "eps"}).status_code == 410  # an indexed "PNG" that is EPS


def test_no_server_path_in_an_error(stand_in, tmp_path):
    from gcrdp.errors import DataError

    stand_in.error = DataError("Cannot decode image /tmp/tmpabc123.img: cannot identify image file '/tmp/tmpabc123.img'")
    c = _client(stand_in, expose_paths=False)
    answers = [
        c.post("/api/search/image", files={"file": ("q.png", _image("PNG", (20, 20)), "image/png")}),
        c.post("/api/search/image", files={"file": ("q.png", b"\x89PNG junk", "image/png")}),
        c.post("/api/search/image", files={"file": ("q.png", png_of_zeros(40000, 40000, rows=2), "image/png")}),
        c.get("/api/thumbnail", params={"id": "bomb"}),
        c.get("/api/thumbnail", params={"id": "eps"}),
        c.get("/health", headers={"host": "evil.example"}),
    ]
    assert [a.status_code for a in answers] == [400, 400, 413, 413, 410, 400]
    for a in answers:
        assert "/tmp" not in a.text and str(tmp_path) not in a.text and "secret-place" not in a.text


# 4. trusted hosts


def test_a_foreign_host_header_gets_400_without_the_index(stand_in):
    c = _client(stand_in)
    evil = c.get("/health", headers={"host": "evil.example"})
    assert evil.status_code == 400 and "secret-place" not in evil.text and "Host" in evil.json()["detail"]
    assert c.get("/api/search", params={"text": "x"}, headers={"host": "evil.example:8000"}).status_code == 400
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000"):
        got = c.get("/health", headers={"host": host})
        assert got.status_code == 200 and "secret-place" in got.json()["index"], host
    named = _client(stand_in, allowed_hosts=("127.0.0.1", "search.example.org"))
    assert named.get("/health", headers={"host": "search.example.org:8000"}).status_code == 200
    assert named.get("/health", headers={"host": "localhost"}).status_code == 400


def test_serve_passes_allowed_hosts(tmp_path, monkeypatch, capsys):
    from gcrdp.cli.main import main
    from gcrdp.search import server

    got = {}
    monkeypatch.setattr(server, "serve", lambda index, **kw: got.update(kw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["serve", str(tmp_path), "--port", str(port), "--allowed-host", "a.example", "--allowed-host", "b.example"]
    assert main(argv) == 0
    assert got["allowed_hosts"] == ("a.example", "b.example")
    capsys.readouterr()
    assert main(["serve", str(tmp_path), "--port", str(port), "--host", "0.0.0.0"]) == 0
    assert got["allowed_hosts"] == () and "--allowed-host NAME" in capsys.readouterr().err


# 5. chunked bodies, long query strings


def test_a_chunked_upload_over_the_limit_gets_413(stand_in):
    def body():
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\nContent-Type: image/png\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 10_000

    got = _client(stand_in).post("/api/search/image", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert got.status_code == 413 and not stand_in.queries


def test_a_long_query_string_gets_414_from_the_app(stand_in):
    assert _client(stand_in).get("/api/search", params={"text": "x" * 20_000}).status_code == 414


def test_a_1mb_query_string_gets_414_over_http_not_a_reset(stand_in):
    import uvicorn

    from gcrdp.search.server import create_app, uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(create_app(stand_in), "127.0.0.1", port))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/search?text=" + "x" * 1_000_000)
        answer = conn.getresponse()
        assert answer.status == 414
        conn.close()
    finally:
        server.should_exit = True
        t.join(timeout=5)


# 6. the OpenAPI description names every error


def test_every_route_declares_its_errors(stand_in):
    spec = _client(stand_in).get("/openapi.json").json()["paths"]
    assert {"400", "409", "413", "415", "422", "503"} <= set(spec["/api/search/image"]["post"]["responses"])
    assert {"400", "404", "410", "413", "503"} <= set(spec["/api/thumbnail"]["get"]["responses"])
    assert "image/jpeg" in spec["/api/thumbnail"]["get"]["responses"]["200"]["content"]
    assert {"400", "404", "422"} <= set(spec["/api/item"]["get"]["responses"])
    assert {"400", "409", "422"} <= set(spec["/api/search"]["get"]["responses"])


# 5. a rebuilt index is picked up while serving


def test_a_switched_current_is_loaded_in_the_background_and_a_broken_one_keeps_the_old(stand_in, monkeypatch):
    from gcrdp.search import server

    monkeypatch.setattr(server, "RELOAD_CHECK_S", 0.0)
    (stand_in.index_dir / "CURRENT").write_text("v000001\n")
    newer = StandIn(stand_in.index_dir, {"only": stand_in.images["small"]})
    release, calls = threading.Event(), []

    def load():
        calls.append(1)
        release.wait(10)  # a slow load: the old index keeps answering meanwhile
        if len(calls) == 1:
            raise RuntimeError("a broken rebuild")
        return newer

    c = _client(stand_in, reload=load)
    assert c.get("/health").json()["counts"]["image"] == 4
    for n in (1, 2):
        (stand_in.index_dir / "CURRENT").write_text(f"v00000{n + 1}\n")
        for _ in range(5):  # one load per switch, however many requests come meanwhile
            assert c.get("/health").json()["counts"]["image"] == 4
        assert len(calls) == n
        release.set()
        for _ in range(100):
            if c.app.state.live._loading is False and (n == 1 or c.get("/health").json()["counts"]["image"] == 1):
                break
            time.sleep(0.02)
        release.clear()
    assert c.get("/health").json()["counts"]["image"] == 1 and c.get("/api/info").json()["counts"]["image"] == 1
    assert c.app.state.live.generation == 1 and len(calls) == 2


def test_a_rebuilt_index_is_served_without_a_restart(trained, tmp_path, monkeypatch):  # noqa: F811
    from fastapi.testclient import TestClient

    from gcrdp.search import Retriever, items_from_manifest, server
    from gcrdp.search.server import create_app

    root, manifest = trained
    items = items_from_manifest(manifest)
    idx = tmp_path / "idx"
    first = [it for it in items if it.modality == "text"] + [it for it in items if it.modality == "image"][:5]
    rest = [it for it in items if it.modality == "image"][5:]
    r = Retriever.build(idx, checkpoint=root / "ckpt", items=first, cache_dir=root / "cache", progress=False)
    monkeypatch.setattr(server, "RELOAD_CHECK_S", 0.0)
    c = TestClient(create_app(r, reload=lambda: Retriever.load(idx)), base_url=LOCAL)
    assert c.get("/health").json()["counts"]["image"] == 5
    Retriever.build(idx, checkpoint=root / "ckpt", items=rest, add=True, cache_dir=root / "cache", progress=False)
    deadline, codes = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        got = c.get("/health")
        codes.append(got.status_code)
        if got.json()["counts"]["image"] == 5 + len(rest):
            break
        time.sleep(0.05)
    assert set(codes) == {200} and got.json()["counts"]["image"] == 5 + len(rest)
    hits = c.get("/api/search", params={"text": "a red circle", "k": 50}).json()["results"]
    assert {h["id"] for h in hits} & {it.id for it in rest}


def test_serve_trusts_loopback_the_bound_address_and_the_named_hosts(monkeypatch):
    import uvicorn

    from gcrdp.search import server
    from gcrdp.search.retriever import Retriever

    got = {}
    monkeypatch.setattr(Retriever, "load", classmethod(lambda cls, *a, **k: SimpleNamespace(model=SimpleNamespace(warm=lambda: None))))
    monkeypatch.setattr(server, "create_app", lambda r, **k: got.update(k) or object())
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: got.update(run=k))
    server.serve("idx", host="192.0.2.7", allowed_hosts=("search.example.org",))
    assert set(got["allowed_hosts"]) == {"127.0.0.1", "localhost", "::1", "192.0.2.7", "search.example.org"}
    assert got["expose_paths"] is False and got["reload"] is not None
    assert got["run"]["h11_max_incomplete_event_size"] >= 1024 * 1024 + 8192
    server.serve("idx", host="0.0.0.0")
    assert set(got["allowed_hosts"]) == {"127.0.0.1", "localhost", "::1"}
