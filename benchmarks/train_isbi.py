"""Train on ISBI 2012 slices 0-19 (MLS-augmented), validate on 20-29; report scores and throughput.

    .venv/bin/python benchmarks/train_isbi.py              # GPU: base 64, depth 5, batch 8 of 512²
    .venv/bin/python benchmarks/train_isbi.py --cpu-smoke  # a short, small CPU run

Prints V_rand, V_info, pixel accuracy (at 0.5 and at its best threshold), wall time, the
training loop's images/s and, in the same run, the bare train-step images/s of the same
model and batch (one batch resident on the device, no loading, no validation), and their
ratio (target >= 0.9). Needs the ISBI 2012 training stacks (``--data``; default
../shared/data/isbi2012 beside the checkout).
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
from unet.model import UNetConfig
from unet.train import BatchSource, TrainConfig, Trainer, ValidationData, train
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
    ts = create_training_set(path, n_samples, images.shape[1:], group_size=group_size,  # type: ignore[arg-type]
                             attrs={"params": {"augment": cfg.model_dump(mode="json")}}, overwrite=True)
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
    ap.add_argument("--tta", action="store_true", help="8-fold flip/rotation averaging at validation")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workdir", help="workspace (default: a temporary directory)")
    ap.add_argument("--data", default=str(ISBI), help="folder with train-volume.tif and train-labels.tif "
                    "(default: ../shared/data/isbi2012 beside the checkout)")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
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
    val = ValidationData.from_volumes(open_volume(ws.volume("isbi")), open_volume(ws.labels("isbi")),
                                      (20, 30))
    model_cfg = UNetConfig(base_channels=args.base, depth=args.depth)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, crop=args.crop, val_every=args.val_every,
                      warmup_steps=min(100, args.steps // 10), val_tta=args.tta, compile=args.compile,
                      loader_threads=2 if not cuda else 6)
    device = torch.device("cuda" if cuda else "cpu")
    t0 = time.perf_counter()
    def show(step: int, total: int, **m: float) -> None:
        if "v_rand" in m:
            print(f"step {step}/{total} {m}", flush=True)

    result = train(ts, val, ws.model_dir("bench"), model_cfg, cfg, overwrite=True, device=device,
                   progress=show)
    wall = time.perf_counter() - t0
    bare = bare_step_throughput(model_cfg, cfg, BatchSource(ts, cfg, "zero_is_membrane", pin=cuda), device,
                                args.bare_steps)
    best = result.best_metrics
    report = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "model": model_cfg.model_dump(),
        "train": cfg.model_dump(include={"steps", "batch_size", "crop", "lr", "val_every"}),
        "samples": args.samples, "best_step": best["step"],
        "v_rand": round(best["v_rand"], 4), "v_info": round(best["v_info"], 4),
        "pixel_accuracy@0.5": round(best["pixel_accuracy"], 4),
        "pixel_accuracy_best": round(best["pixel_accuracy_best"], 4),
        "pixel_accuracy_best_threshold": best["pixel_accuracy_best_threshold"],
        "train_wall_s": round(wall, 1), "ingest_s": round(t_ingest, 1), "augment_s": round(t_augment, 1),
        "loop_images_per_s": round(result.train_images_per_s, 2), "bare_step_images_per_s": round(bare, 2),
        "loop_over_bare": round(result.train_images_per_s / bare, 3),
    }
    print(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
