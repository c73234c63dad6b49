"""One block on the device: cut tiles, predict, crop or blend, normalise, quantise to uint8.

Everything here runs on the predictor's device (a CUDA GPU, or the CPU in tests) and never
waits for it: tiles are copied into a reused float32 batch buffer straight from the block's
uint8 tensor (one pass, converting as it copies), predictions are written into the block's
output as they come, and the only thing handed back is a uint8 tensor of the write region.
Axis order: the padded block (z, y, x) in voxels, tiles and batches (B, 1, y, x).

::

    padded block (uint8, on device)       batch buffer (B, 1, T, T) float32
    ┌──────────────┐   copy_ per tile    ┌───┬───┬───┐
    │ ┌──┐┌──┐     │ ──────────────────▶ │ t0│ t1│ … │ ──predictor──▶ (B, C, T, T)
    │ └──┘└──┘ ... │                     └───┴───┴───┘                     │
    └──────────────┘                                                       ▼
      crop:  owned part of each tile × 255, clamp, round ──▶ uint8 write region
      blend: accumulate tile × window (float32), then × 255 / Σ window, clamp, round ──▶ uint8

The element-wise passes themselves (numpy in place on the CPU, torch kernels on a GPU) are in
:mod:`unet.elementwise`. A batch that runs the device out of memory is retried in halves.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from unet.blending import blend_window, useful_tiles
from unet.blocks import Block, Region, Tile
from unet.elementwise import accumulate, each, empty, load_tile, quantise_into, rescale, row_parts, to_device
from unet.infer_config import InferConfig

Predictor = Callable[[torch.Tensor], Any]
log = logging.getLogger(__name__)


class DeviceMemoryError(ValueError):
    """Even one tile per forward pass does not fit in the device's memory."""


SMALLER_TILES = ("use smaller tiles (--tile, a multiple of the model's divisor; keep halo + overlap/2 at "
                 "least the model's receptive-field radius)")


@dataclass(frozen=True)
class BlockTiles:
    """The work of one block shape: useful tiles, the (z, tile) jobs in order, and the plane
    region (padded coordinates, y, x) the blend accumulator must cover."""

    tiles: tuple[Tile, ...]
    jobs: tuple[tuple[int, int], ...]
    plane: Region
    write: Region  # (y, x) in padded coordinates


@lru_cache(maxsize=64)
def block_tiles(padded_shape: tuple[int, int, int], write: Region, cfg: InferConfig) -> BlockTiles:
    """Tiles and jobs of a padded block (z, y, x) whose write region is ``write`` (padded coords)."""
    plane = (padded_shape[1], padded_shape[2])
    write_yx = Region(write.start[1:], write.stop[1:])
    tiles = useful_tiles(plane, write_yx, cfg.tile, cfg.overlap, cfg.blend)
    jobs = tuple((z, i) for z in range(write.start[0], write.stop[0]) for i in range(len(tiles)))
    lo = tuple(min(t.input.start[a] for t in tiles) for a in (0, 1))
    hi = tuple(max(t.input.stop[a] for t in tiles) for a in (0, 1))
    return BlockTiles(tiles, jobs, Region(lo, hi), write_yx)


