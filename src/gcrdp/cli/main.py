"""The ``gcrdp`` command line: thin commands over the library.

``main(argv) -> int`` never raises for a user's mistake: it prints one paragraph to stderr and
returns 2. Library code never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..errors import GcrdpError
from . import data_cmds, results_cmds, run_cmds, search_cmds
from .common import EXIT_INTERRUPTED, EXIT_USER_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcrdp", description="Few-shot cross-modal retrieval (GCRDP, baselines, benchmark protocol).")
    parser.add_argument("--version", action="version", version=f"gcrdp {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for module in (run_cmds, data_cmds, results_cmds, search_cmds):
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(args.command)
            return int(args.func(args) or 0)
    except GcrdpError as exc:
        print(f"gcrdp {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gcrdp: interrupted; nothing partial was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        import os

        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0


def _show_warning(command: str) -> Callable[..., None]:
    """Warnings the library raises for the user (``UserWarning``: e.g. a dataset subset that is not
    the published benchmark) print as ``gcrdp CMD: warning: …``, without a source line; others
    as Python shows them."""
    default = warnings.showwarning

    def show(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None
    ) -> None:
        if issubclass(category, UserWarning) and not issubclass(category, (DeprecationWarning, FutureWarning)):
            print(f"gcrdp {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def entrypoint() -> None:  # console script
    sys.exit(main())
