"""The segment flow: membrane probabilities → cell labels in ``segmentations/<name>.zarr``.

Meant for the ``cpu`` work pool. With ``dask_address``, groups of blocks run on that
cluster's workers; the store must then be on a file system (or object store) they share.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow
from pydantic import Field

from storage.volume import store_exists
from storage.workspace import Workspace
from tasks.segment import segment
from unet.segment_config import SegmentConfig


def resolve_probability(workspace: str, probability: str) -> str:
    """A path (contains '/' or ends in .zarr) as given; else ``predictions/<name>.zarr`` if it
    exists, else ``volumes/<name>.zarr`` (an ingested probability stack)."""
    if probability.endswith(".zarr") or "/" in probability or os.sep in probability:
        return probability
    ws = Workspace(workspace)
    prediction = ws.prediction(probability)
    return prediction if store_exists(prediction) else ws.volume(probability)


def default_name(probability: str) -> str:
    return os.path.basename(probability.rstrip("/")).removesuffix(".zarr")


@flow(name="segment", log_prints=True)
def segment_flow(
    workspace: str = Field("workspace", description="Workspace root (local path)."),
    probability: str = Field(..., description="Membrane probability volume (uint8 0..255): a prediction "
                             "name (predictions/<name>.zarr), a volume name, or a path."),
    name: str | None = Field(None, description="Segmentation name: writes segmentations/<name>.zarr "
                             "(default: the probability's name)."),
    config: SegmentConfig = Field(default_factory=SegmentConfig, description="Segmentation settings."),
    dask_address: str | None = Field(None, description="Dask scheduler address (tcp://host:8786); "
                                     "none = in this process."),
    overwrite: bool = Field(False, description="Replace an existing segmentation."),
) -> dict[str, Any]:
    """Cell labels (uint32) from a membrane probability map, blockwise with IDs that agree across
    blocks; a re-run resumes an unfinished segmentation made with the same settings."""
    source = resolve_probability(workspace, probability)
    out = Workspace(workspace).segmentation(name or default_name(source))
    return segment(source, out, config, overwrite, dask_address)
