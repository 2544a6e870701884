"""gcrdp serve: the JSON API with an in-process HTTP client, and the web page in a real headless
Chromium (Selenium with Debian's chromium and chromium-driver)."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from tests.conftest import REPO_ROOT  # noqa: E402
from tests.search.test_search import trained  # noqa: E402,F401  (the module fixture: a trained model + manifest)

SHOTS = REPO_ROOT / "tests" / "screenshots"


@pytest.fixture(scope="module")
def app_and_items(trained, tmp_path_factory):  # noqa: F811
    from gcrdp.search import Retriever, items_from_manifest
    from gcrdp.search.server import create_app

    root, manifest = trained
    idx = tmp_path_factory.mktemp("serve") / "idx"
    items = items_from_manifest(manifest)
    r = Retriever.build(idx, checkpoint=root / "ckpt", items=items, cache_dir=root / "cache", progress=False)
    return create_app(r, max_upload_bytes=200_000), r, items


def _png(colour=(220, 30, 30), size=(48, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_api_search_item_thumbnail_and_errors(app_and_items):
    from fastapi.testclient import TestClient

    app, r, items = app_and_items
    c = TestClient(app)
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["counts"] == {"image": 32, "text": 32}
    res = c.get("/api/search", params={"text": "a red circle", "k": 5}).json()
    assert [x["id"] for x in res["results"]] == [x.id for x in r.search(text="a red circle", k=5)]
    first = res["results"][0]
    assert first["modality"] == "image" and first["thumbnail"].startswith("/api/thumbnail?id=")
    thumb = c.get(first["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert c.get("/api/item", params={"id": first["id"]}).json()["hash"]
    up = c.post("/api/search/image", files={"file": ("q.png", _png(), "image/png")}, data={"k": "3"}).json()
    assert len(up["results"]) == 3 and all(x["modality"] == "text" for x in up["results"])
    # errors: 4xx with a reason, never a file outside the index
    assert c.post("/api/search/image", files={"file": ("q.txt", b"hello", "text/plain")}).status_code == 415
    assert c.post("/api/search/image", files={"file": ("q.png", b"not a png", "image/png")}).status_code == 400
    big = _png(size=(1200, 1200)) + b"\0" * 300_000
    assert c.post("/api/search/image", files={"file": ("q.png", big, "image/png")}).status_code == 413
    huge = b"\0" * 2_000_000  # refused by its Content-Length, before the body is stored
    assert c.post("/api/search/image", content=huge, headers={"content-type": "multipart/form-data; boundary=x"}).status_code == 413
    assert c.get("/api/thumbnail", params={"id": "../../etc/passwd"}).status_code == 404
    assert c.get("/api/thumbnail", params={"id": "/etc/passwd"}).status_code == 404
    assert c.get("/api/search", params={"text": "x", "k": 0}).status_code == 422
    assert c.get("/api/search").status_code == 422
    assert c.get("/api/item", params={"id": "nope"}).status_code == 404
    spec = c.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/item", "/api/thumbnail", "/health"} <= set(spec["paths"])
    assert "search" in c.get("/").text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(app_and_items):
    import uvicorn

    app, _, _ = app_and_items
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    t.join(timeout=5)


def _chrome():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no headless browser here: install Debian's chromium and chromium-driver (.ci/run does so) to run the web page test")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_the_page_in_a_real_browser(live_server, app_and_items, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _, r, items = app_and_items
    browser = _chrome()
    try:
        browser.get(live_server + "/")
        wait = WebDriverWait(browser, 20)
        box = browser.find_element(By.ID, "q")
        box.send_keys("a red circle\n")  # type a query: a grid of image results
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result img")) >= 5)
        expected = [h.id for h in r.search(text="a red circle", k=12)]
        shown = [im.get_attribute("alt") for im in browser.find_elements(By.CSS_SELECTOR, "#results .result img")]
        assert shown == expected
        wait.until(
            lambda b: all(
                b.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im)
                for im in b.find_elements(By.CSS_SELECTOR, "#results img")
            )
        )
        SHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SHOTS / "search-text.png"))
        # upload an image: text results
        browser.find_element(By.ID, "mode-image").click()
        query = tmp_path / "query.png"
        query.write_bytes(_png())
        browser.find_element(By.ID, "file").send_keys(str(query))
        wait.until(
            lambda b: b.find_elements(By.CSS_SELECTOR, "#results .result") and not b.find_elements(By.CSS_SELECTOR, "#results .result img")
        )
        assert "results" in browser.find_element(By.ID, "status").text
        browser.save_screenshot(str(SHOTS / "search-image.png"))
        # a bad upload: an error on the page, no results
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Error"))
        assert "upload an image" in browser.find_element(By.ID, "status").text
        assert not browser.find_elements(By.CSS_SELECTOR, "#results .result")
        browser.save_screenshot(str(SHOTS / "search-error.png"))
    finally:
        browser.quit()


def test_bounded_load_on_loopback(live_server):
    """8 concurrent clients × 25 queries, each loop bounded in count and time: no errors."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    words = ["red", "green", "blue", "cyan", "purple", "magenta"]
    shapes = ["circle", "square", "triangle", "ring"]

    def client(i: int) -> list[int]:
        codes, t_end = [], time.monotonic() + 60
        with httpx.Client(base_url=live_server, timeout=30) as c:
            for j in range(25):
                if time.monotonic() > t_end:
                    break
                q = f"a {words[(i + j) % 6]} {shapes[j % 4]}"
                codes.append(c.get("/api/search", params={"text": q, "k": 10}).status_code)
        return codes

    with ThreadPoolExecutor(8) as pool:
        codes = [c for cs in pool.map(client, range(8)) for c in cs]
    assert len(codes) == 200 and set(codes) == {200}


def test_paths_are_hidden_beyond_loopback(app_and_items):
    from fastapi.testclient import TestClient

    from gcrdp.search.server import create_app

    _, r, _ = app_and_items
    c = TestClient(create_app(r, expose_paths=False))
    res = c.get("/api/search", params={"text": "a red circle", "k": 3}).json()["results"]
    assert all(x["path"] is None for x in res)
    assert c.get("/api/item", params={"id": res[0]["id"]}).json()["path"] is None
    assert "/" not in c.get("/health").json()["index"]
    assert c.get(res[0]["thumbnail"]).status_code == 200  # thumbnails by id still work


def test_serve_on_a_busy_port_says_so_before_announcing_a_url(tmp_path, capsys):
    """``gcrdp serve`` checks the port first: a busy one is exit 2 with a message naming
    ``--port`` (not a URL, then uvicorn's 'address already in use' seconds later)."""
    from gcrdp.cli.main import main

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(tmp_path / "no-index"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"Port {port} on 127.0.0.1 is already in use" in err and f"--port {port + 1}" in err
    assert "http://" not in err
    assert main(["serve", str(tmp_path / "no-index"), "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
