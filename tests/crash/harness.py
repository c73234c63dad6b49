"""Run ``emseg`` commands the way a user does, kill them the way a power cut does.

Every command runs in its own process group (``start_new_session``), is killed with SIGKILL
of the whole group, and dies with the test process too (``PR_SET_PDEATHSIG``: even when
pytest itself is killed, the command does not outlive it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the process group kill in Commands.close still applies
        pass


def command_env(**extra: str) -> dict[str, str]:
    """The environment of a command: no Prefect server (the stage runs in the process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "EMSEG_DEBUG")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


class Commands:
    """Starts ``python -m flows.cli ARGS`` processes and kills whatever is left at close."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None,
              ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT,
                                env=env or command_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        if log is not None:
            out.close()  # type: ignore[union-attr]
        self.started.append(proc)
        return proc

    def run(self, args: list[str], timeout: float = 300, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run to the end; returns exit code and output."""
        proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env or command_env(),
                              capture_output=True, text=True, timeout=timeout, start_new_session=True,
                              preexec_fn=_die_with_parent)
        return proc

    def kill_when(self, proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str,
                  timeout: float = 300, poll_s: float = 0.01) -> None:
        """SIGKILL ``proc``'s process group as soon as ``ready()``; AssertionError when the
        command ended (or timed out) first: the kill point was not reached mid-run."""
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"the command ended (exit {proc.returncode}) before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout} s")
            time.sleep(poll_s)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}: finished before the kill"

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)


def tree_digests(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by path relative to it."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not skip(p)}


def iter_kill_points(seed: int, total: int, n: int) -> Iterator[int]:
    """``n`` increasing points in 1..total-1, one drawn in each of ``n`` equal spans (seeded)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    edges = np.linspace(1, total - 1, n + 1)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        yield int(rng.integers(int(lo), max(int(lo) + 1, int(hi))))


# The key of an Outcome's row in a test report's user_properties (tests/crash/conftest.py).
CRASH_OUTCOME = "crash_outcome"


class Outcome:
    """What one kill-and-run-again test saw: kills made, re-runs that continued (reached the next
    kill point, or finished with exit 0), and whether the outputs equal an uninterrupted run's."""

    def __init__(self, stage: str) -> None:
        self.stage, self.kills, self.continued = stage, 0, 0
        self.identical: bool | None = None
        self.compared = ""  # what was compared with the uninterrupted run
        self.final: subprocess.CompletedProcess[str] | None = None

    def as_row(self) -> dict[str, object]:
        return {"stage": self.stage, "kills": self.kills, "continued": self.continued,
                "identical": self.identical, "compared": self.compared}


def kill_and_run_again(commands: Commands, args: list[str], stage: str,
                       points: list[tuple[Callable[[], Callable[[], bool]], str]], log: Path,
                       after_kill: Callable[[], None] | None = None, timeout: float = 300,
                       poll_s: float = 0.01) -> Outcome:
    """Start ``args``, SIGKILL its process group at each point, start it again; then run it to the end.

    ``points`` holds ``(make_ready, what)``: ``make_ready()`` is called just before the command
    starts and returns the condition that triggers the kill. ``after_kill()`` runs between a
    kill and the next start (e.g. the next stage refuses what the killed command left). A
    re-run that is refused ends before its kill point: AssertionError naming its exit code,
    with the command's output in ``log``.
    """
    outcome = Outcome(stage)
    for i, (make_ready, what) in enumerate(points):
        ready = make_ready()
        proc = commands.start(args, log=log)
        try:
            commands.kill_when(proc, ready, what, timeout=timeout, poll_s=poll_s)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- output of the runs so far:\n{log.read_text()}") from e
        outcome.kills += 1
        outcome.continued += i > 0  # the run after the previous kill got this far
        if after_kill is not None:
            after_kill()
    outcome.final = commands.run(args, timeout=timeout)
    outcome.continued += outcome.final.returncode == 0
    return outcome


def summary_table(rows: list[dict[str, object]]) -> str:
    """The markdown table of :class:`Outcome` rows: stage, kills, continued, identical (and what)."""
    lines = ["| stage | kills | continued | identical | compared |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        identical = {True: "yes", False: "no", None: "not compared"}[r["identical"]]  # type: ignore[index]
        lines.append(f"| {r['stage']} | {r['kills']} | {r['continued']} of {r['kills']} | {identical} "
                     f"| {r.get('compared', '')} |")
    return "\n".join(lines)


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Paths whose digests differ between two :func:`tree_digests`, or that only one holds."""
    return sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
