"""Shared test set-up.

Prefect is pointed at a private temporary home before it is imported anywhere, so tests
never touch a user's ~/.prefect or a real server. Tests that run flows take the
``prefect_server`` fixture: one temporary Prefect server for the whole session.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_HOME = tempfile.mkdtemp(prefix="emseg-test-prefect-")
# Under pytest-xdist (``make test`` runs ``pytest -n``) every worker process gets a home of its
# own: workers inherit the environment of the controller, whose PREFECT_HOME is a private one too.
if os.environ.get("PREFECT_HOME", "") in ("", os.environ.get("EMSEG_TEST_PREFECT_HOME")):
    os.environ["PREFECT_HOME"] = os.environ["EMSEG_TEST_PREFECT_HOME"] = _HOME
# pytest-xdist workers share the machine's cores: each runs its math (torch, BLAS) on its share,
# unless told otherwise. N processes each spinning up one OpenMP thread per core made torch
# training tests 5 to 15 times slower than alone.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
os.environ.pop("PREFECT_API_URL", None)
# Tests that use Prefect without the session server start its temporary one, each xdist worker in
# a fresh home: its database is created on that first start, which under parallel load took over
# Prefect's 20 s default (test_progress failed so). The limit `emseg` itself sets (flows.cli).
from flows.cli import prefect_defaults  # noqa: E402 (after PREFECT_HOME, before Prefect is imported)

prefect_defaults()

ISBI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"


@pytest.fixture
def commands() -> Iterator[Any]:
    """Real ``emseg`` commands run as subprocesses (:class:`tests.crash.harness.Commands`: killed
    at chosen points, and with the test if it dies)."""
    from tests.crash.harness import Commands

    cmds = Commands()
    try:
        yield cmds
    finally:
        cmds.close()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (SQLite in a temp dir) shared by the session's flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


# Parallel runs (``make test``: pytest-xdist, ``-n N --dist loadgroup``). Each test file is one
# unit of work (its module fixtures are built once), except that the files using one of the
# session servers below form one unit, so that each server starts once. The units are queued
# longest first: those Prefect stacks, then the session server's unit, then the other slow files
# (the worker processes sort their collection, the controller keeps that order). Decided from
# the files' text, since the controller that schedules collects nothing itself. (xdist's own
# loadgroup, by ``xdist_group`` marks, groups nothing under pytest 9.2: it renames node ids the
# way older pytest stored them.)
_UNITS = ((re.compile(r"\b(prefect_stack|finished_pipeline)\b"), 0, "e2e-prefect-stack"),
          (re.compile(r"\bstart_prefect_stack\b"), 0, None),  # a stack of its own: a unit of its own
          (re.compile(r"\bprefect_server\b"), 1, "prefect-server"),
          (re.compile(r"\bmark\.(slow|e2e)\b"), 2, None))


@functools.cache
def _unit(path: str) -> tuple[int, str]:
    """(queue rank, unit name) of the test file ``path`` (relative to the rootdir, or absolute)."""
    try:
        text = (Path(__file__).parent.parent / path).read_text(encoding="utf-8")
    except OSError:
        text = ""
    for pattern, rank, name in _UNITS:
        if pattern.search(text):
            return rank, name or path
    return 3, path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid.split("::", 1)[0])[1]

    config.option.loadscopereorder = False  # the order of the workers' collection
    return Units(config, log)  # type: ignore[arg-type]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if getattr(config, "workerinput", None) is not None:  # an xdist worker: long units first
        items.sort(key=lambda item: _unit(item.nodeid.split("::", 1)[0])[0])


# The crash tests' outcomes (tests/crash), collected from the test reports: here, not in
# tests/crash/conftest.py, because the xdist controller that prints the summary loads only this file.
_CRASH_ROWS: list[dict[str, object]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from tests.crash.harness import CRASH_OUTCOME

    rows = [value for key, value in report.user_properties if key == CRASH_OUTCOME]
    if report.when != "teardown" or not rows:
        return
    _CRASH_ROWS.extend(rows)
    if _CONFIG:
        basetemp = _CONFIG[0]._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        (basetemp / "crash-results.json").write_text(json.dumps(_CRASH_ROWS, indent=2))


_CONFIG: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    _CONFIG[:] = [config]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.crash.harness import summary_table

    if _CRASH_ROWS and getattr(terminalreporter.config, "workerinput", None) is None:
        terminalreporter.write_sep("-", "crash consistency: kill, run the same command again")
        terminalreporter.write_line(summary_table(_CRASH_ROWS))
