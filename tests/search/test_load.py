"""A load test of `gcrdp serve` that runs in CI (issue 21): the real server in its own process on
loopback, 16 clients at once mixing text searches, image searches (large images among them:
a 6300 × 6300 PNG of 100 KB, a 40-megapixel bomb) and thumbnails, a bounded number of requests
each. It holds when no answer is other than 200, 503 (image work full: try again) or 413 (too
many pixels), the server's peak RSS stays under :data:`PEAK_RSS_BOUND`, and ``/health`` answers
within a second throughout."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests.crash.test_crasher import _env  # noqa: E402
from tests.search.test_search import trained  # noqa: E402,F401  (the module fixture: a trained model + manifest)

CLIENTS = 16
REQUESTS = 12  # per client
PEAK_RSS_BOUND = 1.5 * 2**30  # bytes
HEALTH_BOUND = 1.0  # seconds


def _png(size: tuple[int, int], colour=(200, 40, 40)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")  # pragma: no cover


@pytest.mark.slow  # a server under 16 clients: about 32 s on 2 loaded cores
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc")
def test_sixteen_clients_with_large_images(trained, tmp_path):  # noqa: F811
    from gcrdp.search import Retriever, items_from_manifest

    root, manifest = trained
    index = tmp_path / "idx"
    Retriever.build(index, checkpoint=root / "ckpt", items=items_from_manifest(manifest), cache_dir=root / "cache", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(tmp_path)
    # the models folder of this process, where building the index put the ONNX query path
    if os.environ.get("GCRDP_CACHE_DIR"):
        env["GCRDP_CACHE_DIR"] = os.environ["GCRDP_CACHE_DIR"]
    else:
        env.pop("GCRDP_CACHE_DIR", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "gcrdp", "serve", str(index), "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        rss_idle = _peak_rss(server.pid)
        thumbs = [r["thumbnail"] for r in httpx.get(f"{base}/api/search", params={"text": "a red circle", "k": 20}).json()["results"]]
        small, large, bomb = _png((64, 64)), _png((6300, 6300)), _png((7000, 7000), (0, 0, 0))
        assert len(large) < 400_000 and len(bomb) < 400_000  # small on disk, huge in memory

        health: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            with httpx.Client(base_url=base, timeout=10) as c:
                while not stop.is_set():
                    t0 = time.monotonic()
                    assert c.get("/health").status_code == 200
                    health.append(time.monotonic() - t0)
                    time.sleep(0.1)

        def client(i: int) -> list[int]:
            codes = []
            with httpx.Client(base_url=base, timeout=60) as c:
                for j in range(REQUESTS):
                    kind = (i + j) % 4
                    if kind == 0:
                        r = c.get("/api/search", params={"text": f"a shape number {i}-{j}", "k": 10})
                    elif kind == 1:
                        image = (large, bomb, small)[(i + j) % 3]
                        r = c.post("/api/search/image", files={"file": ("q.png", image, "image/png")}, data={"k": "5"})
                    elif kind == 2:
                        r = c.get(thumbs[(i + j) % len(thumbs)])
                    else:
                        r = c.post("/api/search/image", files={"file": ("q.png", small, "image/png")}, data={"k": "5"})
                    codes.append(r.status_code)
                    if r.status_code == 503:
                        assert "retry-after" in {k.lower() for k in r.headers}
            return codes

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(CLIENTS) as pool:
            codes = [c for cs in pool.map(client, range(CLIENTS)) for c in cs]
        stop.set()
        watcher.join(timeout=15)
        peak = _peak_rss(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            server.kill()
    assert len(codes) == CLIENTS * REQUESTS
    assert set(codes) <= {200, 413, 503}, sorted(set(codes))
    assert codes.count(200) >= len(codes) // 2  # most requests are served, not turned away
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB (idle {rss_idle / 2**20:.0f} MiB)"
    assert health and max(health) < HEALTH_BOUND, f"/health took up to {max(health):.2f} s"
    if os.environ.get("GCRDP_LOAD_REPORT"):  # the figures for docs/search.md
        counts = {c: codes.count(c) for c in sorted(set(codes))}
        mib = f"peak RSS {peak / 2**20:.0f} MiB (idle {rss_idle / 2**20:.0f})"
        print(f"\nload: {len(codes)} requests {counts}, {mib}, /health max {max(health):.3f} s")
