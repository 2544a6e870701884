"""gcrdp serve: the JSON API with an in-process HTTP client, and the web page in a real headless
Chromium (Selenium with Debian's chromium and chromium-driver): results with each item's id, text
and labels, what is indexed and example queries, a mode switch that clears, the uploaded image's
preview, the favicon."""

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
LOCAL = "http://127.0.0.1"  # a loopback Host: the server answers no other by default


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
    c = TestClient(app, base_url=LOCAL)
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["counts"] == _counts(items)
    res = c.get("/api/search", params={"text": "a red circle", "k": 5}).json()
    assert [x["id"] for x in res["results"]] == [x.id for x in r.search(text="a red circle", k=5)]
    first = res["results"][0]
    assert first["modality"] == "image" and first["thumbnail"].startswith("/api/thumbnail?id=")
    thumb = c.get(first["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert c.get("/api/item", params={"id": first["id"]}).json()["hash"]
    up = c.post("/api/search/image", files={"file": ("q.png", _png(), "image/png")}, data={"k": "3"}).json()
    assert len(up["results"]) == 3 and all(x["modality"] == "text" for x in up["results"])
    # each result says what it is: id, text (an image's own caption), label and labels
    caps = _captions(items)
    for x in res["results"] + up["results"]:
        assert (x["text"], x["label"], x["labels"]) == (caps[x["id"]][0], caps[x["id"]][1], [caps[x["id"]][1]])
    one = c.get("/api/item", params={"id": first["id"]}).json()
    assert (one["text"], one["labels"]) == (first["text"], first["labels"])
    assert c.get("/api/item", params={"id": first["id"], "modality": "text"}).json()["text"] == first["text"]
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


def _counts(items) -> dict[str, int]:
    return {m: sum(it.modality == m for it in items) for m in ("image", "text")}


def _captions(items):
    """id → (caption, label) of the collection's texts."""
    return {it.id: (it.text, it.label) for it in items if it.modality == "text"}


def test_api_info_says_what_is_indexed_and_the_favicon_is_an_image(app_and_items):
    from fastapi.testclient import TestClient
    from PIL import Image

    from gcrdp.search.server import create_app

    app, r, items = app_and_items
    c = TestClient(app, base_url=LOCAL)
    info = c.get("/api/info").json()
    assert info["counts"] == _counts(items)
    assert info["model"]["method"] == "gap-infonce" and info["model"]["checkpoint"] == r.info["checkpoint"]
    assert info["model"]["name"] == "ckpt"  # the run's folder (its checkpoint is ckpt/final)
    settings = r.model.encoder_settings  # the training run's encoders
    assert info["model"]["encoders"] == f"{settings.image_encoder} + {settings.text_encoder}" == "efficientnet-lite0 + minilm-l6"
    captions = {t for t, _ in _captions(items).values()}
    # 6 distinct examples (the collection has 20 distinct short captions), taken from over the
    # whole collection: they name at least 3 of its 5 colours, not only the first rows' one
    assert len(info["examples"]) == 6 and len(set(info["examples"])) == 6
    assert set(info["examples"]) <= captions
    colours = {t.split()[1] for t in info["examples"]}
    assert len(colours) >= 3, info["examples"]
    assert c.get("/api/info").json() == info  # made once
    hidden = TestClient(create_app(r, expose_paths=False), base_url=LOCAL).get("/api/info").json()
    assert "/" not in hidden["index"] and hidden["model"]["checkpoint"] is None and hidden["model"]["name"] == "ckpt"
    icon = c.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/")
    with Image.open(io.BytesIO(icon.content)) as im:
        assert im.format == "ICO" and im.size[0] >= 16
    assert "/favicon.ico" in c.get("/").text
    assert "/favicon.ico" not in c.get("/openapi.json").json()["paths"]


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


@pytest.mark.slow  # a headless Chromium
def test_the_page_in_a_real_browser(live_server, app_and_items, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _, r, items = app_and_items
    browser = _chrome()
    try:
        browser.get(live_server + "/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#examples button.example"))
        box = browser.find_element(By.ID, "q")
        box.send_keys("a red circle\n")  # type a query: a grid of image results
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result img")) >= 5)
        hits = r.search(text="a red circle", k=12)
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert [c.get_attribute("data-id") for c in cards] == [h.id for h in hits]
        for card, h in zip(cards, hits):  # each card: the image, its caption, its id, its labels
            assert card.find_element(By.TAG_NAME, "img").get_attribute("alt") == h.text
            assert card.find_element(By.CSS_SELECTOR, ".text").text == h.text
            assert card.find_element(By.CSS_SELECTOR, ".id").text == h.id
            assert [x.text for x in card.find_elements(By.CSS_SELECTOR, ".label")] == list(h.labels)
        assert "12 results for" in browser.find_element(By.ID, "status").text
        wait.until(
            lambda b: all(
                b.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im)
                for im in b.find_elements(By.CSS_SELECTOR, "#results img")
            )
        )
        SHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SHOTS / "search-text.png"))
        # switching to image -> texts clears the text query's results (and its "12 results")
        browser.find_element(By.ID, "mode-image").click()
        assert not browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert "results" not in browser.find_element(By.ID, "status").text
        # upload an image: its preview, and text results with their ids and labels
        query = tmp_path / "query.png"
        query.write_bytes(_png())
        browser.find_element(By.ID, "file").send_keys(str(query))
        wait.until(
            lambda b: b.find_elements(By.CSS_SELECTOR, "#results .result") and not b.find_elements(By.CSS_SELECTOR, "#results .result img")
        )
        assert "results" in browser.find_element(By.ID, "status").text
        preview = browser.find_element(By.ID, "preview")
        assert preview.is_displayed() and preview.get_attribute("src").startswith("blob:")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", preview) == 48
        caps = _captions(items)
        for card in browser.find_elements(By.CSS_SELECTOR, "#results .result"):
            cid = card.get_attribute("data-id")
            assert card.find_element(By.CSS_SELECTOR, ".text").text == caps[cid][0]
            assert card.find_element(By.CSS_SELECTOR, ".id").text == cid
            assert [x.text for x in card.find_elements(By.CSS_SELECTOR, ".label")] == [caps[cid][1]]
        browser.save_screenshot(str(SHOTS / "search-image.png"))
        # a bad upload: an error on the page, no results, no preview
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Error"))
        assert "upload an image" in browser.find_element(By.ID, "status").text
        assert not browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert not browser.find_element(By.ID, "preview").is_displayed()
        browser.save_screenshot(str(SHOTS / "search-error.png"))
    finally:
        browser.quit()


