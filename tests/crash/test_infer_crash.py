"""``emseg infer`` killed at several points and run again resumes the prediction and gives the bytes
of an uninterrupted run; between a kill and the re-run, the next stage refuses the prediction."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.errors import IncompleteStoreError
from storage.volume import open_volume
from storage.workspace import Workspace
from tests.crash.harness import (
    Commands,
    Outcome,
    differing,
    iter_kill_points,
    kill_and_run_again,
    tree_digests,
)
from tests.crash.inputs import hidden_leftovers, image_and_labels, untrained_checkpoint

pytestmark = pytest.mark.slow
SHAPE = (32, 128, 128)  # one write block per slice


def blocks_done(prediction: str) -> int:
    try:  # the block ledger: one file per finished block, written after the block's data
        return len(os.listdir(os.path.join(prediction, "blocks_done", "c")))
    except FileNotFoundError:
        return 0


def test_killed_infer_runs_again_to_the_uninterrupted_bytes(tmp_path: Path, commands: Commands,
                                                            record: Callable[[Outcome], None]) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    image_and_labels(ws, SHAPE)
    model = untrained_checkpoint(tmp_path / "model.pt")
    prediction = ws.prediction("em")
    args = ["infer", "em", "--model", model, "--workspace", ws.root, "--device", "cpu"]

    whole = commands.run(args)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    uninterrupted = tree_digests(Path(prediction))
    os.rename(prediction, tmp_path / "uninterrupted.zarr")  # kept for a look when the bytes differ

    def point(k: int) -> tuple[Callable[[], Callable[[], bool]], str]:
        return (lambda: lambda: blocks_done(prediction) >= k), f"{k} of {SHAPE[0]} blocks done"

    def next_stage_refuses() -> None:
        assert blocks_done(prediction) < SHAPE[0]
        with pytest.raises(IncompleteStoreError, match="incomplete"):
            open_volume(prediction)

    outcome = kill_and_run_again(commands, args, "infer",
                                 [point(k) for k in iter_kill_points(seed=15, total=SHAPE[0] - 2, n=3)],
                                 tmp_path / "killed.log", after_kill=next_stage_refuses, poll_s=0.002)
    assert outcome.final is not None
    diff = differing(tree_digests(Path(prediction)), uninterrupted)
    outcome.identical = not diff
    outcome.compared = "every file of predictions/em.zarr"
    record(outcome)
    assert outcome.final.returncode == 0, outcome.final.stdout + outcome.final.stderr
    assert not diff, diff
    assert hidden_leftovers(os.path.dirname(prediction)) == []
