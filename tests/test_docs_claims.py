"""The docs' verdicts agree with their own intervals, and every ± of the results and study
tables says whether it is a standard deviation (SD) or a standard error (SE).

* A table row in which an interval cell ``[lo, hi]`` is followed by a verdict cell (win / loss /
  tie, ahead / behind) must give the verdict that interval gives: an interval holding 0 is a tie.
* A sentence of the form ``… — VERDICT (+m ± s SD|SE over n paired seeds)`` (the standing lines
  ``scripts/make_results_doc.py`` wrote before it wrote a table) is checked against the 95 % t
  interval of its mean, and fails when its ± is not labelled SD or SE.
* In ``docs/results.md`` and ``docs/gcrdp-study.md`` every table with a ± in its body names SD or
  SE in its header or in the lines just around it (its caption).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LABELLED_DOCS = [ROOT / "docs" / "results.md", ROOT / "docs" / "gcrdp-study.md"]

_NUM = r"([+\-−]?\d+(?:\.\d+)?)"
INTERVAL = re.compile(rf"^\[\s*{_NUM}\s*,\s*{_NUM}\s*\]")
WORDS = {
    "win": "win",
    "wins": "win",
    "ahead": "win",
    "loss": "loss",
    "loses": "loss",
    "behind": "loss",
    "tie": "tie",
    "ties": "tie",
    "a tie": "tie",
}
SENTENCE = re.compile(
    r"(?:\*\*)?(wins|loses|ties|a tie|does not win|is ahead|is behind)(?:\*\*)?\s*\("
    rf"{_NUM} ± (\d+(?:\.\d+)?)( SD| SE)? over (\d+) paired seeds"
)
SPREAD_LABEL = re.compile(r"\bSD\b|\bSE\b|standard deviation|standard error")


def _num(s: str) -> float:
    return float(s.replace("−", "-"))


def _word(cell: str) -> str | None:
    return WORDS.get(re.sub(r"[*`_]", "", cell).strip().lower())


def interval_verdict(lo: float, hi: float) -> str:
    return "win" if lo > 0 else "loss" if hi < 0 else "tie"


def table_problems(text: str) -> tuple[list[str], int]:
    """(disagreements, number of verdicts checked) of the table rows of ``text``."""
    problems, checked = [], 0
    for line in text.splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for i, cell in enumerate(cells[:-1]):
            m = INTERVAL.match(cell)
            word = _word(cells[i + 1])
            if not m or word is None:
                continue
            checked += 1
            want = interval_verdict(_num(m.group(1)), _num(m.group(2)))
            if want != word:
                problems.append(f"{cells[i + 1]!r} but the interval {cell} says {want}: {line.strip()}")
    return problems, checked


def sentence_problems(text: str) -> tuple[list[str], int]:
    """(disagreements, number checked) of the verdict sentences of ``text``: ``± s SD`` gives the
    interval m ± t(n − 1)·s/√n, ``± s SE`` m ± t(n − 1)·s; an unlabelled ± is a problem."""
    problems, checked = [], 0
    for m in SENTENCE.finditer(text):
        checked += 1
        said, mean, spread, kind, n = m.group(1), _num(m.group(2)), float(m.group(3)), m.group(4), int(m.group(5))
        if kind is None:
            problems.append(f"± not labelled SD or SE: {m.group(0)}")
            continue
        se = spread / math.sqrt(n) if kind.strip() == "SD" else spread
        h = float(stats.t.ppf(0.975, n - 1)) * se
        want = interval_verdict(round(mean - h, 1), round(mean + h, 1))
        ok = {"wins": {"win"}, "is ahead": {"win"}, "loses": {"loss"}, "is behind": {"loss"}, "ties": {"tie"}}
        ok |= {"a tie": {"tie"}, "does not win": {"tie", "loss"}}
        if want not in ok[said]:
            problems.append(f"{said!r} but the 95 % t interval [{mean - h:+.1f}, {mean + h:+.1f}] says {want}: {m.group(0)}")
    return problems, checked


def unlabelled_tables(text: str) -> list[str]:
    """Tables with a ± in their body whose header and caption (the 3 lines either side) name
    neither SD nor SE."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("|"):
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].lstrip().startswith("|"):
            j += 1
        body = lines[i + 2 : j]
        around = lines[max(0, i - 3) : i + 1] + lines[j : j + 3]
        if any("±" in row for row in body) and not any(SPREAD_LABEL.search(t) for t in around):
            out.append(lines[i].strip())
        i = j
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_verdicts_agree_with_their_intervals(path):
    text = path.read_text(encoding="utf-8")
    problems = table_problems(text)[0] + sentence_problems(text)[0]
    assert not problems, "\n".join(problems)


def test_the_docs_carry_checked_verdicts():
    """Not vacuous: the standing tables of docs/results.md and the verdict table of the study."""
    assert table_problems((ROOT / "docs" / "results.md").read_text(encoding="utf-8"))[1] >= 9
    assert table_problems((ROOT / "docs" / "gcrdp-study.md").read_text(encoding="utf-8"))[1] >= 20


@pytest.mark.parametrize("path", LABELLED_DOCS, ids=lambda p: p.name)
def test_every_plus_minus_in_a_table_is_labelled(path):
    bad = unlabelled_tables(path.read_text(encoding="utf-8"))
    assert not bad, "tables whose ± is neither SD nor SE: " + "; ".join(bad)


def test_catches_the_old_pascal_win():
    """docs/results.md before issue 23 called +0.2 ± 3.9 (SD over 5 seeds) a win."""
    old = "- 0-shot: `gcrdp` 52.5 against the best other method `gap-infonce` 52.3 — **wins** (+0.2 ± 3.9 over 5 paired seeds)."
    assert sentence_problems(old)[0] and "not labelled" in sentence_problems(old)[0][0]
    labelled = old.replace("± 3.9", "± 3.9 SD")
    problems, checked = sentence_problems(labelled)
    assert checked == 1 and "says tie" in problems[0]
    # the same claim as a row of today's standing table
    row = "| 0-shot | 52.5 | `gap-infonce` 52.3 | +0.2 ± 3.9 (5) | [-4.6, +5.0] (4) | **win** |"
    assert table_problems(row) == ([f"'**win**' but the interval [-4.6, +5.0] (4) says tie: {row}"], 1)
    assert table_problems(row.replace("**win**", "tie")) == ([], 1)
    assert table_problems("| x | [+0.1, +0.9] | loss |")[0] and table_problems("| x | [-0.9, -0.1] | behind |") == ([], 1)


def test_catches_an_unlabelled_table():
    text = "Some caption.\n\n| method | 1-shot |\n|---|---|\n| `a` | 24.6 ± 1.9 |\n\nMore text.\n"
    assert unlabelled_tables(text) == ["| method | 1-shot |"]
    assert unlabelled_tables(text.replace("Some caption.", "Mean ± SD over seeds.")) == []
