"""Blockwise inference runs: prepare the output, run groups of blocks, finish.

The pieces: geometry in :mod:`unet.blocks` (blocks, halos, tiles) and :mod:`unet.blending`
(windows, and the audit of context and edge weight); one block on the device in
:mod:`unet.tiling` (its element-wise passes in :mod:`unet.elementwise`); the overlapped
read → upload → compute → download → write pipeline in :mod:`unet.streaming`; predictors in
:mod:`unet.predictor`; fast block I/O in :mod:`storage.blockio`. This module ties them into runs.

Scale-out: blocks are grouped (:func:`unet.blocks.group_blocks`); :func:`run_group` runs
one group in any process (in-process, or as a Dask task on a worker with
``resources={"GPU": 1}``) and skips blocks the ledger already marks done, so a rescheduled
or re-run group redoes only unfinished blocks and writes the same bytes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from storage.blockio import BlockArray
from storage.fanout import fan_out
from storage.intensity import UINT8_RANGE, scale_offset, volume_range
from storage.prediction import (
    BLOCKWISE_LEVELS_KEY,
    PredictionStore,
    create_or_resume_prediction,
    open_prediction_for_blocks,
)
from storage.volume import LEVEL0, open_volume
from unet.blocks import Block, plan_blocks
from unet.downsample import downsample_means
from unet.infer_config import InferConfig, fit_to_volume
from unet.predictor import (
    INPUT_SCALE,
    AffinePredictor,
    ModelPredictor,
    cached_predictor,
    check_fits_model,
    effective_precision,
    load_predictor,
    resolve_device,
)
from unet.streaming import (
    DeviceTransfer,
    InFlightMeter,
    block_bytes,
    device_of,
    keep_freed_memory_for_reuse,
    stream_blocks,
)
from unet.tiling import BlockPredictor

Predictor = Callable[[torch.Tensor], Any]
Progress = Callable[[int, int], None]

__all__ = ["INPUT_SCALE", "AffinePredictor", "BlockPredictor", "InFlightMeter", "InferConfig", "InferJob",
           "ModelPredictor", "block_bytes", "check_fits_model", "effective_precision", "finish_run",
           "infer_volume", "load_predictor", "mirror_pad", "predict_block", "prepare_run", "resolve_device",
           "run_group", "run_pending", "stream_blocks", "cached_predictor"]


def mirror_pad(data: np.ndarray, block: Block) -> np.ndarray:
    """Mirror-pad a block's read data by ``block.pad`` (non-zero only at the volume border)."""
    if not any(a or b for a, b in block.pad):
        return data
    return np.pad(data, block.pad, mode="reflect")


def predict_block(padded: np.ndarray, block: Block, predictor: Predictor, cfg: InferConfig) -> np.ndarray:
    """Membrane probability (z, y, x) float32 of one block's write region, on the CPU: the engine's
    computation without the streaming (for tests and notebooks). ``padded`` is the block's read
    region after mirror padding (``block.padded_shape``)."""
    out = BlockPredictor(predictor, cfg).probabilities(torch.from_numpy(np.ascontiguousarray(padded)), block)
    return out.numpy()


# ----------------------------------------------------------------------------- runs and groups


@dataclass(frozen=True)
class InferJob:
    """Everything a process needs to run blocks of one inference run (small, picklable).

    ``predictor_factory`` builds the predictor in the process that runs it (a model is
    loaded once per process and cached).
    """

    volume_path: str
    prediction_path: str
    predictor_factory: Callable[[], Predictor]
    config: InferConfig
    # The input's raw values that map to 0 and 255 (storage.intensity: recorded at ingest).
    intensity_range: tuple[float, float] = UINT8_RANGE
    # Pyramid levels each block writes itself (downsampled on the device), see blockwise_levels.
    pyramid_levels: int = 0

    def plan(self, shape: Sequence[int]) -> list[Block]:
        cfg = self.config
        return plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))


def _block_predictor(predictor: Predictor, job: InferJob) -> BlockPredictor:
    fixed = getattr(predictor, "fixed_batch", None)
    return BlockPredictor(predictor, job.config, device_of(predictor), fixed,
                          intensity=scale_offset(job.intensity_range))


