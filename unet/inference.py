"""Blockwise streaming inference: any predictor over a volume larger than memory.

A *predictor* is any callable mapping a batch of tiles (B, 1, H, W) float32 raw
intensities to (B, C, H, W) float (channel 0 = membrane probability in [0, 1]); tests
use arithmetic predictors so stitching is checked exactly, production uses
:class:`ModelPredictor` around a U-Net.

Streaming (:func:`stream_blocks`): reads are prefetched by a thread pool, at most
``prefetch_blocks`` ahead; the calling thread computes; finished blocks are written by a
thread pool, at most ``write_threads`` waiting. So at most
``prefetch_blocks + 1 + write_threads`` blocks are alive at once, whatever the volume
size: host memory is bounded by the block size, GPU memory by the batch size.

Scale-out: blocks are grouped (:func:`unet.blocks.group_blocks`); :func:`run_group` runs
one group in any process (in-process, or as a Dask task on a worker with
``resources={"GPU": 1}``) and skips blocks the ledger already marks done, so a rescheduled
or re-run group redoes only unfinished blocks and writes the same bytes.
"""

from __future__ import annotations

import functools
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from storage.prediction import PredictionStore, create_or_resume_prediction, open_prediction_for_blocks
from storage.volume import Volume, open_volume
from unet.blocks import Block, plan_blocks, plan_tiles
from unet.blocks import blend_window as _blend_window
from unet.infer_config import InferConfig

Predictor = Callable[[np.ndarray], Any]
TensorFn = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]

__all__ = ["InferConfig", "ModelPredictor", "AffinePredictor", "InferJob", "predict_block", "stream_blocks",
           "run_group", "prepare_run", "to_uint8"]


# ----------------------------------------------------------------------------- block compute


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] → uint8 0..255 (rounded, clipped)."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def mirror_pad(data: np.ndarray, block: Block) -> np.ndarray:
    """Mirror-pad a block's read data by ``block.pad`` (non-zero only at the volume border)."""
    if not any(a or b for a, b in block.pad):
        return data
    return np.pad(data, block.pad, mode="reflect")


def predict_block(padded: np.ndarray, block: Block, predictor: Predictor, cfg: InferConfig) -> np.ndarray:
    """Membrane probability (z, y, x) float32 for the block's write region.

    ``padded`` is the block's read region after mirror padding (``block.padded_shape``).
    Tiles of every write slice are batched ``cfg.batch_size`` at a time; z-halo slices are
    context for 3-D models and are not predicted by this 2-D path.
    """
    if padded.shape != block.padded_shape:
        raise ValueError(f"padded block has shape {padded.shape}, expected {block.padded_shape}")
    wr = block.write_in_padded
    z0, z1 = wr.start[0], wr.stop[0]
    plane = padded.shape[1:]
    tiles = plan_tiles((plane[0], plane[1]), cfg.tile, cfg.overlap)
    # Only tiles that reach the write region matter (halo-only tiles would be thrown away).
    wy0, wx0, wy1, wx1 = wr.start[1], wr.start[2], wr.stop[1], wr.stop[2]

    def useful(t: Any) -> bool:
        r = t.owned if cfg.blend == "crop" else t.input
        return r.start[0] < wy1 and r.stop[0] > wy0 and r.start[1] < wx1 and r.stop[1] > wx0

    tiles = tuple(t for t in tiles if useful(t))
    jobs = [(z, t) for z in range(z0, z1) for t in tiles]
    crop = cfg.blend == "crop"
    out = np.zeros((z1 - z0, plane[0], plane[1]), dtype=np.float32)
    if not crop:
        window = _blend_window(cfg.tile, cfg.blend)
        weight = np.zeros(plane, dtype=np.float32)
        for t in tiles:
            weight[t.input.slices] += window
    batch = np.empty((cfg.batch_size, 1, *cfg.tile), dtype=np.float32)
    for i in range(0, len(jobs), cfg.batch_size):
        chunk = jobs[i : i + cfg.batch_size]
        for j, (z, t) in enumerate(chunk):
            batch[j, 0] = padded[z][t.input.slices]
        pred = np.asarray(predictor(batch[: len(chunk)]), dtype=np.float32)
        if pred.ndim != 4 or pred.shape[0] != len(chunk) or pred.shape[2:] != tuple(cfg.tile):
            raise ValueError(f"predictor returned shape {pred.shape}, expected "
                             f"({len(chunk)}, C, {cfg.tile[0]}, {cfg.tile[1]})")
        for j, (z, t) in enumerate(chunk):
            p = pred[j, 0]
            if crop:
                local = t.owned.shifted(tuple(-s for s in t.input.start))
                out[z - z0][t.owned.slices] = p[local.slices]
            else:
                out[z - z0][t.input.slices] += p * window
    if not crop:
        out /= weight
    return out[:, wy0:wy1, wx0:wx1]


