"""The training loop: weighted BCE (+ Dice), AdamW with warm-up + cosine, validation, checkpoints.

No Prefect here. Inputs are storage handles: a training set (image / label / weight,
(N, H, W) uint8 / uint8 / float16) and validation slices of an image and a label volume
((Z, H, W) uint8). Outputs go to a model directory through :mod:`storage.files`::

    models/<run>/checkpoint-last.pt    every ``checkpoint_every`` steps (and at the end)
    models/<run>/checkpoint-best.pt    whenever validation V_rand improves
    models/<run>/metrics.jsonl         one record per log interval and per validation
    models/<run>/config.json           model + training config, inputs

Resumption: the batch of step ``s`` is a pure function of (seed, s) (its own numpy
generator), and the checkpoint stores the step, optimiser, scheduler and torch RNG
states, so a run resumed from ``checkpoint-last.pt`` replays exactly the steps an
uninterrupted run would have taken (bit-identical in deterministic mode).

On CUDA: bf16 autocast, channels_last, optional torch.compile, pinned host batches
copied with ``non_blocking=True``, batches prepared ahead by a thread pool so the GPU does
not wait for zarr reads.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from storage.dataset import TrainingSet
from storage.errors import ShapeMismatchError, StoreExistsError
from storage.files import append_jsonl, write_json
from storage.volume import Volume
from unet.checkpoint import CheckpointError, config_from_checkpoint, load_checkpoint, save_checkpoint
from unet.labels import Polarity, check_labels, membrane_mask, polarity_of_dataset
from unet.metrics import DEFAULT_THRESHOLDS, evaluate_membrane
from unet.model import UNet, UNetConfig

Progress = Callable[..., None]
LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
# Above this many bytes the training set is read from zarr per batch instead of held in memory.
IN_MEMORY_LIMIT = 8 * 2**30


class TrainConfig(BaseModel):
    """How to train: optimisation, schedule, validation, precision, reproducibility."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(default=2000, ge=1, description="Optimiser steps in total.")
    batch_size: int = Field(default=8, ge=1, description="Samples per step.")
    crop: int | None = Field(default=None, ge=1, description="Random square crop of each sample in pixels "
                                                            "(None = whole samples).")
    flips: bool = Field(default=True, description="Random flips and 90-degree rotations of each sample "
                                                  "(on top of the training set's augmentation).")
    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(default=100, ge=0, description="Linear warm-up steps before the cosine decay.")
    min_lr_ratio: float = Field(default=0.01, ge=0, le=1, description="Final LR as a fraction of the peak.")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Clip the gradient norm (None = off).")
    dice_weight: float = Field(default=0.0, ge=0, description="Weight of the soft-Dice loss added to BCE.")
    use_border_weights: bool = Field(default=True, description="Weight BCE by the training set's border "
                                                               "weight map (else uniform).")
    val_every: int = Field(default=250, ge=1, description="Validate every this many steps (and at the end).")
    val_batch_size: int = Field(default=4, ge=1, description="Slices per validation forward pass.")
    val_thresholds: tuple[float, ...] = Field(default=DEFAULT_THRESHOLDS, description="Membrane thresholds "
                                              "tried for V_rand / V_info (best is kept).")
    val_tta: bool = Field(default=False, description="Average validation predictions over the 8 "
                                                     "flips/rotations.")
    checkpoint_every: int | None = Field(default=None, ge=1, description="Write checkpoint-last.pt every "
                                         "this many steps (None = at each validation).")
    log_every: int = Field(default=10, ge=1, description="Log the loss (and check it is finite) every "
                                                         "this many steps.")
    seed: int = Field(default=0, description="Seed of initialisation and batch sampling.")
    deterministic: bool = Field(default=False, description="Deterministic algorithms: a resumed run gives "
                                                           "parameters identical to an uninterrupted one.")
    amp: bool = Field(default=True, description="bf16 autocast on CUDA (ignored on CPU).")
    channels_last: bool = Field(default=True, description="channels_last memory format on CUDA.")
    compile: bool = Field(default=False, description="torch.compile the model (CUDA only).")
    loader_threads: int = Field(default=4, ge=1, description="Threads preparing batches ahead.")
    prefetch: int = Field(default=6, ge=1, description="Batches prepared ahead of the GPU.")
    polarity: Polarity | None = Field(default=None, description="Label polarity; None = what the training "
                                      "set records (augment's interior_value), else zero_is_membrane (ISBI).")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class ValidationData:
    """Validation slices in memory: image (Z, H, W) uint8, membrane (Z, H, W) bool."""

    image: np.ndarray
    membrane: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_volumes(cls, image: Volume, labels: Volume, z: tuple[int, int],
                     polarity: Polarity = "zero_is_membrane") -> ValidationData:
        if image.shape != labels.shape:
            raise ShapeMismatchError(f"validation image {image.path} has shape {image.shape} but labels "
                                     f"{labels.path} have {labels.shape}")
        z0, z1 = z
        if not 0 <= z0 < z1 <= image.shape[0]:
            raise ValueError(f"validation slices must satisfy 0 <= start < stop <= {image.shape[0]}, "
                             f"got {z0}..{z1}")
        lab = labels.read(slice(z0, z1))
        check_labels(lab, polarity, f"validation labels {labels.path}")
        return cls(image.read(slice(z0, z1)), membrane_mask(lab, polarity),
                   {"image": image.path, "labels": labels.path, "z": [z0, z1], "polarity": polarity})


