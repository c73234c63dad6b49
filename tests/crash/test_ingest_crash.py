"""``emseg ingest`` (image and labels) killed at several points and run again gives the bytes of an
uninterrupted run; between a kill and the re-run, the next stage refuses what the kill left."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import tifffile

from storage.errors import IncompleteStoreError, StoreNotFoundError
from storage.volume import open_volume
from storage.workspace import Workspace
from tests.crash.harness import Commands, Outcome, iter_kill_points, kill_and_run_again, tree_digests
from tests.crash.inputs import hidden_leftovers, remove, synthetic

pytestmark = pytest.mark.slow
SHAPE = (96, 256, 256)  # one chunk file per slice: 2 x 96 files, written in slabs of 16 slices


def _identity(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _complete(path: str) -> bool:
    try:
        return open_volume(path, require_complete=False).is_complete
    except Exception:  # being created or replaced
        return False


def _slices_written(store: str) -> int:
    try:  # one chunk file per slice, at s0/c/<z>/0/0: one directory per slice written
        return len(os.listdir(os.path.join(store, "s0", "c")))
    except FileNotFoundError:
        return 0


def slices_written(stores: list[str]) -> Callable[[], int]:
    """Slices this run wrote or reuses (a complete volume of the same inputs is reused): a store
    left incomplete by an earlier (killed) run counts for nothing until this run replaces it."""
    before = {s: (_identity(s), _complete(s)) for s in stores}

    def count() -> int:
        return sum(_slices_written(s) for s in stores
                   if before[s][1] or _identity(s) not in (None, before[s][0]))

    return count


def test_killed_ingest_runs_again_to_the_uninterrupted_bytes(tmp_path: Path, commands: Commands,
                                                             record: Callable[[Outcome], None]) -> None:
    block = synthetic(SHAPE)
    tifffile.imwrite(tmp_path / "em.tif", block.image)
    tifffile.imwrite(tmp_path / "labels.tif", block.labels)
    ws = Workspace(str(tmp_path / "ws"))
    stores = [ws.volume("em"), ws.labels("em")]
    args = ["ingest", str(tmp_path / "em.tif"), "--labels", str(tmp_path / "labels.tif"), "--name", "em",
            "--workspace", ws.root, "--voxel-size", "50", "4", "4"]

    whole = commands.run(args)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    uninterrupted = [tree_digests(Path(s)) for s in stores]
    remove(*stores)

    total = 2 * SHAPE[0]

    def point(k: int) -> tuple[Callable[[], Callable[[], bool]], str]:
        def make_ready() -> Callable[[], bool]:
            written = slices_written(stores)
            return lambda: written() >= k
        return make_ready, f"{k} of {total} slices written"

    def next_stage_refuses() -> None:
        refused = 0
        for store in stores:
            try:
                open_volume(store)
            except IncompleteStoreError as e:
                assert "incomplete" in str(e)
                refused += 1
            except StoreNotFoundError:  # labels not started yet
                refused += 1
        assert refused, "both volumes complete: the kill came after the run's end"

    outcome = kill_and_run_again(commands, args, "ingest",
                                 [point(k) for k in iter_kill_points(seed=15, total=total - 16, n=3)],
                                 tmp_path / "killed.log", after_kill=next_stage_refuses, poll_s=0.001)
    assert outcome.final is not None
    outcome.identical = [tree_digests(Path(s)) for s in stores] == uninterrupted
    outcome.compared = "every file of volumes/em.zarr and labels/em.zarr"
    record(outcome)
    assert outcome.final.returncode == 0, outcome.final.stdout + outcome.final.stderr
    assert outcome.identical
    for store in stores:
        assert hidden_leftovers(os.path.dirname(store)) == []
