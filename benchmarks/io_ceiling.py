"""The I/O ceiling of blockwise inference, and the engine with a zero-cost predictor.

(d) copies every write block of a volume — read with its halo, mirror-padded at the border,
cropped to the write region — into an output laid out exactly as a prediction (same chunks,
shards, codecs), through the engine's own streaming pipeline (same reader and writer threads),
with no compute: the most any engine can move on this machine. Measured through zarr-python,
zarr-python with the ``zarrs`` codec pipeline, and tensorstore. (e) runs the real engine
(:func:`unet.inference.infer_volume`) with ``AffinePredictor(1 / 255)``, a predictor that costs
next to nothing, so what remains is the engine's own host and device work. On a CPU device the
device work (tiles to float32, the predictor's pass, crop and quantise: about 450 MB of memory
traffic per default block) shares the host's cores and memory bandwidth with the I/O;
:func:`host_side_engine` separates the two: the same run with the device arithmetic replaced by
the copy's crop, i.e. what the host does when the arithmetic runs on a GPU. Used by
``benchmarks/infer.py``.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import zarr

from storage.blockio import Backend, BlockArray
from storage.volume import LEVEL0, create_volume, open_volume
from unet.blocks import Block
from unet.infer_config import InferConfig, fit_to_volume
from unet.inference import AffinePredictor, infer_volume, mirror_pad, stream_blocks
from unet.inference import store_layout as prediction_layout
from unet.tiling import BlockPredictor

LIBRARIES: dict[str, tuple[Backend, str | None]] = {
    "zarr-python": ("zarr", None),
    "zarrs": ("zarr", "zarrs.ZarrsCodecPipeline"),
    "tensorstore": ("tensorstore", None),
}


def available_libraries() -> list[str]:
    """The libraries of LIBRARIES importable here (zarrs is a dev extra, absent on the GPU image)."""
    import importlib.util

    return [lib for lib, (backend, pipeline) in LIBRARIES.items()
            if (pipeline is None or importlib.util.find_spec(pipeline.split(".")[0]) is not None)
            and (backend != "tensorstore" or importlib.util.find_spec("tensorstore") is not None)]


@contextlib.contextmanager
def codec_pipeline(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with zarr.config.set({"codec_pipeline.path": path}):
        yield


def block_copy(src: Path, dst: Path, cfg: InferConfig, library: str) -> float:
    """(d): voxels/s of a compute-free copy of every block of ``src`` into a fresh prediction layout."""
    backend, pipeline = LIBRARIES[library]
    volume = open_volume(src)
    cfg = fit_to_volume(cfg, volume.shape)
    chunks, shards = prediction_layout(volume.shape, cfg)
    shutil.rmtree(dst, ignore_errors=True)
    create_volume(dst, volume.shape, np.uint8, volume.voxel_size, kind="prediction", chunks=chunks,
                  shards=shards)
    from unet.blocks import plan_blocks

    blocks = plan_blocks(volume.shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))
    with codec_pipeline(pipeline):
        source = BlockArray(src, LEVEL0, backend=backend)
        sink = BlockArray(dst, LEVEL0, writable=True, backend=backend)
        t0 = time.perf_counter()
        stream_blocks(blocks, lambda b: mirror_pad(source.read(b.read.slices), b),
                      lambda b, padded: np.ascontiguousarray(padded[b.write_in_padded.slices]),
                      lambda b, data: sink.write(b.write.start, data), prefetch=cfg.prefetch_blocks,
                      read_threads=cfg.read_threads, write_threads=cfg.write_threads)
        seconds = time.perf_counter() - t0
    if not np.array_equal(open_volume(dst, require_complete=False).read(slice(0, 1)),
                          volume.read(slice(0, 1))):
        raise AssertionError(f"{library} copy does not reproduce the input")
    return int(np.prod(volume.shape)) / seconds


def null_engine(src: Path, dst: Path, cfg: InferConfig, device: str = "cpu") -> float:
    """(e): voxels/s of the whole engine (prepare, stream, finish) with a zero-cost predictor whose
    tiles live on ``device``."""
    shutil.rmtree(dst, ignore_errors=True)
    factory = functools.partial(AffinePredictor, 1 / 255.0, 0.0, 0.0, device)
    t0 = time.perf_counter()
    result = infer_volume(str(src), str(dst), factory, "zero-cost", cfg.model_copy(update={"device": device}))
    seconds = time.perf_counter() - t0
    if not np.array_equal(open_volume(dst).read(slice(0, 1)), open_volume(src).read(slice(0, 1))):
        raise AssertionError("the zero-cost engine does not reproduce its input (x / 255 → uint8)")
    return float(result["voxels"]) / seconds


@contextlib.contextmanager
def device_arithmetic_skipped() -> Iterator[None]:
    """Within the block, :meth:`BlockPredictor.uint8` (CPU tensors) returns the write region of the
    padded block, copied as the block copy does, instead of computing it: every other part of the
    engine (planning, reads, mirror padding, transfers, writes, ledger, completion) still runs."""
    original = BlockPredictor.uint8

    def crop(self: BlockPredictor, padded: torch.Tensor, block: Block) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(padded.numpy()[block.write_in_padded.slices]))

    BlockPredictor.uint8 = crop  # type: ignore[method-assign]
    try:
        yield
    finally:
        BlockPredictor.uint8 = original  # type: ignore[method-assign]


def host_side_engine(src: Path, dst: Path, cfg: InferConfig) -> float:
    """voxels/s of the engine's host side alone: (e) with the device arithmetic skipped (CPU)."""
    with device_arithmetic_skipped():
        return null_engine(src, dst, cfg, "cpu")
