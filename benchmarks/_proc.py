"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations


def proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (e.g. ``VmRSS``, ``VmHWM``; Linux only)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