@dataclass
class TrainResult:
    model_dir: str
    last_checkpoint: str
    best_checkpoint: str | None
    step: int
    best_metrics: dict[str, Any]
    final_loss: float
    train_images_per_s: float
    wall_s: float


# --- data -------------------------------------------------------------------------------


class BatchSource:
    """Batches of the training set; batch ``s`` depends only on (seed, s).

    Returns float32 image (B, 1, h, w) scaled to [0, 1], membrane target (B, h, w) in {0, 1}
    and weight (B, h, w), pinned when ``pin`` so the copy to the GPU can be asynchronous.
    """

    def __init__(self, ts: TrainingSet, cfg: TrainConfig, polarity: Polarity, pin: bool) -> None:
        self.cfg, self.polarity, self.pin = cfg, polarity, pin
        n, h, w = ts.image.shape
        if n < 1:
            raise ValueError(f"training set {ts.path} is empty")
        for name, arr in (("label", ts.label), ("weight", ts.weight)):
            if arr.shape != ts.image.shape:
                raise ShapeMismatchError(f"training set {ts.path}: {name} shape {arr.shape} "
                                         f"differs from image shape {ts.image.shape}")
        self.n, self.size = n, (h, w)
        if cfg.crop is not None and cfg.crop > min(h, w):
            raise ValueError(f"crop {cfg.crop} is larger than the training samples ({h}x{w})")
        nbytes = n * h * w * 4
        if nbytes <= IN_MEMORY_LIMIT:
            # Zarr chunks hold a whole group of samples: reading samples one by one would
            # decode each chunk many times, so small sets are read once.
            self.image: Any = np.asarray(ts.image[:])
            self.label: Any = np.asarray(ts.label[:])
            self.weight: Any = np.asarray(ts.weight[:])
            check_labels(self.label, polarity, f"training set {ts.path} labels")
        else:
            self.image, self.label, self.weight = ts.image, ts.label, ts.weight
            check_labels(np.asarray(ts.label[: ts.group_size]), polarity, f"training set {ts.path} labels")

    def batch(self, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, self.n, cfg.batch_size)
        h, w = self.size
        c = cfg.crop
        imgs, tgts, wts = [], [], []
        for i in idx:
            y0 = int(rng.integers(0, h - c + 1)) if c else 0
            x0 = int(rng.integers(0, w - c + 1)) if c else 0
            ys, xs = slice(y0, y0 + c) if c else slice(None), slice(x0, x0 + c) if c else slice(None)
            img, lab = np.asarray(self.image[int(i), ys, xs]), np.asarray(self.label[int(i), ys, xs])
            wt = np.asarray(self.weight[int(i), ys, xs], dtype=np.float32)
            if cfg.flips:
                k, flip = int(rng.integers(4)), bool(rng.integers(2))
                img, lab, wt = (_dihedral(a, k, flip) for a in (img, lab, wt))
            imgs.append(img)
            tgts.append(membrane_mask(lab, self.polarity))
            wts.append(wt)
        image = torch.from_numpy(np.stack(imgs)[:, None].astype(np.float32) / 255.0)
        target = torch.from_numpy(np.stack(tgts).astype(np.float32))
        weight = torch.from_numpy(np.stack(wts))
        if not cfg.use_border_weights:
            weight = torch.ones_like(weight)
        if self.pin:
            image, target, weight = image.pin_memory(), target.pin_memory(), weight.pin_memory()
        return image, target, weight


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k)
    return np.ascontiguousarray(a[:, ::-1] if flip else a)


