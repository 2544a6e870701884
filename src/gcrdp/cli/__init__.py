"""Command-line interface (``gcrdp``)."""

from .main import main

__all__ = ["main"]
