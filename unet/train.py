"""The training loop: weighted BCE (+ Dice), AdamW with warm-up + cosine, validation, checkpoints.

No Prefect here. Inputs are storage handles: a training set (image / label / weight,
(N, H, W) uint8 / uint8 / float16) and validation slices of an image and a label volume
((Z, H, W) uint8). Outputs go to a model directory through :class:`storage.runs.TrainingRun`::

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
(:func:`unet.run_identity.run_identity`), in ``config.json`` and in every checkpoint. A run
of the same identity continues from ``checkpoint-last.pt`` (or starts, if killed before its
first checkpoint; a finished one is left as it is); another identity is refused with the
differing fields named (:class:`RunMismatchError`), unless ``overwrite``.

Beside this loop (their names importable from here too): :mod:`unet.train_config`,
:mod:`unet.validation_data` (held-out slices), :mod:`unet.run_identity` (start, continue or
refuse), :mod:`unet.batches`, :mod:`unet.trainer` (step, loss, schedule), :mod:`unet.slice_prediction`.

On CUDA: bf16 autocast, channels_last, optional torch.compile, pinned host batches
copied with ``non_blocking=True``, batches prepared ahead by a thread pool so the GPU does
not wait for zarr reads. On the CPU: fp32, channels_last.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from storage.dataset import TrainingSet, source_voxel_size
from storage.runs import TrainingRun
from unet.batches import IN_MEMORY_LIMIT, BatchSource, prefetched
from unet.checkpoint import config_from_checkpoint, load_checkpoint, save_checkpoint
from unet.labels import Polarity, polarity_of_dataset
from unet.model import UNet, UNetConfig
from unet.run_identity import RunMismatchError, identity_diff, plan_run, run_identity
from unet.slice_prediction import predict_slices
from unet.train_config import REPRODUCIBILITY, SPEED_ONLY_FIELDS, TrainConfig
from unet.trainer import (
    Trainer,
    _determinism,
    _rng_state,
    _set_rng_state,
    _weights_copy,
    lr_factor,
    segmentation_loss,
)
from unet.validation import BackgroundScorer, score_prediction
from unet.validation_data import (
    ValidationData,
    ValidationOverlapError,
    check_held_out,
    check_splits,
    format_slices,
)

__all__ = [
    "BEST", "IN_MEMORY_LIMIT", "LAST", "MAX_PENDING_VALIDATIONS", "REPRODUCIBILITY", "SPEED_ONLY_FIELDS",
    "BatchSource", "RunMismatchError", "TrainConfig", "TrainResult", "Trainer", "TrainingDivergedError",
    "ValidationData", "ValidationOverlapError", "check_held_out", "format_slices", "identity_diff",
    "lr_factor", "plan_run", "predict_slices", "prefetched", "run_identity", "segmentation_loss", "train",
]

Progress = Callable[..., None]
LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
# Validations handed to the scorer and not yet scored; the next one waits (each holds a
# copy of the weights), so a scorer slower than training holds the loop back visibly.
MAX_PENDING_VALIDATIONS = 2


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def _best_logged(run: TrainingRun, upto: int) -> list[dict[str, Any]]:
    """Validation records of steps <= ``upto`` in a run's log: scored after the checkpoint
    at ``upto`` was written (validation is scored in the background), so the checkpoint's
    own ``best`` may not know them."""
    return [{k: v for k, v in r.items() if k not in ("kind", "loop_s")} for r in run.read_log()
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
    every ``log_every`` steps and whenever a validation's scores arrive (``val_step`` says which step they
    score). A NaN/inf loss raises :class:`TrainingDivergedError` and leaves the last good
    checkpoint in place.
    """
    check_splits(dataset, validation, report, cfg.allow_val_overlap)
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    polarity: Polarity = cfg.polarity or polarity_of_dataset(dataset.attrs)
    run = TrainingRun(model_dir)
    last_path, best_path = run.last_checkpoint, run.best_checkpoint
    identity = run_identity(dataset, validation, model_cfg, cfg)
    trained_on = source_voxel_size(dataset)  # every checkpoint records the training voxel size
    payload = plan_run(run, identity, resume=resume, overwrite=overwrite, map_location=dev)
    resume = payload is not None
    source = BatchSource(dataset, cfg, polarity, pin=dev.type == "cuda")
    checkpoint_every = cfg.checkpoint_every or cfg.val_every

    run.clear_complete()  # unfinished (for the nightly's model choice) until the end
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
            known = [dict(payload["extra"].get("best", {}))] + _best_logged(run, start)
            # Keys sorted, as in the log and in an uninterrupted run (checkpoint-best.pt: the same bytes).
            best: dict[str, Any] = max((b for b in known if b), key=lambda b: b["v_rand"], default={})
            best_metrics = dict(sorted(best.items()))

        def save_last(step: int) -> None:
            save_checkpoint(last_path, trainer.model, model_cfg, optimizer=trainer.optimizer,
                            scheduler=trainer.scheduler, step=step, training_data=trained_on,
                            extra={"rng": _rng_state(dev), "best": best_metrics, "identity": identity,
                                   "deterministic": cfg.deterministic})

        def on_scores(current: int, val_step: int, weights: dict[str, torch.Tensor],
                      scores: dict[str, Any], loop_s: float) -> None:
            nonlocal best_metrics
            if not best_metrics or scores["v_rand"] > best_metrics["v_rand"]:
                best_metrics = dict(sorted({"step": val_step, **scores}.items()))
                # Saved before the record is logged: a logged best always has its checkpoint.
                save_checkpoint(best_path, weights, model_cfg, step=val_step, training_data=trained_on,
                                extra={"metrics": best_metrics, "identity": identity,
                                       "deterministic": cfg.deterministic})
            run.log({"kind": "val", "step": val_step, "loop_s": loop_s, **scores})
            if progress is not None:
                progress(current, cfg.steps, val_step=val_step, v_rand=round(scores["v_rand"], 4),
                         v_rand_threshold=scores["v_rand_threshold"], v_info=round(scores["v_info"], 4),
                         isbi_pixel_error=round(scores["isbi_pixel_error"], 4))

        def validate(step: int) -> None:
            while scorer.n_pending >= MAX_PENDING_VALIDATIONS:  # the scorer lags: wait for the oldest
                (s, w, t), scores = scorer.wait_oldest()
                on_scores(step, s, w, scores, t)
            prob = trainer.predict(validation.image, cfg.val_batch_size, tta=cfg.val_tta)
            weights = _weights_copy(trainer.model)  # the best checkpoint, should these scores be the best
            # With the loop's wall time when this validation was taken: the curve of score against time.
            scorer.submit(prob, validation.membrane, cfg.val_thresholds,
                          tag=(step, weights, round(time.perf_counter() - t_loop, 1)))

        # metrics.jsonl is append-only while a run lasts: a resume record opens each segment, and
        # records of steps after the resumed checkpoint (from the killed attempt) are superseded by
        # later ones. A new (or replacing) run starts it afresh and drops the earlier run's
        # checkpoints, so nothing read from this folder can belong to another run.
        # The earlier run's checkpoints go before config.json names the new identity: a kill in
        # between must not leave them looking like this run's.
        if resume:
            run.log({"kind": "resume", "step": start})
        else:
            run.remove_checkpoints()
            run.start_log([{"kind": "start", "step": start}])
        run.write_config({
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
                    run.log(record)
                    if progress is not None:
                        progress(step, cfg.steps, loss=round(last_loss, 5))
                    loss_sum.zero_()
                    n_loss = 0
                t_val = time.perf_counter()
                for (s, w, t), scores in scorer.ready():
                    on_scores(step, s, w, scores, t)
                if do_val:
                    validate(step)
                val_blocking_s += time.perf_counter() - t_val
                if do_ckpt:
                    save_last(step)
                    last_good = step
            t_val = time.perf_counter()
            for (s, w, t), scores in scorer.drain():  # the last validations, before the run counts as done
                on_scores(max(start, cfg.steps), s, w, scores, t)
            val_blocking_s += time.perf_counter() - t_val
        loop_s = time.perf_counter() - t_loop
        n_images = max(0, cfg.steps - start) * cfg.batch_size

        report_metrics: dict[str, Any] = {}
        if report is not None and run.has_best():
            best_model = UNet(model_cfg).to(dev)
            best_model.load_state_dict(load_checkpoint(best_path, map_location=dev)["model"])
            prob = predict_slices(best_model, report.image, batch_size=cfg.val_batch_size, tta=cfg.val_tta,
                                  amp=cfg.amp)
            report_metrics = {"step": best_metrics.get("step"),
                              **score_prediction(prob, report.membrane, cfg.val_thresholds)}
            run.log({"kind": "report", "z": report.source.get("z"), **report_metrics})

    run.mark_complete(step=max(start, cfg.steps), best=best_metrics)  # last: the run finished
    if start >= cfg.steps:
        last_loss = float("nan")
    return TrainResult(
        model_dir=model_dir, last_checkpoint=last_path,
        best_checkpoint=best_path if run.has_best() else None,
        step=max(start, cfg.steps), best_metrics=best_metrics, final_loss=last_loss,
        train_images_per_s=n_images / loop_s if n_images and loop_s > 0 else 0.0,
        wall_s=time.perf_counter() - t_wall, val_blocking_s=val_blocking_s, report_metrics=report_metrics,
        resumed_from=start if resume else None, deterministic=cfg.deterministic)