def prefetched(source: BatchSource, seed: int, steps: range, threads: int,
               ahead: int) -> Generator[tuple[torch.Tensor, torch.Tensor, torch.Tensor], None, None]:
    """Yield the batches of ``steps`` in order, preparing up to ``ahead`` of them in threads
    (numpy, zarr decoding and pinning release the GIL, so threads overlap with the GPU)."""
    with ThreadPoolExecutor(threads, thread_name_prefix="emseg-batches") as pool:
        pending: list[Future[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        it = iter(steps)
        for s in it:
            pending.append(pool.submit(source.batch, seed, s))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(source.batch, seed, nxt))
            yield result


# --- the train step ---------------------------------------------------------------------


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak LR at ``step``: linear warm-up, then cosine down to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                      dice_weight: float) -> torch.Tensor:
    """Border-weighted BCE (or CE for N classes, class 1 = membrane) plus optional soft Dice.

    logits (B, C, H, W); target, weight (B, H, W); computed in float32.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        prob = torch.sigmoid(logits[:, 0])
    else:
        per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
        prob = torch.softmax(logits, dim=1)[:, 1]
    loss = (per_pixel * weight).sum() / weight.sum().clamp_min(1e-6)
    if dice_weight > 0:
        inter = (prob * target).sum()
        dice = 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
        loss = loss + dice_weight * dice
    return loss


def _center_crop(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dy, dx = (t.shape[-2] - h) // 2, (t.shape[-1] - w) // 2
    return t[..., dy : dy + h, dx : dx + w]


class Trainer:
    """Model, optimiser and scheduler on one device, and one optimisation step.

    The benchmark times :meth:`step` alone (bare train-step throughput) against the whole
    loop, so both use exactly the same code.
    """

    def __init__(self, model_cfg: UNetConfig, cfg: TrainConfig, device: torch.device) -> None:
        self.model_cfg, self.cfg, self.device = model_cfg, cfg, device
        self.cuda = device.type == "cuda"
        torch.manual_seed(cfg.seed)
        self.model = UNet(model_cfg).to(device)
        channels_last = self.cuda and cfg.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if cfg.compile and self.cuda:
            self.forward = torch.compile(self.model)  # type: ignore[assignment]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cuda and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, image: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image = image.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return (image, *(t.to(self.device, non_blocking=True) for t in rest))

    def step(self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """One optimisation step on device tensors; returns the loss (a device scalar, no sync)."""
        self.model.train()
        with self.autocast():
            logits = self.forward(image)
        if logits.shape[-2:] != target.shape[-2:]:  # valid padding: the output is smaller
            target = _center_crop(target, *logits.shape[-2:])
            weight = _center_crop(weight, *logits.shape[-2:])
        loss = segmentation_loss(logits, target, weight, self.cfg.dice_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def predict(self, images: np.ndarray, batch_size: int, tta: bool = False) -> np.ndarray:
        """Membrane probabilities (Z, H, W) float32 of uint8 slices (Z, H, W)."""
        return predict_slices(self.model, images, batch_size=batch_size, tta=tta, amp=self.cfg.amp,
                              forward=self.forward, memory_format=self.memory_format)


@torch.no_grad()
def predict_slices(model: UNet, images: np.ndarray, *, batch_size: int = 4, tta: bool = False,
                   amp: bool = True, forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   memory_format: torch.memory_format = torch.contiguous_format) -> np.ndarray:
    """Membrane probabilities (Z, H, W) float32 in [0, 1] of uint8 slices (Z, H, W), whole slices
    at once (mirror-padded to a size the model accepts), on the model's device; ``tta`` averages
    the 8 flips/rotations. For validation-sized inputs; large volumes go through blockwise inference."""
    model.eval()
    device = next(model.parameters()).device
    forward = forward or model
    cast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and amp
            else contextlib.nullcontext())
    pads = [_fit_padding(n, model.config) for n in images.shape[1:]]
    out = np.empty(images.shape, np.float32)
    transforms = [(k, f) for k in range(4) for f in (False, True)] if tta else [(0, False)]
    for z0 in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(images[z0 : z0 + batch_size, None].astype(np.float32) / 255.0)
        x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]), mode="reflect")
        acc = None
        for k, flip in transforms:
            xt = torch.rot90(x, k, (-2, -1))
            xt = xt.flip(-1) if flip else xt
            xt = xt.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with cast:
                logits = forward(xt).float()
            p = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, 1)[:, 1]
            p = p.flip(-1) if flip else p
            p = torch.rot90(p, -k, (-2, -1))
            acc = p if acc is None else acc + p
        assert acc is not None
        prob = (acc / len(transforms)).cpu().numpy()
        oy, ox = pads[0][2], pads[1][2]
        out[z0 : z0 + batch_size] = prob[:, oy : oy + images.shape[1], ox : ox + images.shape[2]]
    return out


def _fit_padding(n: int, cfg: UNetConfig) -> tuple[int, int, int]:
    """(pad before, pad after, output offset) making a slice of size ``n`` fit the model.

    Same padding: pad the end up to a multiple of the divisor. Valid padding: pad both sides
    by the network's margin, then the end up to the next size the network accepts.
    """
    if cfg.padding == "same":
        return 0, -n % cfg.divisor, 0
    probe = next(s for s in range(n, n + 4 * cfg.divisor + 200) if _valid_ok(s, cfg))
    margin = (probe - cfg.valid_output_size(probe)) // 2
    size = next(s for s in range(n + 2 * margin, n + 2 * margin + 4 * cfg.divisor) if _valid_ok(s, cfg))
    return margin, size - n - margin, 0


def _valid_ok(size: int, cfg: UNetConfig) -> bool:
    try:
        cfg.valid_output_size(size)
        return True
    except ValueError:
        return False


# --- the loop -----------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _scalar_metrics(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if k != "per_threshold"}


def train(dataset: TrainingSet, validation: ValidationData, model_dir: str, model_cfg: UNetConfig,
          cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          device: str | torch.device | None = None, progress: Progress | None = None) -> TrainResult:
    """Train a U-Net on ``dataset``, validating on ``validation``; files go to ``model_dir``.

    ``resume=True`` continues from ``model_dir/checkpoint-last.pt`` (same step, optimiser,
    scheduler and RNG states); without it an existing checkpoint is an error unless
    ``overwrite=True``. ``progress(step, total, **metrics)`` is called every ``log_every``
    steps and after each validation. A NaN/inf loss raises :class:`TrainingDivergedError`
    and leaves the last good checkpoint in place.
    """
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    polarity: Polarity = cfg.polarity or polarity_of_dataset(dataset.attrs)
    last_path, best_path = os.path.join(model_dir, LAST), os.path.join(model_dir, BEST)
    metrics_path = os.path.join(model_dir, "metrics.jsonl")
    if not resume and os.path.exists(last_path) and not overwrite:
        raise StoreExistsError(f"{model_dir} already holds a run; pass resume=True to continue it or "
                               "overwrite=True to start again")
    if resume and not os.path.exists(last_path):
        raise CheckpointError(f"cannot resume: no checkpoint at {last_path}")
    source = BatchSource(dataset, cfg, polarity, pin=dev.type == "cuda")
    checkpoint_every = cfg.checkpoint_every or cfg.val_every

    t_wall = time.perf_counter()
    with _determinism(cfg.deterministic):
        trainer = Trainer(model_cfg, cfg, dev)
        start, best_metrics = 0, {}
        if resume:
            payload = load_checkpoint(last_path, map_location=dev)
            saved_cfg = config_from_checkpoint(payload, last_path)
            if saved_cfg != model_cfg:
                raise ValueError(f"cannot resume {last_path}: it holds model {saved_cfg.model_dump()}, "
                                 f"asked for {model_cfg.model_dump()}")
            getattr(trainer.model, "_orig_mod", trainer.model).load_state_dict(payload["model"])
            trainer.optimizer.load_state_dict(payload["optimizer"])
            trainer.scheduler.load_state_dict(payload["scheduler"])
            _set_rng_state(payload["extra"]["rng"], dev)
            start, best_metrics = int(payload["step"]), dict(payload["extra"].get("best", {}))
        write_json(os.path.join(model_dir, "config.json"), {
            "unet": model_cfg.model_dump(mode="json"), "train": cfg.model_dump(mode="json"),
            "dataset": dataset.path, "validation": validation.source, "polarity": polarity,
            "device": str(dev)})

        def save_last(step: int) -> None:
            save_checkpoint(last_path, trainer.model, model_cfg, optimizer=trainer.optimizer,
                            scheduler=trainer.scheduler, step=step,
                            extra={"rng": _rng_state(dev), "best": best_metrics})

        def validate(step: int) -> dict[str, Any]:
            prob = trainer.predict(validation.image, cfg.val_batch_size, tta=cfg.val_tta)
            return _scalar_metrics(evaluate_membrane(prob, validation.membrane, cfg.val_thresholds))

        # metrics.jsonl is append-only: a start/resume record opens each segment, and records of
        # steps after the resumed checkpoint (from the killed attempt) are superseded by later ones.
        append_jsonl(metrics_path, {"kind": "resume" if resume else "start", "step": start})
        loss_sum = torch.zeros((), device=dev)
        n_loss, last_loss = 0, float("nan")
        train_time, train_images = 0.0, 0
        t_interval = time.perf_counter()
        last_good = start
        batches = prefetched(source, cfg.seed, range(start, cfg.steps), cfg.loader_threads, cfg.prefetch)
        with contextlib.closing(batches):  # stops the loader threads on any exit
            for step, (image, target, weight) in enumerate(batches, start=start + 1):
                image, target, weight = trainer.to_device(image, target, weight)
                loss_sum += trainer.step(image, target, weight)
                n_loss += 1
                boundary = step == cfg.steps
                do_val = step % cfg.val_every == 0 or boundary
                do_ckpt = step % checkpoint_every == 0 or boundary
                if step % cfg.log_every == 0 or do_val or do_ckpt:
                    last_loss = float(loss_sum) / n_loss  # the only host sync of the loop
                    if not math.isfinite(last_loss):
                        kept = f"{last_path} (step {last_good})" if last_good else "no checkpoint yet"
                        raise TrainingDivergedError(
                            f"loss became {last_loss} between steps {step - n_loss + 1} and {step}; "
                            f"stopped; last good checkpoint: {kept}. Try a lower lr or grad_clip")
                    elapsed = time.perf_counter() - t_interval
                    train_time += elapsed
                    train_images += n_loss * cfg.batch_size
                    record = {"kind": "train", "step": step, "loss": last_loss,
                              "lr": trainer.scheduler.get_last_lr()[0],
                              "images_per_s": n_loss * cfg.batch_size / elapsed if elapsed > 0 else None}
                    append_jsonl(metrics_path, record)
                    if progress is not None:
                        progress(step, cfg.steps, loss=round(last_loss, 5))
                    loss_sum.zero_()
                    n_loss = 0
                if do_val:
                    scores = validate(step)
                    append_jsonl(metrics_path, {"kind": "val", "step": step, **scores})
                    if not best_metrics or scores["v_rand"] > best_metrics["v_rand"]:
                        best_metrics = {"step": step, **scores}
                        save_checkpoint(best_path, trainer.model, model_cfg, step=step,
                                        extra={"metrics": best_metrics})
                    if progress is not None:
                        progress(step, cfg.steps, v_rand=round(scores["v_rand"], 4),
                                 v_info=round(scores["v_info"], 4),
                                 pixel_accuracy=round(scores["pixel_accuracy"], 4))
                if do_ckpt:
                    save_last(step)
                    last_good = step
                if step % cfg.log_every == 0 or do_val or do_ckpt:
                    t_interval = time.perf_counter()  # validation and checkpoint time do not count

    if start >= cfg.steps:
        last_loss = float("nan")
    return TrainResult(
        model_dir=model_dir, last_checkpoint=last_path,
        best_checkpoint=best_path if os.path.exists(best_path) else None,
        step=max(start, cfg.steps), best_metrics=best_metrics, final_loss=last_loss,
        train_images_per_s=train_images / train_time if train_time > 0 else 0.0,
        wall_s=time.perf_counter() - t_wall)
