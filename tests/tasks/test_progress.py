"""RunProgress: where Prefect's INFO lines are hidden (the demo), long steps still say where they are."""

from __future__ import annotations

import logging

import pytest

from tasks.progress import CONSOLE_EVERY_S, RunProgress


def _progress(prefect_level: int) -> RunProgress:
    p = RunProgress("k", "training r", 10, "steps", every_s=0.0)  # outside a run: no artifact
    run_log = logging.getLogger("test-progress-run-logger")
    run_log.setLevel(prefect_level)
    p.log = run_log
    return p


def _console_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "emseg.progress"]


def test_progress_reaches_the_terminal_when_prefect_info_is_hidden(caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("tasks.progress.time.monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="emseg")
    p = _progress(logging.WARNING)
    p.update(1, 10, loss=0.5)
    clock[0] += 1
    p.update(2, 10)  # throttled: within CONSOLE_EVERY_S of the last line
    clock[0] += CONSOLE_EVERY_S
    p.update(6, 10, v_rand=0.96)
    clock[0] += 1
    p.update(10, 10)  # the end is always said
    lines = _console_lines(caplog)
    assert len(lines) == 3
    assert lines[0].startswith("training r: 1/10 steps (10.0%)") and "loss=0.5" in lines[0]
    assert lines[1].startswith("training r: 6/10 steps (60.0%)") and "v_rand=0.96" in lines[1]
    assert lines[2].startswith("training r: 10/10 steps (100.0%)")


def test_no_second_line_where_the_run_logger_shows_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="emseg")
    p = _progress(logging.INFO)
    p.update(1, 10)
    p.update(10, 10)
    assert _console_lines(caplog) == []


def test_the_end_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="emseg")
    p = _progress(logging.WARNING)
    p.update(4, 4)
    p.update(4, 4)  # stages report their last unit, then the total again
    assert len(_console_lines(caplog)) == 1
