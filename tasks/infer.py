"""The Prefect task of the infer stage: :mod:`unet.infer_stage` with progress, retries and a summary.

Prefect sees one task per run; the blocks are streamed in this process, or run as one
Dask task per group of blocks on workers holding a GPU (``resources={"GPU": 1}``).
A retry resumes: finished blocks are in the prediction's ledger.
"""

from __future__ import annotations

import os

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from storage.workspace import Workspace
from tasks.cluster import cluster
from tasks.observe import thumbnail_of
from tasks.progress import RunProgress, stage_logs
from unet.infer_config import InferConfig
from unet.infer_stage import InferResult, infer_stage


# NO_CACHE: it writes a store; its inputs must not be hashed or cached.
@task(name="infer", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def predict_volume(workspace: str, volume: str, checkpoint: str, config: InferConfig,
                   output: str | None = None, overwrite: bool = False,
                   dask_address: str | None = None, previews: bool = True) -> InferResult:
    """:func:`unet.infer_stage.infer_stage` with a progress artifact (blocks) and a summary artifact."""
    progress = RunProgress("infer-progress", "Blockwise inference", 1, unit="blocks")
    with stage_logs(), cluster(dask_address) as client:
        result = infer_stage(Workspace(workspace), volume, checkpoint, config, output=output,
                             overwrite=overwrite, client=client, progress=progress.update,
                             previews=previews)
    create_markdown_artifact(key="infer-summary", description="Blockwise inference summary",
                             markdown=infer_markdown(result))
    return result


def infer_markdown(result: InferResult) -> str:
    """The summary table, then each preview (raw | membrane probability) as a thumbnail linked to its PNG."""
    table = "\n".join(f"| {k} | {v} |" for k, v in result.model_dump().items() if k != "previews")
    lines = [f"# Inference: `{result.prediction}`", "", "| what | value |", "|---|---|", table]
    if result.previews:
        lines += ["", "## Previews (raw | membrane probability)", ""]
        for path in result.previews:
            name = os.path.basename(path)
            lines += [f"[{name}](file://{os.path.abspath(path)})", "", f"![{name}]({thumbnail_of(path)})", ""]
    return "\n".join(lines) + "\n"
