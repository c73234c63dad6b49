"""``emseg evaluate`` (a prediction and a segmentation) killed at several moments and run again
writes the reports of an uninterrupted run; a kill never leaves a torn report behind."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from storage.workspace import Workspace
from tests.crash.harness import Commands, Outcome, iter_kill_points, kill_and_run_again
from tests.crash.inputs import image_and_labels, membrane_probability, write_volume
from unet.segment_config import SegmentConfig
from unet.segment_stage import segment_stage

pytestmark = pytest.mark.slow
SHAPE = (64, 128, 128)
REPORTS = ("metrics.json", "segmentation-metrics.json")


def reports(ws: Workspace, run: str) -> dict[str, object]:
    """The report files of ``run`` that exist, as parsed JSON (a torn file fails to parse)."""
    found = {}
    for name in REPORTS:
        path = ws.report_file(run, name)
        if os.path.exists(path):
            found[name] = json.loads(Path(path).read_text())
    return found


def test_killed_evaluate_runs_again_to_the_uninterrupted_reports(tmp_path: Path, commands: Commands,
                                                                 record: Callable[[Outcome], None]) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    labels = image_and_labels(ws, SHAPE).labels
    noise = np.random.default_rng(3).integers(-40, 40, size=SHAPE)
    probability = np.clip(membrane_probability(labels).astype(int) + noise, 0, 255).astype(np.uint8)
    write_volume(ws.prediction("em"), probability, "prediction")
    segment_stage(ws, "em", SegmentConfig(block_shape=(16, 128, 128), halo=(8, 8)))

    def args(run: str) -> list[str]:
        return ["evaluate", "--prediction", "em", "--segmentation", "em", "--labels", "em", "--run", run,
                "--workspace", ws.root]

    t0 = time.monotonic()
    whole = commands.run(args("whole"))
    seconds = time.monotonic() - t0
    assert whole.returncode == 0, whole.stdout + whole.stderr
    uninterrupted = reports(ws, "whole")
    assert set(uninterrupted) == set(REPORTS)

    # Nothing outside the process shows how far scoring got: kill at moments spread over 10-40 %
    # of the uninterrupted run's wall time (start-up included). Not later: that first run pays the
    # cold imports, and with the machine's load falling (parallel tests ending) a re-run took under
    # 79 % of it and finished before its kill point; once (2026-12-02) under 56 %.
    def point(permille: int) -> tuple[Callable[[], Callable[[], bool]], str]:
        after = seconds * (0.10 + 0.30 * permille / 1000)

        def make_ready() -> Callable[[], bool]:
            start = time.monotonic()
            return lambda: time.monotonic() - start >= after

        return make_ready, f"{after:.2f} s of about {seconds:.2f} s"

    def no_torn_report() -> None:
        for name, report in reports(ws, "killed").items():  # parses every report there: none is torn
            assert report == uninterrupted[name], name  # a report is written whole, once scored

    outcome = kill_and_run_again(commands, args("killed"), "evaluate",
                                 [point(k) for k in iter_kill_points(seed=15, total=1000, n=3)],
                                 tmp_path / "killed.log", after_kill=no_torn_report)
    assert outcome.final is not None
    outcome.identical = reports(ws, "killed") == uninterrupted
    outcome.compared = "content of reports/<run>/metrics.json and segmentation-metrics.json"
    record(outcome)
    assert outcome.final.returncode == 0, outcome.final.stdout + outcome.final.stderr
    assert outcome.identical
    assert sorted(os.listdir(ws.report_dir("killed"))) == sorted(os.listdir(ws.report_dir("whole")))
