"""The Prefect task of the augment stage: :mod:`unet.augment_stage` with progress and retries.

The samples go straight from the Dask workers into ``datasets/<name>.zarr``; the task
returns a small typed result.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.workspace import Workspace
from tasks.cluster import cluster
from tasks.observe import publish_png
from tasks.progress import RunProgress, stage_logs
from tasks.retry import is_transient
from unet.augment_stage import AugmentResult, AugmentStageConfig, augment_stage


# Resumable (a ledger of finished groups), so a retry after a transient I/O error continues.
@task(name="generate-training-set", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=is_transient)
def generate_training_set(workspace: str, image: str, labels: str, dataset: str, config: AugmentStageConfig,
                          dask_address: str | None = None, num_workers: int | None = None) -> AugmentResult:
    """:func:`unet.augment_stage.augment_stage` with a progress artifact (groups) and a preview artifact."""
    progress = RunProgress("augment-progress", f"augment {dataset}", 1, unit="groups")
    with stage_logs(), cluster(dask_address) as client:
        result = augment_stage(Workspace(workspace), image, labels, dataset, config, client=client,
                               num_workers=num_workers, progress=progress.update)
    if result.preview:
        publish_png("augment-preview", f"Augmentation preview: {dataset}", result.preview,
                    "Left: source slice, right: augmented sample (membranes in red).")
    return result
