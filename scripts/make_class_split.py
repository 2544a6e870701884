"""Regenerate a shipped seen/unseen class split file, deterministically.

Usage (from the repository root)::

    PYTHONPATH=src python scripts/make_class_split.py twemoji --seed 0 --version 1

writes ``src/gcrdp/data/splits/twemoji.json`` (``--out`` to write elsewhere, ``--check`` to
only compare with the existing file and exit 1 when it differs).

The classes are those of ``gcrdp.data.load_dataset(<dataset>)`` with its default options
(Twemoji: sub-categories with >= 10 emoji). The split is
:func:`gcrdp.data.splits.generate_class_split` with ``method="ordered"`` (``--method``): classes
sorted by ``sha256("<seed>\\0<class name>")``, the first ``n // 2`` unseen, the rest seen — a seeded
shuffle that depends on nothing but the seed and the class names (no NumPy RNG), so the same
inputs give the same file on any machine. The seed, method and package versions are recorded
in the file. Bump ``--version`` whenever the content changes: results name the version.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from gcrdp.data import load_dataset
from gcrdp.data.splits import class_split_document, generate_class_split

NOTES = {
    "twemoji": (
        "Seen/unseen split of the Twemoji sub-categories (classes with >= 10 emoji, flags and "
        "components excluded), half/half by class name. Images: Twemoji, CC-BY 4.0."
    ),
}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "gcrdp" / "data" / "splits"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="registered dataset name, e.g. twemoji")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", default="1", help="version string stored in the file")
    p.add_argument("--out", type=Path, default=None, help="output file (default: shipped path)")
    p.add_argument("--check", action="store_true", help="compare with the existing file only")
    p.add_argument(
        "--method",
        choices=["ordered", "hash"],
        default="ordered",
        help="ordered (default: exact halves, the rule of the shipped files) or hash (stable per-class draw, the default for users' data)",
    )
    args = p.parse_args(argv)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a stale shipped split is what we are replacing
        ds = load_dataset(args.dataset)
    split = generate_class_split(ds.classes, dataset=args.dataset, seed=args.seed, version=args.version, method=args.method)
    extra: dict = {"n_classes": len(ds.classes)}
    if "min_class_size" in ds.meta:
        extra["min_class_size"] = ds.meta["min_class_size"]
    if "versions" in ds.meta:
        extra["source_versions"] = ds.meta["versions"]
    doc = class_split_document(split, seed=args.seed, note=NOTES.get(args.dataset, ""), method=args.method, **extra)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    out = args.out or DEFAULT_OUT / f"{args.dataset}.json"
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'DIFFERS'}")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {len(split.seen)} seen, {len(split.unseen)} unseen classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
