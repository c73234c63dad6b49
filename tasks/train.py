"""The Prefect task of the train stage: :mod:`unet.train_stage` (training, then a validation preview)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.workspace import Workspace
from tasks.observe import artifact_key
from tasks.progress import RunProgress, stage_logs
from unet.train_stage import TrainStageConfig, TrainStageResult, train_stage


@task(name="train-unet", cache_policy=NO_CACHE)
def train_model(workspace: str, dataset: str, val_image: str, val_labels: str, run: str,
                config: TrainStageConfig) -> TrainStageResult:
    """:func:`unet.train_stage.train_stage` with a progress artifact (steps) and its logs on the run page."""
    progress = RunProgress(artifact_key(f"train-{run}"), f"training {run}", config.train.steps, "steps")
    with stage_logs():
        return train_stage(Workspace(workspace), dataset, val_image, val_labels, run, config,
                           progress=progress.update)
