"""Prefect tasks of the augment stage: check inputs, generate the training set, preview it.

Tasks return small dicts and paths; the samples go straight from the Dask workers into
``datasets/<name>.zarr`` through :mod:`storage.dataset`.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact

from storage.dataset import create_training_set, resume_training_set
from storage.errors import ShapeMismatchError, StoreExistsError
from storage.files import write_png
from storage.volume import open_volume, store_exists
from storage.workspace import Workspace
from tasks.progress import RunProgress, run_logger
from tasks.retry import is_transient
from unet.augment import AugmentConfig
from unet.split import default_split, parse_slices
from unet.trainset import SourceSlices, prepare_sources, preview_grid, write_pending_groups

PREVIEW_SAMPLES = 4


def dataset_attrs(image_path: str, labels_path: str, selection: str, slices: list[int],
                  n_samples: int, root_seed: int, config: AugmentConfig) -> dict[str, Any]:
    """What a training set records about how it was made (compared when resuming)."""
    return {
        "sources": {"image": image_path, "labels": labels_path, "slices": slices,
                    "split": {"train": selection}},
        "params": {"n_samples": n_samples, "root_seed": root_seed,
                   "augment": config.model_dump(mode="json")},
    }


@task(name="check-augment-inputs")
def check_augment_inputs(workspace: str, image: str, labels: str, dataset: str, slices: str,
                         n_samples: int, root_seed: int, config: AugmentConfig, group_size: int,
                         overwrite: bool) -> dict[str, Any]:
    """Validate everything before anything is written; decide create / resume / done."""
    ws = Workspace(workspace)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if root_seed < 0:
        raise ValueError(f"root_seed must be >= 0, got {root_seed}")
    image_vol = open_volume(ws.volume(image))
    label_vol = open_volume(ws.labels(labels))
    if image_vol.shape != label_vol.shape:
        raise ShapeMismatchError(f"label volume {label_vol.path} has shape {label_vol.shape}, "
                                 f"but image volume {image_vol.path} has {image_vol.shape}")
    if not slices:  # the training part of the default split of this volume
        slices = default_split(image_vol.shape[0]).train
    chosen = parse_slices(slices, image_vol.shape[0])
    shape = (image_vol.shape[1], image_vol.shape[2])
    config.check_shape(shape)
    path = ws.dataset(dataset)
    attrs = dataset_attrs(image_vol.path, label_vol.path, slices, chosen, n_samples, root_seed, config)
    action = "create"
    if store_exists(path) and not overwrite:
        existing = resume_training_set(path).attrs
        same = all(existing.get(k) == v for k, v in attrs.items())
        if not same:
            raise StoreExistsError(f"{path} exists and was made from other sources or parameters; "
                                   "pass overwrite=True to replace it")
        action = "done" if existing.get("complete") else "resume"
    return {"dataset_path": path, "image_path": image_vol.path, "labels_path": label_vol.path,
            "slices": chosen, "sample_shape": list(shape), "attrs": attrs, "action": action}


def load_sources(image_path: str, labels_path: str, slices: list[int], config: AugmentConfig,
                 ) -> SourceSlices:
    """Read the selected slices (S, H, W) of both volumes and compute their weight maps."""
    image_vol, label_vol = open_volume(image_path), open_volume(labels_path)
    image = np.stack([image_vol.read(slice(z, z + 1))[0] for z in slices])
    label = np.stack([label_vol.read(slice(z, z + 1))[0] for z in slices])
    return prepare_sources(image, label, config)


# Resumable (a ledger of finished groups), so a retry after a transient I/O error continues.
@task(name="generate-training-set", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=is_transient)
def generate_training_set(plan: dict[str, Any], n_samples: int, root_seed: int, config: AugmentConfig,
                          group_size: int, dask_address: str | None = None,
                          num_workers: int | None = None) -> dict[str, Any]:
    """Create (or resume) the training set of ``plan`` and write its pending groups with Dask."""
    log = run_logger()
    path = plan["dataset_path"]
    t0 = time.perf_counter()
    if plan["action"] == "done":
        log.info("%s is already complete: nothing to do", path)
        ts = resume_training_set(path)
        return {"dataset": path, "n_samples": ts.n_samples, "groups_written": 0, "seconds": 0.0}
    if plan["action"] == "create":
        create_training_set(path, n_samples, tuple(plan["sample_shape"]), group_size=group_size,
                            attrs=plan["attrs"], overwrite=True)
    sources = load_sources(plan["image_path"], plan["labels_path"], plan["slices"], config)
    ts = resume_training_set(path)
    progress = RunProgress("augment-progress", f"augment {path}", ts.ledger.n_units, unit="groups")
    if dask_address:
        from distributed import Client

        with Client(dask_address) as client:
            written = write_pending_groups(path, sources, root_seed, config, client=client,
                                           progress=progress.update)
    else:
        written = write_pending_groups(path, sources, root_seed, config, scheduler="threads",
                                       num_workers=num_workers, progress=progress.update)
    ts.mark_complete()
    seconds = time.perf_counter() - t0
    log.info("%s: %d groups written in %.1f s", path, written, seconds)
    return {"dataset": path, "n_samples": ts.n_samples, "groups_written": written,
            "seconds": round(seconds, 3)}


@task(name="augment-preview")
def write_augment_preview(plan: dict[str, Any], workspace: str, dataset: str, root_seed: int,
                          config: AugmentConfig) -> str:
    """PNG grid of source slices beside augmented samples (labels in red); also a Prefect artifact."""
    import cv2

    n = min(PREVIEW_SAMPLES, int(plan["attrs"]["params"]["n_samples"]))
    sources = load_sources(plan["image_path"], plan["labels_path"], plan["slices"], config)
    grid = preview_grid(sources, root_seed, config, range(n))
    path = f"{Workspace(workspace).report_dir(dataset)}/augment-preview.png"
    write_png(path, grid)
    # A small copy inline (data URI) so the run page shows it without file access.
    scale = min(1.0, 512 / grid.shape[1])
    small = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else grid
    ok, png = cv2.imencode(".png", np.ascontiguousarray(small[..., ::-1]))
    assert ok
    uri = base64.b64encode(png.tobytes()).decode()
    create_markdown_artifact(
        key="augment-preview",
        markdown=(f"### Augmentation preview: `{dataset}`\n\nLeft: source slice, right: augmented "
                  f"sample (membranes in red). Full size: `{path}`\n\n"
                  f"![preview](data:image/png;base64,{uri})\n"),
        description=f"augment preview of {dataset}",
    )
    return path
