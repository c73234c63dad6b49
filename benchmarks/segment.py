"""Segmentation benchmark: blockwise (the segment stage, in-process threads) vs the same method
on the whole volume in memory, one process, on the same probability volume.

    .venv/bin/python benchmarks/segment.py                      # 16 x 1024 x 1024, default block
    .venv/bin/python benchmarks/segment.py --shape 8 512 512 --block 4 256 256 --workers 2

The probability volume is the synthetic generator's membranes (``storage.synthetic``),
blurred (sigma 1.5 px in y, x) with a little noise, stored as a uint8 prediction (not timed).
Each run is a fresh subprocess so its peak RSS (psutil, sampled every 50 ms) is its own:

- ``blockwise``: ``unet.segment_stage.segment_stage`` from the store on disk to a complete
  segmentation store (seeds, merge, watershed, pyramid), ``--workers`` Dask threads;
- ``whole``: the volume read into memory, then ``unet.segment.segment_array`` (the reference
  the blockwise output is tested against); the read is timed apart.

Reports voxels/s of each, peak RSS, and their agreement: adapted Rand error of blockwise
against whole, and the object counts. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project and benchmarks.infer

from storage.workspace import Workspace  # noqa: E402
from unet.segment_config import SegmentConfig  # noqa: E402

NAME = "bench"


def make_probability(ws: Workspace, shape: tuple[int, int, int], seed: int) -> str:
    """A uint8 membrane probability volume from the synthetic labels, written as a prediction."""
    from scipy import ndimage

    from storage.synthetic import SyntheticSpec, iter_slabs
    from storage.volume import create_volume

    path = ws.prediction(NAME)
    writer = create_volume(path, shape, np.uint8, (40.0, 4.0, 4.0), kind="prediction")
    rng = np.random.default_rng(seed)
    for z0, block in iter_slabs(SyntheticSpec(shape=shape, seed=seed), slab_z=4):
        prob = ndimage.gaussian_filter((block.labels == 0).astype(np.float32), (0, 1.5, 1.5))
        prob += rng.normal(0.0, 0.05, prob.shape).astype(np.float32)
        writer.write(z0, np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8))
    writer.mark_complete()
    return path


def run_phase(phase: str, root: str, cfg: SegmentConfig, workers: int) -> dict[str, Any]:
    """One measured run in this process (called in a subprocess by :func:`main`)."""
    from benchmarks.infer import PeakRSS
    from storage.volume import open_volume

    ws = Workspace(root)
    base = PeakRSS()._proc.memory_info().rss
    with PeakRSS() as rss:
        if phase == "blockwise":
            from unet.segment_stage import segment_stage

            t0 = time.perf_counter()
            result = segment_stage(ws, NAME, cfg, name=NAME, overwrite=True, num_workers=workers)
            seconds = time.perf_counter() - t0
            out: dict[str, Any] = {"n_cells": result.n_cells, "blocks": result.blocks}
        else:
            from unet.segment import segment_array

            t0 = time.perf_counter()
            prob = open_volume(ws.prediction(NAME)).read(slice(None))
            read_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            cells = segment_array(prob, cfg)
            seconds = time.perf_counter() - t0
            np.save(Path(root) / "whole.npy", cells)
            out = {"n_cells": int(cells.max()), "read_s": round(read_s, 3)}
    voxels = int(np.prod(open_volume(ws.prediction(NAME)).shape))
    return {**out, "seconds": round(seconds, 3), "voxels_per_s": round(voxels / seconds),
            "peak_rss_mib": round(rss.peak / 2**20), "rss_before_mib": round(base / 2**20)}


def agreement(root: str) -> dict[str, Any]:
    from skimage.metrics import adapted_rand_error

    from storage.segmentation import open_segmentation

    whole = np.load(Path(root) / "whole.npy")
    blockwise = open_segmentation(Workspace(root).segmentation(NAME)).read(slice(None))
    error = adapted_rand_error(whole.astype(np.int64), blockwise.astype(np.int64))[0]
    return {"adapted_rand_error": round(float(error), 6),
            "objects_whole": int(len(np.unique(whole[whole > 0]))),
            "objects_blockwise": int(len(np.unique(blockwise[blockwise > 0])))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 1024, 1024), metavar=("Z", "Y", "X"))
    parser.add_argument("--block", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="write block (default: SegmentConfig's)")
    parser.add_argument("--halo", type=int, default=None, help="halo in y, x (default: SegmentConfig's)")
    parser.add_argument("--seed-distance", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2, help="Dask threads of the blockwise run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the volumes go (default: a temp folder)")
    parser.add_argument("--phase", choices=("blockwise", "whole"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:  # a child: one measured run
        cfg = SegmentConfig.model_validate_json(args.config)
        print(json.dumps(run_phase(args.phase, args.workdir, cfg, args.workers)))
        return

    changes: dict[str, Any] = {"seed_distance": args.seed_distance}
    if args.block:
        changes["block_shape"] = tuple(args.block)
    if args.halo is not None:
        changes["halo"] = (args.halo, args.halo)
    cfg = SegmentConfig(**changes)
    root = args.workdir or tempfile.mkdtemp(prefix="emseg-bench-segment-")
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    make_probability(Workspace(root), tuple(args.shape), args.seed)
    report: dict[str, Any] = {
        "shape": list(args.shape), "voxels": int(np.prod(args.shape)), "config": cfg.model_dump(mode="json"),
        "workers": args.workers, "generate_s": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    for phase in ("blockwise", "whole"):
        out = subprocess.run([sys.executable, __file__, "--phase", phase, "--workdir", root, "--config",
                              cfg.model_dump_json(), "--workers", str(args.workers)],
                             capture_output=True, text=True, check=True)
        report[phase] = json.loads(out.stdout.strip().splitlines()[-1])
        print(phase, report[phase], file=sys.stderr, flush=True)
    report["agreement"] = agreement(root)
    report["blockwise_over_whole"] = round(report["blockwise"]["voxels_per_s"]
                                           / report["whole"]["voxels_per_s"], 2)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