# ----------------------------------------------------------------------------- streaming


@dataclass
class InFlightMeter:
    """Counts blocks (and their bytes) alive between read and write; keeps the maxima.

    Instrumentation for the bounded-memory guarantee: tests assert the maxima stay under
    the configured bound on a volume many times larger.
    """

    blocks: int = 0
    bytes: int = 0
    max_blocks: int = 0
    max_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enter(self, nbytes: int) -> None:
        with self._lock:
            self.blocks += 1
            self.bytes += nbytes
            self.max_blocks = max(self.max_blocks, self.blocks)
            self.max_bytes = max(self.max_bytes, self.bytes)

    def leave(self, nbytes: int) -> None:
        with self._lock:
            self.blocks -= 1
            self.bytes -= nbytes


def block_bytes(block: Block, in_itemsize: int = 1) -> int:
    """Host bytes one in-flight block holds at most: padded input, float32 work plane(s), uint8 output."""
    padded = int(np.prod(block.padded_shape))
    write = block.write.size
    return padded * in_itemsize + padded * 4 + write * 4 + write


def stream_blocks(blocks: Iterable[Block], read: Callable[[Block], np.ndarray],
                  compute: Callable[[Block, np.ndarray], np.ndarray],
                  write: Callable[[Block, np.ndarray], None], *, prefetch: int = 2, read_threads: int = 2,
                  write_threads: int = 2, meter: InFlightMeter | None = None,
                  on_done: Callable[[Block], None] | None = None) -> int:
    """Read → compute → write every block, overlapping the three; returns the blocks written.

    ``read`` returns the padded input of a block; ``compute`` runs in the calling thread
    (the one that owns the GPU); ``write`` runs in a writer thread. At most ``prefetch``
    reads and ``write_threads`` writes are outstanding, so memory does not grow with the
    number of blocks. The first error from any stage is raised.
    """
    meter = meter or InFlightMeter()
    it = iter(blocks)
    reads: deque[tuple[Block, Future[np.ndarray]]] = deque()
    write_slots = threading.Semaphore(write_threads)
    writes: list[Future[None]] = []
    written = 0

    def do_write(block: Block, data: np.ndarray) -> None:
        try:
            write(block, data)
            if on_done is not None:
                on_done(block)
        finally:
            meter.leave(block_bytes(block))
            write_slots.release()

    with ThreadPoolExecutor(read_threads, "emseg-read") as readers, \
            ThreadPoolExecutor(write_threads, "emseg-write") as writers:

        def submit_read() -> None:
            block = next(it, None)
            if block is not None:
                meter.enter(block_bytes(block))
                reads.append((block, readers.submit(read, block)))

        try:
            for _ in range(prefetch):
                submit_read()
            while reads:
                block, fut = reads.popleft()
                data = fut.result()
                submit_read()
                result = compute(block, data)
                del data
                write_slots.acquire()  # back-pressure: wait while write_threads blocks are queued
                writes.append(writers.submit(do_write, block, result))
                done = [w for w in writes if w.done()]
                for w in done:
                    w.result()
                    writes.remove(w)
                    written += 1
            for w in writes:
                w.result()
                written += 1
        finally:
            for _, fut in reads:
                fut.cancel()
    return written


# ----------------------------------------------------------------------------- predictors


class AffinePredictor:
    """``x * scale + offset`` (after an optional sleep): a picklable arithmetic predictor for tests
    and benchmarks of the engine itself. ``functools.partial(AffinePredictor, ...)`` is a factory."""

    def __init__(self, scale: float = 1.0, offset: float = 0.0, delay_s: float = 0.0) -> None:
        self.scale, self.offset, self.delay_s = scale, offset, delay_s

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        return batch * np.float32(self.scale) + np.float32(self.offset)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return dev


