"""The train flow (for the ``gpu`` work pool): training set → ``models/<run>/``, metrics, preview."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from pydantic import Field

from tasks.observe import publish_metrics_table, publish_summary
from tasks.split import volume_split
from tasks.train import train_model, validation_preview
from unet.model import UNetConfig
from unet.split import parse_slice_range
from unet.train import TrainConfig


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
    resume: bool = Field(False, description="Continue models/<run>/checkpoint-last.pt (same step, "
                         "optimiser, scheduler and RNG states)."),
    overwrite: bool = Field(False, description="Start again over an existing run of that name."),
    report_slices: str = Field("", description="Reporting slices, an inclusive range 'first-last' apart "
                               "from val_slices: the best checkpoint (picked on val_slices) is scored "
                               "on them once at the end. Empty: no separate report."),
) -> dict[str, Any]:
    """Train a U-Net, keep the best checkpoint by validation V_rand, publish metrics and a preview."""
    t0 = time.perf_counter()
    if not val_slices:
        val_slices = volume_split(workspace, val_image).val
    z = parse_slice_range(val_slices)
    report_z = parse_slice_range(report_slices, "report slices") if report_slices else None
    result = train_model(workspace, dataset, val_image, val_labels, z, run, unet, train,
                         resume=resume, overwrite=overwrite, report_slices=report_z)
    best = {k: v for k, v in result["best_metrics"].items() if not isinstance(v, list | dict)}
    reported = {k: v for k, v in result["report_metrics"].items() if not isinstance(v, list | dict)}
    preview = None
    if result["best_checkpoint"]:
        preview = validation_preview(workspace, result["best_checkpoint"], val_image, val_labels, z, run)
    rows = [{"run": run, "slices": f"{val_slices} (selection)", "steps": result["step"],
             "images_per_s": round(result["train_images_per_s"], 2), **best}]
    if reported:
        rows.append({"run": run, "slices": f"{report_slices} (report)", "steps": result["step"],
                     "images_per_s": round(result["train_images_per_s"], 2), **reported})
    publish_metrics_table(f"train-{run}", rows, f"best validation scores of {run} (selected on slices "
                          f"{val_slices}{f', reported on {report_slices}' if reported else ''})")
    previews = [{"z": "/".join(map(str, preview["z"])), "path": preview["path"], "thumb": preview["thumb"]}] \
        if preview else []
    publish_summary(f"train-{run}-summary", f"Training run {run}",
                    {"model dir": result["model_dir"], "best checkpoint": str(result["best_checkpoint"])},
                    best, previews)
    return {"model_dir": result["model_dir"], "best_checkpoint": result["best_checkpoint"],
            "last_checkpoint": result["last_checkpoint"], "best_metrics": best, "step": result["step"],
            "report_metrics": reported, "train_images_per_s": result["train_images_per_s"],
            "preview": preview["path"] if preview else None,
            "seconds": round(time.perf_counter() - t0, 3)}
