"""The training loop: weighted BCE (+ Dice), AdamW with warm-up + cosine, validation, checkpoints.

No Prefect here. Inputs are storage handles: a training set (image / label / weight,
(N, H, W) uint8 / uint8 / float16) and validation slices of an image and a label volume
((Z, H, W) uint8). Outputs go to a model directory through :mod:`storage.files`::

    models/<run>/checkpoint-last.pt    every ``checkpoint_every`` steps (and at the end)
    models/<run>/checkpoint-best.pt    whenever validation V_rand improves
    models/<run>/metrics.jsonl         one record per log interval, per validation, and the report
    models/<run>/config.json           model + training config, inputs

Validation: the training thread predicts the validation (selection) slices, copies the
weights, and hands both to a worker that scores them (:mod:`unet.validation`) while
training goes on; when the scores come back, the copy is saved as ``checkpoint-best.pt``
if its V_rand is the best so far. Optionally, the best checkpoint is then scored once on a
separate reporting split, so the score reported is not the score it was picked by. The
validation slices must not be slices the training set was generated from (its recorded
sources); ``TrainConfig.allow_val_overlap`` overrides that.

Resumption: the batch of step ``s`` is a pure function of (seed, s) (its own numpy
generator), and the checkpoint stores the step, optimiser, scheduler and torch RNG
states, so a run resumed from ``checkpoint-last.pt`` replays exactly the steps an
uninterrupted run would have taken (bit-identical in deterministic mode; otherwise close,
and ``config.json`` / the checkpoints say ``deterministic: false``).

Running the same thing again continues it: ``models/<run>`` records the run's identity
(:func:`run_identity`: model config, train config, what the training set was made from,
the validation slices), in ``config.json`` and in every checkpoint. A run of the same
identity continues from ``checkpoint-last.pt`` (or starts, if killed before its first
checkpoint; a finished one is left as it is); another identity is refused with the
differing fields named (:class:`RunMismatchError`), unless ``overwrite``.

On CUDA: bf16 autocast, channels_last, optional torch.compile, pinned host batches
copied with ``non_blocking=True``, batches prepared ahead by a thread pool so the GPU does
not wait for zarr reads.
"""

from __future__ import annotations

import contextlib
import json
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
from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.dataset import TrainingSet
from storage.errors import ShapeMismatchError, StoreExistsError
from storage.files import append_jsonl, read_json, read_jsonl, remove_files, write_json, write_jsonl
from storage.intensity import to_uint8, volume_range
from storage.runs import clear_run_complete, mark_run_complete
from storage.volume import Volume
from unet.checkpoint import CheckpointError, config_from_checkpoint, load_checkpoint, save_checkpoint
from unet.labels import Polarity, check_labels, membrane_mask, polarity_of_dataset
from unet.membrane import membrane_probability
from unet.metrics import DEFAULT_THRESHOLDS, check_thresholds
from unet.model import UNet, UNetConfig
from unet.tta import TTAMode, tta_average
from unet.validation import BackgroundScorer, ScoringMode, score_prediction

