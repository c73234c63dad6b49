"""``emseg segment`` killed with SIGKILL mid-run and run again gives the bytes of an uninterrupted run.

The command runs as a user runs it (``python -m flows.cli segment ...``, its own process
group, no Prefect server). Two ways to kill it:

- at exact points inside the run (the process SIGKILLs itself there): seeds of a block
  written but not marked done, the merge table written but not recorded, cells of a block
  written but not marked, the pyramid being built, the work arrays deleted but the store
  not yet marked complete; killed at each in turn, then run to the end;
- from outside, at a moment chosen only by how many blocks the ledgers show.

Between kills the next stage's reader refuses the incomplete store. Every file of the
result equals the uninterrupted run's, but for the recorded run time in ``zarr.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.errors import IncompleteStoreError
from storage.segmentation import open_segmentation
from storage.workspace import Workspace
from tests.crash.harness import ROOT, Commands, _die_with_parent, command_env, tree_digests
from tests.unet.test_segment import synthetic_probability, write_probability

pytestmark = pytest.mark.slow
SHAPE, BLOCK = (4, 192, 160), (2, 64, 64)  # 2 x 3 x 3 = 18 blocks
N_BLOCKS = 18
VOLATILE = ("seconds",)  # attrs that record how the run went, not what it wrote

# Patches the store's writers so that the process SIGKILLs itself at one point, then runs the CLI.
RUNNER = """
import os, signal, sys
point, nth = sys.argv[1], int(sys.argv[2])
calls = [0]
def die():
    calls[0] += 1
    if calls[0] >= nth:
        os.kill(os.getpid(), signal.SIGKILL)
from storage import ledger, segmentation, volume
mark_done, update_attrs = ledger.Ledger.mark_done, volume.VolumeWriter.update_attrs
mark_complete, build_pyramid = volume.VolumeWriter.mark_complete, segmentation.build_pyramid
def patched_mark_done(self, unit):
    if self._array.name.endswith(point):  # seeds_done / labels_done: data written, flag not yet
        die()
    return mark_done(self, unit)
def patched_update_attrs(self, **values):
    if point == "merge" and "merged" in values:  # the table written, the merge not recorded
        die()
    return update_attrs(self, **values)
def patched_mark_complete(self):
    if point == "complete":  # the work arrays deleted, the store not marked complete
        die()
    return mark_complete(self)
def patched_build_pyramid(*args, **kwargs):
    if point == "pyramid":
        die()
    return build_pyramid(*args, **kwargs)
ledger.Ledger.mark_done = patched_mark_done
volume.VolumeWriter.update_attrs = patched_update_attrs
volume.VolumeWriter.mark_complete = patched_mark_complete
segmentation.build_pyramid = patched_build_pyramid
sys.argv = ["emseg", *sys.argv[3:]]
from flows.cli import main
main()
"""


def make_workspace(root: Path) -> Workspace:
    ws = Workspace(str(root))
    write_probability(Path(ws.prediction("em")), synthetic_probability(SHAPE, seed=4))
    return ws


def segment_args(ws: Workspace, name: str) -> list[str]:
    return ["segment", "em", "--workspace", ws.root, "--name", name, "--block", *map(str, BLOCK),
            "--halo", "12", "--seed-distance", "2", "--pyramid-levels", "2"]


def ledger_count(ws: Workspace, name: str, ledger: str) -> int:
    folder = Path(ws.segmentation(name)) / ledger / "c"
    return len(os.listdir(folder)) if folder.is_dir() else 0


def assert_same_output(ws: Workspace, got: str, expected: str) -> None:
    a, b = Path(ws.segmentation(got)), Path(ws.segmentation(expected))
    top = lambda p: p.parent in (a, b) and p.name == "zarr.json"  # noqa: E731
    assert tree_digests(a, skip=top) == tree_digests(b, skip=top)
    attrs = [json.loads((p / "zarr.json").read_text())["attributes"] for p in (a, b)]
    for x in attrs:
        for key in VOLATILE:
            x["emseg"].pop(key)
        for m in x["ome"]["multiscales"]:
            m.pop("name")  # the store's own name
    assert attrs[0] == attrs[1]
    assert not (a / "work").exists() and open_segmentation(a).is_complete


def assert_refused_incomplete(ws: Workspace, name: str) -> None:
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        open_segmentation(ws.segmentation(name))


def test_killed_at_every_step_and_run_again_gives_the_same_bytes(tmp_path: Path, commands: Commands) -> None:
    ws = make_workspace(tmp_path / "ws")
    whole = commands.run(segment_args(ws, "whole"))
    assert whole.returncode == 0, whole.stdout + whole.stderr

    # The nth call at each point: a resumed run counts from 1 again; earlier points are done by then.
    for point, nth in (("seeds_done", 4), ("merge", 1), ("labels_done", 3), ("labels_done", 9),
                       ("pyramid", 1), ("complete", 1)):
        killed = subprocess.run([sys.executable, "-c", RUNNER, point, str(nth), *segment_args(ws, "killed")],
                                cwd=ROOT, env=command_env(), capture_output=True, text=True, timeout=300,
                                start_new_session=True, preexec_fn=_die_with_parent)
        assert killed.returncode == -9, f"{point}: exit {killed.returncode}\n{killed.stdout}{killed.stderr}"
        assert_refused_incomplete(ws, "killed")
        if point == "complete":
            assert not (Path(ws.segmentation("killed")) / "work").exists()
    assert ledger_count(ws, "killed", "labels_done") == N_BLOCKS
    again = commands.run(segment_args(ws, "killed"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout[again.stdout.index("{"):])["n_cells"] == json.loads(
        whole.stdout[whole.stdout.index("{"):])["n_cells"]
    assert_same_output(ws, "killed", "whole")


def test_killed_from_outside_mid_pass_and_run_again_gives_the_same_bytes(tmp_path: Path,
                                                                          commands: Commands) -> None:
    ws = make_workspace(tmp_path / "ws")
    whole = commands.run(segment_args(ws, "whole"))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    log = tmp_path / "killed.log"
    for ledger, k in (("seeds_done", 5), ("labels_done", 7)):
        proc = commands.start(segment_args(ws, "killed"), log=log)
        commands.kill_when(proc, lambda ledger=ledger, k=k: ledger_count(ws, "killed", ledger) >= k,
                           f"{k} blocks in {ledger}", poll_s=0.002)
        assert_refused_incomplete(ws, "killed")
    again = commands.run(segment_args(ws, "killed"))
    assert again.returncode == 0, again.stdout + again.stderr + log.read_text()
    assert_same_output(ws, "killed", "whole")
