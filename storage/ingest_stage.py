"""The ingest stage: TIFF stacks → ``volumes/<name>.zarr`` (+ ``labels/<name>.zarr``), without Prefect.

One plain function, :func:`ingest_stage`: typed config and a :class:`Workspace` in, a small
frozen :class:`IngestResult` out. The Prefect task (:mod:`tasks.ingest`) and the CLI's
direct mode both call it. Every header, both shapes and both outputs are checked (and
create / reuse / replace decided) before anything is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

from storage.ingest import IngestPlan, plan_ingest, plan_pair, run_plan
from storage.ingest_config import IngestConfig
from storage.workspace import Workspace

Progress = Callable[[int, int], None]
log = logging.getLogger("emseg.ingest")


class VolumeSummary(BaseModel):
    """What was ingested into one volume (z, y, x; voxel size in nm) and what was done."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    action: str
    shape: tuple[int, int, int]
    dtype: str
    voxel_size_nm: tuple[float, float, float]
    voxel_size_origin: str | None = None
    voxel_size_unknown: tuple[str, ...] = ()
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None
    levels: tuple[str, ...] = ()


class IngestResult(BaseModel):
    """The image volume, the label volume (if labels were given) and the wall time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image: VolumeSummary
    labels: VolumeSummary | None = None
    seconds: float


def plan_stage(sources: Sequence[str], workspace: Workspace, name: str, config: IngestConfig,
               labels: Sequence[str] | None = None) -> list[IngestPlan]:
    """Validate every header, shape and output and decide each output's action; writes nothing."""
    if labels:
        return list(plan_pair(list(sources), list(labels), workspace.volume(name), workspace.labels(name),
                              config))
    return [plan_ingest(list(sources), workspace.volume(name), config)]


def _summary(plan: IngestPlan, progress: Progress | None) -> VolumeSummary:
    if plan.voxel_unknown:
        log.warning("%s: voxel size unknown on axes %s (neither --voxel-size nor the file's metadata gives "
                    "it); 1 nm recorded there. Pass --voxel-size Z Y X (nm) with --overwrite to record the "
                    "real size.", plan.path, ", ".join(plan.voxel_unknown))
    if plan.action == "reuse":
        log.info("%s is complete and was made from the same inputs and settings: reused", plan.path)
    volume = run_plan(plan, progress)
    s = volume.summary()
    return VolumeSummary(path=s["path"], action=plan.action, shape=s["shape"], dtype=s["dtype"],
                         voxel_size_nm=s["voxel_size_nm"], chunks=s["chunks"], shards=s["shards"],
                         levels=tuple(s["levels"]), voxel_size_origin=volume.attrs.get("voxel_size_origin"),
                         voxel_size_unknown=tuple(volume.attrs.get("voxel_size_unknown", ())))


def ingest_stage(sources: Sequence[str], workspace: Workspace, name: str, config: IngestConfig,
                 labels: Sequence[str] | None = None, progress: Progress | None = None) -> IngestResult:
    """Ingest ``sources`` (and ``labels``) into the workspace; ``progress(done, total)`` counts slabs.

    Raises InputError / ShapeMismatchError / StoreExistsError before anything is written.
    """
    t0 = time.perf_counter()
    plans = plan_stage(sources, workspace, name, config, labels)
    for plan in plans:
        src = plan.source
        log.info("%s: %s of %d file(s), shape (z, y, x) %s, %s, %.2f GB -> %s (%s)", plan.kind, src.kind,
                 len(src.files), src.shape, src.dtype, src.nbytes / 1e9, plan.path, plan.action)
    image = _summary(plans[0], progress)
    label = _summary(plans[1], progress) if len(plans) > 1 else None
    return IngestResult(image=image, labels=label, seconds=round(time.perf_counter() - t0, 3))
