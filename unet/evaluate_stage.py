"""The evaluate stage: a prediction and/or a segmentation vs labels → ``reports/<run>/``, no Prefect.

Writes ``metrics.json`` (ISBI 2012 scores of a uint8 membrane probability volume) and
``segmentation-metrics.json`` (V_rand, V_info of cell labels) and returns them in a small
frozen :class:`EvaluateResult`. Volumes are streamed in slabs: memory stays at a few
slices of any volume size.

``EvaluateConfig.slices`` restricts scoring to some slices (each report records them under
``"slices"``, null for every slice); ``held_out`` scores a second selection on its own in the
same pass, under ``metrics.json["held_out"]`` (the pipeline's validation slices beside the
whole volume).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.errors import ShapeMismatchError
from storage.files import check_report_target, write_json
from storage.volume import open_volume
from storage.workspace import Workspace, is_path
from unet.labels import Polarity, check_labels, membrane_mask
from unet.metrics import DEFAULT_THRESHOLDS, check_thresholds, merge_rows, score_rows, summarize
from unet.split import parse_slices, runs_of

Progress = Callable[[int, int], None]
SLAB_Z = 8  # slices read at once
# Bound of a selection's form check before the volume's depth is known (no billion-entry lists).
MAX_SLICES = 1 << 20


def select_slices(text: str, n_slices: int, field: str = "slices") -> list[int] | None:
    """The sorted indices of the selection ``text`` ('20-29', '0-9,15', inclusive) in a volume of
    ``n_slices`` slices; None (every slice) for an empty text. A bad selection raises a one-line
    ValueError naming ``field`` (and the volume's depth when it reaches beyond it)."""
    if not text:
        return None
    try:
        return sorted(parse_slices(text, n_slices))
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None


class EvaluateConfig(BaseModel):
    """How labels are read and which thresholds are swept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    polarity: Polarity = Field("zero_is_membrane", description="Which label value is membrane "
                               "(ISBI: zero_is_membrane, 255 = interior).")
    thresholds: tuple[float, ...] = Field(DEFAULT_THRESHOLDS, description="Membrane thresholds swept for "
                                          "V_rand / V_info / ISBI pixel error (default 0.0 to 1.0 by 0.1).")
    slices: str = Field("", description="Slices scored, inclusive ranges: '20-29' or '0-9,15' (e.g. the "
                        "held-out validation slices). Empty: every slice.")

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        check_thresholds(value)
        return value

    @field_validator("slices")
    @classmethod
    def _slices(cls, value: str) -> str:
        value = value.replace(" ", "")
        select_slices(value, MAX_SLICES)  # the form only: the depth is checked when scoring starts
        return value


class EvaluateResult(BaseModel):
    """The report folder and the scores written there (``None`` for what was not scored)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    report_dir: str
    metrics: dict[str, Any] | None = None
    segmentation: dict[str, Any] | None = None


def score_volume(prediction_path: str, labels_path: str, polarity: Polarity,
                 thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS, progress: Progress | None = None,
                 slices: Sequence[int] | None = None) -> dict[str, Any]:
    """ISBI-2012 scores of a prediction volume (uint8 0..255 membrane probability, z, y, x)
    against a label volume of the same shape, streamed in slabs of ``SLAB_Z`` slices; only the
    slice indices ``slices`` when given."""
    return score_selections(prediction_path, labels_path, polarity, [slices], thresholds, progress)[0]


def score_selections(prediction_path: str, labels_path: str, polarity: Polarity,
                     selections: Sequence[Sequence[int] | None],
                     thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS, progress: Progress | None = None
                     ) -> list[dict[str, Any]]:
    """:func:`score_volume` of each selection of slice indices (None: every slice), in one pass:
    each slice is read and scored once, whichever selections hold it."""
    pred, lab = open_volume(prediction_path), open_volume(labels_path)
    if pred.shape != lab.shape:
        raise ShapeMismatchError(f"prediction {pred.path} has shape {pred.shape} but labels "
                                 f"{lab.path} have {lab.shape}")
    if pred.dtype.kind != "u" or pred.dtype.itemsize != 1:
        raise ValueError(f"prediction {pred.path} must be uint8 membrane probabilities 0..255, "
                         f"got {pred.dtype}")
    nz = pred.shape[0]
    groups = [set(range(nz)) if s is None else set(s) for s in selections]
    todo = sorted(set().union(*groups))
    if not todo or todo[0] < 0 or todo[-1] >= nz or not all(groups):
        raise ValueError(f"slice selections must be non-empty and within 0..{nz - 1}")
    rows: list[list[dict[str, float]] | None] = [None] * len(groups)
    done = 0
    for z in runs_of(todo, SLAB_Z):
        labels = lab.read(z)
        check_labels(labels, polarity, f"labels {lab.path} (slices {z.start}..{z.stop})")
        probs, membrane = pred.read(z) / 255.0, membrane_mask(labels, polarity)
        for i in range(z.stop - z.start):
            one = score_rows(probs[i], membrane[i], thresholds)
            for k, group in enumerate(groups):
                if z.start + i in group:
                    before = rows[k]
                    rows[k] = one if before is None else merge_rows(before, one)
        done += z.stop - z.start
        if progress is not None:
            progress(done, len(todo))
    return [summarize(r) for r in rows if r is not None]


def evaluate_stage(workspace: Workspace, labels: str, run: str, cfg: EvaluateConfig, *,
                   prediction: str | None = None, segmentation: str | None = None, held_out: str = "",
                   progress: Progress | None = None, overwrite: bool = False) -> EvaluateResult:
    """Score ``prediction`` (a name in predictions/ or a path) and/or ``segmentation`` (a name in
    segmentations/ or a path) against ``labels/<labels>.zarr``; write the reports of ``run``.
    Only ``cfg.slices`` are scored when given; ``held_out`` (a selection too) scores those slices
    of the prediction again on their own, under ``metrics.json["held_out"]``. A bad selection is
    refused, and so is a report of ``run`` made from other inputs or slices (both before scoring)
    unless ``overwrite``."""
    if prediction is None and segmentation is None:
        raise ValueError("evaluate needs a prediction, a segmentation, or both")
    if held_out and prediction is None:
        raise ValueError(f"held_out {held_out!r} scores slices of a prediction: give one")
    labels_path = workspace.labels(labels)
    depth = open_volume(labels_path).shape[0]
    held_out = held_out.replace(" ", "")
    chosen, held = select_slices(cfg.slices, depth), select_slices(held_out, depth, "held_out")
    identity = {"polarity": cfg.polarity, "slices": cfg.slices or None}
    for name, key, given, where in (("metrics.json", "prediction", prediction, workspace.prediction),
                                    ("segmentation-metrics.json", "segmentation", segmentation,
                                     workspace.segmentation)):
        if given is not None:
            made_from = {key: given if is_path(given) else where(given), "labels": labels_path, **identity}
            if key == "prediction":
                made_from["held_out.slices"] = held_out or None
            check_report_target(workspace.report_file(run, name), made_from, overwrite=overwrite)
    metrics = seg = None
    if prediction is not None:
        path = prediction if is_path(prediction) else workspace.prediction(prediction)
        scores, *rest = score_selections(path, labels_path, cfg.polarity, [chosen] + ([held] if held else []),
                                         tuple(cfg.thresholds), progress)
        metrics = {"prediction": path, "labels": labels_path, **identity, **scores}
        if rest:
            metrics["held_out"] = {"slices": held_out, **rest[0]}
        write_json(workspace.report_file(run, "metrics.json"), metrics)
    if segmentation is not None:
        from storage.segmentation import open_segmentation
        from unet.segment_metrics import score_segmentation

        path = segmentation if is_path(segmentation) else workspace.segmentation(segmentation)
        scores = score_segmentation(open_segmentation(path), open_volume(labels_path), cfg.polarity, progress,
                                    slices=chosen)
        seg = {"segmentation": path, "labels": labels_path, **identity, **scores}
        write_json(workspace.report_file(run, "segmentation-metrics.json"), seg)
    return EvaluateResult(report_dir=workspace.report_dir(run), metrics=metrics, segmentation=seg)
