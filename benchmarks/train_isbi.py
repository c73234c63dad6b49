"""Train on ISBI 2012 slices 0-19 (MLS-augmented), select on 20-24, report on 25-29; scores and throughput.

    .venv/bin/python benchmarks/train_isbi.py              # GPU: base 64, depth 5, batch 8 of 512²
    .venv/bin/python benchmarks/train_isbi.py --cpu-smoke  # a short, small CPU run

The best checkpoint is picked by V_rand on the selection slices (``--val-slices``, scored in
a worker process while training goes on) and then scored once on the reporting slices
(``--report-slices``) and on both together (20-29, the split of the published figures).
Prints, for each: V_rand and the threshold where it peaks, V_info, the ISBI pixel error
(1 - best F-score of the cell-interior class over thresholds 0.0-1.0), pixel accuracy (at
0.5 and at its best threshold); then wall time, the training loop's images/s (validation
included) with the time it blocked on validation, and, in the same run, the bare
train-step images/s of the same model and batch (one batch resident on the device, no
loading, no validation) and the loop/bare ratio. Needs the ISBI 2012 training stacks
(``--data``; default ../shared/data/isbi2012 beside the checkout).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from storage.dataset import create_training_set
from storage.ingest import ingest_with_labels
from storage.volume import open_volume
from storage.workspace import Workspace
from unet.augment import AugmentConfig, augment_sample
from unet.checkpoint import load_model
from unet.model import UNetConfig
from unet.train import BatchSource, TrainConfig, Trainer, ValidationData, predict_slices, train
from unet.validation import score_prediction
from unet.weights import border_weight_map

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"


def build_training_set(ws: Workspace, n_samples: int, seed: int, group_size: int = 8) -> str:
    """MLS-augmented samples of slices 0-19 via the augment stage's library (sequential here)."""
    image_vol, label_vol = open_volume(ws.volume("isbi")), open_volume(ws.labels("isbi"))
    images, labels = image_vol.read(slice(0, 20)), label_vol.read(slice(0, 20))
    cfg = AugmentConfig()
    weights = [border_weight_map(lab, w0=cfg.border_w0, sigma=cfg.border_sigma_px,
                                 class_balance=cfg.class_balance) for lab in labels]
    path = ws.dataset("isbi-bench")
    # Sources recorded as augment records them, so training refuses validation slices among them.
    sources = {"image": image_vol.path, "labels": label_vol.path, "slices": list(range(20)),
               "split": {"train": "0-19"}}
    ts = create_training_set(path, n_samples, images.shape[1:], group_size=group_size,  # type: ignore[arg-type]
                             attrs={"sources": sources, "params": {"augment": cfg.model_dump(mode="json")}},
                             overwrite=True)
    for g in range(-(-n_samples // group_size)):
        out: list[list[np.ndarray]] = [[], [], []]
        for i in ts.group_range(g):
            rng = np.random.default_rng([seed, i])
            z = int(rng.integers(20))
            for acc, a in zip(out, augment_sample(images[z], labels[z], weights[z], rng, cfg), strict=True):
                acc.append(a)
        ts.write_group(g, *(np.stack(a) for a in out))
    ts.mark_complete()
    return path


def z_range(text: str) -> tuple[int, int]:
    """'20-24' (inclusive) -> (20, 25), a half-open z range."""
    first, _, last = text.partition("-")
    return int(first), int(last or first) + 1


def bare_step_throughput(model_cfg: UNetConfig, cfg: TrainConfig, source: BatchSource, device: torch.device,
                         steps: int, warmup: int = 3) -> float:
    """Images/s of Trainer.step alone on one resident batch (the ceiling for the loop)."""
    trainer = Trainer(model_cfg, cfg, device)
    batch = trainer.to_device(*source.batch(cfg.seed, 0))
    for _ in range(warmup):
        trainer.step(*batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = trainer.step(*batch)
    float(loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="short small run (CPU development machine)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--crop", type=int)
    ap.add_argument("--base", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--samples", type=int, help="augmented training samples")
    ap.add_argument("--val-every", type=int)
    ap.add_argument("--bare-steps", type=int)
    ap.add_argument("--budget-s", type=float, help="fit the step count to this many seconds of training: "
                    "the bare step's images/s is measured first and the steps set to 85 %% of what it "
                    "allows (at least 100, or --steps if fewer), so the run reports within a device "
                    "call's time limit")
    ap.add_argument("--tta", action="store_true", help="8-fold flip/rotation averaging at validation")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--val-slices", default="20-24", help="selection split: picks the best checkpoint")
    ap.add_argument("--report-slices", default="25-29", help="reporting split: scores the best checkpoint")
    ap.add_argument("--workdir", help="workspace (default: a temporary directory)")
    ap.add_argument("--data", default=str(ISBI), help="folder with train-volume.tif and train-labels.tif "
                    "(default: ../shared/data/isbi2012 beside the checkout)")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    d: dict[str, int | None]
    if args.cpu_smoke or not cuda:
        d = {"steps": 30, "batch_size": 2, "crop": 256, "base": 16, "depth": 4, "samples": 16,
             "val_every": 30, "bare_steps": 5}
    else:
        d = {"steps": 3000, "batch_size": 8, "crop": None, "base": 64, "depth": 5, "samples": 2000,
             "val_every": 250, "bare_steps": 50}
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="emseg-bench-")
    ws = Workspace(args.workdir or tmp.name)  # type: ignore[union-attr]
    t0 = time.perf_counter()
    if not Path(ws.volume("isbi")).exists():
        data = Path(args.data)
        ingest_with_labels(str(data / "train-volume.tif"), str(data / "train-labels.tif"),
                           ws.volume("isbi"), ws.labels("isbi"))
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds_path = build_training_set(ws, args.samples, seed=0)
    t_augment = time.perf_counter() - t0

    from storage.dataset import open_training_set

    ts = open_training_set(ds_path)
    image_vol, label_vol = open_volume(ws.volume("isbi")), open_volume(ws.labels("isbi"))
    val_z, report_z = (z_range(t) for t in (args.val_slices, args.report_slices))
    val = ValidationData.from_volumes(image_vol, label_vol, val_z)
    report_split = ValidationData.from_volumes(image_vol, label_vol, report_z)
    model_cfg = UNetConfig(base_channels=args.base, depth=args.depth)
    device = torch.device("cuda" if cuda else "cpu")

    def train_config(steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=args.batch_size, crop=args.crop,
                           val_every=min(args.val_every, steps), warmup_steps=min(100, steps // 10),
                           val_tta=args.tta, compile=args.compile, loader_threads=2 if not cuda else 6)

    cfg = train_config(args.steps)
    bare_first = None
    if args.budget_s:
        bare_first = bare_step_throughput(model_cfg, cfg, BatchSource(ts, cfg, "zero_is_membrane", pin=cuda),
                                          device, args.bare_steps)
        fitted = int(0.85 * args.budget_s * bare_first / args.batch_size)
        cfg = train_config(max(min(100, args.steps), fitted))
        print(f"budget {args.budget_s:.0f} s at {bare_first:.1f} images/s (bare step): {cfg.steps} steps",
              flush=True)
    t0 = time.perf_counter()
    def show(step: int, total: int, **m: float) -> None:
        if "v_rand" in m:
            print(f"step {step}/{total} {m}", flush=True)

    result = train(ts, val, ws.model_dir("bench"), model_cfg, cfg, report=report_split, overwrite=True,
                   device=device, progress=show)
    wall = time.perf_counter() - t0
    # The best checkpoint on selection and reporting slices together (20-29: the published split).
    both = ValidationData.from_volumes(image_vol, label_vol, (min(val_z[0], report_z[0]),
                                                              max(val_z[1], report_z[1])))
    best_model, _ = load_model(result.best_checkpoint or "", map_location=device)
    both_scores = score_prediction(predict_slices(best_model, both.image, batch_size=cfg.val_batch_size,
                                                  tta=cfg.val_tta, amp=cfg.amp),
                                   both.membrane, cfg.val_thresholds)
    bare = bare_first or bare_step_throughput(
        model_cfg, cfg, BatchSource(ts, cfg, "zero_is_membrane", pin=cuda), device, args.bare_steps)
    best = result.best_metrics

    def scores(m: dict[str, float], slices: str) -> dict[str, object]:
        keys = ("v_rand", "v_rand_threshold", "v_info", "v_info_threshold", "isbi_pixel_error",
                "isbi_pixel_error_threshold", "pixel_accuracy_at_half", "pixel_accuracy_best",
                "pixel_accuracy_best_threshold")
        return {"slices": slices, **{k: round(m[k], 4) for k in keys}}

    z_both = f"{both.slices[0]}-{both.slices[-1]}"
    report = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "model": model_cfg.model_dump(),
        "train": cfg.model_dump(include={"steps", "batch_size", "crop", "lr", "val_every", "val_scoring"}),
        "samples": args.samples, "best_step": best["step"], "budget_s": args.budget_s,
        "selection": scores(best, args.val_slices),
        "report": scores(result.report_metrics, args.report_slices),
        "selection_and_report": scores(both_scores, z_both),
        "train_wall_s": round(wall, 1), "ingest_s": round(t_ingest, 1), "augment_s": round(t_augment, 1),
        "loop_images_per_s": round(result.train_images_per_s, 2),
        "loop_blocked_on_validation_s": round(result.val_blocking_s, 1),
        "bare_step_images_per_s": round(bare, 2),
        "loop_over_bare": round(result.train_images_per_s / bare, 3),
    }
    print(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
