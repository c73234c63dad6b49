"""Segment-stage task: a membrane probability volume → cell labels, blockwise and resumable.

Thin: :mod:`unet.segment_run` does the work (seeds per block, a global merge, a watershed
per block); this task runs the per-block passes in this process or, with
``dask_address``, as groups of blocks on a Dask cluster whose workers share the store,
and reports progress to the run page.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from tasks.progress import RunProgress, run_logger
from tasks.retry import is_transient
from unet.segment_config import SegmentConfig
from unet.segment_run import SegmentJob, finish, label_blocks, merge, prepare, seed_blocks

GROUPS_PER_PASS = 64  # Dask tasks per pass: enough to balance a cluster, few enough to schedule


def _groups(ids: Sequence[int]) -> list[list[int]]:
    size = max(1, -(-len(ids) // GROUPS_PER_PASS))
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _run_pass(fn: Callable[..., int], job: SegmentJob, ids: list[int], dask_address: str | None,
              tick: Callable[[int], None]) -> None:
    if not dask_address:
        fn(job, ids, tick)
        return
    from distributed import Client, as_completed

    with Client(dask_address, timeout="30s") as client:
        groups = _groups(ids)
        futures = client.map(fn, [job] * len(groups), groups, pure=False)
        for fut in as_completed(futures):
            for _ in range(int(fut.result())):
                tick(-1)


# NO_CACHE: writes a store. Transient I/O errors are retried, and a retry resumes from the ledgers.
@task(name="segment", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=is_transient)
def segment(probability_path: str, segmentation_path: str, config: SegmentConfig, overwrite: bool = False,
            dask_address: str | None = None) -> dict[str, Any]:
    """Create (or resume) ``segmentation_path`` from ``probability_path``; returns path, cells, blocks, s."""
    t0 = time.perf_counter()
    run = prepare(probability_path, segmentation_path, config, overwrite)
    total = 2 * run.n_blocks
    done = total - len(run.pending_seeds) - len(run.pending_labels)
    progress = RunProgress("segment-progress", f"segment {segmentation_path}", total, unit="block passes")
    run_logger().info("segment: %d blocks, %d seed and %d label passes pending", run.n_blocks,
                      len(run.pending_seeds), len(run.pending_labels))

    def tick(_: int) -> None:
        nonlocal done
        done += 1
        progress.update(done)

    _run_pass(seed_blocks, run.job, run.pending_seeds, dask_address, tick)
    n_cells = merge(run.job)
    _run_pass(label_blocks, run.job, run.pending_labels, dask_address, tick)
    seconds = time.perf_counter() - t0
    stats = {"segmentation": segmentation_path, "source": probability_path, "n_cells": n_cells,
             "blocks": run.n_blocks, "voxels": run.voxels, "seconds": round(seconds, 3),
             "voxels_per_s": run.voxels / seconds if seconds > 0 else 0.0}
    finish(run.job, seconds=stats["seconds"])
    try:
        table = "\n".join(f"| {k} | {v} |" for k, v in stats.items())
        create_markdown_artifact(key="segment-summary", description="Blockwise segmentation summary",
                                 markdown=f"# Segmentation: `{segmentation_path}`\n\n| what | value |\n"
                                          f"|---|---|\n{table}\n")
    except MissingContextError:
        pass
    return stats
