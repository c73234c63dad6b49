"""The segment stage: membrane probabilities → ``segmentations/<name>.zarr``, without Prefect.

Runs the three passes of :mod:`unet.segment_run` (seeds per block, one merge, watershed
per block); passes 1 and 3 fan out over groups of blocks (:func:`storage.fanout.fan_out`:
local threads, or a Dask cluster whose workers share the store). Resumable: a re-run
does only the blocks the store's ledgers lack.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from storage.fanout import fan_out
from storage.volume import store_exists
from storage.workspace import Workspace, is_path
from unet.segment_config import SegmentConfig
from unet.segment_run import finish, label_blocks, merge, prepare, seed_blocks

Progress = Callable[[int, int], None]
GROUPS_PER_PASS = 64  # tasks per pass: enough to balance a cluster, few enough to schedule


class SegmentResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    segmentation: str
    source: str
    n_cells: int
    blocks: int
    voxels: int
    seconds: float
    voxels_per_s: float


def resolve_probability(workspace: Workspace, probability: str) -> str:
    """A path as given; else ``predictions/<name>.zarr`` if it exists, else ``volumes/<name>.zarr``
    (an ingested probability stack)."""
    if is_path(probability):
        return probability
    prediction = workspace.prediction(probability)
    return prediction if store_exists(prediction) else workspace.volume(probability)


def default_name(probability_path: str) -> str:
    return probability_path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")


def groups_of(ids: Sequence[int], n_groups: int = GROUPS_PER_PASS) -> list[list[int]]:
    size = max(1, -(-len(ids) // n_groups))
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def segment_stage(workspace: Workspace, probability: str, cfg: SegmentConfig, *, name: str | None = None,
                  overwrite: bool = False, client: Any = None, num_workers: int | None = 1,
                  progress: Progress | None = None) -> SegmentResult:
    """Create (or resume) ``segmentations/<name>.zarr`` from ``probability`` (a name or a path).

    ``progress(done, total)`` counts block passes (2 per block). ``num_workers`` local threads
    (1 keeps memory at one block and its halo)."""
    t0 = time.perf_counter()
    source = resolve_probability(workspace, probability)
    run = prepare(source, workspace.segmentation(name or default_name(source)), cfg, overwrite)
    total = 2 * run.n_blocks
    done = total - len(run.pending_seeds) - len(run.pending_labels)
    opts: dict[str, Any] = {"shared": (run.job,), "client": client, "num_workers": num_workers,
                            "progress": progress, "total": total, "weight": int}
    fan_out(seed_blocks, groups_of(run.pending_seeds), done=done, **opts)
    n_cells = merge(run.job)
    fan_out(label_blocks, groups_of(run.pending_labels), done=total - len(run.pending_labels), **opts)
    seconds = time.perf_counter() - t0
    finish(run.job, seconds=round(seconds, 3))
    return SegmentResult(segmentation=run.job.segmentation, source=source, n_cells=n_cells,
                         blocks=run.n_blocks, voxels=run.voxels, seconds=round(seconds, 3),
                         voxels_per_s=run.voxels / seconds if seconds > 0 else 0.0)
