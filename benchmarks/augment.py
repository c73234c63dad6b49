"""Benchmark: MLS warp of one 512² image + label, and 2-core scaling through Dask.

Usage: ``.venv/bin/python benchmarks/augment.py [--samples 256] [--repeats 50]``

Measures, in one run, per sample (image bilinear + label nearest):
  * fast: MLS map on an 8 px grid (moment-GEMM form) + bilinear upsampling + cv2.remap;
  * reference: the formulas as they read (mls_points_reference) at every pixel, then cv2.remap;
  * map_coordinates: scipy gather alone on a precomputed full-resolution map;
for 16 and 25 handles (4×4 / 5×5 grids, interior handles ±15 px) and each mode, on one
core; then the full sample generation (warp + flips + intensity, as in the training set)
serially and with Dask threads on 2 cores. Times are medians after a warm-up.
"""

from __future__ import annotations

import os

# One core per worker: set before numpy / OpenCV load their thread pools.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from storage.synthetic import SyntheticSpec, generate_volume  # noqa: E402
from unet.augment import AugmentConfig  # noqa: E402
from unet.mls import MODES, backward_map, handle_grid, mls_points_reference, remap, warp  # noqa: E402
from unet.trainset import generate_samples, prepare_sources  # noqa: E402

SIZE = 512


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def handles(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    p, border = handle_grid((SIZE, SIZE), k)
    q = p.copy()
    q[~border] += rng.uniform(-15, 15, size=(int((~border).sum()), 2))
    return p, q


def reference_warp(image, label, p, q, mode):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    src = mls_points_reference(q, p, np.stack([yy.ravel(), xx.ravel()], 1), mode)
    my = src[:, 0].reshape(SIZE, SIZE).astype(np.float32)
    mx = src[:, 1].reshape(SIZE, SIZE).astype(np.float32)
    return remap(image, my, mx, order=1), remap(label, my, mx, order=0)


def per_sample_table(image, label, repeats: int) -> list[str]:
    rng = np.random.default_rng(0)
    rows = ["| handles | mode | fast (8 px grid + cv2.remap) ms | reference per-pixel numpy ms | "
            "map_coordinates on precomputed map ms | speed-up vs reference |",
            "|---|---|---|---|---|---|"]
    print("\n".join(rows))
    for k in (4, 5):
        p, q = handles(k, rng)
        for mode in MODES:
            fast = median_ms(lambda p=p, q=q, mode=mode: warp(image, label, None, p, q, mode), repeats)
            ref = median_ms(lambda p=p, q=q, mode=mode: reference_warp(image, label, p, q, mode), 1)
            my, mx = backward_map(p, q, (SIZE, SIZE), mode)
            gather = median_ms(lambda my=my, mx=mx: (
                ndimage.map_coordinates(image, [my, mx], order=1, mode="mirror"),
                ndimage.map_coordinates(label, [my, mx], order=0, mode="mirror")), max(3, repeats // 10))
            rows.append(f"| {k * k} | {mode} | {fast:.2f} | {ref:.0f} | {gather:.1f} | {ref / fast:.0f}x |")
            print(rows[-1], flush=True)
    return rows


def warp_group(image, label, indices, k: int = 5):
    """Warp image + label once per sample index (rigid, handles from that sample's seed)."""
    from unet.trainset import sample_rng

    for i in indices:
        p, q = handles(k, sample_rng(0, i))
        warp(image, label, None, p, q, "rigid")
    return len(indices)


def dask_scaling(n_samples: int) -> list[str]:
    import dask

    block = generate_volume(SyntheticSpec(shape=(4, SIZE, SIZE), seed=1))
    config = AugmentConfig()
    sources = prepare_sources(block.image, block.labels, config)
    chunk = 8
    groups = [list(range(i, min(i + chunk, n_samples))) for i in range(0, n_samples, chunk)]
    generate_samples(sources, 0, groups[0], config)  # warm-up
    rows = ["| run | ms per sample | speed-up |", "|---|---|---|"]
    print("\n".join(rows))
    results = {}
    for workers in (1, 2):
        shared = dask.delayed(sources, traverse=False)
        tasks = [dask.delayed(generate_samples)(shared, 0, g, config) for g in groups]
        t0 = time.perf_counter()
        out = dask.compute(*tasks, scheduler="threads", num_workers=workers)
        results[workers] = (time.perf_counter() - t0) / n_samples * 1e3
        # sha256, not hash(): Python salts hash() of bytes per process, and this digest is
        # meant to be compared across runs too.
        digest = hashlib.sha256(b"".join(a.tobytes() for triple in out for a in triple)).hexdigest()
        rows.append(f"| full samples, Dask threads, {workers} worker(s), groups of {chunk} | "
                    f"{results[workers]:.2f} | {results[1] / results[workers]:.2f}x |")
        print(rows[-1], f"(output sha256 {digest[:12]})", flush=True)
    warp_only = {}
    for workers in (1, 2):
        tasks = [dask.delayed(warp_group)(block.image[0], block.labels[0], g) for g in groups]
        t0 = time.perf_counter()
        dask.compute(*tasks, scheduler="threads", num_workers=workers)
        warp_only[workers] = (time.perf_counter() - t0) / n_samples * 1e3
        rows.append(f"| MLS warp image+label only (25 handles, rigid), {workers} worker(s) | "
                    f"{warp_only[workers]:.2f} | {warp_only[1] / warp_only[workers]:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256, help="samples for the Dask scaling run")
    parser.add_argument("--repeats", type=int, default=50, help="repeats of the fast path")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # parallelism comes from Dask, one sample per core
    block = generate_volume(SyntheticSpec(shape=(1, SIZE, SIZE), seed=0))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
          f"opencv {cv2.__version__}")
    per_sample_table(block.image[0], block.labels[0], args.repeats)
    dask_scaling(args.samples)


if __name__ == "__main__":
    main()
