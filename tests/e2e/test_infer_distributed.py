"""Inference on a real local Dask cluster started from the command line (scheduler + 2 workers, CPU).

The workers are ``dask worker --resources GPU=1 --nthreads 1 --no-nanny`` processes, each in
its own process group, always torn down. Outputs are compared file by file with a
single-process run; one worker is SIGKILLed mid-run and the run must still complete.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from storage.prediction import open_prediction_for_blocks
from storage.volume import create_volume, open_volume
from unet.inference import AffinePredictor, InferConfig, infer_volume

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))
CFG = InferConfig(tile=(16, 16), overlap=(4, 4), halo=(0, 4, 4), block_shape=(1, 32, 32), chunks=(1, 16, 16),
                  batch_size=4, blend="gaussian", blocks_per_group=2)
SHAPE = (6, 64, 64)  # 24 blocks, 12 groups


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    tmp = tmp_path_factory.mktemp("dask")
    sched_file = tmp / "scheduler.json"
    procs = [_start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sched_file)], tmp / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        # --no-nanny: a SIGKILLed worker stays dead (a nanny would restart it), as when a node is lost
        worker_args = [DASK, "worker", address, "--nthreads", "1", "--resources", "GPU=1", "--no-nanny",
                       "--no-dashboard", "--host", "127.0.0.1"]
        workers = [_start([*worker_args, "--name", f"w{i}"], tmp / f"worker{i}.log") for i in range(2)]
        procs += workers
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for p in reversed(procs):
            _stop(p)


def _volume(path: Path) -> str:
    data = np.random.default_rng(7).integers(0, 256, SHAPE, dtype=np.uint8)
    w = create_volume(path, SHAPE, np.uint8, (30, 5, 5))
    w.write(0, data)
    w.mark_complete()
    return str(path)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_distributed_output_equals_single_process_output(tmp_path: Path, cluster: tuple[str, list]) -> None:
    from distributed import Client

    address, _ = cluster
    src = _volume(tmp_path / "in.zarr")
    factory = functools.partial(AffinePredictor, 1 / 255)
    infer_volume(src, str(tmp_path / "local.zarr"), factory, "affine", CFG)
    with Client(address) as client:
        summary = infer_volume(src, str(tmp_path / "dist.zarr"), factory, "affine", CFG, client=client)
    assert summary["blocks"] == 24 and summary["blocks_run"] == 24
    assert open_volume(tmp_path / "dist.zarr").is_complete
    local, dist = _files(tmp_path / "local.zarr" / "s0"), _files(tmp_path / "dist.zarr" / "s0")
    assert sum(k.startswith("c/") for k in local) == 24 and local == dist  # one shard per block
    expected = open_volume(src).read(slice(None))
    assert np.array_equal(open_volume(tmp_path / "dist.zarr").read(slice(None)), expected)


def test_worker_killed_mid_run_loses_no_block(tmp_path: Path, cluster: tuple[str, list]) -> None:
    from distributed import Client

    address, workers = cluster
    src = _volume(tmp_path / "in.zarr")
    infer_volume(src, str(tmp_path / "ref.zarr"), functools.partial(AffinePredictor, 1 / 255), "affine", CFG)
    slow = functools.partial(AffinePredictor, 1 / 255, 0.0, 0.08)  # ~0.2 s per block
    out = tmp_path / "out.zarr"
    result: dict = {}

    def run() -> None:
        with Client(address) as client:
            try:
                result["summary"] = infer_volume(src, str(out), slow, "affine", CFG, client=client)
            except BaseException as e:  # surfaced by the assertion below
                result["error"] = e

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
            try:
                done = 24 - len(open_prediction_for_blocks(out).pending())
            except Exception:  # the store is not created yet
                continue
        assert 4 <= done < 22, f"blocks done when killing: {done}"
        os.killpg(workers[0].pid, signal.SIGKILL)
        workers[0].wait()
    finally:
        runner.join(timeout=120)
    assert "error" not in result, result.get("error")
    assert result["summary"]["blocks"] == 24
    assert open_volume(out).is_complete
    assert _files(out / "s0") == _files(tmp_path / "ref.zarr" / "s0")
