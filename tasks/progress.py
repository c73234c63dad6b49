"""Progress reporting for long steps: a Prefect progress artifact plus throttled log lines.

``unet``/``storage`` functions take a plain ``progress(done, total)`` callback and know
nothing of Prefect; a task passes ``RunProgress(...).update`` as that callback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

CONSOLE = logging.getLogger("emseg.progress")
CONSOLE_EVERY_S = 30.0


def run_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The Prefect run logger inside a run, a plain module logger outside one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("emseg")


class RunProgress:
    """Report ``done`` of ``total`` units (blocks, samples, steps) of one step.

    Updates the progress artifact and logs at most every ``every_s`` seconds (and at the
    end), with the rate and the estimated time left, so a run's page shows where it is.
    """

    def __init__(self, key: str, description: str, total: int, unit: str = "units",
                 every_s: float = 5.0) -> None:
        self.key, self.description, self.total, self.unit = key, description, total, unit
        self.every_s = every_s
        self.log = run_logger()
        self._t0 = time.monotonic()
        self._last = 0.0
        self._first_done: int | None = None
        self._last_console, self._console_done = 0.0, -1
        try:
            self._artifact_id: Any = create_progress_artifact(0.0, key=key, description=description)
        except MissingContextError:
            self._artifact_id = None

    def update(self, done: int, total: int | None = None, **extra: Any) -> None:
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self._first_done is None:
            # Units already done before this run started (resume) don't count in the rate.
            self._first_done, self._t0 = done, now
        finished = done >= self.total
        if not finished and now - self._last < self.every_s:
            return
        self._last = now
        pct = 100.0 * done / max(self.total, 1)
        if self._artifact_id is not None:
            update_progress_artifact(self._artifact_id, pct)
        elapsed = now - self._t0
        rate = (done - self._first_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        details = "".join(f", {k}={v}" for k, v in extra.items())
        args = (self.description, done, self.total, self.unit, pct, rate, self.unit,
                "?" if eta != eta else time.strftime("%H:%M:%S", time.gmtime(eta)), details)
        self.log.info("%s: %d/%d %s (%.1f%%), %.2f %s/s, %s left%s", *args)
        # Where Prefect's INFO lines are hidden from the terminal (the demo lowers them to warnings),
        # a long step would run silently for minutes: say where it is on the emseg logger, which
        # the terminal still shows, every CONSOLE_EVERY_S (and at the end).
        due = finished or now - self._last_console >= CONSOLE_EVERY_S
        repeated = finished and done == self._console_done and not extra  # the end, said already
        if due and not repeated and not self.log.isEnabledFor(logging.INFO):
            self._last_console, self._console_done = now, done
            CONSOLE.info("%s: %d/%d %s (%.1f%%), %.2f %s/s, %s left%s", *args)


class _ToRunLogger(logging.Handler):
    def __init__(self, target: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.log(record.levelno, record.getMessage())


@contextmanager
def stage_logs() -> Iterator[None]:
    """Send the ``emseg.*`` log records of a stage function (which knows nothing of Prefect) to
    the run's logs while it runs, so they show on the run's page."""
    target = run_logger()
    if isinstance(target, logging.Logger):  # outside a run: leave logging as it is
        yield
        return
    handler, logger = _ToRunLogger(target), logging.getLogger("emseg")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
