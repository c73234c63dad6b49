"""The evaluate flow: a prediction volume vs a label volume → ``reports/<run>/metrics.json``."""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from tasks.evaluate import evaluate
from tasks.observe import publish_metrics_table
from unet.evaluate_stage import EvaluateConfig, EvaluateResult
from unet.labels import Polarity
from unet.metrics import DEFAULT_THRESHOLDS

TABLE_KEYS = ("v_rand", "v_rand_threshold", "v_info", "v_info_threshold", "isbi_pixel_error",
              "isbi_pixel_error_threshold", "pixel_accuracy_at_half", "pixel_accuracy_best",
              "pixel_accuracy_best_threshold", "dice_at_half", "iou_at_half", "n_slices")
SEGMENTATION_KEYS = ("v_rand", "v_info", "n_cells", "n_slices")


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    workspace: str = Field("workspace", description="Workspace root (local path)."),
    prediction: str | None = Field(None, description="Prediction volume: a name (predictions/<name>.zarr) "
                                   "or a path; uint8 membrane probability 0..255."),
    labels: str = Field(..., description="Label volume name (labels/<name>.zarr), same shape."),
    polarity: Polarity = Field("zero_is_membrane", description="Which label value is membrane "
                               "(ISBI: zero_is_membrane, 255 = interior)."),
    run: str = Field(..., description="Report name: writes reports/<run>/metrics.json."),
    thresholds: tuple[float, ...] = Field(DEFAULT_THRESHOLDS, description="Membrane thresholds swept for "
                                          "V_rand / V_info / ISBI pixel error (default 0.0 to 1.0 by 0.1)."),
    slices: str = Field("", description="Slices scored, inclusive ranges: '20-29' or '0-9,15' (e.g. the "
                        "held-out validation slices). Empty: every slice."),
    held_out: str = Field("", description="Slices of the prediction also scored on their own (e.g. the "
                          "validation slices beside the whole volume), under metrics.json's held_out."),
    segmentation: str | None = Field(None, description="Cell labels to score too: a name "
                                     "(segmentations/<name>.zarr) or a path; writes "
                                     "reports/<run>/segmentation-metrics.json."),
    overwrite: bool = Field(False, description="Replace a report of this run made from other inputs "
                            "(without it, such a report is refused)."),
) -> EvaluateResult:
    """Score a prediction volume with the ISBI 2012 metrics (and/or a segmentation with V_rand,
    V_info); returns both (``metrics``, ``segmentation``), None for what was not scored."""
    cfg = EvaluateConfig(polarity=polarity, thresholds=tuple(thresholds), slices=slices)
    result = evaluate(workspace, labels, run, cfg, prediction=prediction, segmentation=segmentation,
                      overwrite=overwrite, held_out=held_out)
    if result.metrics is not None:
        scored = [("slices", result.metrics), *([("held-out slices", result.metrics["held_out"])]
                                                if "held_out" in result.metrics else [])]
        publish_metrics_table(f"evaluate-{run}", [{"run": run, "scope": f"{what} {m.get('slices') or 'all'}",
                                                   **{k: m[k] for k in TABLE_KEYS}} for what, m in scored],
                              f"ISBI 2012 scores of {prediction} against {labels} (scope: the slices scored)")
    if result.segmentation is not None:
        publish_metrics_table(f"evaluate-{run}-segmentation",
                              [{"run": run, **{k: result.segmentation[k] for k in SEGMENTATION_KEYS}}],
                              f"Scores of the cells in {segmentation} against {labels}")
    return result
