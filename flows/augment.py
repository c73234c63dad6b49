"""The augment flow: ingested image + label volumes → ``datasets/<name>.zarr`` with Dask."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from tasks.augment import check_augment_inputs, generate_training_set, write_augment_preview
from unet.augment import AugmentConfig


@flow(name="augment")
def augment_flow(
    image: str,
    labels: str,
    dataset: str,
    workspace: str = "workspace",
    slices: str = "",
    n_samples: int = 1000,
    root_seed: int = 0,
    config: AugmentConfig = AugmentConfig(),  # noqa: B008 (frozen, so a shared default is safe)
    group_size: int = 8,
    dask_address: str | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
    preview: bool = False,
) -> dict[str, Any]:
    """Generate (or resume, or leave alone if finished) an augmented training set.

    Args:
        image: Image volume name (volumes/<image>.zarr).
        labels: Label volume name (labels/<labels>.zarr), same shape as the image.
        dataset: Training set to write (datasets/<dataset>.zarr).
        workspace: Workspace root (local path or URL).
        slices: Source slices, inclusive ranges: "0-19" or "0-9,15"; empty: the first two thirds
            of the volume (the training part of :func:`unet.split.default_split`).
        n_samples: Number of augmented samples.
        root_seed: Root seed; sample i depends only on (root_seed, i).
        config: Augmentation parameters.
        group_size: Samples per group (one Dask task, one chunk, one ledger entry).
        dask_address: Address of an existing Dask scheduler (tcp://host:8786); none = local threads.
        num_workers: Local threads (default: all cores).
        overwrite: Replace an existing training set.
        preview: Also write reports/<dataset>/augment-preview.png and a preview artifact.
    """
    t0 = time.perf_counter()
    plan = check_augment_inputs(workspace, image, labels, dataset, slices, n_samples, root_seed,
                                config, group_size, overwrite)
    result = generate_training_set(plan, n_samples, root_seed, config, group_size,
                                   dask_address=dask_address, num_workers=num_workers)
    if preview:
        result["preview"] = write_augment_preview(plan, workspace, dataset, root_seed, config)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result