def run_blocks(job: InferJob, source: BlockArray, store: PredictionStore, block_ids: Sequence[int],
               predictor: Predictor, *, meter: InFlightMeter | None = None,
               progress: Callable[[Block], None] | None = None) -> int:
    """Run the listed blocks that the ledger does not mark done; returns the blocks written.

    Reader threads read each block with its halo (``source``), mirror-pad it at the volume
    border and stage it for the device; this thread uploads it, predicts it on the device and
    queues the uint8 result's download; writer threads wait for that download, write the shard
    and mark the block done.
    """
    blocks = job.plan(source.shape)
    pending = set(store.pending())
    todo = [blocks[i] for i in block_ids if i in pending]
    cfg = job.config
    engine = _block_predictor(predictor, job)
    transfer = DeviceTransfer(engine.device)
    if engine.device.type == "cpu":
        keep_freed_memory_for_reuse()

    def read(block: Block) -> torch.Tensor:
        return transfer.stage(mirror_pad(source.read(block.read.slices), block))

    def compute(block: Block, host: torch.Tensor) -> Callable[[], list[np.ndarray]]:
        out = engine.uint8(transfer.upload(host), block)
        return transfer.download([out, *downsample_means(out, job.pyramid_levels)])

    def write(block: Block, result: Callable[[], list[np.ndarray]]) -> None:
        level0, *pyramid = result()
        store.write_block(block.index, block.write.start, level0, pyramid)

    return stream_blocks(todo, read, compute, write, prefetch=cfg.prefetch_blocks,
                         read_threads=cfg.read_threads, write_threads=cfg.write_threads,
                         compute_threads=cfg.compute_threads_for(
                             engine.device.type, getattr(predictor, "single_threaded", False)), meter=meter,
                         on_done=progress)


def run_group(job: InferJob, block_ids: Sequence[int],
              on_block: Callable[[Block], None] | None = None) -> dict[str, Any]:
    """Run one group of blocks in this process (in-process or as a Dask task); skip finished ones.

    ``on_block`` is called (from a writer thread) after each block is written and recorded.
    """
    t0 = time.monotonic()
    source = BlockArray(job.volume_path, LEVEL0)
    store = open_prediction_for_blocks(job.prediction_path)
    blocks = job.plan(source.shape)
    n = run_blocks(job, source, store, block_ids, cached_predictor(job.predictor_factory), progress=on_block)
    voxels = sum(blocks[i].write.size for i in block_ids)
    return {"blocks": len(block_ids), "written": n, "voxels": voxels, "seconds": time.monotonic() - t0}


@dataclass(frozen=True)
class PreparedRun:
    """A created-or-resumed prediction and its work: ``groups`` of block ids still to run."""

    job: InferJob
    n_blocks: int
    groups: list[list[int]]
    voxels: int
    pending_blocks: int


