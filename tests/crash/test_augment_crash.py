"""``emseg augment`` killed at several points and run again gives the bytes of an uninterrupted run;
its bytes do not depend on thread counts, BLAS kernels or the CPU's SIMD features."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.dataset import open_training_set
from storage.errors import IncompleteStoreError
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume
from storage.workspace import Workspace
from tests.crash.harness import Commands, Outcome, command_env, iter_kill_points, tree_digests

pytestmark = pytest.mark.slow
GROUPS, GROUP_SIZE = 60, 4


def make_workspace(root: Path) -> Workspace:
    """volumes/em.zarr and labels/em.zarr: 6 synthetic slices of 64 x 64."""
    ws = Workspace(str(root))
    block = generate_volume(SyntheticSpec(shape=(6, 64, 64), cell_yx=16, seed=5))
    for path, data, kind in ((ws.volume("em"), block.image, "image"),
                             (ws.labels("em"), block.labels, "label")):
        writer = create_volume(path, data.shape, data.dtype, (50.0, 4.0, 4.0), kind=kind)
        writer.write(0, data)
        writer.mark_complete()
    return ws


def augment_args(ws: Workspace, dataset: str, n_groups: int = GROUPS, *extra: str) -> list[str]:
    return ["augment", "--image", "em", "--labels", "em", "--dataset", dataset, "--workspace", ws.root,
            "--slices", "0-3", "--n-samples", str(n_groups * GROUP_SIZE), "--group-size", str(GROUP_SIZE),
            "--seed", "7", "--config", '{"max_displacement_px": 3}', *extra]


def groups_done(ws: Workspace, dataset: str) -> int:
    ledger = Path(ws.dataset(dataset)) / "done" / "c"
    return len(os.listdir(ledger)) if ledger.is_dir() else 0


def test_killed_augment_runs_again_to_the_uninterrupted_bytes(tmp_path: Path, commands: Commands,
                                                              record: Callable[[Outcome], None]) -> None:
    ws = make_workspace(tmp_path / "ws")
    whole = commands.run(augment_args(ws, "whole"))
    assert whole.returncode == 0, whole.stdout + whole.stderr

    log = tmp_path / "killed.log"
    kills = list(iter_kill_points(seed=15, total=GROUPS, n=3))
    for k in kills:
        proc = commands.start(augment_args(ws, "killed"), log=log)
        commands.kill_when(proc, lambda k=k: groups_done(ws, "killed") >= k, f"{k} groups written")
        assert groups_done(ws, "killed") < GROUPS
        # The next stage refuses what the killed command left.
        with pytest.raises(IncompleteStoreError, match="incomplete"):
            open_training_set(ws.dataset("killed"))
    again = commands.run(augment_args(ws, "killed"))
    outcome = Outcome("augment")
    outcome.kills, outcome.continued = len(kills), len(kills) - 1 + (again.returncode == 0)
    outcome.identical = tree_digests(Path(ws.dataset("killed"))) == tree_digests(Path(ws.dataset("whole")))
    outcome.compared = "every file of datasets/<name>.zarr"
    record(outcome)
    assert again.returncode == 0, again.stdout + again.stderr + log.read_text()

    assert outcome.identical


def test_augment_bytes_do_not_depend_on_threads_blas_or_cpu_features(tmp_path: Path,
                                                                    commands: Commands) -> None:
    ws = make_workspace(tmp_path / "ws")
    # cv2 and torch threads are set in the process that runs the command (no environment variable
    # reaches them before import); the rest through the environment.
    runner = ("import sys, cv2, torch; n = int(sys.argv[1]); cv2.setNumThreads(n); torch.set_num_threads(n); "
              "sys.argv = ['emseg', *sys.argv[2:]]; from flows.cli import main; main()")
    settings = {
        "one": ("1", {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                      "NUMBA_NUM_THREADS": "1"}, "1"),
        "many": ("3", {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "3",
                       # another machine's kernels: OpenBLAS for an older CPU, numpy without AVX2/AVX-512
                       "OPENBLAS_CORETYPE": "Sandybridge",
                       "NPY_DISABLE_CPU_FEATURES": "AVX512F,AVX512CD,AVX512_SKX,AVX512_CLX,AVX512_CNL,"
                                                   "AVX512_ICL,AVX512_SPR,AVX2,FMA3,X86_V3,X86_V4"}, "3"),
    }
    import subprocess
    import sys

    from tests.crash.harness import ROOT

    for name, (threads, env, workers) in settings.items():
        done = subprocess.run([sys.executable, "-c", runner, threads,
                               *augment_args(ws, name, 6, "--num-workers", workers)],
                              cwd=ROOT, env=command_env(**env), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    assert tree_digests(Path(ws.dataset("one"))) == tree_digests(Path(ws.dataset("many")))
