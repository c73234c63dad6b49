"""The evaluate flow: a prediction volume vs a label volume → ``reports/<run>/metrics.json``."""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import Field

from storage.workspace import Workspace
from tasks.evaluate import evaluate_prediction
from tasks.observe import publish_metrics_table
from unet.labels import Polarity
from unet.metrics import DEFAULT_THRESHOLDS

TABLE_KEYS = ("v_rand", "v_rand_threshold", "v_info", "v_info_threshold", "pixel_accuracy",
              "pixel_accuracy_best", "pixel_accuracy_best_threshold", "pixel_error", "dice", "iou",
              "n_slices")


def resolve_prediction(workspace: str, prediction: str) -> str:
    """A path (contains '/' or ends in .zarr) as given, else predictions/<name>.zarr."""
    if "/" in prediction or prediction.endswith(".zarr"):
        return prediction
    return Workspace(workspace).prediction(prediction)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    workspace: str = Field("workspace", description="Workspace root (local path)."),
    prediction: str = Field(..., description="Prediction volume: a name (predictions/<name>.zarr) or a "
                            "path; uint8 membrane probability 0..255."),
    labels: str = Field(..., description="Label volume name (labels/<name>.zarr), same shape."),
    polarity: Polarity = Field("zero_is_membrane", description="Which label value is membrane "
                               "(ISBI: zero_is_membrane, 255 = interior)."),
    run: str = Field(..., description="Report name: writes reports/<run>/metrics.json."),
    thresholds: tuple[float, ...] = Field(DEFAULT_THRESHOLDS, description="Membrane thresholds tried "
                                          "for V_rand / V_info."),
) -> dict[str, Any]:
    """Score a prediction volume with the ISBI 2012 metrics; returns the metrics."""
    ws = Workspace(workspace)
    report = evaluate_prediction(resolve_prediction(workspace, prediction), ws.labels(labels), polarity,
                                 ws.report_dir(run), tuple(thresholds))
    publish_metrics_table(f"evaluate-{run}", [{"run": run, **{k: report[k] for k in TABLE_KEYS}}],
                          f"ISBI 2012 scores of {prediction} against {labels}")
    return report
