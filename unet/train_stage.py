"""The train stage: a training set → ``models/<run>/`` and ``reports/<run>/validation.png``, no Prefect.

One function, :func:`train_stage`: reads the training set and the validation slices
through ``storage``, runs :func:`unet.train.train`, renders a preview of the best
checkpoint, and returns a small frozen :class:`TrainStageResult`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from storage.dataset import open_training_set
from storage.files import write_png
from storage.volume import open_volume
from storage.workspace import Workspace
from unet.labels import polarity_of_dataset
from unet.model import UNetConfig
from unet.preview import PANEL_CAPTIONS, evenly_spaced, label_panel, preview_strip
from unet.split import default_split, parse_slice_range
from unet.train import TrainConfig

Progress = Callable[..., None]
Scalar = float | int | str | bool | None
log = logging.getLogger("emseg.train")


class TrainStageConfig(BaseModel):
    """The train stage's parameters besides the names of its inputs and outputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: TrainConfig = Field(default_factory=TrainConfig, description="Training parameters.")
    unet: UNetConfig = Field(default_factory=UNetConfig, description="U-Net architecture.")
    val_slices: str = Field("", description="Validation slices 'first-last' (inclusive); empty: the last "
                            "third of the validation volume (unet.split.default_split).")
    report_slices: str = Field("", description="Reporting slices 'first-last', apart from val_slices; the "
                               "best checkpoint is scored on them once at the end. Empty: none.")
    resume: bool = Field(False, description="Insist on continuing models/<run>/checkpoint-last.pt (an "
                         "error if there is none); without it a run of the same settings continues anyway.")
    overwrite: bool = Field(False, description="Start again over an existing run of that name.")
    preview: bool = Field(True, description="Render reports/<run>/validation.png with the best checkpoint.")


class TrainStageResult(BaseModel):
    """Where the run is, how far it got and its best scores (scalars only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: str
    best_checkpoint: str | None
    last_checkpoint: str
    step: int
    val_slices: str
    best_metrics: dict[str, Scalar]
    report_metrics: dict[str, Scalar] = {}
    train_images_per_s: float
    val_blocking_s: float = 0.0
    preview: str | None = None
    preview_z: tuple[int, ...] = ()
    seconds: float


def _scalars(metrics: dict[str, Any]) -> dict[str, Scalar]:
    return {k: v for k, v in metrics.items() if not isinstance(v, list | dict)}


def train_stage(workspace: Workspace, dataset: str, val_image: str, val_labels: str, run: str,
                cfg: TrainStageConfig, *, progress: Progress | None = None) -> TrainStageResult:
    """Train on ``datasets/<dataset>.zarr``, validate on slices of ``volumes/<val_image>`` /
    ``labels/<val_labels>``; files go to ``models/<run>/``. ``progress(step, total, **metrics)``.

    The validation (and report) slices are refused when the training set was generated from
    any of them, unless ``cfg.train.allow_val_overlap`` (checked before the device is set up).
    """
    from unet.predictor import resolve_device
    from unet.train import ValidationData, check_held_out, train

    t0 = time.perf_counter()
    image_vol, label_vol = open_volume(workspace.volume(val_image)), open_volume(workspace.labels(val_labels))
    val_slices = cfg.val_slices or default_split(image_vol.shape[0]).val
    z = parse_slice_range(val_slices)
    ts = open_training_set(workspace.dataset(dataset))
    polarity = cfg.train.polarity or polarity_of_dataset(ts.attrs)
    val = ValidationData.from_volumes(image_vol, label_vol, z, polarity)
    check_held_out(ts, val, cfg.train.allow_val_overlap)
    report = None
    if cfg.report_slices:
        report = ValidationData.from_volumes(image_vol, label_vol,
                                             parse_slice_range(cfg.report_slices, "report slices"), polarity)
    device = resolve_device("auto")
    log.info("training %s on %s (%d samples of %s), validating on %s z=%s, device %s", run, ts.path,
             ts.n_samples, ts.image.shape[1:], val_image, list(z), device)
    result = train(ts, val, workspace.model_dir(run), cfg.unet, cfg.train, report=report, resume=cfg.resume,
                   overwrite=cfg.overwrite, device=device, progress=progress)
    best = _scalars(result.best_metrics)
    log.info("trained %s: %d steps, %.1f images/s, best V_rand %s at step %s", run, result.step,
             result.train_images_per_s, best.get("v_rand"), best.get("step"))
    preview: str | None = None
    zs: list[int] = []
    if cfg.preview and result.best_checkpoint:
        preview, zs = validation_preview(workspace, result.best_checkpoint, val_image, val_labels, z, run)
    return TrainStageResult(
        model_dir=result.model_dir, best_checkpoint=result.best_checkpoint,
        last_checkpoint=result.last_checkpoint, step=result.step, val_slices=val_slices, best_metrics=best,
        report_metrics=_scalars(result.report_metrics), train_images_per_s=result.train_images_per_s,
        val_blocking_s=result.val_blocking_s, preview=preview, preview_z=tuple(zs),
        seconds=round(time.perf_counter() - t0, 3))


def validation_preview(workspace: Workspace, checkpoint: str, val_image: str, val_labels: str,
                       val_slices: tuple[int, int], run: str, n_slices: int = 2) -> tuple[str, list[int]]:
    """PNG ``reports/<run>/validation.png``: rows of image | membrane probability | label for
    ``n_slices`` validation slices, predicted by ``checkpoint``. Returns its path and the slices."""
    from unet.checkpoint import load_model
    from unet.predictor import resolve_device
    from unet.train import predict_slices

    zs = evenly_spaced(val_slices[0], val_slices[1], n_slices)
    image_vol, label_vol = open_volume(workspace.volume(val_image)), open_volume(workspace.labels(val_labels))
    images = np.stack([image_vol.read(slice(z, z + 1))[0] for z in zs])
    labels = np.stack([label_vol.read(slice(z, z + 1))[0] for z in zs])
    model, _ = load_model(checkpoint, map_location=resolve_device("auto"))
    prob = predict_slices(model, images)
    polarity = polarity_of_dataset(dict(label_vol.attrs))
    rows = [preview_strip(img, (p * 255).round().astype(np.uint8), label_panel(lab, polarity),
                          captions=(f"raw z={z}", *PANEL_CAPTIONS[1:]))
            for z, img, p, lab in zip(zs, images, prob, labels, strict=True)]
    sep = np.full((4, rows[0].shape[1]), 255, np.uint8)
    strip = np.concatenate([part for r in rows for part in (r, sep)][:-1], axis=0)
    path = workspace.report_file(run, "validation.png")
    write_png(path, strip)
    return path, zs
