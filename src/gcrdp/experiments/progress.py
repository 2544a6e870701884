"""What a user sees while a run works: a bar over the fits on stderr (tqdm; off when stderr is
not a terminal), whose status line follows each fit in progress epoch by epoch — epoch, loss,
validation mAP, best so far, and the least time left before early stopping can end it — and one
line per finished fit (printed also when stderr is not a terminal, so that logs keep them). In a
log, a fit that runs longer than 30 s also prints its state every 30 s.

The training loop reports epochs through :func:`gcrdp.training.loop.observe_epochs`; this module
only words them.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..utils.progress import LOG_EVERY_SECONDS


def fmt_seconds(s: float | None) -> str:
    """``"42s"``, ``"3m05s"``, ``"1h02m"``; ``"?"`` for ``None``."""
    if s is None:
        return "?"
    s = int(round(max(s, 0.0)))
    if s < 60:
        return f"{s}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def epoch_status(info: dict[str, Any], mean_epoch_seconds: float | None = None) -> str:
    """One fit's state after an epoch, e.g. ``epoch 12/100 loss 2.314 val 31.2 (best 32.0 @9)
    ≥18s left``. The time is a lower bound: the epochs until patience runs out if validation
    does not improve again (or until ``max_epochs``), at the mean epoch time."""
    e, m = info.get("epoch", 0), info.get("max_epochs")
    parts = [f"epoch {e}/{m}" if m else f"epoch {e}"]
    if info.get("loss") is not None:
        parts.append(f"loss {info['loss']:.3f}")
    if info.get("val_map") is not None:
        parts.append(f"val {100 * info['val_map']:.1f}")
    if info.get("best_val_map") is not None:
        parts.append(f"(best {100 * info['best_val_map']:.1f} @{info.get('best_epoch')})")
    sec = mean_epoch_seconds if mean_epoch_seconds is not None else info.get("epoch_seconds")
    if sec and m and not info.get("stopped"):
        left = m - e
        if info.get("patience"):
            left = min(left, info["patience"] - info.get("bad_epochs", 0))
        parts.append(f"≥{fmt_seconds(left * sec)} left")
    return " ".join(parts)


def record_line(rec: dict[str, Any], done: int, total: int) -> str:
    """The line printed when a fit ends."""
    t, fit = rec["test"], rec["fit"]
    val = fit.get("best_val_map")
    v = f"val {100 * val:.1f}, " if val is not None else ""
    return (
        f"[{done}/{total}] {rec['method']} shots={rec['shots']} seed={rec['seed']}: "
        f"I2T {100 * t['i2t']['map']:.1f}  T2I {100 * t['t2i']['map']:.1f}  "
        f"({v}{fit['epochs']} epochs, {fit['seconds']:.1f} s)"
    )


class FitProgress:
    """The display of a run's fits (see the module docstring). ``enabled=False`` shows and
    prints nothing. ``initial`` fits were already done (a resumed run)."""

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, desc: str = "fits") -> None:
        self.total, self.done, self.enabled = total, initial, enabled
        self._active: dict[str, tuple[dict[str, Any], list[float]]] = {}
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            # disable=None: no bar when stderr is not a terminal (the finished-fit lines still print)
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="fit",
                file=sys.stderr,
                dynamic_ncols=True,
                disable=None,
                leave=False,
                bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}",
            )
        self._last_refresh = 0.0
        self._log_start: dict[str, float] = {}
        self._log_last: dict[str, float] = {}

    @property
    def bar_shown(self) -> bool:
        return self._bar is not None and not self._bar.disable

    def epoch(self, label: str, info: dict[str, Any]) -> None:
        """A fit (``label``, e.g. ``gcrdp 5-shot seed 1``) reported an epoch. Without a bar (stderr
        is not a terminal: a log), a line of the fit's state at most every ``LOG_EVERY_SECONDS``,
        so that a long fit shows it is alive."""
        if not self.enabled:
            return
        if not self.bar_shown:
            now = time.monotonic()
            started = self._log_start.setdefault(label, now)
            if info.get("start"):
                self._log_start[label] = self._log_last[label] = now
                return
            if now - self._log_last.get(label, started) >= LOG_EVERY_SECONDS and not info.get("stopped"):
                self._log_last[label] = now
                print(f"  {label}: {epoch_status(info)}", file=sys.stderr, flush=True)
            return
        prev, times = self._active.get(label, ({}, []))
        if info.get("start"):
            times = []
        elif info.get("epoch_seconds") is not None:
            times = times + [float(info["epoch_seconds"])]
        self._active[label] = (info, times)
        now = time.monotonic()
        if now - self._last_refresh > 0.2 or info.get("stopped"):
            self._last_refresh = now
            status = " | ".join(f"{lab}: {epoch_status(i, sum(ts) / len(ts) if ts else None)}" for lab, (i, ts) in self._active.items())
            self._bar.set_postfix_str(status, refresh=True)  # type: ignore[union-attr]

    def note(self, line: str) -> None:
        """Print a line above the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def finished(self, rec: dict[str, Any], label: str | None = None) -> None:
        """A fit ended with record ``rec``: print its line, advance the bar."""
        if not self.enabled:
            return
        self.done += 1
        if label is not None:
            self._active.pop(label, None)
        line = record_line(rec, self.done, self.total)
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
            self._bar.update(1)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