def effective_precision(cfg: InferConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


# Intensities are scaled to [0, 1] as in training (uint8 EM / 255).
INPUT_SCALE = 1.0 / 255.0


class ModelPredictor:
    """A U-Net as a predictor: uint8-range tiles (B, 1, H, W) → membrane probability (B, 1, H, W).

    On CUDA: a reused pinned host buffer and non-blocking host→device copies, bf16
    autocast, channels_last, optional ``torch.compile``. On CPU: plain fp32 (or bf16 if
    asked). TTA averages probabilities over flips (and 90° rotations for 'd4').
    """

    def __init__(self, model: torch.nn.Module, cfg: InferConfig, n_classes: int) -> None:
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        self.precision = effective_precision(cfg, self.device)
        self.tta, self.n_classes, self.membrane_class = cfg.tta, n_classes, cfg.membrane_class
        model = model.to(self.device).eval()
        if self.cuda and cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.channels_last = self.cuda and cfg.channels_last
        self.model: Any = torch.compile(model) if (cfg.compile and self.cuda) else model
        self._pinned: torch.Tensor | None = None

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if not self.cuda:
            return x
        if self._pinned is None or self._pinned.shape != x.shape:
            self._pinned = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
        self._pinned.copy_(x)
        # non_blocking from pinned memory: the copy is queued on the stream, not waited for.
        return self._pinned.to(self.device, non_blocking=True)

    def _membrane(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x).float()
        if self.n_classes == 1:
            return torch.sigmoid(logits[:, :1])
        return torch.softmax(logits, dim=1)[:, self.membrane_class : self.membrane_class + 1]

    def _views(self) -> list[tuple[TensorFn, TensorFn]]:
        """(forward, inverse) pairs of the TTA views, tensors (B, C, H, W)."""
        ident: tuple[TensorFn, TensorFn] = (lambda t: t, lambda t: t)
        if self.tta == "none":
            return [ident]
        part = functools.partial
        flips: list[tuple[TensorFn, TensorFn]] = [ident] + [
            (part(torch.flip, dims=d), part(torch.flip, dims=d)) for d in ((2,), (3,), (2, 3))]
        if self.tta == "flips":
            return flips
        rots: list[tuple[TensorFn, TensorFn]] = [
            (part(torch.rot90, k=k, dims=(2, 3)), part(torch.rot90, k=-k, dims=(2, 3))) for k in (1, 3)]
        # d4 = identity, 3 flips (incl. the 180° rotation), 2 rotations, 2 transposes
        transposes: list[tuple[TensorFn, TensorFn]] = [
            (lambda t: t.transpose(2, 3), lambda t: t.transpose(2, 3)),
            (lambda t: torch.rot90(t, 1, (2, 3)).flip(2), lambda t: torch.rot90(t.flip(2), -1, (2, 3)))]
        return flips + rots + transposes

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = self._to_device(batch) * INPUT_SCALE
        use_bf16 = self.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            views = self._views()
            prob = sum(inv(self._membrane(fwd(x))) for fwd, inv in views) / len(views)
        return prob.float().cpu().numpy()  # type: ignore[union-attr]


def load_predictor(checkpoint: str, cfg: InferConfig) -> ModelPredictor:
    """Load a checkpoint and wrap it (the factory Dask workers call; see :class:`InferJob`)."""
    from unet.checkpoint import load_model

    model, mcfg = load_model(checkpoint, map_location="cpu")
    check_fits_model(cfg, mcfg)
    return ModelPredictor(model, cfg, mcfg.n_classes)


def check_fits_model(cfg: InferConfig, model_config: Any) -> None:
    """ValueError naming the problem when tile, halo or classes do not fit the model."""
    if getattr(model_config, "padding", "same") != "same":
        raise ValueError("blockwise inference needs a same-padding U-Net; this checkpoint uses "
                         f"padding={model_config.padding!r}")
    if model_config.in_channels != 1:
        raise ValueError(f"inference reads grey-level volumes (1 channel); the model expects "
                         f"{model_config.in_channels} input channels")
    div = model_config.divisor
    if cfg.tile[0] % div or cfg.tile[1] % div:
        raise ValueError(f"tile {cfg.tile} must be a multiple of {div} (2**(depth-1)) for a depth-"
                         f"{model_config.depth} U-Net")
    if cfg.halo[0] != 0:
        raise ValueError(f"halo z must be 0 for the 2-D U-Net (it sees one slice), got halo {cfg.halo}")
    if model_config.n_classes > 1 and cfg.membrane_class >= model_config.n_classes:
        raise ValueError(f"membrane_class {cfg.membrane_class} does not exist in a model with "
                         f"{model_config.n_classes} classes")


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

    def plan(self, shape: Sequence[int]) -> list[Block]:
        cfg = self.config
        return plan_blocks(shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))


