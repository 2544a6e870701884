"""Progress that suits where it goes: a tqdm bar on a terminal, and in a log (stderr redirected
to a file, a CI job, ``nohup``) a plain line now and then instead of a bar that redraws itself
with carriage returns — dozens of ``\\r`` "lines" per bar in a log file.

:func:`progress_bar` returns either; both take ``update(n)``, ``set_postfix_str``, ``write``,
``close`` and work as context managers. The log form prints a line when the work starts to be
slow (after :data:`LOG_EVERY_SECONDS`), then at most once every :data:`LOG_EVERY_SECONDS`, and a
last line at the end when it printed any before (a short job writes nothing but its results).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

#: Seconds between two progress lines in a log.
LOG_EVERY_SECONDS = 30.0


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _fmt_seconds(s: float) -> str:
    s = int(round(max(s, 0.0)))
    if s < 60:
        return f"{s}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LogProgress:
    """A progress report for logs: ``desc: n/total (p%), rate unit/s, ~left`` every
    ``every`` seconds (see the module docstring)."""

    disable = False

    def __init__(
        self, total: int | None, *, desc: str = "", unit: str = "it", every: float = LOG_EVERY_SECONDS, file: TextIO | None = None
    ):
        self.total, self.desc, self.unit, self.every = total, desc, unit, float(every)
        self.n = 0
        self.file = file
        self._start = time.monotonic()
        self._last = self._start
        self._printed = False
        self._postfix = ""
        self._closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {done}" if self.desc else done, f"{rate:.1f} {self.unit}/s"]
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{_fmt_seconds((self.total - self.n) / rate)} left")
        elif self.total and self.n >= self.total:
            parts.append(f"done in {_fmt_seconds(elapsed)}")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def _print(self, text: str) -> None:
        print(text, file=self.file if self.file is not None else sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._printed = True
            self._print(self._line())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = str(s)

    def write(self, s: str, file: TextIO | None = None) -> None:
        print(s, file=file if file is not None else (self.file if self.file is not None else sys.stderr), flush=True)

    def refresh(self) -> None:
        return None

    def close(self) -> None:
        if not self._closed and self._printed:
            self._print(self._line())
        self._closed = True

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int | None, *, desc: str = "", unit: str = "it", enabled: bool = True, **tqdm_options: Any) -> Any:
    """A tqdm bar on stderr when it is a terminal, a :class:`LogProgress` when it is not, a
    disabled tqdm bar when not ``enabled``. ``GCRDP_PROGRESS=bar`` or ``=log`` forces one form."""
    forced = os.environ.get("GCRDP_PROGRESS", "").strip().lower()
    if enabled and (forced == "log" or (forced != "bar" and not is_terminal())):
        return LogProgress(total, desc=desc, unit=unit)
    from tqdm.auto import tqdm

    tqdm_options.setdefault("file", sys.stderr)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, **tqdm_options)
