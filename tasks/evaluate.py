"""The Prefect task of the evaluate stage: :mod:`unet.evaluate_stage` with a progress artifact."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.workspace import Workspace
from tasks.progress import RunProgress, stage_logs
from unet.evaluate_stage import EvaluateConfig, EvaluateResult, evaluate_stage, score_volume

__all__ = ["evaluate", "score_volume"]


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(workspace: str, labels: str, run: str, config: EvaluateConfig, prediction: str | None = None,
             segmentation: str | None = None, overwrite: bool = False, held_out: str = "") -> EvaluateResult:
    """Score a prediction and/or a segmentation; writes reports/<run>/metrics.json (and
    segmentation-metrics.json; ``held_out``: those slices scored on their own too)."""
    progress = RunProgress("evaluate", f"scoring {prediction or segmentation}", 1, "slices")
    with stage_logs():
        return evaluate_stage(Workspace(workspace), labels, run, config, prediction=prediction,
                              segmentation=segmentation, held_out=held_out, progress=progress.update,
                              overwrite=overwrite)
