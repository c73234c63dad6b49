"""The ingest flow: TIFF stacks (and their labels) -> ``volumes/<name>.zarr`` (+ ``labels/<name>.zarr``)."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import Field

from storage.ingest_config import IngestConfig
from storage.workspace import Workspace
from tasks.ingest import check_ingest_inputs, ingest_stack


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
) -> dict[str, Any]:
    """Ingest an EM stack (and optionally its labels) into OME-Zarr volumes in the workspace.

    All headers, shapes and outputs are checked before anything is written. Returns the
    output paths and their summaries (shape, dtype, voxel size, chunks).
    """
    t0 = time.perf_counter()
    ws = Workspace(workspace)
    image_path = ws.volume(name)
    labels_path = ws.labels(name) if labels else None
    checked = check_ingest_inputs(sources, image_path, labels, labels_path, config)
    result: dict[str, Any] = {"image": ingest_stack(sources, image_path, config)}
    if labels and labels_path:
        result["labels"] = ingest_stack(labels, labels_path, config, kind="label",
                                        expected_shape=result["image"]["shape"],
                                        voxel_size=result["image"]["voxel_size_nm"])
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["checked"] = checked
    create_table_artifact(
        [{"kind": k, **{f: str(v) for f, v in s.items() if f in ("path", "shape", "dtype", "voxel_size_nm",
                                                                    "chunks", "shards", "action")}}
         for k, s in result.items() if k in ("image", "labels")],
        key="ingest-summary", description=f"ingest of {name} in {result['seconds']} s",
    )
    return result