def test_the_page_shows_what_is_indexed_and_its_examples_search(live_server, app_and_items):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, r, items = app_and_items
    browser = _chrome()
    try:
        browser.get(live_server + "/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#examples button.example"))
        summary = browser.find_element(By.ID, "summary").text
        n = _counts(items)
        assert f"{n['image']} images, {n['text']} texts" in summary and "gap-infonce" in summary and "checkpoint ckpt" in summary
        # the favicon: linked from the page, served as an image
        assert browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href").endswith("/favicon.ico")
        got = browser.execute_script("return fetch('/favicon.ico').then((r) => r.status + ' ' + r.headers.get('content-type'))")
        assert got.startswith("200 image/")
        SHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SHOTS / "search-start.png"))
        # an example is one of the collection's texts; clicking it searches it, from either mode
        browser.find_element(By.ID, "mode-image").click()
        example = browser.find_elements(By.CSS_SELECTOR, "#examples button.example")[1]
        text = example.text
        assert text in {t for t, _ in _captions(items).values()}
        example.click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result img")) == 12)
        assert browser.find_element(By.ID, "q").get_attribute("value") == text and browser.find_element(By.ID, "q").is_displayed()
        assert [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, "#results .result")] == [
            h.id for h in r.search(text=text, k=12)
        ]
        assert text in browser.find_element(By.ID, "status").text
        # a mode switch while a search is on its way: its answer is not shown
        browser.find_element(By.ID, "q").send_keys("\n")
        browser.find_element(By.ID, "mode-image").click()
        time.sleep(1.5)
        assert not browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert "results" not in browser.find_element(By.ID, "status").text
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
    c = TestClient(create_app(r, expose_paths=False), base_url=LOCAL)
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
