"""Wall time of the command line's quick answers (issue 20, item 4): ``gcrdp --help``, ``gcrdp run
--help``, a mistyped flag and an unknown ``--option``, each in a fresh ``python -m gcrdp``
subprocess (what a user waits for: interpreter start, imports, parsing, the message), repeated,
median and range. With ``--tree DIR`` (repeatable) the same commands run against the ``src/`` of
other checkouts too, e.g. a ``git worktree`` of the commit before a change, in the same run:

    git worktree add --detach /tmp/gcrdp-before <commit>
    python benchmarks/bench_cli_startup.py --tree before=/tmp/gcrdp-before --tree after=. --repeats 7

Prints a Markdown table (seconds) and the load average; copy the figures into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS: list[tuple[str, list[str]]] = [
    ("gcrdp --help", ["--help"]),
    ("gcrdp run --help", ["run", "--help"]),
    ("gcrdp run --epohcs 3 (mistyped flag)", ["run", "--epohcs", "3"]),
    ("gcrdp run --epochs 5 (a method option as a flag)", ["run", "--epochs", "5"]),
    (
        "gcrdp run --methods gap-infonce --option gap-infonce.epochs=3 (unknown option)",
        ["run", "--methods", "gap-infonce", "--option", "gap-infonce.epochs=3"],
    ),
    ("gcrdp run --methods gcrpd (unknown method)", ["run", "--methods", "gcrpd"]),
    ("gcrdp run --dataset twemjoi (unknown dataset)", ["run", "--dataset", "twemjoi"]),
    ("gcrdp run --shots -1 (bad value)", ["run", "--shots", "-1"]),
]


def time_command(src: Path, argv: list[str], out_dir: Path) -> tuple[float, int, str]:
    """(seconds, exit code, last stderr line) of ``python -m gcrdp ARGV`` importing ``src`` (a
    ``run`` writes, if it gets that far, under ``out_dir``)."""
    env = {**os.environ, "PYTHONPATH": str(src)}  # the user's feature cache: the run before a change loads the features
    if argv[0] == "run" and "--help" not in argv:
        argv = [*argv, "--output-dir", str(out_dir / "run"), "-q"]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gcrdp", *argv], env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    lines = done.stderr.strip().splitlines()
    return seconds, done.returncode, lines[-1] if lines else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", default=None, metavar="LABEL=DIR", help="a checkout to measure (default: after=.)")
    ap.add_argument("--repeats", type=int, default=7, help="runs of each command per tree (default 7)")
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.tree or ["after=."]]
    for label, root in trees:
        check = subprocess.run(
            [sys.executable, "-c", "import gcrdp; print(gcrdp.__file__)"],
            env={**os.environ, "PYTHONPATH": str(Path(root) / "src")},
            capture_output=True,
            text=True,
            check=True,
        )
        where = Path(check.stdout.strip()).resolve()
        if not where.is_relative_to((Path(root) / "src").resolve()):
            raise SystemExit(f"tree {label}: 'import gcrdp' finds {where}, not {root}/src")
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in COMMANDS:
            row = [name]
            for label, root in trees:
                time_command(Path(root) / "src", argv, Path(tmp))  # warms the file cache and the .pyc files
                times, codes, last = [], set(), ""
                for _ in range(args.repeats):
                    seconds, code, last = time_command(Path(root) / "src", argv, Path(tmp))
                    times.append(seconds)
                    codes.add(code)
                row.append(f"{statistics.median(times):.2f} ({min(times):.2f}–{max(times):.2f}), exit {'/'.join(map(str, sorted(codes)))}")
                print(f"[{label}] {name}: {statistics.median(times):.2f} s; {last[:160]}", file=sys.stderr)
            rows.append(row)
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print()
    print("| command | " + " | ".join(f"{label}: median s (min–max)" for label, _ in trees) + " |")
    print("|---|" + "---|" * len(trees))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
