"""``emseg segment``: cell labels from membrane probabilities (seeded watershed, blockwise).

Like the other stage commands (:mod:`flows.cli_stages`): inputs checked first, then the stage
runs in this process under a progress bar, or as its flow with a Prefect server or ``--prefect``.
"""

from __future__ import annotations

import typer

from flows.direct import PREFECT_HELP, run_stage, use_prefect


def segment(
    probability: str = typer.Argument(..., help="Membrane probability volume (uint8 0..255): a prediction "
                                      "name, a volume name, or a path to an OME-Zarr volume."),
    workspace: str = typer.Option("workspace", "--workspace", help="Workspace root; writes "
                                  "segmentations/<name>.zarr."),
    name: str | None = typer.Option(None, "--name", help="Segmentation name (default: the probability's)."),
    threshold: float = typer.Option(0.5, help="Membrane probability below which pixels seed cells."),
    seed_distance: float = typer.Option(0.0, help="Seeds only farther than this from membrane (pixels)."),
    min_seed_size: int = typer.Option(0, help="Drop seed components smaller than this (voxels)."),
    link_slices: bool = typer.Option(False, "--link-slices", help="One ID per cell through z (seeds "
                                     "overlapping between slices are joined)."),
    block: tuple[int, int, int] = typer.Option((8, 1024, 1024), "--block", help="Block size Z Y X (voxels)."),
    halo: int = typer.Option(32, help="Context read around each block in y, x (pixels)."),
    pyramid_levels: int | None = typer.Option(None, help="Extra 2x-downsampled levels for viewers "
                                              "(default: until a level fits in 1024 x 1024)."),
    dask_address: str | None = typer.Option(None, "--dask", help="Dask scheduler address (tcp://host:8786)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing segmentation."),
    prefect: bool = typer.Option(False, "--prefect", help=PREFECT_HELP),
) -> None:
    """Cell labels from membrane probabilities: seeded watershed, blockwise with global IDs, resumable."""
    from flows.preflight import require_volume
    from storage.workspace import Workspace
    from unet.segment_config import SegmentConfig
    from unet.segment_stage import resolve_probability, segment_stage

    ws = Workspace(workspace)
    require_volume(resolve_probability(ws, probability))

    cfg = SegmentConfig(threshold=threshold, seed_distance=seed_distance, min_seed_size=min_seed_size,
                        link_slices=link_slices, block_shape=block, halo=(halo, halo),
                        pyramid_levels=pyramid_levels)
    if use_prefect(prefect):
        from flows.segment import segment_flow

        result = segment_flow(workspace=workspace, probability=probability, name=name, config=cfg,
                              dask_address=dask_address, overwrite=overwrite)
    else:
        from tasks.cluster import cluster

        with cluster(dask_address) as client:
            result = run_stage("segment", "block passes", lambda p: segment_stage(
                ws, probability, cfg, name=name, overwrite=overwrite, client=client, progress=p))
    typer.echo(result.model_dump_json(indent=2))