class BlockPredictor:
    """Runs a predictor over blocks on ``device``; :meth:`uint8` is the engine's path,
    :meth:`probabilities` the same computation kept in float32 (for exact stitching tests)."""

    def __init__(self, predictor: Predictor, cfg: InferConfig, device: torch.device | str = "cpu",
                 fixed_batch: int | None = None, intensity: tuple[float, float] = (1.0, 0.0)) -> None:
        self.predictor, self.cfg, self.device = predictor, cfg, torch.device(device)
        self.fixed_batch = fixed_batch  # pad every batch to this size (torch.compile / CUDA graphs)
        # (scale, offset) taking the input's raw values to the predictor's 0..255 scale
        # (storage.intensity); identity for uint8 EM, so those tiles cost no extra pass.
        self.intensity = intensity
        self._local = threading.local()  # a batch buffer per thread: CPU engines compute blocks in parallel
        self._scales: dict[tuple[Any, ...], torch.Tensor] = {}
        self.batch_size = cfg.batch_size_for(self.device.type)  # the batch buffer's tiles
        self.batch_limit = self.batch_size  # tiles per forward pass; halved on out-of-memory errors
        if self.device.type == "cpu":
            self._fit_host_memory()

    def _batch_buffer(self) -> torch.Tensor:
        buf: torch.Tensor | None = getattr(self._local, "buffer", None)
        if buf is None:
            buf = self._local.buffer = torch.zeros((self.batch_size, 1, *self.cfg.tile),
                                                   dtype=torch.float32, device=self.device)
        return buf

    def _batches(self, padded: torch.Tensor, work: BlockTiles) -> Any:
        """Yield (jobs, predictions (n, T, T)) batch by batch; tiles are cut on the device. A batch
        that runs the device out of memory is retried in halves (:meth:`_fewer_tiles`)."""
        buf = self._batch_buffer()
        i = 0
        while i < len(work.jobs):
            chunk = work.jobs[i : i + self.batch_limit]
            each(self.device, load_tile,  # uint8 → float32, one pass
                 [(buf[j, 0], padded[z][work.tiles[ti].input.slices]) for j, (z, ti) in enumerate(chunk)])
            n = min(self.fixed_batch, self.batch_limit) if self.fixed_batch else len(chunk)
            if self.intensity != (1.0, 0.0):
                rescale(buf[: len(chunk)], *self.intensity)
            try:
                pred = self.predictor(buf[:n])
            except torch.cuda.OutOfMemoryError as e:
                self._fewer_tiles(e)
                continue
            if pred.ndim != 4 or pred.shape[0] != n or tuple(pred.shape[2:]) != tuple(self.cfg.tile):
                raise ValueError(f"predictor returned shape {tuple(pred.shape)}, expected "
                                 f"({n}, C, {self.cfg.tile[0]}, {self.cfg.tile[1]})")
            yield chunk, pred[: len(chunk), 0].float()  # no-op for float32
            i += len(chunk)

    def _fewer_tiles(self, error: Exception) -> None:
        """After an out-of-memory error: halve the tiles per forward pass for the rest of the run (a
        run left overnight with a batch too big for this GPU then finishes, a little slower; the
        batch size does not change the output's identity), or, at one tile, refuse in one line."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the failed pass's activations are free now; hand them back
        if self.batch_limit == 1:
            raise DeviceMemoryError(
                f"one {self.cfg.tile[0]} x {self.cfg.tile[1]} tile does not fit in the memory of "
                f"{self.device}: {SMALLER_TILES}") from error
        was, self.batch_limit = self.batch_limit, self.batch_limit // 2
        log.warning("%s ran out of memory with %d tiles of %d x %d per forward pass: going on with %d",
                    self.device, was, *self.cfg.tile, self.batch_limit)

    def _fit_host_memory(self) -> None:
        """On the CPU, as many tiles per forward pass as fit in 80 % of the memory available now, for
        a predictor that can tell what a tile takes (``host_bytes_per_tile``): a pass too big is not
        an error the engine could catch, the kernel kills the process. One tile too big is refused."""
        per_tile = getattr(self.predictor, "host_bytes_per_tile", None)
        need = per_tile(self.cfg.tile) if callable(per_tile) else None
        if not need:
            return
        budget = int(0.8 * available_host_memory())
        fits = budget // need
        if fits < 1:
            raise DeviceMemoryError(
                f"one {self.cfg.tile[0]} x {self.cfg.tile[1]} tile takes about {need / 2**30:.1f} GiB in the "
                f"model's forward pass on the CPU, and {budget / 2**30:.1f} GiB are free to use: "
                f"{SMALLER_TILES}")
        if fits < self.batch_limit:
            log.warning("%d tiles of %d x %d per forward pass would take about %.1f GiB on the CPU, %.1f GiB "
                        "are free to use: going on with %d", self.batch_limit, *self.cfg.tile,
                        self.batch_limit * need / 2**30, budget / 2**30, fits)
            self.batch_limit = int(fits)

    def _check(self, padded: torch.Tensor, block: Block) -> BlockTiles:
        if tuple(padded.shape) != block.padded_shape:
            raise ValueError(f"padded block has shape {tuple(padded.shape)}, expected {block.padded_shape}")
        return block_tiles(block.padded_shape, block.write_in_padded, self.cfg)

    def _accumulate(self, padded: torch.Tensor, block: Block, work: BlockTiles) -> torch.Tensor:
        """Window-weighted sum of the tiles' predictions over ``work.plane``, (z, y, x) float32."""
        w = block.write_in_padded
        acc = empty((w.shape[0], *work.plane.shape), torch.float32, self.device)
        acc.zero_()
        window = self._window()
        y0, x0 = work.plane.start
        for chunk, pred in self._batches(padded, work):
            for j, (z, ti) in enumerate(chunk):
                r = work.tiles[ti].input.shifted((-y0, -x0))
                accumulate(acc[z - w.start[0]][r.slices], pred[j], window)
        return acc

    def _window(self) -> torch.Tensor:
        key = ("window",)
        if key not in self._scales:
            self._scales[key] = to_device(np.array(blend_window(self.cfg.tile, self.cfg.blend)), self.device)
        return self._scales[key]

    def _inverse_weight(self, work: BlockTiles, scale: float) -> torch.Tensor:
        """``scale`` / Σ window over the write region (y, x), cached per geometry."""
        key = (work, scale)
        if key not in self._scales:
            weight = np.zeros(work.plane.shape, np.float64)
            y0, x0 = work.plane.start
            window = blend_window(self.cfg.tile, self.cfg.blend)
            for t in work.tiles:
                weight[t.input.shifted((-y0, -x0)).slices] += window
            local = work.write.shifted((-y0, -x0)).slices
            self._scales[key] = to_device((scale / weight[local]).astype(np.float32), self.device)
        return self._scales[key]

    def _write_view(self, work: BlockTiles) -> tuple[slice, slice]:
        y0, x0 = work.plane.start
        return work.write.shifted((-y0, -x0)).slices  # type: ignore[return-value]

    @torch.inference_mode()
    def uint8(self, padded: torch.Tensor, block: Block) -> torch.Tensor:
        """Membrane probability of the block's write region as uint8 0..255 (z, y, x), on the device."""
        work = self._check(padded, block)
        w = block.write_in_padded
        out = empty(w.shape, torch.uint8, self.device)
        if self.cfg.blend != "crop":
            acc = self._accumulate(padded, block, work)[(slice(None), *self._write_view(work))]
            inv = self._inverse_weight(work, 255.0)
            parts = row_parts(w.shape[1], min(8, os.cpu_count() or 1) if self.device.type == "cpu" else 1)
            each(self.device, quantise_into, [(out[:, r], acc[:, r], inv[r]) for r in parts])
            return out
        for chunk, pred in self._batches(padded, work):
            items = []
            for j, (z, ti) in enumerate(chunk):
                dst, src = _owned_in_write(work.tiles[ti], work.write)
                items.append((out[z - w.start[0]][dst.slices], pred[j][src.slices]))
            each(self.device, quantise_into, items)  # owned regions are disjoint
        return out

    @torch.inference_mode()
    def probabilities(self, padded: torch.Tensor, block: Block) -> torch.Tensor:
        """The same prediction before quantisation: float32 (z, y, x) of the write region."""
        work = self._check(padded, block)
        w = block.write_in_padded
        if self.cfg.blend != "crop":
            acc = self._accumulate(padded, block, work)
            return acc[(slice(None), *self._write_view(work))] * self._inverse_weight(work, 1.0)
        out = empty(w.shape, torch.float32, self.device)
        for chunk, pred in self._batches(padded, work):
            for j, (z, ti) in enumerate(chunk):
                dst, src = _owned_in_write(work.tiles[ti], work.write)
                out[z - w.start[0]][dst.slices] = pred[j][src.slices]
        return out


def available_host_memory() -> int:
    """Bytes of host memory available to a new allocation now (the kernel's estimate)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _owned_in_write(tile: Tile, write: Region) -> tuple[Region, Region]:
    """The part of a tile's owned region inside the write region: (in write coords, in tile coords)."""
    lo = tuple(max(a, c) for a, c in zip(tile.owned.start, write.start, strict=True))
    hi = tuple(min(b, d) for b, d in zip(tile.owned.stop, write.stop, strict=True))
    part = Region(lo, hi)
    return part.shifted(tuple(-s for s in write.start)), part.shifted(tuple(-s for s in tile.input.start))
