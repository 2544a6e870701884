"""Suggestions for a mistyped name: the one spelling of "did you mean" that the library
(:func:`gcrdp.methods.presets.check_entry`) and the command line (which must answer before the
methods, and torch, are imported) share."""

from __future__ import annotations

import difflib
from collections.abc import Collection

#: Names users give hyper-parameters that the methods call otherwise.
OPTION_ALIASES: dict[str, str] = {"epochs": "max_epochs", "epoch": "max_epochs", "learning_rate": "lr", "bs": "batch_size"}


def nearest_option(name: str, accepted: Collection[str]) -> str | None:
    """The accepted option ``name`` most likely means: itself, an alias (``epochs`` for
    ``max_epochs``) or the closest spelling; None when nothing is close."""
    key = name.strip().lstrip("-").replace("-", "_").lower()
    if key in accepted:
        return key
    if OPTION_ALIASES.get(key) in accepted:
        return OPTION_ALIASES[key]
    close = difflib.get_close_matches(key, sorted(accepted), n=1, cutoff=0.75)
    return close[0] if close else None