Progress = Callable[..., None]
LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
# Above this many bytes the training set is read from zarr per batch instead of held in memory.
IN_MEMORY_LIMIT = 8 * 2**30
# Validations handed to the scorer and not yet scored; the next one waits (each holds a
# copy of the weights), so a scorer slower than training holds the loop back visibly.
MAX_PENDING_VALIDATIONS = 2


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
                                              "swept for V_rand / V_info / ISBI pixel error (each keeps its "
                                              "best); default 0.0 to 1.0 in steps of 0.1, as ISBI 2012.")
    val_scoring: ScoringMode = Field(default="process", description="Where validation predictions are "
                                     "scored: a worker process (training continues meanwhile), a worker "
                                     "thread, or inline on the training thread.")
    allow_val_overlap: bool = Field(default=False, description="Validate on slices the training set was "
                                    "generated from (normally refused: scores on training data flatter "
                                    "the model).")
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

    @field_validator("val_thresholds")
    @classmethod
    def _thresholds(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        check_thresholds(value)
        return value


# TrainConfig fields that change how fast a run goes, not the parameters it reaches: a run
# may be continued with other values of these.
SPEED_ONLY_FIELDS = frozenset({"loader_threads", "prefetch", "val_scoring"})
# What config.json and the checkpoints say about reproducibility.
REPRODUCIBILITY = {
    True: "deterministic: a run resumed after a crash reaches the same parameters, bit for bit, "
          "as an uninterrupted run on the same machine and software",
    False: "non-deterministic (fast kernels; train config deterministic: true for bit-identical "
           "resumption): a resumed or repeated run reaches close but not bit-identical parameters",
}


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunMismatchError(StoreExistsError):
    """The model folder holds a run of another identity; ``fields`` are the differing ones."""

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields


class ValidationOverlapError(ValueError):
    """Validation slices are slices the training set was generated from (scores would flatter)."""


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
        rng = volume_range(image.attrs, image.dtype, image.path)  # 12/16-bit or float → 0..255
        return cls(to_uint8(image.read(slice(z0, z1)), rng), membrane_mask(lab, polarity),
                   {"image": image.path, "labels": labels.path, "z": [z0, z1], "polarity": polarity})

    @property
    def slices(self) -> list[int]:
        """The z indices of these slices in their volume ([] when not read from a volume)."""
        z = self.source.get("z")
        return list(range(int(z[0]), int(z[1]))) if z else []


def _same_store(a: Any, b: Any) -> bool:
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    a, b = (p.removeprefix("file://").rstrip("/") for p in (a, b))
    if "://" in a or "://" in b:
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def format_slices(zs: list[int]) -> str:
    """[20, 21, 22, 25] -> '20-22,25' (inclusive ranges, as slice selections are written)."""
    parts: list[str] = []
    for z in sorted(set(zs)):
        if parts and z == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{z}"
        else:
            parts.append(str(z))
    return ",".join(parts)


def check_held_out(dataset: TrainingSet, validation: ValidationData, allow: bool = False,
                   what: str = "validation slices") -> None:
    """:class:`ValidationOverlapError` (one line, naming the slices) when ``validation`` holds
    slices of the volume the training set was generated from, as its attrs record them
    (``sources``: image, labels, slices); nothing when ``allow`` or when either side does
    not record where it came from."""
    sources = dataset.attrs.get("sources") or {}
    trained = {int(z) for z in sources.get("slices") or []}
    if allow or not trained or not validation.slices:
        return
    same_volume = any(_same_store(sources.get(k), validation.source.get(k)) for k in ("image", "labels"))
    overlap = sorted(trained.intersection(validation.slices))
    if same_volume and overlap:
        raise ValidationOverlapError(
            f"{what} {format_slices(validation.slices)} of {validation.source.get('image')} include slices "
            f"{format_slices(overlap)} that training set {dataset.path} was generated from (its slices: "
            f"{format_slices(sorted(trained))}); validate on held-out slices, or pass --allow-val-overlap "
            "(train config allow_val_overlap: true) to validate on training data anyway")


def _store_key(path: Any) -> Any:
    """A store path as compared between runs: local paths resolved (a relative workspace
    given from another folder is the same store), URLs as written."""
    if not isinstance(path, str) or "://" in path.removeprefix("file://"):
        return path
    return os.path.realpath(path.removeprefix("file://"))


def run_identity(dataset: TrainingSet, validation: ValidationData, model_cfg: UNetConfig,
                 cfg: TrainConfig) -> dict[str, Any]:
    """What makes a training run the run it is (JSON): the model config, the train config
    (less :data:`SPEED_ONLY_FIELDS`), the training set (its store and what it was made from)
    and the validation source. Equal identities may continue each other's checkpoints."""
    made = dataset.attrs
    sources = dict(made.get("sources") or {})
    for key in ("image", "labels"):
        if key in sources:
            sources[key] = _store_key(sources[key])
    identity = {
        "unet": model_cfg.model_dump(mode="json"),
        "train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in SPEED_ONLY_FIELDS},
        "dataset": {"path": _store_key(dataset.path), "sources": sources, "params": made.get("params"),
                    "n_samples": made.get("n_samples"), "sample_shape": made.get("sample_shape")},
        "validation": {k: _store_key(v) if k in ("image", "labels") else v
                       for k, v in validation.source.items()},
    }
    return json.loads(json.dumps(identity))  # as read back from config.json: lists, not tuples


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def identity_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields (dotted, e.g. ``train.lr``) where ``current`` differs from ``stored``, each
    as "field: stored value -> current value". Fields only ``current`` has (added to a
    config since the stored run) are not counted."""
    old, new = _flatten(stored), _flatten(current)
    return [f"{k}: {json.dumps(old[k])} -> {json.dumps(new.get(k))}"
            for k in old if k in new and old[k] != new[k] or k not in new and old[k] is not None]


def _stored_identity(model_dir: str, payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """The identity a run folder records: its checkpoint's, else config.json's (runs written
    before identities were recorded: their configs and inputs), else None (nothing there)."""
    if payload is not None and "identity" in payload.get("extra", {}):
        return dict(payload["extra"]["identity"])
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(config_path):
        return {"unet": payload["model_config"]} if payload is not None else None
    recorded = read_json(config_path)
    if "identity" in recorded:
        return dict(recorded["identity"])
    legacy = {"unet": recorded.get("unet"),
              "train": {k: v for k, v in (recorded.get("train") or {}).items() if k not in SPEED_ONLY_FIELDS},
              "dataset": {"path": _store_key(recorded.get("dataset"))},
              "validation": {k: _store_key(v) if k in ("image", "labels") else v
                             for k, v in (recorded.get("validation") or {}).items()}}
    return json.loads(json.dumps(legacy))


def plan_run(model_dir: str, identity: dict[str, Any], *, resume: bool = False, overwrite: bool = False,
             map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Start or continue the run in ``model_dir``? The checkpoint to continue from (its
    payload), or None to start from step 0.

    A folder whose recorded identity equals ``identity`` is continued from
    ``checkpoint-last.pt`` (or started, when killed before its first checkpoint); another
    identity raises :class:`RunMismatchError` naming the differing fields, unless
    ``overwrite`` (start again). ``resume`` insists on continuing: no checkpoint is then a
    :class:`CheckpointError`. Messages name the command-line flags (``--overwrite``).
    """
    last_path = os.path.join(model_dir, LAST)
    if overwrite:
        if resume:
            raise ValueError("--resume continues a run and --overwrite starts it again: pass one of them")
        return None
    payload = load_checkpoint(last_path) if os.path.exists(last_path) else None
    stored = _stored_identity(model_dir, payload)
    if stored is not None:
        diff = identity_diff(stored, identity)
        if diff:
            fields = [d.partition(":")[0] for d in diff]
            raise RunMismatchError(
                f"{model_dir} holds a training run with other settings ({'; '.join(diff)}); run the "
                "command with that run's settings to continue it, pass --overwrite to start it again "
                "from step 0 (its checkpoints and metrics are replaced), or choose another --run name",
                fields)
    if payload is None and resume:
        raise CheckpointError(f"cannot resume: no checkpoint at {last_path}")
    if payload is not None and map_location != "cpu":
        payload = load_checkpoint(last_path, map_location=map_location)
    return payload


@dataclass
class TrainResult:
    """What a training run left: paths, best validation scores, throughput.

    ``train_images_per_s`` is honest: training images over the loop's whole wall time,
    validation (prediction, waiting for scores) and checkpoints included; ``val_blocking_s``
    is the part of that time the training thread spent on validation. ``report_metrics``
    are the best checkpoint's scores on the reporting split (empty without one).
    """

    model_dir: str
    last_checkpoint: str
    best_checkpoint: str | None
    step: int
    best_metrics: dict[str, Any]
    final_loss: float
    train_images_per_s: float
    wall_s: float
    val_blocking_s: float = 0.0
    report_metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None
    deterministic: bool = False


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
    else:
        per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
    prob = membrane_probability(logits)[:, 0]
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

    def membrane(xt: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) probability; class 1 of N > 1
        with cast:
            logits = forward(xt.contiguous(memory_format=memory_format)).float()
        return membrane_probability(logits)

    for z0 in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(images[z0 : z0 + batch_size, None].astype(np.float32) / 255.0)
        x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]), mode="reflect")
        # The same D4 views as blockwise inference (unet.tta).
        views: TTAMode = "d4" if tta else "none"
        prob = tta_average(membrane, x.to(device, non_blocking=True), views)[:, 0].cpu().numpy()
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


