"""Prefect tasks of the ingest stage: check the inputs, then stream each stack into a volume.

The work happens in :mod:`storage.ingest`; these tasks add progress reporting, retries of
transient I/O errors, and return small JSON-able summaries (never pixel data).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from storage.ingest import IngestConfig, plan_ingest, plan_pair, run_plan
from tasks.progress import RunProgress, run_logger
from tasks.retry import is_transient


@task(name="check-ingest-inputs", cache_policy=NO_CACHE)
def check_ingest_inputs(sources: list[str], image_path: str, labels: list[str] | None,
                        labels_path: str | None, config: IngestConfig) -> dict[str, Any]:
    """Validate every header (image and labels), shapes and outputs before anything is written."""
    if labels is not None and labels_path is not None:
        image_plan, label_plan = plan_pair(sources, labels, image_path, labels_path, config)
        plans = [image_plan, label_plan]
    else:
        plans = [plan_ingest(sources, image_path, config)]
    log = run_logger()
    out: dict[str, Any] = {}
    for plan in plans:
        src = plan.source
        log.info("%s: %s of %d file(s), shape (z, y, x) %s, %s, %.2f GB -> %s (%s)", plan.kind,
                 src.kind, len(src.files), src.shape, src.dtype, src.nbytes / 1e9, plan.path, plan.action)
        out[plan.kind] = {"path": plan.path, "action": plan.action, "shape": list(src.shape),
                          "dtype": str(src.dtype), "voxel_size_nm": list(plan.voxel_size.as_tuple())}
    return out


@task(name="ingest-stack", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=is_transient)
def ingest_stack(sources: list[str], path: str, config: IngestConfig, kind: str = "image",
                 expected_shape: list[int] | None = None,
                 voxel_size: list[float] | None = None) -> dict[str, Any]:
    """Stream one TIFF source into the volume at ``path``; return the volume's summary."""
    plan = plan_ingest(sources, path, config, kind=kind,  # type: ignore[arg-type]
                       voxel_size=voxel_size, expected_shape=expected_shape)
    if plan.voxel_unknown:
        run_logger().warning("%s: voxel size unknown on axes %s (neither the config nor the file's metadata "
                             "gives it): 1 nm recorded there; set voxel_size (--voxel-size Z Y X) for "
                             "real units", path, ",".join(plan.voxel_unknown))
    if plan.action == "reuse":
        run_logger().info("%s is complete and was made from the same inputs and settings: reused", path)
    progress = RunProgress(f"ingest-{kind}", f"ingest {kind} slabs", total=1, unit="slabs")
    volume = run_plan(plan, progress.update)
    summary = volume.summary()
    summary["action"] = plan.action
    summary["voxel_size_origin"] = volume.attrs.get("voxel_size_origin")
    summary["voxel_size_unknown"] = volume.attrs.get("voxel_size_unknown", [])
    return summary
