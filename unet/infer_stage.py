"""The infer stage: a checkpoint over a whole volume → ``predictions/<name>.zarr``, without Prefect.

Wraps :mod:`unet.inference` (prepare, run blocks, finish): in this process one stream over
every pending block (draining the pipeline between groups would idle the device), or on
a Dask cluster one task per group with a GPU each (:func:`storage.fanout.fan_out`). A
re-run resumes an unfinished prediction made with the same model and config.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from storage.workspace import Workspace, is_path, store_name
from unet.infer_config import InferConfig

Progress = Callable[[int, int], None]
log = logging.getLogger("emseg.infer")


class InferResult(BaseModel):
    """Where the prediction is, what was run (blocks, voxels) and how fast."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prediction: str
    voxels: int
    blocks: int
    blocks_run: int
    seconds: float
    voxels_per_s: float
    model_sha256: str
    shape: tuple[int, ...]
    voxel_size_nm: tuple[float, ...]
    levels: tuple[str, ...]
    # reports/<name>/infer-z<z>.png: raw | membrane probability of 3 slices, to look at first.
    previews: tuple[str, ...] = ()


def resolve_volume(workspace: Workspace, volume: str) -> str:
    """A name in the workspace (``volumes/<name>.zarr``) or a path/URL to a volume."""
    return volume if is_path(volume) else workspace.volume(volume)


def default_name(volume_path: str) -> str:
    return store_name(volume_path)


def infer_previews(workspace: Workspace, volume_path: str, prediction_path: str) -> tuple[str, ...]:
    """``reports/<prediction name>/infer-z<z>.png`` of 3 slices (raw | membrane probability, at most
    2048 px a panel); the paths. A failure to draw them is logged, not raised: the prediction is
    written and complete by then."""
    from unet.volume_previews import save_previews

    try:
        report = workspace.report_dir(store_name(prediction_path))
        return tuple(p["path"] for p in save_previews(volume_path, report, prediction_path, prefix="infer"))
    except (OSError, ValueError) as e:
        log.warning("no preview of %s: %s", prediction_path, e)
        return ()


def check_model_fits_volume(workspace: Workspace, volume: str, checkpoint: str, cfg: InferConfig) -> None:
    """Refuse, before a server starts or anything is written, a checkpoint that cannot be read, a
    tile that does not fit the model, or a voxel-size mismatch (:mod:`unet.voxel_size`): what
    :func:`infer_stage` checks itself, for the ``--prefect`` path, whose flow run would otherwise
    fail only after the server had started. Reads the checkpoint on the CPU; builds no model."""
    from unet.checkpoint import config_from_checkpoint, load_checkpoint, recorded_training_data
    from unet.predictor import check_fits_model

    payload = load_checkpoint(checkpoint, map_location="cpu")
    check_fits_model(cfg, config_from_checkpoint(payload, checkpoint))
    training = recorded_training_data(payload)
    check_volume_voxel_size(resolve_volume(workspace, volume), training, checkpoint, cfg)


def check_volume_voxel_size(volume_path: str, training_data: dict[str, Any], checkpoint: str,
                            cfg: InferConfig) -> None:
    """:func:`unet.voxel_size.check_voxel_size` of the volume at ``volume_path`` against what the
    checkpoint records of its training data."""
    from storage.volume import open_volume
    from unet.voxel_size import check_voxel_size

    source = open_volume(volume_path)
    check_voxel_size(volume_path, source.voxel_size.as_tuple(), source.attrs.get("voxel_size_unknown", ()),
                     training_data, checkpoint, cfg.allow_voxel_size_mismatch)


def infer_stage(workspace: Workspace, volume: str, checkpoint: str, cfg: InferConfig, *,
                output: str | None = None, overwrite: bool = False, client: Any = None,
                progress: Progress | None = None, previews: bool = True) -> InferResult:
    """Predict membrane probabilities (uint8) for ``volume`` (a workspace name or a path) into
    ``predictions/<output>.zarr`` (default: the volume's name). ``progress(done, total)`` counts
    blocks, those finished by an earlier run included. The model is loaded once before any
    write, so a missing or corrupt checkpoint, a tile that does not fit it, or a volume whose voxel
    size (y, x) differs from the model's training voxel size by more than 10 % (unless
    ``cfg.allow_voxel_size_mismatch``; :mod:`unet.voxel_size`) creates nothing. ``previews=False``
    skips ``reports/<output>/infer-z*.png`` (the pipeline draws its own, with the labels, in its run's
    report folder)."""
    from unet.checkpoint import checkpoint_sha256
    from unet.inference import finish_run, prepare_run, run_pending
    from unet.predictor import cached_predictor, load_predictor, release_predictors

    t0 = time.monotonic()
    volume_path = resolve_volume(workspace, volume)
    prediction_path = workspace.prediction(output or default_name(volume_path))
    factory = functools.partial(load_predictor, checkpoint, cfg)
    try:
        # Checked before any write (raises CheckpointError / ValueError). In process, the model is
        # loaded once for the check and the run reuses it (same factory); for a cluster, whose
        # workers load their own, the checkpoint is only read here, no model built on this device.
        if client is None:
            check_volume_voxel_size(volume_path, cached_predictor(factory).training_data, checkpoint, cfg)
        else:
            check_model_fits_volume(workspace, volume, checkpoint, cfg)
        sha = checkpoint_sha256(checkpoint)
        run = prepare_run(volume_path, prediction_path, factory, sha, cfg, overwrite=overwrite)
        run_pending(run, client=client, progress=progress)
    finally:
        release_predictors()  # the model's (GPU) memory goes back when the stage ends
    summary = finish_run(prediction_path)
    drawn = infer_previews(workspace, volume_path, prediction_path) if previews else ()
    seconds = time.monotonic() - t0
    return InferResult(prediction=prediction_path, voxels=run.voxels, blocks=run.n_blocks,
                       blocks_run=run.pending_blocks, seconds=round(seconds, 3),
                       voxels_per_s=run.voxels / seconds if seconds > 0 else 0.0, model_sha256=sha,
                       shape=tuple(summary["shape"]), voxel_size_nm=tuple(summary["voxel_size_nm"]),
                       levels=tuple(summary["levels"]), previews=drawn)