_PREDICTORS: dict[Any, Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def _predictor_for(factory: Callable[[], Predictor]) -> Predictor:
    # One model per process: Dask workers run many groups and must not reload each time.
    try:
        key: Any = pickle.dumps(factory)
    except (pickle.PicklingError, AttributeError, TypeError):
        key = ("unpicklable", id(factory))  # an in-process factory (closure): identity is enough
    with _PREDICTORS_LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS.clear()
            _PREDICTORS[key] = factory()
        return _PREDICTORS[key]


def _reader(volume: Volume) -> Callable[[Block], np.ndarray]:
    def read(block: Block) -> np.ndarray:
        return mirror_pad(np.asarray(volume.array[block.read.slices]), block)
    return read


def run_blocks(job: InferJob, volume: Volume, store: PredictionStore, block_ids: Sequence[int],
               predictor: Predictor, *, meter: InFlightMeter | None = None,
               progress: Callable[[Block], None] | None = None) -> int:
    """Run the listed blocks that the ledger does not mark done; returns the blocks written."""
    blocks = job.plan(volume.shape)
    pending = set(store.pending())
    todo = [blocks[i] for i in block_ids if i in pending]
    cfg = job.config

    def compute(block: Block, padded: np.ndarray) -> np.ndarray:
        return to_uint8(predict_block(padded, block, predictor, cfg))

    def write(block: Block, data: np.ndarray) -> None:
        store.write_block(block.index, block.write.start, data)

    return stream_blocks(todo, _reader(volume), compute, write, prefetch=cfg.prefetch_blocks,
                         read_threads=cfg.read_threads, write_threads=cfg.write_threads, meter=meter,
                         on_done=progress)


def run_group(job: InferJob, block_ids: Sequence[int],
              on_block: Callable[[Block], None] | None = None) -> dict[str, Any]:
    """Run one group of blocks in this process (in-process or as a Dask task); skip finished ones.

    ``on_block`` is called (from a writer thread) after each block is written and recorded.
    """
    t0 = time.monotonic()
    volume = open_volume(job.volume_path)
    store = open_prediction_for_blocks(job.prediction_path)
    blocks = job.plan(volume.shape)
    n = run_blocks(job, volume, store, block_ids, _predictor_for(job.predictor_factory), progress=on_block)
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
    blocks = plan_blocks(volume.shape, cfg.block_shape, cfg.halo, (1, *cfg.tile))
    dev = device_type or resolve_device(cfg.device).type
    identity = {"model_sha256": model_id, "config": cfg.identity(), "volume_shape": list(volume.shape),
                "precision": effective_precision(cfg, torch.device(dev)), "device_type": dev}
    chunks, shards = store_layout(volume.shape, cfg)
    store = create_or_resume_prediction(
        prediction_path, shape=volume.shape, voxel_size=volume.voxel_size, chunks=chunks,
        shards=shards, n_blocks=len(blocks), identity=identity, pyramid_levels=cfg.pyramid_levels,
        overwrite=overwrite)
    pending = store.pending()
    groups = group_blocks(pending, cfg.groups_for(len(blocks)))
    job = InferJob(volume_path, prediction_path, predictor_factory, cfg)
    return PreparedRun(job, len(blocks), groups, int(np.prod(volume.shape)), len(pending))


def finish_run(prediction_path: str) -> dict[str, Any]:
    """Build the pyramid and mark the prediction complete (after every group has finished)."""
    volume = open_prediction_for_blocks(prediction_path).finish()
    return volume.summary()


def infer_volume(volume_path: str, prediction_path: str, predictor_factory: Callable[[], Predictor],
                 model_id: str, cfg: InferConfig, *, overwrite: bool = False, client: Any = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Whole run without Prefect: prepare, run every group (in-process, or on ``client``'s
    Dask workers with ``resources={"GPU": 1}``), finish. Returns a small summary."""
    t0 = time.monotonic()
    run = prepare_run(volume_path, prediction_path, predictor_factory, model_id, cfg, overwrite=overwrite)
    done = run.n_blocks - run.pending_blocks
    if client is None:
        for group in run.groups:
            run_group(run.job, group)
            done += len(group)
            if progress:
                progress(done, run.n_blocks)
    else:
        from distributed import as_completed

        futures = [submit_group(client, run.job, g) for g in run.groups]
        for fut in as_completed(futures):
            result = fut.result()
            done += result["blocks"]
            if progress:
                progress(done, run.n_blocks)
    summary = finish_run(prediction_path)
    seconds = time.monotonic() - t0
    return {"prediction": prediction_path, "voxels": run.voxels, "blocks": run.n_blocks,
            "blocks_run": run.pending_blocks, "seconds": seconds,
            "voxels_per_s": run.voxels / seconds if seconds > 0 else 0.0, "levels": summary["levels"]}


def submit_group(client: Any, job: InferJob, block_ids: Sequence[int]) -> Any:
    """Submit one group to a Dask cluster: one GPU per task, never cached (it writes)."""
    return client.submit(run_group, job, list(block_ids), resources={"GPU": 1}, pure=False, retries=2)
