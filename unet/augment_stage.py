"""The augment stage: image + label volumes → ``datasets/<name>.zarr``, without Prefect.

:func:`plan_augment` checks everything and decides create / reuse / resume / refuse
(:func:`storage.freshness.decide`) before anything is written; :func:`augment_stage` then
writes the pending groups (:func:`unet.trainset.write_pending_groups`, Dask threads or a
cluster) and, if asked, a preview PNG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from storage.dataset import (
    SOURCE_VOXEL_SIZE_KEY,
    create_training_set,
    resume_training_set,
    volume_voxel_record,
)
from storage.errors import ShapeMismatchError
from storage.files import remove_partial_writes, write_png
from storage.freshness import Decision, decide
from storage.intensity import to_uint8, volume_range
from storage.locks import store_lock
from storage.provenance import read_record
from storage.volume import open_volume
from storage.workspace import Workspace
from unet.augment import AugmentConfig
from unet.labels import check_interior_value, value_counts
from unet.split import default_split, parse_slices
from unet.trainset import SourceSlices, prepare_sources, preview_grid, write_pending_groups

Progress = Callable[[int, int], None]
PREVIEW_SAMPLES = 4
log = logging.getLogger("emseg.augment")


class AugmentStageConfig(BaseModel):
    """Everything that decides a training set's bytes, plus whether to replace an existing one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slices: str = Field("", description="Source slices, inclusive ranges: '0-19' or '0-9,15'; empty: the "
                        "first two thirds of the volume (unet.split.default_split).")
    n_samples: int = Field(1000, ge=1, description="Number of augmented samples.")
    root_seed: int = Field(0, ge=0, description="Root seed; sample i depends only on (root_seed, i).")
    group_size: int = Field(8, ge=1, description="Samples per group (one Dask task, chunk, ledger entry).")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentation parameters.")
    overwrite: bool = Field(False, description="Replace an existing training set.")
    preview: bool = Field(False, description="Also write reports/<dataset>/augment-preview.png.")


class AugmentResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    action: str
    n_samples: int
    groups_written: int
    seconds: float
    preview: str | None = None


@dataclass(frozen=True)
class AugmentPlan:
    """What :func:`plan_augment` found: paths, the chosen slices, the record to write, the decision."""

    dataset_path: str
    image_path: str
    labels_path: str
    slices: tuple[int, ...]
    sample_shape: tuple[int, int]
    attrs: dict[str, Any]
    decision: Decision
    source_voxel_size: dict[str, Any]  # recorded in a new set, outside ``attrs`` (not compared on resume)


def dataset_attrs(image_path: str, labels_path: str, selection: str, slices: list[int],
                  n_samples: int, root_seed: int, config: AugmentConfig) -> dict[str, Any]:
    """What a training set records about how it was made (compared when resuming)."""
    return {
        "sources": {"image": image_path, "labels": labels_path, "slices": slices,
                    "split": {"train": selection}},
        "params": {"n_samples": n_samples, "root_seed": root_seed,
                   "augment": config.model_dump(mode="json")},
    }


def plan_augment(workspace: Workspace, image: str, labels: str, dataset: str,
                 cfg: AugmentStageConfig) -> AugmentPlan:
    """Validate the inputs and decide what to do with ``datasets/<dataset>.zarr``; writes nothing."""
    image_vol, label_vol = open_volume(workspace.volume(image)), open_volume(workspace.labels(labels))
    if image_vol.shape != label_vol.shape:
        raise ShapeMismatchError(f"label volume {label_vol.path} has shape {label_vol.shape}, "
                                 f"but image volume {image_vol.path} has {image_vol.shape}")
    selection = cfg.slices or default_split(image_vol.shape[0]).train
    chosen = parse_slices(selection, image_vol.shape[0])
    shape = (int(image_vol.shape[1]), int(image_vol.shape[2]))
    cfg.augment.check_shape(shape)
    volume_range(image_vol.attrs, image_vol.dtype, image_vol.path)  # refuses unmappable intensities now
    counts: dict[int, int] = {}
    for z in chosen:  # labels are validated before anything is written
        for value, n in value_counts(label_vol.read(slice(z, z + 1))).items():
            counts[value] = counts.get(value, 0) + n
    check_interior_value(counts, cfg.augment.interior_value, f"labels {label_vol.path}",
                         label_vol.attrs.get("label_polarity"))
    path = workspace.dataset(dataset)
    attrs = dataset_attrs(image_vol.path, label_vol.path, selection, chosen, cfg.n_samples, cfg.root_seed,
                          cfg.augment)
    record = read_record(path)
    if record is not None and not cfg.overwrite:
        resume_training_set(path)  # refuses a store that is not a training set
    decision = decide(record, attrs, overwrite=cfg.overwrite).check(path)
    return AugmentPlan(path, image_vol.path, label_vol.path, tuple(chosen), shape, attrs, decision,
                       volume_voxel_record(image_vol))


