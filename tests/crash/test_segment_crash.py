"""``emseg segment`` killed at several points (seeds pass, labels pass) and run again resumes and gives
the bytes of an uninterrupted run; between a kill and the re-run, evaluate refuses the segmentation."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.errors import IncompleteStoreError
from storage.segmentation import open_segmentation
from storage.workspace import Workspace
from tests.crash.harness import (
    Commands,
    Outcome,
    differing,
    iter_kill_points,
    kill_and_run_again,
    tree_digests,
)
from tests.crash.inputs import hidden_leftovers, membrane_probability, synthetic, write_volume

pytestmark = pytest.mark.slow
SHAPE, BLOCK = (16, 128, 128), (2, 64, 64)
N_BLOCKS = 8 * 2 * 2
VOLATILE = ("seconds",)  # attrs that record how the run went (its wall time), not what it wrote


def store_digests(path: str) -> dict[str, object]:
    """Every file's digest; the root zarr.json compared as JSON without the VOLATILE attrs."""
    digests: dict[str, object] = dict(tree_digests(Path(path), skip=lambda p: p == Path(path, "zarr.json")))
    meta = json.loads(Path(path, "zarr.json").read_text())
    for key in VOLATILE:
        meta["attributes"]["emseg"].pop(key, None)
    digests["zarr.json"] = meta
    return digests


def passes_done(segmentation: str) -> int:
    """Block passes recorded in the two ledgers (seeds of a block, then its cells): 0..2 x blocks."""
    n = 0
    for ledger in ("seeds_done", "labels_done"):
        try:
            n += len(os.listdir(os.path.join(segmentation, ledger, "c")))
        except FileNotFoundError:
            pass
    return n


def test_killed_segment_runs_again_to_the_uninterrupted_bytes(tmp_path: Path, commands: Commands,
                                                              record: Callable[[Outcome], None]) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    write_volume(ws.volume("prob"), membrane_probability(synthetic(SHAPE).labels))
    segmentation = ws.segmentation("prob")
    args = ["segment", "prob", "--workspace", ws.root, "--block", *map(str, BLOCK), "--halo", "8"]

    whole = commands.run(args)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    uninterrupted = store_digests(segmentation)
    os.rename(segmentation, tmp_path / "uninterrupted.zarr")  # kept for a look when the bytes differ

    total = 2 * N_BLOCKS

    def point(k: int) -> tuple[Callable[[], Callable[[], bool]], str]:
        return (lambda: lambda: passes_done(segmentation) >= k), f"{k} of {total} block passes done"

    def next_stage_refuses() -> None:
        assert passes_done(segmentation) < total
        with pytest.raises(IncompleteStoreError, match="incomplete"):
            open_segmentation(segmentation)

    outcome = kill_and_run_again(commands, args, "segment",
                                 [point(k) for k in iter_kill_points(seed=15, total=total - 2, n=3)],
                                 tmp_path / "killed.log", after_kill=next_stage_refuses, poll_s=0.002)
    assert outcome.final is not None
    diff = differing(store_digests(segmentation), uninterrupted)
    outcome.identical = not diff
    outcome.compared = "every file of segmentations/prob.zarr (zarr.json without its wall time)"
    record(outcome)
    assert outcome.final.returncode == 0, outcome.final.stdout + outcome.final.stderr
    assert not diff, diff
    assert hidden_leftovers(os.path.dirname(segmentation)) == []
