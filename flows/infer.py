"""The infer flow: a trained U-Net over a whole volume, blockwise, resumable, optionally on Dask.

Meant for the ``gpu`` work pool (one process drives one GPU). With ``dask_address``,
groups of blocks run on that cluster's workers (started with ``--resources GPU=1``);
the store must then be on a file system (or object store) the workers share.
"""

from __future__ import annotations

from prefect import flow

from tasks.infer import predict_volume
from unet.infer_config import InferConfig
from unet.infer_stage import InferResult


@flow(name="infer")
def infer_flow(workspace: str, volume: str, checkpoint: str, output: str | None = None,
               config: InferConfig | None = None, dask_address: str | None = None,
               overwrite: bool = False, previews: bool = True) -> InferResult:
    """Predict membrane probabilities (uint8) for ``volume`` into ``predictions/<output>.zarr``.

    ``volume`` is a workspace volume name or a path; ``output`` defaults to the volume's
    name. A re-run resumes an unfinished prediction made with the same model and config.
    With ``previews`` (default), three slices are drawn (raw | membrane probability) into
    ``reports/<output>/infer-z*.png`` and shown in the summary artifact.
    Returns the prediction path, voxels, seconds and voxels/s.
    """
    return predict_volume(workspace, volume, checkpoint, config or InferConfig(), output=output,
                          overwrite=overwrite, dask_address=dask_address, previews=previews)
