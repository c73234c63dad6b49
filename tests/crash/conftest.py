"""Crash-consistency tests: kill a real ``emseg`` command, run it again, compare the outputs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.crash.harness import Commands


@pytest.fixture
def commands() -> Iterator[Commands]:
    cmds = Commands()
    try:
        yield cmds
    finally:
        cmds.close()
