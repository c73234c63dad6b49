"""``emseg`` stage commands: ingest, infer, augment, train, evaluate (segment: :mod:`flows.cli_segment`).

Each checks its inputs first (headers only, :mod:`flows.preflight`), then runs the stage
function in this process under a progress bar (:mod:`flows.direct`) when no Prefect server
is configured, or its flow when ``PREFECT_API_URL`` is set or ``--prefect`` is given.
Imports are lazy: ``emseg ingest`` never imports torch, and no command imports Prefect
before its inputs are checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from flows.cli_options import check_polarity, out_alias, parse_thresholds, workspace_root
from flows.direct import PREFECT_HELP, run_stage, use_prefect

if TYPE_CHECKING:
    from unet.model import UNetConfig


def ingest(
    sources: list[str] = typer.Argument(..., help="TIFF stack: one file (multi-page, BigTIFF, OME-TIFF, "
                                        "ImageJ), a folder or glob of single-slice TIFFs, or several files."),
    workspace: str = typer.Option("workspace", "--workspace", help="Workspace root; writes "
                                  "volumes/<name>.zarr."),
    name: str = typer.Option(..., "--name", help="Volume name."),
    voxel_size: tuple[float, float, float] | None = typer.Option(
        None, "--voxel-size", help="Voxel size Z Y X in nm (overrides the file's metadata; without either, "
        "1 nm is recorded for the unknown axes, with a warning)."),
    labels: list[str] | None = typer.Option(None, "--labels", help="Label stack (same forms as SRC; repeat "
                                            "the option for several files); writes labels/<name>.zarr."),
    label_polarity: str = typer.Option("zero_is_membrane", "--label-polarity", "--polarity", help="Which "
                                       "label value is membrane: zero_is_membrane (ISBI 2012: 0 = membrane, "
                                       "255 = cell interior) or nonzero_is_membrane."),
    channel: int | None = typer.Option(None, "--channel", help="Channel to keep from RGB/multichannel "
                                       "images."),
    compression: str = typer.Option("zstd", help="zstd, blosc or none."),
    pyramid_levels: int = typer.Option(0, help="Extra 2x-downsampled levels for viewers."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    prefect: bool = typer.Option(False, "--prefect", help=PREFECT_HELP),
    out: str | None = out_alias(),
) -> None:
    """Ingest a TIFF stack (and its labels) into OME-Zarr volumes in the workspace."""
    from flows.cli_output import print_ingest
    from storage.ingest_config import IngestConfig
    from storage.ingest_stage import ingest_stage, plan_stage
    from storage.workspace import Workspace

    workspace = workspace_root(workspace, out, "workspace")
    ws = Workspace(workspace)
    cfg = IngestConfig(voxel_size=voxel_size, channel=channel, compression=compression,  # type: ignore[arg-type]
                       pyramid_levels=pyramid_levels, overwrite=overwrite,
                       label_polarity=check_polarity(label_polarity))  # type: ignore[arg-type]
    if use_prefect(prefect):
        plan_stage(sources, ws, name, cfg, labels)  # headers checked before the server starts
        from flows.ingest import ingest_flow

        result = ingest_flow(sources=sources, workspace=workspace, name=name, labels=labels or None,
                             config=cfg)
    else:
        result = run_stage("ingest", "slabs",
                           lambda p: ingest_stage(sources, ws, name, cfg, labels or None, p))
    print_ingest(result, warn=use_prefect(prefect))


def infer(
    volume: str = typer.Argument(..., help="Volume name in the workspace, or path to an OME-Zarr volume."),
    model: str = typer.Option(..., "--model", help="Checkpoint (.pt) to run."),
    workspace: str = typer.Option("./workspace", "--workspace", help="Workspace root; writes "
                                  "predictions/<name>.zarr."),
    name: str | None = typer.Option(None, "--name", help="Prediction name (default: the volume's name)."),
    tile: int | None = typer.Option(None, help="Square tile size in pixels (multiple of 2**(depth-1)); "
                                    "default 2560, shrunk to small volumes."),
    overlap: int | None = typer.Option(None, help="Overlap between tiles, pixels (default 224)."),
    halo: int | None = typer.Option(None, help="Real context read around each block in y, x, pixels "
                                    "(default 112)."),
    batch_size: int | None = typer.Option(None, help="Tiles per forward pass (default: 2 on a GPU, 1 on "
                                          "the CPU)."),
    blend: str | None = typer.Option(None, help="crop (default), gaussian or constant."),
    tta: str = typer.Option("none", help="Test-time augmentation: none, flips or d4."),
    pyramid_levels: int | None = typer.Option(None, help="Extra 2x-downsampled levels for viewers "
                                              "(default: until a level fits in 1024 x 1024)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (CUDA only)."),
    dask_address: str | None = typer.Option(None, "--dask", help="Dask scheduler address (tcp://host:8786)."),
    allow_voxel_size_mismatch: bool = typer.Option(False, "--allow-voxel-size-mismatch", help="Predict even "
                                                   "when the volume's voxel size (y, x) differs from the "
                                                   "model's training voxel size by more than 10 %."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prediction."),
    prefect: bool = typer.Option(False, "--prefect", help=PREFECT_HELP),
    out: str | None = out_alias(),
) -> None:
    """Predict membrane probabilities for VOLUME with a trained model, blockwise and resumably."""
    from flows.preflight import require_checkpoint, require_named
    from storage.workspace import Workspace
    from unet.infer_config import InferConfig

    workspace = workspace_root(workspace, out, "./workspace")
    require_named(Workspace(workspace), "volumes", volume)
    require_checkpoint(model)

    given = {"tile": tile and (tile, tile), "overlap": overlap is not None and (overlap, overlap),
             "halo": halo is not None and (0, halo, halo), "batch_size": batch_size, "blend": blend,
             "pyramid_levels": pyramid_levels}
    cfg = InferConfig(tta=tta, device=device, compile=compile_model,  # type: ignore[arg-type]
                      allow_voxel_size_mismatch=allow_voxel_size_mismatch,
                      **{k: v for k, v in given.items() if v is not None and v is not False})
    if use_prefect(prefect):
        from flows.infer import infer_flow
        from unet.infer_stage import check_model_fits_volume

        # The checks infer_stage makes before writing, made here before the server starts (seconds,
        # not a failed flow run after it).
        check_model_fits_volume(Workspace(workspace), volume, model, cfg)

        result = infer_flow(workspace=workspace, volume=volume, checkpoint=model, output=name, config=cfg,
                            dask_address=dask_address, overwrite=overwrite)
    else:
        from tasks.cluster import cluster
        from unet.infer_stage import infer_stage

        with cluster(dask_address) as client:
            result = run_stage("infer", "blocks", lambda p: infer_stage(
                Workspace(workspace), volume, model, cfg, output=name, overwrite=overwrite, client=client,
                progress=p))
    typer.echo(result.model_dump_json(indent=2))


def augment(
    image: str = typer.Option(..., help="Image volume name (volumes/<image>.zarr)."),
    labels: str = typer.Option(..., help="Label volume name (labels/<labels>.zarr)."),
    dataset: str = typer.Option(..., help="Training set to write (datasets/<dataset>.zarr)."),
    workspace: str = typer.Option("workspace", help="Workspace root."),
    slices: str = typer.Option("", help="Source slices, e.g. '0-19' or '0-9,15' (default: the first "
                               "two thirds of the volume; the last third is left for validation)."),
    n_samples: int = typer.Option(1000, help="Number of augmented samples."),
    seed: int = typer.Option(0, help="Root seed: sample i depends only on (seed, i)."),
    config_json: str = typer.Option("{}", "--config", help="AugmentConfig fields as JSON, "
                                    "e.g. '{\"mode\": \"affine\", \"max_displacement_px\": 12}'."),
    group_size: int = typer.Option(8, help="Samples per group (Dask task / chunk / ledger entry)."),
    dask_address: str | None = typer.Option(None, help="Existing Dask scheduler address."),
    num_workers: int | None = typer.Option(None, help="Local threads (default: all cores)."),
    overwrite: bool = typer.Option(False, help="Replace an existing training set."),
    preview: bool = typer.Option(False, help="Write reports/<dataset>/augment-preview.png."),
    prefect: bool = typer.Option(False, "--prefect", help=PREFECT_HELP),
) -> None:
    """Generate an MLS-augmented training set (resumable, parallel with Dask)."""
    from flows.preflight import require_named
    from storage.workspace import Workspace

    ws = Workspace(workspace)
    require_named(ws, "volumes", image)
    require_named(ws, "labels", labels)
    from unet.augment import AugmentConfig
    from unet.augment_stage import AugmentStageConfig, augment_stage, plan_augment

    cfg = AugmentStageConfig(slices=slices, n_samples=n_samples, root_seed=seed, group_size=group_size,
                             augment=AugmentConfig.model_validate_json(config_json), overwrite=overwrite,
                             preview=preview)
    plan_augment(ws, image, labels, dataset, cfg)  # everything checked before any write or server start
    if use_prefect(prefect):
        from flows.augment import augment_flow

        result = augment_flow(image=image, labels=labels, dataset=dataset, workspace=workspace, slices=slices,
                              n_samples=n_samples, root_seed=seed, config=cfg.augment, group_size=group_size,
                              dask_address=dask_address, num_workers=num_workers, overwrite=overwrite,
                              preview=preview)
    else:
        from tasks.cluster import cluster

        with cluster(dask_address) as client:
            result = run_stage("augment", "groups", lambda p: augment_stage(
                ws, image, labels, dataset, cfg, client=client, num_workers=num_workers, progress=p))
    typer.echo(result.model_dump_json(indent=2))


def train(
    dataset: str = typer.Option(..., help="Training set name (datasets/<dataset>.zarr)."),
    val_image: str = typer.Option(..., help="Validation image volume name (volumes/<name>.zarr)."),
    val_labels: str = typer.Option(..., help="Validation label volume name (labels/<name>.zarr)."),
    run: str = typer.Option(..., help="Run name: models/<run>/ and reports/<run>/."),
    workspace: str = typer.Option("workspace", help="Workspace root."),
    val_slices: str = typer.Option("", help="Validation slices, inclusive 'first-last' (default: the "
                                   "last third of the volume, the part augment leaves out)."),
    steps: int | None = typer.Option(None, help="Optimiser steps (overrides --config)."),
    batch_size: int | None = typer.Option(None, help="Samples per step (overrides --config)."),
    config_json: str = typer.Option("{}", "--config", help="TrainConfig fields as JSON, "
                                    "e.g. '{\"lr\": 0.001, \"val_every\": 100}'."),
    unet_json: str = typer.Option("{}", "--unet", help="'paper' (Ronneberger et al. 2015: valid padding, no "
                                  "normalisation, dropout at the two deepest levels, He initialisation) or "
                                  "UNetConfig fields as JSON, "
                                  "e.g. '{\"base_channels\": 32, \"depth\": 4}'."),
    report_slices: str = typer.Option("", help="Reporting slices, inclusive 'first-last', apart from "
                                      "--val-slices: the best checkpoint is scored on them at the end "
                                      "(e.g. select on 20-24, report on 25-29)."),
    allow_val_overlap: bool = typer.Option(False, "--allow-val-overlap", help="Validate even on slices the "
                                           "training set was generated from (refused by default)."),
    resume: bool = typer.Option(False, help="Insist on continuing models/<run>/checkpoint-last.pt (an "
                                "error if there is none); without it a run of the same settings continues."),
    overwrite: bool = typer.Option(False, help="Start again over an existing run."),
    prefect: bool = typer.Option(False, "--prefect", help=PREFECT_HELP),
) -> None:
    """Train a U-Net (best checkpoint by validation V_rand); prints paths and best metrics."""
    import json

    from flows.preflight import require_dataset, require_named
    from storage.workspace import Workspace

    ws = Workspace(workspace)
    require_dataset(ws, dataset)
    require_named(ws, "volumes", val_image)
    require_named(ws, "labels", val_labels)
    from unet.train import TrainConfig
    from unet.train_stage import TrainStageConfig, train_stage

    overrides: dict[str, object] = {k: v for k, v in (("steps", steps), ("batch_size", batch_size))
                                    if v is not None}
    if allow_val_overlap:
        overrides["allow_val_overlap"] = True
    cfg = TrainStageConfig(train=TrainConfig.model_validate({**json.loads(config_json), **overrides}),
                           unet=unet_config(unet_json), val_slices=val_slices,
                           report_slices=report_slices, resume=resume, overwrite=overwrite)
    if use_prefect(prefect):
        from flows.train import train_flow

        result = train_flow(workspace=workspace, dataset=dataset, val_image=val_image, val_labels=val_labels,
                            val_slices=val_slices, run=run, train=cfg.train, unet=cfg.unet, resume=resume,
                            overwrite=overwrite, report_slices=report_slices)
    else:
        result = run_stage("train", "steps", lambda p: train_stage(
            ws, dataset, val_image, val_labels, run, cfg, progress=p))
    typer.echo(result.model_dump_json(indent=2))


def unet_config(text: str) -> UNetConfig:
    """``--unet``: the name of a preset (``paper``) or UNetConfig fields as JSON."""
    from unet.model import UNetConfig

    return UNetConfig.paper() if text.strip() == "paper" else UNetConfig.model_validate_json(text)


def evaluate(
    prediction: str | None = typer.Option(None, help="Prediction name (predictions/<name>.zarr) or path."),
    labels: str = typer.Option(..., help="Label volume name (labels/<name>.zarr)."),
    run: str = typer.Option(..., help="Report name: writes reports/<run>/metrics.json."),
    workspace: str = typer.Option("workspace", help="Workspace root."),
    polarity: str = typer.Option("zero_is_membrane", help="zero_is_membrane (ISBI) or nonzero_is_membrane."),
    thresholds: str | None = typer.Option(None, help="Membrane thresholds swept, comma-separated numbers in "
                                          "[0, 1] (default 0.0,0.1,...,1.0), e.g. 0.1,0.2,0.3."),
    slices: str = typer.Option("", help="Score only these slices, inclusive ranges: 20-29 or 0-9,15 (e.g. "
                               "the held-out validation slices; default: every slice)."),
    segmentation: str | None = typer.Option(None, help="Cell labels to score too (V_rand, V_info): a name "
                                            "(segmentations/<name>.zarr) or path."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a report of this run made from "
                                   "other inputs."),
    prefect: bool = typer.Option(False, "--prefect", help=PREFECT_HELP),
) -> None:
    """Score a membrane-probability volume and/or a segmentation against labels; prints a table."""
    from flows.cli_output import print_scores
    from flows.preflight import require_named
    from storage.volume import open_volume
    from storage.workspace import Workspace
    from unet.evaluate_stage import EvaluateConfig, evaluate_stage, select_slices

    ws = Workspace(workspace)
    swept = parse_thresholds(thresholds)
    cfg = EvaluateConfig(polarity=polarity,  # type: ignore[arg-type]  # pydantic names a bad value
                         **({"thresholds": swept} if swept is not None else {}))
    if prediction is None and segmentation is None:
        raise ValueError("evaluate needs --prediction, --segmentation, or both")
    require_named(ws, "labels", labels)
    for kind, given in (("predictions", prediction), ("segmentations", segmentation)):
        if given is not None:
            require_named(ws, kind, given)
    # Checked against the labels' depth here, so a bad selection is one line naming --slices.
    select_slices(slices.replace(" ", ""), open_volume(ws.labels(labels)).shape[0], "--slices")
    cfg = cfg.model_copy(update={"slices": slices.replace(" ", "")})
    if use_prefect(prefect):
        from flows.evaluate import evaluate_flow

        result = evaluate_flow(workspace=workspace, prediction=prediction, labels=labels,
                               polarity=cfg.polarity, run=run, segmentation=segmentation, overwrite=overwrite,
                               thresholds=cfg.thresholds, slices=cfg.slices)
    else:
        result = run_stage("evaluate", "slices", lambda p: evaluate_stage(
            ws, labels, run, cfg, prediction=prediction, segmentation=segmentation, progress=p,
            overwrite=overwrite))
    print_scores(result)