def _weights_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights copied to host memory (a snapshot that training no longer changes)."""
    module = getattr(model, "_orig_mod", model)
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _best_logged(metrics_path: str, upto: int) -> list[dict[str, Any]]:
    """Validation records of steps <= ``upto`` in a run's log: scored after the checkpoint
    at ``upto`` was written (validation is scored in the background), so the checkpoint's
    own ``best`` may not know them."""
    return [{k: v for k, v in r.items() if k != "kind"} for r in read_jsonl(metrics_path)
            if r.get("kind") == "val" and int(r.get("step", upto + 1)) <= upto and "v_rand" in r]


def train(dataset: TrainingSet, validation: ValidationData, model_dir: str, model_cfg: UNetConfig,
          cfg: TrainConfig, *, report: ValidationData | None = None, resume: bool = False,
          overwrite: bool = False, device: str | torch.device | None = None,
          progress: Progress | None = None) -> TrainResult:
    """Train a U-Net on ``dataset``, validating on ``validation``; files go to ``model_dir``.

    ``validation`` (the selection split) picks the best checkpoint by V_rand; it is scored by
    a worker while training continues (``cfg.val_scoring``). ``report`` (optional, the
    reporting split) is scored once, with the best checkpoint, at the end: the figure to
    quote. Both must be held out from the slices ``dataset`` was generated from
    (:class:`ValidationOverlapError`) unless ``cfg.allow_val_overlap``, and ``report`` must
    not share slices with ``validation``.

    A ``model_dir`` holding a run of the same identity (:func:`run_identity`) continues
    from its ``checkpoint-last.pt`` (same step, optimiser, scheduler and RNG states): running
    the same thing again after a crash finishes the run. Another identity is refused
    (:class:`RunMismatchError`) unless ``overwrite`` (start again from step 0); ``resume``
    insists on continuing (see :func:`plan_run`). ``progress(step, total, **metrics)`` is called
    every ``log_every``
    steps and whenever a validation's scores arrive (``val_step`` says which step they
    score). A NaN/inf loss raises :class:`TrainingDivergedError` and leaves the last good
    checkpoint in place.
    """
    check_held_out(dataset, validation, cfg.allow_val_overlap)
    if report is not None:
        check_held_out(dataset, report, cfg.allow_val_overlap, what="report slices")
        shared = sorted(set(report.slices) & set(validation.slices))
        same = any(_same_store(report.source.get(k), validation.source.get(k)) for k in ("image", "labels"))
        if shared and same:
            raise ValueError(f"report slices {format_slices(report.slices)} share slices "
                             f"{format_slices(shared)} with the validation slices "
                             f"{format_slices(validation.slices)} that pick the best checkpoint; "
                             "report on other slices")
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    polarity: Polarity = cfg.polarity or polarity_of_dataset(dataset.attrs)
    last_path, best_path = os.path.join(model_dir, LAST), os.path.join(model_dir, BEST)
    metrics_path = os.path.join(model_dir, "metrics.jsonl")
    identity = run_identity(dataset, validation, model_cfg, cfg)
    payload = plan_run(model_dir, identity, resume=resume, overwrite=overwrite, map_location=dev)
    resume = payload is not None
    source = BatchSource(dataset, cfg, polarity, pin=dev.type == "cuda")
    checkpoint_every = cfg.checkpoint_every or cfg.val_every

    clear_run_complete(model_dir)  # unfinished (for the nightly's model choice) until the end
    t_wall = time.perf_counter()
    with _determinism(cfg.deterministic), BackgroundScorer(cfg.val_scoring) as scorer:
        trainer = Trainer(model_cfg, cfg, dev)
        start, best_metrics = 0, dict[str, Any]()
        if payload is not None:
            saved_cfg = config_from_checkpoint(payload, last_path)
            if saved_cfg != model_cfg:
                raise ValueError(f"cannot resume {last_path}: it holds model {saved_cfg.model_dump()}, "
                                 f"asked for {model_cfg.model_dump()}")
            getattr(trainer.model, "_orig_mod", trainer.model).load_state_dict(payload["model"])
            trainer.optimizer.load_state_dict(payload["optimizer"])
            trainer.scheduler.load_state_dict(payload["scheduler"])
            _set_rng_state(payload["extra"]["rng"], dev)
            start = int(payload["step"])
            known = [dict(payload["extra"].get("best", {}))] + _best_logged(metrics_path, start)
            # Keys sorted, as in the log and in an uninterrupted run (checkpoint-best.pt: the same bytes).
            best: dict[str, Any] = max((b for b in known if b), key=lambda b: b["v_rand"], default={})
            best_metrics = dict(sorted(best.items()))

        def save_last(step: int) -> None:
            save_checkpoint(last_path, trainer.model, model_cfg, optimizer=trainer.optimizer,
                            scheduler=trainer.scheduler, step=step,
                            extra={"rng": _rng_state(dev), "best": best_metrics, "identity": identity,
                                   "deterministic": cfg.deterministic})

        def on_scores(current: int, val_step: int, weights: dict[str, torch.Tensor],
                      scores: dict[str, Any]) -> None:
            nonlocal best_metrics
            if not best_metrics or scores["v_rand"] > best_metrics["v_rand"]:
                best_metrics = dict(sorted({"step": val_step, **scores}.items()))
                # Saved before the record is logged: a logged best always has its checkpoint.
                save_checkpoint(best_path, weights, model_cfg, step=val_step,
                                extra={"metrics": best_metrics, "identity": identity,
                                       "deterministic": cfg.deterministic})
            append_jsonl(metrics_path, {"kind": "val", "step": val_step, **scores})
            if progress is not None:
                progress(current, cfg.steps, val_step=val_step, v_rand=round(scores["v_rand"], 4),
                         v_rand_threshold=scores["v_rand_threshold"], v_info=round(scores["v_info"], 4),
                         isbi_pixel_error=round(scores["isbi_pixel_error"], 4))

        def validate(step: int) -> None:
            while scorer.n_pending >= MAX_PENDING_VALIDATIONS:  # the scorer lags: wait for the oldest
                (s, w), scores = scorer.wait_oldest()
                on_scores(step, s, w, scores)
            prob = trainer.predict(validation.image, cfg.val_batch_size, tta=cfg.val_tta)
            weights = _weights_copy(trainer.model)  # the best checkpoint, should these scores be the best
            scorer.submit(prob, validation.membrane, cfg.val_thresholds, tag=(step, weights))

        # metrics.jsonl is append-only while a run lasts: a resume record opens each segment, and
        # records of steps after the resumed checkpoint (from the killed attempt) are superseded by
        # later ones. A new (or replacing) run starts it afresh and drops the earlier run's
        # checkpoints, so nothing read from this folder can belong to another run.
        # The earlier run's checkpoints go before config.json names the new identity: a kill in
        # between must not leave them looking like this run's.
        if resume:
            append_jsonl(metrics_path, {"kind": "resume", "step": start})
        else:
            remove_files(last_path, best_path)
            write_jsonl(metrics_path, [{"kind": "start", "step": start}])
        write_json(os.path.join(model_dir, "config.json"), {
            "unet": model_cfg.model_dump(mode="json"), "train": cfg.model_dump(mode="json"),
            "dataset": dataset.path, "validation": validation.source,
            "report": report.source if report is not None else None, "polarity": polarity,
            "device": str(dev),
            "identity": identity, "deterministic": cfg.deterministic,
            "reproducibility": REPRODUCIBILITY[cfg.deterministic]})
        loss_sum = torch.zeros((), device=dev)
        n_loss, last_loss = 0, float("nan")
        val_blocking_s = 0.0
        t_loop = t_interval = time.perf_counter()
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
                    # Everything since the last record counts, validation and checkpoints included.
                    now = time.perf_counter()
                    elapsed, t_interval = now - t_interval, now
                    record = {"kind": "train", "step": step, "loss": last_loss,
                              "lr": trainer.scheduler.get_last_lr()[0],
                              "images_per_s": n_loss * cfg.batch_size / elapsed if elapsed > 0 else None}
                    append_jsonl(metrics_path, record)
                    if progress is not None:
                        progress(step, cfg.steps, loss=round(last_loss, 5))
                    loss_sum.zero_()
                    n_loss = 0
                t_val = time.perf_counter()
                for (s, w), scores in scorer.ready():
                    on_scores(step, s, w, scores)
                if do_val:
                    validate(step)
                val_blocking_s += time.perf_counter() - t_val
                if do_ckpt:
                    save_last(step)
                    last_good = step
            t_val = time.perf_counter()
            for (s, w), scores in scorer.drain():  # the last validations, before the run counts as done
                on_scores(max(start, cfg.steps), s, w, scores)
            val_blocking_s += time.perf_counter() - t_val
        loop_s = time.perf_counter() - t_loop
        n_images = max(0, cfg.steps - start) * cfg.batch_size

        report_metrics: dict[str, Any] = {}
        if report is not None and os.path.exists(best_path):
            best_model = UNet(model_cfg).to(dev)
            best_model.load_state_dict(load_checkpoint(best_path, map_location=dev)["model"])
            prob = predict_slices(best_model, report.image, batch_size=cfg.val_batch_size, tta=cfg.val_tta,
                                  amp=cfg.amp)
            report_metrics = {"step": best_metrics.get("step"),
                              **score_prediction(prob, report.membrane, cfg.val_thresholds)}
            append_jsonl(metrics_path, {"kind": "report", "z": report.source.get("z"), **report_metrics})

    mark_run_complete(model_dir, step=max(start, cfg.steps), best=best_metrics)  # last: the run finished
    if start >= cfg.steps:
        last_loss = float("nan")
    return TrainResult(
        model_dir=model_dir, last_checkpoint=last_path,
        best_checkpoint=best_path if os.path.exists(best_path) else None,
        step=max(start, cfg.steps), best_metrics=best_metrics, final_loss=last_loss,
        train_images_per_s=n_images / loop_s if n_images and loop_s > 0 else 0.0,
        wall_s=time.perf_counter() - t_wall, val_blocking_s=val_blocking_s, report_metrics=report_metrics,
        resumed_from=start if resume else None, deterministic=cfg.deterministic)
