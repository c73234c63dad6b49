"""Crash-consistency tests: kill a real ``emseg`` command, run it again, compare the outputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.crash.harness import Commands, Outcome, summary_table


@pytest.fixture
def commands() -> Iterator[Commands]:
    cmds = Commands()
    try:
        yield cmds
    finally:
        cmds.close()


# Every crash test's outcome, in the order run: written to <basetemp>/crash-results.json as the
# tests finish and printed as a table at the end of the session (docs/benchmarks.md quotes it).
_RESULTS: list[dict[str, object]] = []


@pytest.fixture
def record(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Outcome], None]:
    path = tmp_path_factory.getbasetemp() / "crash-results.json"

    def add(outcome: Outcome) -> None:
        _RESULTS.append(outcome.as_row())
        path.write_text(json.dumps(_RESULTS, indent=2))

    return add


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _RESULTS:
        terminalreporter.write_sep("-", "crash consistency: kill, run the same command again")
        terminalreporter.write_line(summary_table(_RESULTS))
