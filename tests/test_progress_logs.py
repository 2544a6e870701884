"""Progress in a log (issue 20, item 8): no carriage-return bars when stderr is not a terminal,
a line every 30 s instead; a long fit says it is alive; a terminal still gets tqdm bars."""

from __future__ import annotations

from gcrdp.experiments import progress as fit_progress
from gcrdp.experiments.progress import FitProgress
from gcrdp.utils import progress as progress_mod
from gcrdp.utils.progress import LogProgress, progress_bar
from tests.encoders.fakes import BatchImageEncoder, BatchTextEncoder
from tests.encoders.test_extract_scale import _dataset


def test_a_log_gets_plain_lines_and_a_terminal_a_bar(monkeypatch, capsys):
    monkeypatch.delenv("GCRDP_PROGRESS", raising=False)
    bar = progress_bar(10, desc="Encoding images", unit="img")
    assert isinstance(bar, LogProgress)  # pytest's stderr is not a terminal
    monkeypatch.setenv("GCRDP_PROGRESS", "bar")
    assert not isinstance(progress_bar(10, desc="x"), LogProgress)
    monkeypatch.setenv("GCRDP_PROGRESS", "log")
    assert isinstance(progress_bar(10, desc="x"), LogProgress)
    assert not isinstance(progress_bar(10, desc="x", enabled=False), LogProgress)  # disabled: a silent tqdm


def test_log_progress_prints_only_when_slow(capsys):
    quick = LogProgress(100, desc="Encoding texts", unit="text", every=3600)
    with quick:
        for _ in range(100):
            quick.update(1)
    assert capsys.readouterr().err == ""  # a short job writes nothing but its results
    slow = LogProgress(4, desc="Encoding images (efficientnet-lite0)", unit="img", every=0)
    with slow:
        for _ in range(4):
            slow.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5 and "\r" not in "".join(lines)
    assert lines[1].startswith("Encoding images (efficientnet-lite0): 2/4 (50%), ") and "left" in lines[1]
    assert "4/4 (100%)" in lines[-1] and "done in" in lines[-1]


def test_extraction_in_a_log_has_no_carriage_returns(tmp_path, monkeypatch, capsys):
    from gcrdp.encoders import extract_features

    monkeypatch.delenv("GCRDP_PROGRESS", raising=False)
    monkeypatch.setattr(progress_mod.LogProgress, "__init__", _every_zero(progress_mod.LogProgress.__init__))  # a line per update
    ds = _dataset(tmp_path, n=10, duplicates=False)
    extract_features(ds, BatchImageEncoder(), BatchTextEncoder(), cache_dir=tmp_path / "c", batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "Encoding images (batch-image): 10/10 (100%)" in err and "Encoding texts (batch-text): 10/10 (100%)" in err


def _every_zero(init):
    def wrapped(self, total, **kw):
        kw["every"] = 0.0
        init(self, total, **kw)

    return wrapped


def test_a_long_fit_prints_its_state_in_a_log(monkeypatch, capsys):
    monkeypatch.setattr(fit_progress, "LOG_EVERY_SECONDS", 0.0)
    display = FitProgress(1, enabled=True)
    assert not display.bar_shown
    display.epoch("gcrdp 5-shot seed 0", {"start": True, "max_epochs": 100})
    display.epoch("gcrdp 5-shot seed 0", {"epoch": 1, "max_epochs": 100, "loss": 2.5, "val_map": 0.31, "epoch_seconds": 40.0})
    err = capsys.readouterr().err
    assert "gcrdp 5-shot seed 0: epoch 1/100 loss 2.500 val 31.0" in err and "\r" not in err
    quiet = FitProgress(1, enabled=False)
    quiet.epoch("x", {"epoch": 1})
    assert capsys.readouterr().err == ""
