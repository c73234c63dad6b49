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
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from unet.blending import blend_window, useful_tiles
from unet.blocks import Block, Region, Tile
from unet.infer_config import InferConfig

Predictor = Callable[[torch.Tensor], Any]


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


_STRIP_BYTES = 256 * 1024


def quantise_into(dst: torch.Tensor, prob: torch.Tensor, scale: float | torch.Tensor = 255.0) -> None:
    """``dst`` (uint8) ← round(clamp(prob × scale, 0, 255)), rounding half to even as ``np.rint``.

    On the CPU the same arithmetic runs through numpy in place: torch's CPU kernels for these
    element-wise passes allocate and fan out to its intra-op thread pool, which measured 2-5x
    slower on the 2-core machine while reader and writer threads compete for the cores.
    """
    if dst.device.type == "cpu":
        factor = scale.numpy() if isinstance(scale, torch.Tensor) else np.float32(scale)
        d, p = dst.numpy(), prob.numpy()
        for z in range(d.shape[0]) if d.ndim == 3 else [None]:
            _quantise_rows(d if z is None else d[z], p if z is None else p[z], factor)
        return
    q = torch.mul(prob, scale)
    dst.copy_(q.clamp_(0, 255).round_())


def _quantise_rows(d: np.ndarray, p: np.ndarray, factor: np.ndarray | np.float32) -> None:
    """The CPU quantisation of one (y, x) plane, in strips of rows that fit in a core's cache: the
    four passes then cost one trip to memory (the CPU engine is memory-bound, and whole-plane
    passes made quantising half of its time)."""
    rows = max(1, _STRIP_BYTES // max(1, 4 * p.shape[1]))
    tmp = np.empty((min(rows, p.shape[0]), p.shape[1]), np.float32)
    for r0 in range(0, p.shape[0], rows):
        r1 = min(r0 + rows, p.shape[0])
        t = tmp[: r1 - r0]
        np.multiply(p[r0:r1], factor[r0:r1] if isinstance(factor, np.ndarray) else factor, out=t)
        np.clip(t, 0, 255, out=t)
        np.rint(t, out=t)
        np.copyto(d[r0:r1], t, casting="unsafe")  # exact integers in 0..255: the cast loses nothing


def load_tile(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst`` (float32) ← ``src`` (any dtype), converting as it copies (numpy on the CPU, see above)."""
    if dst.device.type == "cpu":
        np.copyto(dst.numpy(), src.numpy(), casting="unsafe")
    else:
        dst.copy_(src)


def rescale(x: torch.Tensor, scale: float, offset: float) -> None:
    """``x`` ← ``x`` × scale + offset in place."""
    if x.device.type == "cpu":
        a = x.numpy()
        np.multiply(a, np.float32(scale), out=a)
        np.add(a, np.float32(offset), out=a)
    else:
        x.mul_(scale).add_(offset)


def accumulate(acc: torch.Tensor, pred: torch.Tensor, window: torch.Tensor) -> None:
    """``acc`` += ``pred`` × ``window`` in place."""
    if acc.device.type == "cpu":
        a = acc.numpy()
        a += pred.numpy() * window.numpy()
    else:
        acc.addcmul_(pred, window)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device`` without waiting for the copy: through pinned memory on CUDA
    (a copy from pageable memory synchronises the host with the device; block geometries first met
    mid-run would do so), a view on the CPU."""
    host = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


_NUMPY_DTYPES = {torch.uint8: np.uint8, torch.float32: np.float32}


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor; on the CPU backed by numpy's allocator. Why: torch's CPU allocator
    hands back freshly mapped pages for every large tensor (measured: 5,300 page faults for each
    22 MB block output, 10-20 ms of kernel time a block on the 2-core machine), while numpy's
    allocation comes from glibc's heap, which keeps freed pages mapped
    (:func:`unet.streaming.keep_freed_memory_for_reuse`)."""
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(tuple(shape), _NUMPY_DTYPES[dtype]))
    return torch.empty(tuple(shape), dtype=dtype, device=device)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def each(device: torch.device, fn: Callable[..., None], items: Sequence[tuple[Any, ...]]) -> None:
    """``fn(*item)`` for every item: in order on a GPU (the calls only queue kernels); on the CPU
    spread over one thread per core (numpy releases the GIL), so one block's element-wise work
    uses every core, not only the thread that drives the pipeline. Items must touch disjoint memory."""
    global _POOL
    if device.type != "cpu" or len(items) < 2:
        for item in items:
            fn(*item)
        return
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(min(8, os.cpu_count() or 1), "emseg-tiles")
    for f in [_POOL.submit(fn, *item) for item in items]:
        f.result()


def _row_parts(n: int, parts: int) -> list[slice]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


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

    def _batch_buffer(self) -> torch.Tensor:
        buf: torch.Tensor | None = getattr(self._local, "buffer", None)
        if buf is None:
            buf = self._local.buffer = torch.zeros((self.cfg.batch_size, 1, *self.cfg.tile),
                                                   dtype=torch.float32, device=self.device)
        return buf

    def _batches(self, padded: torch.Tensor, work: BlockTiles) -> Any:
        """Yield (jobs, predictions (n, T, T)) batch by batch; tiles are cut on the device."""
        bs, buf = self.cfg.batch_size, self._batch_buffer()
        for i in range(0, len(work.jobs), bs):
            chunk = work.jobs[i : i + bs]
            each(self.device, load_tile,  # uint8 → float32, one pass
                 [(buf[j, 0], padded[z][work.tiles[ti].input.slices]) for j, (z, ti) in enumerate(chunk)])
            n = self.fixed_batch or len(chunk)
            if self.intensity != (1.0, 0.0):
                rescale(buf[: len(chunk)], *self.intensity)
            pred = self.predictor(buf[:n])
            if pred.ndim != 4 or pred.shape[0] != n or tuple(pred.shape[2:]) != tuple(self.cfg.tile):
                raise ValueError(f"predictor returned shape {tuple(pred.shape)}, expected "
                                 f"({n}, C, {self.cfg.tile[0]}, {self.cfg.tile[1]})")
            yield chunk, pred[: len(chunk), 0].float()  # no-op for float32

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
            parts = _row_parts(w.shape[1], min(8, os.cpu_count() or 1) if self.device.type == "cpu" else 1)
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


def _owned_in_write(tile: Tile, write: Region) -> tuple[Region, Region]:
    """The part of a tile's owned region inside the write region: (in write coords, in tile coords)."""
    lo = tuple(max(a, c) for a, c in zip(tile.owned.start, write.start, strict=True))
    hi = tuple(min(b, d) for b, d in zip(tile.owned.stop, write.stop, strict=True))
    part = Region(lo, hi)
    return part.shifted(tuple(-s for s in write.start)), part.shifted(tuple(-s for s in tile.input.start))