def load_sources(plan: AugmentPlan, config: AugmentConfig) -> SourceSlices:
    """Read the selected slices (S, H, W) of both volumes and compute their weight maps."""
    image_vol, label_vol = open_volume(plan.image_path), open_volume(plan.labels_path)
    rng = volume_range(image_vol.attrs, image_vol.dtype, image_vol.path)  # 12/16-bit, float → 0..255
    image = np.stack([to_uint8(image_vol.read(slice(z, z + 1))[0], rng) for z in plan.slices])
    label = np.stack([label_vol.read(slice(z, z + 1))[0] for z in plan.slices])
    return prepare_sources(image, label, config)


def augment_stage(workspace: Workspace, image: str, labels: str, dataset: str, cfg: AugmentStageConfig, *,
                  client: Any = None, num_workers: int | None = None,
                  progress: Progress | None = None) -> AugmentResult:
    """Generate (or resume, or leave alone if finished) ``datasets/<dataset>.zarr``.

    ``client``: a ``distributed.Client`` (its workers must see the store); none = local
    threads (``num_workers``, default all cores). ``progress(done, total)`` counts groups.
    """
    t0 = time.perf_counter()
    # One writer per training set, from the decision to the last write (a second run fails at once,
    # naming the holder; the kernel frees the lock of a killed run).
    with store_lock(workspace.dataset(dataset)):
        plan = plan_augment(workspace, image, labels, dataset, cfg)
        written = 0
        if plan.decision.action == "reuse":
            log.info("%s is already complete: nothing to do", plan.dataset_path)
        else:
            if plan.decision.action in ("create", "replace"):
                create_training_set(plan.dataset_path, cfg.n_samples, plan.sample_shape,
                                    group_size=cfg.group_size, overwrite=True,
                                    attrs={**plan.attrs, SOURCE_VOXEL_SIZE_KEY: plan.source_voxel_size})
            else:  # resume: a killed writer's unfinished objects go; the store ends with a whole run's files
                remove_partial_writes(plan.dataset_path)
            sources = load_sources(plan, cfg.augment)
            written = write_pending_groups(plan.dataset_path, sources, cfg.root_seed, cfg.augment,
                                           client=client, num_workers=num_workers, progress=progress)
            resume_training_set(plan.dataset_path).mark_complete()
            log.info("%s: %d groups written in %.1f s", plan.dataset_path, written, time.perf_counter() - t0)
    preview = augment_preview(workspace, dataset, plan, cfg)[0] if cfg.preview else None
    return AugmentResult(dataset=plan.dataset_path, action=plan.decision.action, n_samples=cfg.n_samples,
                         groups_written=written, seconds=round(time.perf_counter() - t0, 3), preview=preview)


def augment_preview(workspace: Workspace, dataset: str, plan: AugmentPlan,
                    cfg: AugmentStageConfig) -> tuple[str, np.ndarray]:
    """``reports/<dataset>/augment-preview.png``: source slices beside augmented samples (labels in
    red). Returns its path and the image (H, W, 3) RGB."""
    n = min(PREVIEW_SAMPLES, cfg.n_samples)
    grid = preview_grid(load_sources(plan, cfg.augment), cfg.root_seed, cfg.augment, range(n))
    path = workspace.report_file(dataset, "augment-preview.png")
    write_png(path, grid)
    return path, grid
