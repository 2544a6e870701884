"""A screenshot of the search page (`gcrdp serve`) in headless Chromium, for the docs.

    python scripts/screenshot_page.py runs/demo-index docs/search-page.png --query "a smiling cat"

Starts the server on a free loopback port, types the query, waits for the thumbnails, saves
the screenshot. Needs Debian's chromium and chromium-driver and selenium.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--query", default="a smiling cat")
    ap.add_argument("--k", type=int, default=12)
    args = ap.parse_args(argv)

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from gcrdp.search import Retriever
    from gcrdp.search.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Retriever.load(args.index)), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,820"):
        opts.add_argument(a)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        # what is indexed and the example queries, before the search
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "summary").text.startswith("Indexed:"))
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys(str(args.k))
        browser.find_element(By.ID, "q").send_keys(args.query + "\n")
        WebDriverWait(browser, 30).until(
            lambda b: (
                len(b.find_elements(By.CSS_SELECTOR, "#results img")) >= 1
                and all(
                    b.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im)
                    for im in b.find_elements(By.CSS_SELECTOR, "#results img")
                )
            )
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(args.out))
    finally:
        browser.quit()
        server.should_exit = True
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
