"""Prefect tasks of the infer stage: prepare the output, run groups of blocks, finish.

Prefect sees one task per *group* of write blocks (tens to hundreds per run); the blocks
inside a group are streamed by :func:`unet.inference.run_group`, in this process or as
one Dask task on a worker holding a GPU (``resources={"GPU": 1}``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from tasks.progress import run_logger
from unet.infer_config import InferConfig
from unet.inference import InferJob, finish_run, load_predictor, prepare_run, run_group, submit_group

_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def dask_client(address: str) -> Any:
    """One shared distributed Client per scheduler address for this process (thread-safe to share)."""
    from distributed import Client

    with _CLIENTS_LOCK:
        if address not in _CLIENTS:
            _CLIENTS[address] = Client(address, timeout="30s")
        return _CLIENTS[address]


def close_dask_clients() -> None:
    with _CLIENTS_LOCK:
        for client in _CLIENTS.values():
            client.close()
        _CLIENTS.clear()


# NO_CACHE: these tasks write stores; their inputs (jobs, configs) must not be hashed or cached.
@task(name="infer-prepare", cache_policy=NO_CACHE)
def prepare_inference(volume_path: str, prediction_path: str, checkpoint: str, config: InferConfig,
                      overwrite: bool = False) -> dict[str, Any]:
    """Check the checkpoint against the config, then create or resume the prediction store.

    The model is loaded here once, before anything is written, so a missing or corrupt
    checkpoint, or a tile that does not fit it, fails with nothing created.
    """
    from unet.checkpoint import checkpoint_sha256

    load_predictor(checkpoint, config)  # raises CheckpointError / ValueError before any write
    sha = checkpoint_sha256(checkpoint)
    factory = functools.partial(load_predictor, checkpoint, config)
    run = prepare_run(volume_path, prediction_path, factory, sha, config, overwrite=overwrite)
    run_logger().info("infer: %d blocks, %d pending, in %d groups; model sha256 %s", run.n_blocks,
                      run.pending_blocks, len(run.groups), sha[:12])
    return {"job": run.job, "groups": run.groups, "n_blocks": run.n_blocks,
            "pending_blocks": run.pending_blocks, "voxels": run.voxels, "model_sha256": sha}


@task(name="infer-group", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def infer_group(job: InferJob, block_ids: list[int], dask_address: str | None = None,
                on_block: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run one group of blocks: in this process, or as one Dask task on a GPU worker.

    Finished blocks are skipped (ledger), so a retry redoes only what is missing.
    """
    if dask_address:
        return submit_group(dask_client(dask_address), job, block_ids).result()  # type: ignore[no-any-return]
    return run_group(job, block_ids, on_block=on_block)


@task(name="infer-finish", cache_policy=NO_CACHE)
def finish_inference(prediction_path: str, stats: dict[str, Any]) -> dict[str, Any]:
    """Build the pyramid, mark the prediction complete, publish a summary artifact."""
    summary = finish_run(prediction_path)
    rows = {**stats, "levels": ", ".join(summary["levels"]), "shape (z, y, x)": summary["shape"],
            "voxel size (nm)": summary["voxel_size_nm"]}
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    try:
        create_markdown_artifact(key="infer-summary", description="Blockwise inference summary",
                                 markdown=f"# Inference: `{prediction_path}`\n\n| what | value |\n|---|---|\n"
                                          f"{table}\n")
    except MissingContextError:
        pass
    return summary
