"""The Prefect task of the ingest stage: :mod:`storage.ingest_stage` with progress and retries.

The stage checks every header and output before it writes, and returns a small typed
summary (never pixel data).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.ingest_config import IngestConfig
from storage.ingest_stage import IngestResult, ingest_stage
from storage.workspace import Workspace
from tasks.progress import RunProgress, stage_logs
from tasks.retry import is_transient


@task(name="ingest-stack", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=is_transient)
def ingest_stack(sources: list[str], workspace: str, name: str, config: IngestConfig,
                 labels: list[str] | None = None) -> IngestResult:
    """:func:`storage.ingest_stage.ingest_stage` with a progress artifact (slabs); a retry after a
    transient I/O error reuses what is complete."""
    progress = RunProgress("ingest-progress", f"ingest {name}", total=1, unit="slabs")
    with stage_logs():
        return ingest_stage(sources, Workspace(workspace), name, config, labels, progress.update)
