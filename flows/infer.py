"""The infer flow: a trained U-Net over a whole volume, blockwise, resumable, optionally on Dask.

Meant for the ``gpu`` work pool (one process drives one GPU). With ``dask_address``,
groups of blocks run on that cluster's workers (started with ``--resources GPU=1``);
the store must then be on a file system (or object store) the workers share.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from storage.workspace import Workspace
from tasks.infer import close_dask_clients, finish_inference, infer_group, prepare_inference
from tasks.progress import RunProgress
from unet.infer_config import InferConfig


def _volume_path(workspace: str, volume: str) -> str:
    """A name in the workspace (``volumes/<name>.zarr``) or a path/URL to a volume."""
    if volume.endswith(".zarr") or "/" in volume or os.sep in volume:
        return volume
    return Workspace(workspace).volume(volume)


def _default_name(volume: str) -> str:
    return os.path.basename(volume.rstrip("/")).removesuffix(".zarr")


class _Progress:
    """Blocks done / total to the Prefect progress artifact and logs, and a rich bar on a terminal."""

    def __init__(self, total: int, done: int, voxels_per_block: float) -> None:
        self.done, self.total, self.vpb = done, total, voxels_per_block
        self.t0, self.done0 = time.monotonic(), done
        self.lock = threading.Lock()
        self.run = RunProgress("infer-progress", "Blockwise inference", total, unit="blocks")
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("infer"), BarColumn(),
                                TextColumn("{task.completed}/{task.total} blocks"),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), transient=False)
            self.bar.start()
            self.task_id = self.bar.add_task("infer", total=total, completed=done, rate="")

    def advance(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            elapsed = time.monotonic() - self.t0
            rate = (self.done - self.done0) * self.vpb / elapsed if elapsed > 0 else 0.0
            self.run.update(self.done, voxels_per_s=f"{rate:.3g}")
            if self.bar is not None:
                self.bar.update(self.task_id, completed=self.done, rate=f"{rate / 1e6:.2f} Mvox/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# Prefect's own annotations type a bare ThreadPoolTaskRunner(...) as TaskRunner[Never].
@flow(name="infer", task_runner=ThreadPoolTaskRunner(max_workers=8))  # type: ignore[arg-type]
def infer_flow(workspace: str, volume: str, checkpoint: str, output: str | None = None,
               config: InferConfig | None = None, dask_address: str | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """Predict membrane probabilities (uint8) for ``volume`` into ``predictions/<output>.zarr``.

    ``volume`` is a workspace volume name or a path; ``output`` defaults to the volume's
    name. A re-run resumes an unfinished prediction made with the same model and config.
    Returns the prediction path, voxels, seconds and voxels/s.
    """
    cfg = config or InferConfig()
    t0 = time.monotonic()
    volume_path = _volume_path(workspace, volume)
    prediction_path = Workspace(workspace).prediction(output or _default_name(volume_path))
    prep = prepare_inference(volume_path, prediction_path, checkpoint, cfg, overwrite)
    job, groups = prep["job"], prep["groups"]
    progress = _Progress(prep["n_blocks"], prep["n_blocks"] - prep["pending_blocks"],
                         prep["voxels"] / prep["n_blocks"])
    try:
        if dask_address:
            futures = [infer_group.submit(job, g, dask_address) for g in groups]
            for fut in as_completed(futures):
                progress.advance(fut.result()["blocks"])
        else:
            # In this process: one task streams every pending block (draining the pipeline between
            # groups would idle the GPU); a retry redoes only the blocks the ledger lacks.
            pending = [i for g in groups for i in g]
            if pending:
                infer_group(job, pending, None, on_block=lambda _b: progress.advance())
    finally:
        progress.close()
        close_dask_clients()
    seconds = time.monotonic() - t0
    stats = {"prediction": prediction_path, "voxels": prep["voxels"], "blocks": prep["n_blocks"],
             "blocks_run": prep["pending_blocks"], "seconds": round(seconds, 3),
             "voxels_per_s": prep["voxels"] / seconds if seconds > 0 else 0.0,
             "model_sha256": prep["model_sha256"]}
    finish_inference(prediction_path, stats)
    return stats
