"""The ingest flow: TIFF stacks (and their labels) -> ``volumes/<name>.zarr`` (+ ``labels/<name>.zarr``)."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import Field

from storage.ingest_config import IngestConfig
from storage.ingest_stage import IngestResult
from tasks.ingest import ingest_stack

TABLE_FIELDS = ("path", "shape", "dtype", "voxel_size_nm", "chunks", "shards", "action")


@flow(name="ingest", log_prints=True)
def ingest_flow(
    sources: list[str] = Field(..., description="Image stack: one TIFF file (multi-page, BigTIFF, "
                               "OME-TIFF, ImageJ), a folder or glob of single-slice TIFFs, or a list "
                               "of them (natural sort order)."),
    workspace: str = Field("workspace", description="Workspace root (local path)."),
    name: str = Field(..., description="Volume name: writes volumes/<name>.zarr (and labels/<name>.zarr)."),
    labels: list[str] | None = Field(None, description="Label stack of the same shape, same forms as "
                                     "sources; none = image only."),
    config: IngestConfig = Field(default_factory=IngestConfig, description="Ingest settings."),
) -> IngestResult:
    """Ingest an EM stack (and optionally its labels) into OME-Zarr volumes in the workspace.

    All headers, shapes and outputs are checked before anything is written. Returns the
    output paths and their summaries (shape, dtype, voxel size, chunks).
    """
    result = ingest_stack(list(sources), workspace, name, config, list(labels) if labels else None)
    volumes = [("image", result.image), ("labels", result.labels)]
    create_table_artifact(
        [{"kind": kind, **{f: str(v) for f, v in s.model_dump().items() if f in TABLE_FIELDS}}
         for kind, s in volumes if s is not None],
        key="ingest-summary", description=f"ingest of {name} in {result.seconds} s",
    )
    return result
