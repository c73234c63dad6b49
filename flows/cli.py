"""The ``emseg`` command line: one sub-command per flow.

Each command imports its flow lazily, so ``emseg ingest`` never imports torch. With no
``PREFECT_API_URL`` set, the flows run on Prefect's temporary local server.
"""

from __future__ import annotations

import os

import typer

from storage.errors import StorageError

app = typer.Typer(help="Segment cell membranes in EM volumes with a U-Net, orchestrated by Prefect.",
                  no_args_is_help=True, add_completion=False)

# --- commands: each stage adds its own below, importing its flow inside the function ---


@app.command()
def ingest(
    sources: list[str] = typer.Argument(..., help="TIFF stack: one file (multi-page, BigTIFF, OME-TIFF, "
                                        "ImageJ), a folder or glob of single-slice TIFFs, or several files."),
    out: str = typer.Option("workspace", "--out", help="Workspace root; writes volumes/<name>.zarr."),
    name: str = typer.Option(..., "--name", help="Volume name."),
    voxel_size: tuple[float, float, float] | None = typer.Option(
        None, "--voxel-size", help="Voxel size Z Y X in nm (overrides the file's metadata; without either, "
        "1 nm is recorded for the unknown axes, with a warning)."),
    labels: list[str] | None = typer.Option(None, "--labels", help="Label stack (same forms as SRC; repeat "
                                            "the option for several files); writes labels/<name>.zarr."),
    channel: int | None = typer.Option(None, "--channel", help="Channel to keep from RGB/multichannel "
                                       "images."),
    compression: str = typer.Option("zstd", help="zstd, blosc or none."),
    pyramid_levels: int = typer.Option(0, help="Extra 2x-downsampled levels for viewers."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Ingest a TIFF stack (and its labels) into OME-Zarr volumes in the workspace."""
    import json

    from flows.ingest import ingest_flow
    from storage.ingest_config import IngestConfig

    cfg = IngestConfig(voxel_size=voxel_size, channel=channel, compression=compression,  # type: ignore[arg-type]
                       pyramid_levels=pyramid_levels, overwrite=overwrite)
    result = ingest_flow(sources=sources, workspace=out, name=name, labels=labels or None, config=cfg)
    for kind in ("image", "labels"):
        if kind in result:
            s = result[kind]
            typer.echo(f"{kind}: {s['path']} ({s['action']})\n  shape (z, y, x) {tuple(s['shape'])}, "
                       f"dtype {s['dtype']}, voxel size (z, y, x) {tuple(s['voxel_size_nm'])} nm "
                       f"[{s['voxel_size_origin']}], chunks {tuple(s['chunks'])}, shards "
                       f"{tuple(s['shards']) if s['shards'] else None}, levels {s['levels']}")
            if s.get("voxel_size_unknown"):
                typer.secho(f"emseg: warning: {s['path']}: voxel size unknown on axes "
                            f"{', '.join(s['voxel_size_unknown'])} (neither --voxel-size nor the file's "
                            "metadata gives it); 1 nm recorded there. Pass --voxel-size Z Y X (nm) with "
                            "--overwrite to record the real size.", err=True, fg=typer.colors.YELLOW)
    typer.echo(json.dumps({k: result[k] for k in ("image", "labels", "seconds") if k in result}, indent=2))


@app.command()
def infer(
    volume: str = typer.Argument(..., help="Volume name in the workspace, or path to an OME-Zarr volume."),
    model: str = typer.Option(..., "--model", help="Checkpoint (.pt) to run."),
    out: str = typer.Option("./workspace", "--out", help="Workspace root; writes predictions/<name>.zarr."),
    name: str | None = typer.Option(None, "--name", help="Prediction name (default: the volume's name)."),
    tile: int = typer.Option(512, help="Square tile size in pixels (multiple of 2**(depth-1))."),
    overlap: int = typer.Option(64, help="Overlap between tiles, pixels."),
    halo: int = typer.Option(32, help="Real context read around each block in y, x, pixels."),
    batch_size: int = typer.Option(8, help="Tiles per forward pass."),
    blend: str = typer.Option("gaussian", help="gaussian, constant or crop."),
    tta: str = typer.Option("none", help="Test-time augmentation: none, flips or d4."),
    pyramid_levels: int = typer.Option(0, help="Extra 2x-downsampled levels for viewers."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (CUDA only)."),
    dask_address: str | None = typer.Option(None, "--dask", help="Dask scheduler address (tcp://host:8786)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prediction."),
) -> None:
    """Predict membrane probabilities for VOLUME with a trained model, blockwise and resumably."""
    import json

    from flows.infer import infer_flow
    from unet.infer_config import InferConfig

    cfg = InferConfig(tile=(tile, tile), overlap=(overlap, overlap), halo=(0, halo, halo),
                      batch_size=batch_size, blend=blend, tta=tta, pyramid_levels=pyramid_levels,  # type: ignore[arg-type]
                      device=device, compile=compile_model)
    result = infer_flow(workspace=out, volume=volume, checkpoint=model, output=name, config=cfg,
                        dask_address=dask_address, overwrite=overwrite)
    typer.echo(json.dumps(result, indent=2))


@app.command()
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
) -> None:
    """Generate an MLS-augmented training set (resumable, parallel with Dask)."""
    import json

    from flows.augment import augment_flow
    from unet.augment import AugmentConfig

    result = augment_flow(image=image, labels=labels, dataset=dataset, workspace=workspace, slices=slices,
                          n_samples=n_samples, root_seed=seed,
                          config=AugmentConfig.model_validate_json(config_json),
                          group_size=group_size, dask_address=dask_address, num_workers=num_workers,
                          overwrite=overwrite, preview=preview)
    typer.echo(json.dumps(result, indent=2))


@app.command()
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
    unet_json: str = typer.Option("{}", "--unet", help="UNetConfig fields as JSON, "
                                  "e.g. '{\"base_channels\": 32, \"depth\": 4}'."),
    report_slices: str = typer.Option("", help="Reporting slices, inclusive 'first-last', apart from "
                                      "--val-slices: the best checkpoint is scored on them at the end "
                                      "(e.g. select on 20-24, report on 25-29)."),
    allow_val_overlap: bool = typer.Option(False, "--allow-val-overlap", help="Validate even on slices the "
                                           "training set was generated from (refused by default)."),
    resume: bool = typer.Option(False, help="Continue models/<run>/checkpoint-last.pt."),
    overwrite: bool = typer.Option(False, help="Start again over an existing run."),
) -> None:
    """Train a U-Net (best checkpoint by validation V_rand); prints paths and best metrics."""
    import json

    from flows.train import train_flow
    from unet.model import UNetConfig
    from unet.train import TrainConfig

    overrides: dict[str, object] = {k: v for k, v in (("steps", steps), ("batch_size", batch_size))
                                    if v is not None}
    if allow_val_overlap:
        overrides["allow_val_overlap"] = True
    cfg = TrainConfig.model_validate({**json.loads(config_json), **overrides})
    result = train_flow(workspace=workspace, dataset=dataset, val_image=val_image, val_labels=val_labels,
                        val_slices=val_slices, run=run, train=cfg,
                        unet=UNetConfig.model_validate_json(unet_json), resume=resume, overwrite=overwrite,
                        report_slices=report_slices)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def evaluate(
    prediction: str | None = typer.Option(None, help="Prediction name (predictions/<name>.zarr) or path."),
    labels: str = typer.Option(..., help="Label volume name (labels/<name>.zarr)."),
    run: str = typer.Option(..., help="Report name: writes reports/<run>/metrics.json."),
    workspace: str = typer.Option("workspace", help="Workspace root."),
    polarity: str = typer.Option("zero_is_membrane", help="zero_is_membrane (ISBI) or nonzero_is_membrane."),
    segmentation: str | None = typer.Option(None, help="Cell labels to score too (V_rand, V_info): a name "
                                            "(segmentations/<name>.zarr) or path."),
) -> None:
    """Score a membrane-probability volume and/or a segmentation against labels; prints a table."""
    from typing import cast

    from flows.evaluate import SEGMENTATION_KEYS, TABLE_KEYS, evaluate_flow
    from unet.labels import Polarity

    # The flow validates the value (its parameters are checked by pydantic) and names it if wrong.
    report = evaluate_flow(workspace=workspace, prediction=prediction, labels=labels,
                           polarity=cast(Polarity, polarity), run=run, segmentation=segmentation)
    rows = [(key, report[key]) for key in TABLE_KEYS if prediction is not None]
    rows += [(f"segmentation_{key}", report["segmentation_scores"][key]) for key in SEGMENTATION_KEYS
             if segmentation is not None]
    width = max(len(key) for key, _ in rows)
    typer.echo(f"{'metric':<{width}}  value")
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


@app.command()
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
    pyramid_levels: int = typer.Option(0, help="Extra 2x-downsampled levels for viewers."),
    dask_address: str | None = typer.Option(None, "--dask", help="Dask scheduler address (tcp://host:8786)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing segmentation."),
) -> None:
    """Cell labels from membrane probabilities: seeded watershed, blockwise with global IDs, resumable."""
    import json

    from flows.segment import segment_flow
    from unet.segment_config import SegmentConfig

    cfg = SegmentConfig(threshold=threshold, seed_distance=seed_distance, min_seed_size=min_seed_size,
                        link_slices=link_slices, block_shape=block, halo=(halo, halo),
                        pyramid_levels=pyramid_levels)
    result = segment_flow(workspace=workspace, probability=probability, name=name, config=cfg,
                          dask_address=dask_address, overwrite=overwrite)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def pipeline(
    params_json: str = typer.Argument(..., help="PipelineParams as JSON, or @file.json "
                                      "(at least source and labels)."),
) -> None:
    """Run ingest -> augment -> train -> infer -> evaluate, skipping steps whose outputs are current."""
    import json

    from flows.pipeline import pipeline_flow
    from flows.pipeline_config import PipelineParams

    text = open(params_json[1:]).read() if params_json.startswith("@") else params_json
    result = pipeline_flow(PipelineParams.model_validate_json(text))
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def nightly(
    inbox: str = typer.Option("inbox", help="Folder scanned for new TIFF stacks."),
    workspace: str = typer.Option("workspace", help="Workspace root."),
    checkpoint: str = typer.Option(None, help="Model checkpoint (default: best of the newest training run)."),
    settle_s: float = typer.Option(60.0, help="Seconds a file must stay unchanged before it is taken."),
) -> None:
    """Process the stacks in the inbox once (what the nightly deployment runs)."""
    import json

    from flows.nightly import NightlyParams, nightly_flow

    result = nightly_flow(NightlyParams(inbox=inbox, workspace=workspace, checkpoint=checkpoint,
                                        settle_s=settle_s))
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def setup(
    zombie_after_s: float = typer.Option(90.0, help="Mark a run Crashed after this long without heartbeats."),
) -> None:
    """Create the work pools (cpu, gpu) and the crash-zombie-flows automation on PREFECT_API_URL's server."""
    from flows.setup import setup_server

    report = setup_server(zombie_after_s=zombie_after_s)
    typer.echo(f"pools created: {', '.join(report['pools_created']) or 'none (already there)'}; "
               f"zombie automation: {report['automation']}")


@app.command()
def demo(
    workspace: str = typer.Option("workspace", help="Workspace root for the demo's inputs and outputs."),
    isbi: str = typer.Option(None, help="Folder with the ISBI 2012 train-volume.tif / train-labels.tif "
                             "(default: a synthetic EM-like volume)."),
    steps: int = typer.Option(300, help="Training steps."),
) -> None:
    """The whole pipeline on a small synthetic volume (or ISBI 2012), then prints metrics and outputs."""
    from flows.demo import run_demo, use_workspace_prefect_home

    use_workspace_prefect_home(workspace)  # before Prefect is imported: its database in the workspace
    run_demo(workspace=workspace, isbi_dir=isbi, steps=steps)


# What a user can fix (bad input, an existing output, invalid parameters: pydantic's
# ValidationError is a ValueError) is reported in one line; anything else keeps its traceback.
USER_ERRORS = (StorageError, ValueError, FileNotFoundError, FileExistsError)


def main() -> None:
    """Console entry point (``emseg``). ``EMSEG_DEBUG=1`` shows the traceback of user errors too."""
    try:
        app()
    except USER_ERRORS as e:
        if os.environ.get("EMSEG_DEBUG"):
            raise
        typer.secho(f"emseg: error: {type(e).__name__}: {e}", err=True, fg=typer.colors.RED)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
