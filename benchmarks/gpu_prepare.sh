#!/usr/bin/env bash
# Run HERE (the development machine), from anywhere, before the one device call of
# benchmarks/gpu_suite.sh. The lent GPU machine has torch, numpy, scipy, scikit-image,
# opencv and tifffile but no zarr, dask, pydantic, ome-zarr or MONAI, no network, and only
# the checkout travels (not ../shared). So this puts
#   .whl/   wheels of what it lacks (Python 3.12), minus what its image already has
#   .isbi/  the ISBI 2012 training stacks (never committed: .git/info/exclude ignores both)
# Then call the device tool with carry [".whl", ".isbi"] and the command in gpu_suite.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# The versions CI tests with (Python 3.12 alone would get newer zarr/ome-zarr releases).
../shared/tools/gpu-wheels.sh "zarr==3.1.6" "numcodecs==0.16.6" "dask[array,distributed]==2026.8.0" \
  "pydantic==2.12.5" "ome-zarr==0.18.0" "tensorstore>=0.1.70" "pytest>=8" "pytest-timeout>=2.3"
# MONAI only for the comparison (c) of benchmarks/infer.py; its dependencies are on the image.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl "monai>=1.3"

# Drop wheels the GPU image already has (its package list is in the device tool's KINDS.md):
# the travelling tree is capped at 64 MiB and the ISBI stacks take 24 MB of it.
kinds=/work/.library/device/KINDS.md
if [ -f "$kinds" ]; then
  have=$(grep -o 'Packages: .*' "$kinds" | head -1 | sed 's/^Packages: //; s/\.$//' | tr ',' '\n' \
         | sed 's/^ *//; s/ *$//' | tr 'A-Z_' 'a-z-')
  for whl in .whl/*.whl; do
    name=$(basename "$whl" | cut -d- -f1 | tr 'A-Z_' 'a-z-')
    if grep -qx "$name" <<<"$have"; then rm -f "$whl"; fi
  done
fi
# Pulled in by ome-zarr's optional remote-store support; nothing here reads from S3.
rm -f .whl/botocore-* .whl/aiobotocore-* .whl/s3fs-* .whl/boto3-* .whl/jmespath-*

grep -qx '/.isbi/' .git/info/exclude 2>/dev/null || echo '/.isbi/' >> .git/info/exclude
mkdir -p .isbi
cp ../shared/data/isbi2012/train-volume.tif ../shared/data/isbi2012/train-labels.tif .isbi/
du -sh .whl .isbi
