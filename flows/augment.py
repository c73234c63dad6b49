"""The augment flow: ingested image + label volumes → ``datasets/<name>.zarr`` with Dask."""

from __future__ import annotations

from prefect import flow

from tasks.augment import generate_training_set
from unet.augment import AugmentConfig
from unet.augment_stage import AugmentResult, AugmentStageConfig


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
) -> AugmentResult:
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
    cfg = AugmentStageConfig(slices=slices, n_samples=n_samples, root_seed=root_seed, group_size=group_size,
                             augment=config, overwrite=overwrite, preview=preview)
    return generate_training_set(workspace, image, labels, dataset, cfg, dask_address=dask_address,
                                 num_workers=num_workers)
