"""``emseg export``: any store of a workspace (or any OME-Zarr volume) to a TIFF stack with its voxel size.

Runs in this process (nothing to orchestrate: one streaming read, one file written); imports
neither Prefect nor torch. The work is :func:`storage.export.export_tiff`.
"""

from __future__ import annotations

import typer

KINDS = ("volume", "labels", "prediction", "segmentation")


def resolve_source(workspace: str, source: str, kind: str | None) -> str:
    """The store to export: ``source`` itself when it is a path, else the workspace's store of that
    name, of ``kind`` (volume, labels, prediction, segmentation) or, without ``kind``, of the one
    kind that has it (a name found under several kinds is refused, naming them)."""
    import os

    from storage.errors import StoreNotFoundError
    from storage.volume import store_exists
    from storage.workspace import Workspace, is_path

    if is_path(source):
        return source
    ws = Workspace(workspace)
    where = {"volume": ws.volume, "labels": ws.labels, "prediction": ws.prediction,
             "segmentation": ws.segmentation}
    if kind is not None:
        if kind not in where:
            raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return where[kind](source)
    found = [k for k in KINDS if store_exists(where[k](source))]
    if len(found) == 1:
        return where[found[0]](source)
    if not found:
        raise StoreNotFoundError(f"no store named {source!r} in {os.path.abspath(workspace)} (looked in "
                                 "volumes/, labels/, predictions/, segmentations/)")
    folders = ", ".join(f"{k}s/" if k != "labels" else "labels/" for k in found)
    raise ValueError(f"{source!r} is in {folders} of {workspace}: choose one with --kind {'|'.join(found)}")


def export(
    source: str = typer.Argument(..., help="A name in the workspace (volume, labels, prediction or "
                                 "segmentation; see --kind) or the path of an OME-Zarr store."),
    target: str = typer.Argument(..., help="TIFF file to write, e.g. synthetic.ome.tif."),
    workspace: str = typer.Option("workspace", "--workspace", help="Workspace root."),
    kind: str | None = typer.Option(None, "--kind", help="volume, labels, prediction or segmentation "
                                    "(needed when the name exists under several)."),
    fmt: str = typer.Option("ome", "--format", help="ome (OME-TIFF, any dtype, BigTIFF when large) or "
                            "imagej (ImageJ hyperstack; uint8, uint16, float32 only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing TIFF."),
) -> None:
    """Export a volume, labels, prediction or segmentation to a TIFF stack, voxel size in its metadata.

    Streams slab by slab (any size of volume), writes under a temporary name and renames it
    into place when complete; never replaces an existing file without --overwrite.
    """
    from flows.direct import run_stage
    from storage.export import export_tiff

    path = resolve_source(workspace, source, kind)
    result = run_stage("export", "slices", lambda p: export_tiff(
        path, target, fmt=fmt, overwrite=overwrite, progress=p))  # type: ignore[arg-type]
    voxel = ", ".join("unknown" if v is None else f"{v:g}" for v in result.voxel_size_nm)
    typer.echo(f"{result.path}: {result.format.upper()} TIFF of {result.source}\n"
               f"  shape (z, y, x) {result.shape}, dtype {result.dtype}, voxel size (z, y, x) {voxel} nm, "
               f"{result.bytes / 2**20:.1f} MiB")
