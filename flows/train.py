"""The train flow (for the ``gpu`` work pool): training set → ``models/<run>/``, metrics, preview."""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from tasks.observe import publish_metrics_table, publish_summary, thumbnail_of
from tasks.train import train_model
from unet.model import UNetConfig
from unet.train import TrainConfig
from unet.train_stage import TrainStageConfig, TrainStageResult


@flow(name="train", log_prints=True)
def train_flow(
    workspace: str = Field("workspace", description="Workspace root (local path)."),
    dataset: str = Field(..., description="Training set name (datasets/<dataset>.zarr)."),
    val_image: str = Field(..., description="Validation image volume name (volumes/<name>.zarr)."),
    val_labels: str = Field(..., description="Validation label volume name (labels/<name>.zarr)."),
    val_slices: str = Field("", description="Validation slices, an inclusive range 'first-last' (empty: "
                            "the last third of the validation volume, as unet.split.default_split)."),
    run: str = Field(..., description="Run name: files go to models/<run>/ and reports/<run>/."),
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training parameters."),
    unet: UNetConfig = Field(default_factory=UNetConfig, description="U-Net architecture."),
    resume: bool = Field(False, description="Insist on continuing models/<run>/checkpoint-last.pt (same "
                         "step, optimiser, scheduler and RNG states); without it a run of the same "
                         "settings continues anyway."),
    overwrite: bool = Field(False, description="Start again over an existing run of that name."),
    report_slices: str = Field("", description="Reporting slices, an inclusive range 'first-last' apart "
                               "from val_slices: the best checkpoint (picked on val_slices) is scored "
                               "on them once at the end. Empty: no separate report."),
) -> TrainStageResult:
    """Train a U-Net, keep the best checkpoint by validation V_rand, publish metrics and a preview."""
    cfg = TrainStageConfig(train=train, unet=unet, val_slices=val_slices, report_slices=report_slices,
                           resume=resume, overwrite=overwrite)
    result = train_model(workspace, dataset, val_image, val_labels, run, cfg)
    rate = round(result.train_images_per_s, 2)
    rows = [{"run": run, "slices": f"{result.val_slices} (selection)", "steps": result.step,
             "images_per_s": rate, **result.best_metrics}]
    if result.report_metrics:
        rows.append({"run": run, "slices": f"{report_slices} (report)", "steps": result.step,
                     "images_per_s": rate, **result.report_metrics})
    publish_metrics_table(f"train-{run}", rows, f"best validation scores of {run} (selected on slices "
                          f"{result.val_slices}{f', reported on {report_slices}' if report_slices else ''})")
    previews = [{"z": "/".join(map(str, result.preview_z)), "path": result.preview,
                 "thumb": thumbnail_of(result.preview)}] if result.preview else []
    publish_summary(f"train-{run}-summary", f"Training run {run}",
                    {"model dir": result.model_dir, "best checkpoint": str(result.best_checkpoint)},
                    result.best_metrics, previews)
    return result
