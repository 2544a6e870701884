"""Method options as the library and the command line both see them, without importing the
methods (torch): nested options as dotted keys, and the one wording of each option error —
raised by :func:`gcrdp.methods.presets.check_entry` and, before torch is imported, by the
command line (:mod:`gcrdp.cli.common`, from the generated :mod:`gcrdp.cli.method_options`)."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from .suggest import nearest_option


def flatten_options(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"generator": {"lr": 1e-3}}`` → ``{"generator.lr": 1e-3}``: nested options as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            out.update(flatten_options(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unknown_method_message(name: str, names: Collection[str]) -> str:
    """The error for a method name that is not registered: the nearest name and every one."""
    known = sorted(names)
    near = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"Unknown method {name!r}{hint}. Known methods: {', '.join(known)}."


def unlabelled_entry_message(entry: str, presets: Collection[str]) -> str:
    """The error for a ``NAME@TAG`` entry that is neither a preset nor given options."""
    base = entry.split("@", 1)[0]
    return (
        f"Method entry {entry!r} is neither a preset nor given options, so it would run plain "
        f"{base!r} under another name. Presets: {', '.join(sorted(presets))}. To label a variant, "
        f"give it options: --option {entry}.KEY=VALUE (or method_options in a config)."
    )


def unknown_option_message(entry: str, unknown: list[str], accepted: list[str]) -> str:
    """The error for options ``unknown`` given to method entry ``entry``: the nearest accepted
    key of each (``epochs`` → ``max_epochs``) and every accepted key."""
    near = {u: n for u in unknown if (n := nearest_option(u, accepted))}
    hint = ", ".join(f"{n!r}" + (f" for {u!r}" if len(unknown) > 1 else "") for u, n in near.items())
    return (
        f"Method {entry!r} has no option(s) {', '.join(map(repr, unknown))}"
        + (f" (did you mean {hint}?)" if hint else "")
        + f". Its options: {', '.join(accepted)}."
    )
