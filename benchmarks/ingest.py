"""Ingest benchmark: a synthetic multi-page TIFF of >= 4 GB -> OME-Zarr, next to `cp` of the file.

    .venv/bin/python benchmarks/ingest.py [--gb 4.3] [--dir DIR] [--compression none] [--keep]

How it measures (printed with the results):

* The TIFF is written fast: a few distinct synthetic EM slices (storage.synthetic) are
  generated once and cycled through the stack. Its content therefore repeats; with
  compression the ratio would be flattered, so the target runs use no (or a fast) codec.
* `cp` copies the TIFF on the same disk; the ingest writes the volume on the same disk.
  Before each, dirty pages are flushed (`sync`) and the source's cached pages are dropped
  (posix_fadvise DONTNEED), so both read the file cold. Each time includes a final `sync`,
  so both figures are for data on disk, not in the page cache; the time until the command
  returns is printed too.
* The ingest runs in a child process; its peak RSS is that child's own ru_maxrss
  (resource.getrusage(RUSAGE_SELF) at its end), which includes the interpreter and imports.
  The TIFF is generated in another child so the parent stays small (Linux carries
  ru_maxrss over fork + exec, and RUSAGE_CHILDREN would report the generator's peak).
* Throughput = TIFF bytes / seconds (MB = 1e6 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

YX = 2048
UNIQUE_SLICES = 4

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from storage.ingest import IngestConfig, ingest
cfg = IngestConfig.model_validate_json({cfg!r})
t0 = time.perf_counter()
vol = ingest({src!r}, {out!r}, cfg)
print(json.dumps({{"seconds": time.perf_counter() - t0, "summary": vol.summary(),
                   "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def write_tiff(path: Path, n_slices: int) -> None:
    import tifffile

    from storage.synthetic import SyntheticSpec, generate_block

    spec = SyntheticSpec(shape=(UNIQUE_SLICES, YX, YX), seed=0)
    unique = np.concatenate([generate_block(spec, slice(z, z + 1), slice(0, YX), slice(0, YX)).image
                             for z in range(UNIQUE_SLICES)])
    pages = (unique[z % UNIQUE_SLICES] for z in range(n_slices))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(pages, shape=(n_slices, YX, YX), dtype=np.uint8, photometric="minisblack")


def drop_cache(path: Path) -> None:
    subprocess.run(["sync"], check=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds until the command returns, seconds including a final sync, stdout)."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    t1 = time.perf_counter()
    subprocess.run(["sync"], check=True)
    return t1 - t0, time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=4.3, help="TIFF size in GB (1e9 bytes); >= 4 for the target")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir beside the repo)")
    ap.add_argument("--compression", default="none", choices=["none", "blosc", "zstd"])
    ap.add_argument("--shard-z", type=int, default=None, help="slices per shard (default: unsharded)")
    ap.add_argument("--slab-z", type=int, default=None)
    ap.add_argument("--chunk-yx", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the multi-GB files")
    ap.add_argument("--write-tiff", nargs=2, metavar=("PATH", "N_SLICES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_tiff:
        write_tiff(Path(args.write_tiff[0]), int(args.write_tiff[1]))
        return

    scratch = Path(tempfile.mkdtemp(prefix="emseg-bench-ingest-", dir=args.dir or ROOT.parent))
    src, copy, out = scratch / "stack.tif", scratch / "copy.tif", scratch / "stack.zarr"
    n_slices = int(np.ceil(args.gb * 1e9 / (YX * YX)))
    try:
        t0 = time.perf_counter()
        # In a child: Linux keeps ru_maxrss across fork + exec, so a parent that had grown
        # while generating data would pass its peak on to the measured ingest child.
        subprocess.run([sys.executable, __file__, "--write-tiff", str(src), str(n_slices)], check=True)
        nbytes = n_slices * YX * YX
        print(f"wrote {src}: {n_slices} x {YX} x {YX} uint8, {nbytes / 1e9:.2f} GB (file "
              f"{src.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s; "
              f"{UNIQUE_SLICES} distinct synthetic slices cycled to write it fast")

        drop_cache(src)
        cp_ret, cp_s, _ = timed(["cp", str(src), str(copy)])
        copy.unlink()

        from storage.ingest import IngestConfig

        cfg = IngestConfig(compression=args.compression, shard_z=args.shard_z, slab_z=args.slab_z,
                           chunk_yx=args.chunk_yx,
                           workers=args.workers)
        drop_cache(src)
        code = CHILD.format(root=str(ROOT), cfg=cfg.model_dump_json(), src=str(src), out=str(out))
        ing_ret, ing_s, stdout = timed([sys.executable, "-c", code])
        child = json.loads(stdout.strip().splitlines()[-1])
        rss_mib = child["maxrss_mib"]

        from storage.volume import open_volume

        vol = open_volume(out)
        for z in (0, n_slices // 2, n_slices - 1):  # spot check against the file's content
            assert np.array_equal(vol.read(slice(z, z + 1))[0], _tiff_page(src, z)), f"slice {z} differs"

        cp_mbs, ing_mbs = nbytes / 1e6 / cp_s, nbytes / 1e6 / ing_s
        report = {
            "tiff_gb": round(nbytes / 1e9, 2), "config": cfg.model_dump(mode="json"),
            "volume": {k: child["summary"][k] for k in ("shape", "chunks", "shards")},
            "cp_s": round(cp_s, 1), "cp_MBps": round(cp_mbs), "cp_return_s": round(cp_ret, 1),
            "ingest_s": round(ing_s, 1), "ingest_MBps": round(ing_mbs), "ingest_return_s": round(ing_ret, 1),
            "ingest_call_s_without_interpreter_start": round(child["seconds"], 1),
            "ratio_ingest_to_cp": round(ing_mbs / cp_mbs, 2),
            "ingest_peak_rss_MiB": round(rss_mib),
            "targets": {"ratio >= 0.7": ing_mbs / cp_mbs >= 0.7,
                        "peak RSS < 1.5 GB": rss_mib * 2**20 < 1.5e9},
            "cpus": os.cpu_count(),
        }
        print("measured: cp and ingest each read the TIFF cold (sync + fadvise DONTNEED) and end with "
              "sync; the ingest ran in a child process, peak RSS = its ru_maxrss")
        print(json.dumps(report, indent=2))
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _tiff_page(path: Path, z: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.series[0].asarray(key=z)


if __name__ == "__main__":
    main()
