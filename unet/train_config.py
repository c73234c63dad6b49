"""How to train: :class:`TrainConfig`, and which of its fields are a run's identity."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from unet.labels import Polarity
from unet.metrics import DEFAULT_THRESHOLDS, check_thresholds
from unet.validation import ScoringMode


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
    channels_last: bool = Field(default=True, description="channels_last memory format (CUDA and CPU; "
                                "CPU training steps measured 1.4-1.7x faster with it).")
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
