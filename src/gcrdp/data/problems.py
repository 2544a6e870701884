"""Collecting per-sample problems of a loader, and ``skip_bad``.

A reader checks every sample and adds each problem to a :class:`Problems` (where it is — a
line, a file —, which sample, and why), which it returns in its
:class:`~gcrdp.data.formats.build.RawDataset`. When the dataset is finished,
:meth:`Problems.resolve`:

* without ``skip_bad``: raises one :class:`~gcrdp.errors.DataError` listing the first
  problems and a count, so the user fixes them all at once;
* with ``skip_bad=True``: returns the ids of the bad samples, which the loader leaves out; the
  list goes to ``Dataset.meta["skipped"]`` (``gcrdp run``/``inspect`` write it to a report
  file).

Problems that are not about single samples (a missing list file, feature arrays whose lengths
disagree) are raised at once and cannot be skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError

MAX_SHOWN = 10


@dataclass(frozen=True)
class Problem:
    """One bad sample: ``where`` (e.g. ``"line 12"`` or a file path), the sample id (``None``
    when the row is too broken to have one) and the reason."""

    where: str
    sample: str | None
    reason: str

    def __str__(self) -> str:
        who = f" (sample {self.sample!r})" if self.sample is not None and self.sample not in self.where else ""
        return f"{self.where}{who}: {self.reason}"

    def to_dict(self) -> dict:
        return {"where": self.where, "sample": self.sample, "reason": self.reason}


class Problems:
    """The problems found in one source (``source`` names it in messages)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Problem] = []
        self._groups: list[tuple[str, list[Problem]]] = []
        self._only_when_failing: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, where: str, reason: str, sample: str | None = None) -> None:
        self.items.append(Problem(str(where), sample, reason))

    def add_unless_skipping(self, where: str, reason: str) -> None:
        """A problem that is not about one sample and that ``skip_bad`` leaves out of the
        problems altogether (e.g. an empty class folder: nothing to skip, the reader lists it in
        its metadata)."""
        problem = Problem(str(where), None, reason)
        self.items.append(problem)
        self._only_when_failing.add(id(problem))

    def add_group(self, summary: str, problems: list[Problem]) -> None:
        """Many samples with the same problem (e.g. missing image files): they are skipped one
        by one, but reported as one ``summary`` with the first few of them."""
        if problems:
            self._groups.append((summary, problems))
            self.items.extend(problems)

    @property
    def bad_samples(self) -> set[str]:
        return {p.sample for p in self.items if p.sample is not None}

    def message(self, n_total: int | None = None, hint: str = "") -> str:
        grouped = {id(p) for _, ps in self._groups for p in ps}
        lines = [str(p) for p in self.items if id(p) not in grouped]
        for summary, ps in self._groups:
            shown = "; ".join(str(p) for p in ps[:5])
            more = f" (and {len(ps) - 5} more)" if len(ps) > 5 else ""
            lines.append(f"{summary}: {len(ps)} sample(s): {shown}{more}")
        body = "\n  ".join(lines[:MAX_SHOWN])
        more = f"\n  (and {len(lines) - MAX_SHOWN} more)" if len(lines) > MAX_SHOWN else ""
        of = f" in {n_total} samples" if n_total is not None else ""
        tail = f"\n{hint}" if hint else ""
        return (
            f"{self.source} has {len(self.items)} problem(s){of}:\n  {body}{more}{tail}\n"
            "Fix them, or pass --skip-bad (skip_bad=True) to leave these samples out and list "
            "them in a report file."
        )

    def resolve(self, skip_bad: bool, n_total: int | None = None, hint: str = "") -> set[str]:
        """Raise :class:`DataError` listing the problems, or (``skip_bad``) return the ids of
        the samples to leave out. A problem without a sample id cannot be skipped."""
        if skip_bad and self._only_when_failing:
            self.items = [p for p in self.items if id(p) not in self._only_when_failing]
            self._only_when_failing = set()
        if not self.items:
            return set()
        if not skip_bad or any(p.sample is None for p in self.items):
            raise DataError(self.message(n_total, hint))
        return self.bad_samples

    def report(self) -> list[dict]:
        """JSON-ready list for ``Dataset.meta["skipped"]``."""
        return [p.to_dict() for p in self.items]

    def skip_report(self, bad: set[str]) -> list[dict]:
        """``Dataset.meta["skipped"]`` once :meth:`resolve` returned ``bad``."""
        return self.report() if bad else []

    def n_skipped(self, bad: set[str]) -> int:
        """``Dataset.meta["n_skipped"]`` once :meth:`resolve` returned ``bad``."""
        return len(bad)
