"""The ``gcrdp`` command line: thin commands over the library.

``main(argv) -> int`` never raises for a user's mistake: it prints one paragraph to stderr and
returns 2. Library code never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..errors import GcrdpError
from ..utils.suggest import nearest_option
from . import data_cmds, results_cmds, run_cmds, search_cmds
from .common import EXIT_INTERRUPTED, EXIT_USER_ERROR, did_you_mean

# Nothing here imports the library's heavy parts (torch, transformers, faiss, fastapi): each
# command imports what it needs when it runs, so --help and argument errors answer at once
# (tests/cli/test_cli_fast.py).


class _Commands(argparse._SubParsersAction):
    """The subcommands; a command added with ``help=`` only gets it as its ``--help``
    description too, and :attr:`helps` keeps each one-line help (``gcrdp`` alone lists them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helps: dict[str, str] = {}

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if kwargs.get("help") and not kwargs.get("description"):
            text = str(kwargs["help"])
            kwargs["description"] = text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
        self.helps[name] = str(kwargs.get("help") or "")
        return super().add_parser(name, **kwargs)


class GcrdpParser(argparse.ArgumentParser):
    """The top-level parser; :attr:`commands` maps each command to its parser."""

    commands: _Commands


def build_parser() -> GcrdpParser:
    parser = GcrdpParser(prog="gcrdp", description="Few-shot cross-modal retrieval (GCRDP, baselines, benchmark protocol).")
    parser.add_argument("--version", action="version", version=f"gcrdp {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", action=_Commands)
    assert isinstance(sub, _Commands)
    parser.commands = sub

    for module in (run_cmds, data_cmds, results_cmds, search_cmds):
        module.add_parsers(sub)
    return parser


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(s for action in parser._actions for s in action.option_strings if s.startswith("--"))


def _likeness(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.replace("_", "-"), b.replace("_", "-")).ratio()


def _all_method_options() -> frozenset[str]:
    """Every option key of every registered method (the generated table: no method is imported)."""
    from .method_options import METHOD_OPTIONS

    return frozenset(k for keys in METHOD_OPTIONS.values() for k in keys)


def unrecognized_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """The error for arguments ``parser`` does not take: each unknown flag with the nearest
    real one, and a method hyper-parameter given as a flag (``--epochs 5``) with its ``--option``
    form when the command has ``--option``."""
    lines = [f"unrecognized arguments: {' '.join(extras)}"]
    flags = _flags(parser)
    takes_options = "--option" in flags
    all_options = _all_method_options() if takes_options and any(t.startswith("--") for t in extras) else frozenset()
    for i, token in enumerate(extras):
        if not token.startswith("--"):
            continue
        flag, eq, value = token.partition("=")
        if not eq:
            value = extras[i + 1] if i + 1 < len(extras) and not extras[i + 1].startswith("-") else "VALUE"
        near_flag = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
        key = nearest_option(flag, all_options) if takes_options else None
        if key is not None and (not near_flag or _likeness(flag, "--" + key) >= _likeness(flag, near_flag[0])):
            lines.append(
                f"{flag}: method hyper-parameters are not flags; pass --option {key}={value} (every method) "
                f"or --option METHOD.{key}={value} (one of them)."
            )
        elif near_flag:
            lines.append(f"{flag}: did you mean {near_flag[0]}?")
    prog = parser.prog
    lines.append(f"'{prog} --help' lists its flags.")
    return "\n".join(lines)


def _no_command(parser: GcrdpParser) -> int:
    helps = parser.commands.helps
    width = max(map(len, helps))
    print(parser.format_usage().rstrip(), file=sys.stderr)
    print("gcrdp: error: a command is needed:\n", file=sys.stderr)
    for name, text in helps.items():
        print(f"  {name:<{width}}  {text}", file=sys.stderr)
    print("\n'gcrdp COMMAND --help' describes one; 'gcrdp --help' shows the options.", file=sys.stderr)
    return EXIT_USER_ERROR


def _first_positional(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (the top-level flags take no value)."""
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        command = _first_positional(argv)
        if command is not None and command not in parser.commands.choices:
            parser.error(
                f"unknown command {command!r}{did_you_mean(command, list(parser.commands.choices))}. "
                f"Commands: {', '.join(parser.commands.choices)} ('gcrdp --help' describes them)."
            )
        args, extras = parser.parse_known_args(argv)
        if extras:  # said by the command they were given to, with its usage
            target = parser.commands.choices[args.command] if args.command else parser
            target.error(unrecognized_message(target, extras))
    except SystemExit as exc:  # argparse: usage errors exit 2, --help/--version exit 0
        return int(exc.code or 0)
    if args.command is None:
        return _no_command(parser)
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
        print("gcrdp: interrupted; nothing partial was published (files, indexes and checkpoints are whole or untouched).", file=sys.stderr)
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