def store_layout(shape: Sequence[int], cfg: InferConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Output (chunks, shards) for a volume of ``shape``: the configured ones, shrunk on axes where the
    volume is smaller (zarr clips chunks to the shape; shards must stay a multiple of them)."""
    chunks, shards = [], []
    for s, c, b in zip(shape, cfg.chunks, cfg.block_shape, strict=True):
        c_eff = min(c, s)
        chunks.append(c_eff)
        shards.append(b if b < s else -(-s // c_eff) * c_eff)  # one shard covers the whole axis
    return tuple(chunks), tuple(shards)


def prepare_run(volume_path: str, prediction_path: str, predictor_factory: Callable[[], Predictor],
                model_id: str, cfg: InferConfig, *, overwrite: bool = False,
                device_type: str | None = None) -> PreparedRun:
    """Validate the input, create (or resume) the output store, and cut the work into groups.

    ``model_id`` (the checkpoint's SHA-256, or a predictor's description) and the config's
    identity are stored in the output; resuming with others is refused. Nothing is written
    if the input is missing or incomplete.
    """
    from unet.blocks import group_blocks

    volume = open_volume(volume_path)
    cfg = fit_to_volume(cfg, volume.shape)
    blocks = plan_blocks(volume.shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))
    dev = device_type or resolve_device(cfg.device).type
    intensity = volume_range(volume.attrs, volume.dtype, volume.path)  # refuses an unmappable input
    identity = {"model_sha256": model_id, "config": cfg.identity(), "volume_shape": list(volume.shape),
                "precision": effective_precision(cfg, torch.device(dev)), "device_type": dev,
                "intensity_range": list(intensity)}
    chunks, shards = store_layout(volume.shape, cfg)
    store = create_or_resume_prediction(
        prediction_path, shape=volume.shape, voxel_size=volume.voxel_size, chunks=chunks,
        shards=shards, n_blocks=len(blocks), identity=identity, pyramid_levels=cfg.pyramid_levels or 0,
        overwrite=overwrite)
    pending = store.pending()
    groups = group_blocks(pending, cfg.groups_for(len(blocks)))
    levels = blockwise_levels(volume.shape, cfg.block_shape, store.level_chunks())
    store.writer.update_attrs(**{BLOCKWISE_LEVELS_KEY: levels})  # finish() builds only the rest
    job = InferJob(volume_path, prediction_path, predictor_factory, cfg, intensity, levels)
    return PreparedRun(job, len(blocks), groups, int(np.prod(volume.shape)), len(pending))


def blockwise_levels(shape: Sequence[int], block_shape: Sequence[int],
                     level_chunks: Sequence[Sequence[int]]) -> int:
    """How many pyramid levels the block writers can fill themselves: level L qualifies when, on
    every axis that holds more than one block, each block's extent at that level (block >> L) is a
    whole number of that level's chunks, so no two writers share a chunk. The rest are built from
    the last such level once every block is done (a quarter of the data per level less)."""
    n = 0
    for level in range(1, len(level_chunks)):
        axes = zip(shape, block_shape, level_chunks[level], strict=True)
        for axis, (size, block, chunk) in enumerate(axes):
            factor = 1 if axis == 0 else 1 << level  # z is kept
            if block >= size:
                continue  # one block spans the axis
            if block % factor or (block // factor) % chunk:
                return n
        n = level
    return n


def finish_run(prediction_path: str) -> dict[str, Any]:
    """Build the pyramid and mark the prediction complete (after every group has finished)."""
    volume = open_prediction_for_blocks(prediction_path).finish()
    return volume.summary()


def run_pending(run: PreparedRun, *, client: Any = None, progress: Progress | None = None) -> None:
    """Every block ``run`` still has to do: in this process as one stream over all of them (groups
    are units for schedulers, and draining the pipeline between groups would idle the device once
    per group), or one task per group on ``client``'s Dask cluster, one GPU each
    (:func:`storage.fanout.fan_out`). ``progress(done, total)`` counts blocks, earlier runs' included."""
    done = run.n_blocks - run.pending_blocks
    if client is not None:
        fan_out(run_group, run.groups, shared=(run.job,), client=client, progress=progress, done=done,
                total=run.n_blocks, weight=lambda r: int(r["blocks"]),
                submit={"resources": {"GPU": 1}, "retries": 2})
        return
    lock, count = threading.Lock(), [done]

    def one_done(_block: Block) -> None:
        with lock:
            count[0] += 1
            if progress is not None:
                progress(count[0], run.n_blocks)

    if progress is not None:
        progress(done, run.n_blocks)
    pending = [i for g in run.groups for i in g]
    if pending:
        run_group(run.job, pending, on_block=one_done)


def infer_volume(volume_path: str, prediction_path: str, predictor_factory: Callable[[], Predictor],
                 model_id: str, cfg: InferConfig, *, overwrite: bool = False, client: Any = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Whole run without Prefect or a checkpoint file (any predictor factory): prepare, run every
    pending block (:func:`run_pending`), finish. Returns a small summary."""
    t0 = time.monotonic()
    run = prepare_run(volume_path, prediction_path, predictor_factory, model_id, cfg, overwrite=overwrite)
    run_pending(run, client=client, progress=progress)
    summary = finish_run(prediction_path)
    seconds = time.monotonic() - t0
    return {"prediction": prediction_path, "voxels": run.voxels, "blocks": run.n_blocks,
            "blocks_run": run.pending_blocks, "seconds": seconds,
            "voxels_per_s": run.voxels / seconds if seconds > 0 else 0.0, "levels": summary["levels"]}
