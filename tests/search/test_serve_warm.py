"""`gcrdp serve` loads the query encoders and heads before it answers (issue 20, item 4: the
first query of the page took 6.8 s where the next took 1.2 s)."""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


def test_serve_warms_the_model_before_it_listens(monkeypatch):
    import uvicorn

    from gcrdp.search import server
    from gcrdp.search.retriever import Retriever

    events: list[str] = []

    class FakeModel:
        def warm(self):
            events.append("warm")
            return self

    class FakeRetriever:
        model = FakeModel()

    monkeypatch.setattr(Retriever, "load", classmethod(lambda cls, *a, **k: FakeRetriever()))
    monkeypatch.setattr(server, "create_app", lambda r, **k: events.append("app") or object())
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: events.append("listen"))
    server.serve("unused-index", port=8123)
    assert events == ["warm", "app", "listen"]
