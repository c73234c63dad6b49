"""Train-stage tasks: train a U-Net, then render validation predictions beside their labels."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.dataset import open_training_set
from storage.files import write_png
from storage.volume import open_volume
from storage.workspace import Workspace
from tasks.observe import artifact_key, evenly_spaced, preview_strip, thumbnail_data_uri
from tasks.progress import RunProgress, run_logger
from unet.labels import polarity_of_dataset
from unet.model import UNetConfig
from unet.train import TrainConfig


@task(name="train-unet", cache_policy=NO_CACHE)
def train_model(workspace: str, dataset: str, val_image: str, val_labels: str, val_slices: tuple[int, int],
                run: str, unet: UNetConfig, train: TrainConfig, resume: bool = False,
                overwrite: bool = False, report_slices: tuple[int, int] | None = None) -> dict[str, Any]:
    """Train on ``datasets/<dataset>.zarr``, validate on slices of ``volumes/<val_image>`` /
    ``labels/<val_labels>``; files go to ``models/<run>/``. Returns paths and best metrics.

    ``val_slices`` (half-open z range) pick the best checkpoint; ``report_slices`` (optional,
    same volumes) score it once at the end. Both are refused when the training set was
    generated from any of them, unless ``train.allow_val_overlap``."""
    import torch

    from unet.train import ValidationData, check_held_out
    from unet.train import train as train_loop

    ws = Workspace(workspace)
    ts = open_training_set(ws.dataset(dataset))
    polarity = train.polarity or polarity_of_dataset(ts.attrs)
    image_vol, label_vol = open_volume(ws.volume(val_image)), open_volume(ws.labels(val_labels))
    val = ValidationData.from_volumes(image_vol, label_vol, tuple(val_slices), polarity)  # type: ignore[arg-type]
    check_held_out(ts, val, train.allow_val_overlap)  # before the GPU work is set up
    report = None
    if report_slices is not None:
        report = ValidationData.from_volumes(image_vol, label_vol, tuple(report_slices),  # type: ignore[arg-type]
                                             polarity)
    log = run_logger()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log.info("training %s on %s (%d samples of %s), validating on %s z=%s, device %s",
             run, ts.path, ts.n_samples, ts.image.shape[1:], val_image, list(val_slices),
             torch.cuda.get_device_name() if device == "cuda" else "cpu")
    progress = RunProgress(artifact_key(f"train-{run}"), f"training {run}", train.steps, "steps")
    result = train_loop(ts, val, ws.model_dir(run), unet, train, report=report, resume=resume,
                        overwrite=overwrite, device=device, progress=progress.update)
    best = result.best_metrics
    log.info("trained %s: %d steps, %.1f images/s (validation included; %.1f s of it blocked on "
             "validation), best V_rand %.4f at step %s (threshold %s)", run, result.step,
             result.train_images_per_s, result.val_blocking_s, best.get("v_rand", float("nan")),
             best.get("step"), best.get("v_rand_threshold"))
    if result.report_metrics:
        log.info("best checkpoint on the report slices z=%s: V_rand %.4f (threshold %s), ISBI pixel "
                 "error %.4f", list(report_slices or ()), result.report_metrics["v_rand"],
                 result.report_metrics["v_rand_threshold"], result.report_metrics["isbi_pixel_error"])
    return {"model_dir": result.model_dir, "last_checkpoint": result.last_checkpoint,
            "best_checkpoint": result.best_checkpoint, "step": result.step,
            "best_metrics": result.best_metrics, "report_metrics": result.report_metrics,
            "final_loss": result.final_loss, "train_images_per_s": result.train_images_per_s,
            "val_blocking_s": result.val_blocking_s, "wall_s": result.wall_s}


@task(name="validation-preview", cache_policy=NO_CACHE, retries=1)
def validation_preview(workspace: str, checkpoint: str, val_image: str, val_labels: str,
                       val_slices: tuple[int, int], run: str, n_slices: int = 2) -> dict[str, Any]:
    """PNG ``reports/<run>/validation.png``: rows of image | membrane probability | label for
    ``n_slices`` validation slices, predicted by ``checkpoint``. Returns path and a thumbnail URI."""
    import torch

    from unet.checkpoint import load_model
    from unet.train import predict_slices

    ws = Workspace(workspace)
    z0, z1 = val_slices
    zs = evenly_spaced(z0, z1, n_slices)
    image_vol, label_vol = open_volume(ws.volume(val_image)), open_volume(ws.labels(val_labels))
    images = np.stack([image_vol.read(slice(z, z + 1))[0] for z in zs])
    labels = np.stack([label_vol.read(slice(z, z + 1))[0] for z in zs])
    model, _ = load_model(checkpoint, map_location="cuda" if torch.cuda.is_available() else "cpu")
    prob = predict_slices(model, images)
    rows = [preview_strip(img, (p * 255).round().astype(np.uint8), lab)
            for img, p, lab in zip(images, prob, labels, strict=True)]
    sep = np.full((4, rows[0].shape[1]), 255, np.uint8)
    strip = np.concatenate([part for r in rows for part in (r, sep)][:-1], axis=0)
    path = os.path.join(ws.report_dir(run), "validation.png")
    write_png(path, strip)
    return {"path": path, "z": zs, "thumb": thumbnail_data_uri(strip)}
