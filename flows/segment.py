"""The segment flow: membrane probabilities → cell labels in ``segmentations/<name>.zarr``.

Meant for the ``cpu`` work pool. With ``dask_address``, groups of blocks run on that
cluster's workers; the store must then be on a file system (or object store) they share.
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from tasks.segment import segment
from unet.segment_config import SegmentConfig
from unet.segment_stage import SegmentResult


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
) -> SegmentResult:
    """Cell labels (uint32) from a membrane probability map, blockwise with IDs that agree across
    blocks; a re-run resumes an unfinished segmentation made with the same settings."""
    return segment(workspace, probability, config, name=name, overwrite=overwrite, dask_address=dask_address)
