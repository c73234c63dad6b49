"""Shared test set-up.

Prefect is pointed at a private temporary home before it is imported anywhere, so tests
never touch a user's ~/.prefect or a real server. Tests that run flows take the
``prefect_server`` fixture: one temporary Prefect server for the whole session.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = tempfile.mkdtemp(prefix="emseg-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
os.environ.pop("PREFECT_API_URL", None)

ISBI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (SQLite in a temp dir) shared by the session's flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
