"""How the CLI runs a stage: in this process with a progress bar, or as a Prefect flow run.

With no Prefect server configured (``PREFECT_API_URL`` unset) and no ``--prefect``, a
command calls its stage function directly: no server starts, nothing of Prefect is
imported, and a missing input is reported in about a second. With a server (or
``--prefect``) the same command runs the stage's flow, visible in the UI with its artifacts.

This module imports neither Prefect nor torch: the CLI imports it before validating.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
Progress = Callable[..., None]
PREFECT_HELP = ("Run as a Prefect flow run (also when PREFECT_API_URL is set); without either, the stage "
                "runs in this process.")


def use_prefect(flag: bool, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether a command runs as a flow run: asked for, or a Prefect server is configured."""
    return flag or bool(environ.get("PREFECT_API_URL"))


class _Warnings(logging.Handler):
    """``emseg.*`` warnings of a stage, one line each on stderr (no Prefect console there)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"emseg: warning: {record.getMessage()}\n")


class Bar:
    """A rich progress bar on stderr: stage, items done/total, rate, time left (nothing off a terminal)."""

    def __init__(self, stage: str, unit: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(file=sys.stderr)
        self.unit = unit
        self.progress = Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(unit), TextColumn("{task.fields[rate]}"),
                                 TimeRemainingColumn(), console=console, disable=not console.is_terminal)
        self.task = self.progress.add_task(stage, total=None, rate="")
        self.t0: float | None = None
        self.first = 0

    def update(self, done: int, total: int | None = None, **_: Any) -> None:
        """A ``progress(done, total)`` callback of the stage functions (extra fields ignored)."""
        now = time.monotonic()
        if self.t0 is None:  # units finished by an earlier run don't count in the rate
            self.t0, self.first = now, done
        rate = (done - self.first) / (now - self.t0) if now > self.t0 else 0.0
        self.progress.update(self.task, completed=done, total=total,
                             rate=f"{rate:.2f} {self.unit}/s" if rate else "")


@contextmanager
def stage_bar(stage: str, unit: str) -> Iterator[Bar]:
    """A :class:`Bar` shown while the stage runs, with its warnings on stderr."""
    bar, logger, handler = Bar(stage, unit), logging.getLogger("emseg"), _Warnings(logging.WARNING)
    logger.addHandler(handler)
    try:
        with bar.progress:
            yield bar
    finally:
        logger.removeHandler(handler)


def run_stage(stage: str, unit: str, call: Callable[[Progress], T]) -> T:
    """``call(progress)`` in this process under a progress bar."""
    with stage_bar(stage, unit) as bar:
        return call(bar.update)
