"""Shared fixtures.

``shared_data``: the real benchmark pieces in ``../shared/data`` (relative to the repository
root). A fresh clone does not have that folder, so tests using it skip with a reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"../shared/data not present ({SHARED_DATA} does not exist; it holds real benchmark "
            "pieces available only in the development checkout)"
        )
    return SHARED_DATA
