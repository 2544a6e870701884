"""Epoch observers (:func:`gcrdp.training.loop.observe_epochs`): a failing one is skipped, and
only that one — not a later observer that happens to get the same ``id()``."""

from __future__ import annotations

import logging

from gcrdp.training import loop
from gcrdp.training.loop import _notify, observe_epochs


def _broken(info):
    raise BrokenPipeError("stderr closed")


def test_a_failing_observer_is_logged_once_then_skipped(caplog):
    calls = []

    def broken(info):
        calls.append(info["epoch"])
        raise BrokenPipeError("stderr closed")

    seen = []
    with caplog.at_level(logging.WARNING), observe_epochs(broken), observe_epochs(seen.append):
        for epoch in range(3):
            _notify({"epoch": epoch})
    assert calls == [0]
    assert [i["epoch"] for i in seen] == [0, 1, 2]
    assert caplog.text.count("progress display failed") == 1


def test_a_new_observer_with_a_dead_failing_ones_id_is_still_called(monkeypatch):
    # Force the id reuse Python does for dead objects: every object gets the same id. Bookkeeping
    # keyed by id() would take the new observer for the failed one and skip it.
    monkeypatch.setattr(loop, "id", lambda obj: 0, raising=False)
    with observe_epochs(_broken):
        _notify({"epoch": 0})
    seen = []
    with observe_epochs(seen.append):
        _notify({"epoch": 1})
    assert seen == [{"epoch": 1}]


def test_observers_of_enclosing_blocks_are_called_and_leave_with_their_block():
    outer, inner = [], []
    with observe_epochs(outer.append):
        with observe_epochs(None), observe_epochs(inner.append):
            _notify({"epoch": 1})
        _notify({"epoch": 2})
    _notify({"epoch": 3})
    assert [i["epoch"] for i in outer] == [1, 2]
    assert [i["epoch"] for i in inner] == [1]
