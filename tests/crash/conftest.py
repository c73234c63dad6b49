"""Crash-consistency tests: kill a real ``emseg`` command, run it again, compare the outputs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.crash.harness import CRASH_OUTCOME, Outcome


# Every crash test's outcome: written to <basetemp>/crash-results.json as the tests finish and
# printed as a table at the end of the session (docs/benchmarks.md quotes it), by the hooks in
# tests/conftest.py. The outcome travels in the test's report (its user_properties), so that under
# pytest-xdist the controller, which prints the summary, has the rows of every worker.
@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[Outcome], None]:
    def add(outcome: Outcome) -> None:
        request.node.user_properties.append((CRASH_OUTCOME, outcome.as_row()))

    return add
