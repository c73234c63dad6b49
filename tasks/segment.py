"""The Prefect task of the segment stage: :mod:`unet.segment_stage` with progress, retries and a summary.

Block passes run in this process or, with ``dask_address``, as groups of blocks on a Dask
cluster whose workers share the store.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from storage.workspace import Workspace
from tasks.cluster import cluster
from tasks.progress import RunProgress, stage_logs
from tasks.retry import is_transient
from unet.segment_config import SegmentConfig
from unet.segment_stage import SegmentResult, segment_stage


# NO_CACHE: writes a store. Transient I/O errors are retried, and a retry resumes from the ledgers.
@task(name="segment", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=is_transient)
def segment(workspace: str, probability: str, config: SegmentConfig, name: str | None = None,
            overwrite: bool = False, dask_address: str | None = None) -> SegmentResult:
    """:func:`unet.segment_stage.segment_stage` with a progress artifact (block passes) and a summary."""
    progress = RunProgress("segment-progress", f"segment {probability}", 1, unit="block passes")
    with stage_logs(), cluster(dask_address) as client:
        result = segment_stage(Workspace(workspace), probability, config, name=name, overwrite=overwrite,
                               client=client, progress=progress.update)
    table = "\n".join(f"| {k} | {v} |" for k, v in result.model_dump().items())
    create_markdown_artifact(key="segment-summary", description="Blockwise segmentation summary",
                             markdown=f"# Segmentation: `{result.segmentation}`\n\n| what | value |\n"
                                      f"|---|---|\n{table}\n")
    return result
