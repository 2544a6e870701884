"""Losses, one per file; each is a pure function on tensors."""

from .infonce import symmetric_infonce

__all__ = ["symmetric_infonce"]
