"""Training-set generation: sample i from (root seed, i) only, written group by group with Dask.

Sample i draws everything (its source slice, handle displacements, flips, intensities)
from ``default_rng(SeedSequence(root_seed, spawn_key=(i,)))``, which equals
``SeedSequence(root_seed).spawn(n)[i]``: any sample can be generated alone, so the bytes
do not depend on the grouping, the number of workers or the scheduler.

Work is one Dask task per group of ``group_size`` samples (the training set's chunk along
N): it generates the group and writes it through :class:`storage.dataset.TrainingSet`,
which marks the group done in the ledger after the data. A re-run does the pending groups
only. numpy, OpenCV and BLAS release the GIL, so threads are the fast local scheduler;
processes lose to pickling (notes/mls.md §4). A ``distributed.Client`` (an existing
scheduler's address) works the same way; its workers must see the store's path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from storage.dataset import resume_training_set
from storage.fanout import fan_out
from unet.augment import AugmentConfig, augment_sample
from unet.weights import border_weight_map

Progress = Callable[[int, int], None]
Scheduler = Literal["threads", "sync"]


@dataclass(frozen=True)
class SourceSlices:
    """The slices samples are drawn from: image, label (uint8) and weight (float32), each (S, H, W)."""

    image: np.ndarray
    label: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[0] < 1:
            raise ValueError(f"source images must be (S, H, W) with S >= 1, got {self.image.shape}")
        if self.label.shape != self.image.shape or self.weight.shape != self.image.shape:
            raise ValueError(f"source image {self.image.shape}, label {self.label.shape} and weight "
                             f"{self.weight.shape} must have the same shape")

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def sample_shape(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[2])


def prepare_sources(image: np.ndarray, label: np.ndarray, config: AugmentConfig) -> SourceSlices:
    """Source slices (S, H, W) with their border weight maps, computed once per slice."""
    if label.ndim != 3 or label.shape != image.shape:
        raise ValueError(f"image and label must be (S, H, W) of one shape, got {image.shape}, {label.shape}")
    if image.dtype != np.uint8:  # a cast would wrap 12-bit data modulo 256
        raise ValueError(f"source images must be uint8 0..255, got {image.dtype}: map them with "
                         "storage.intensity.to_uint8 first")
    weight = np.stack([
        border_weight_map(lab, interior_value=config.interior_value, w0=config.border_w0,
                          sigma=config.border_sigma_px, class_balance=config.class_balance)
        for lab in label
    ])
    return SourceSlices(np.asarray(image, np.uint8), np.asarray(label, np.uint8), weight)


def sample_rng(root_seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: a function of (root_seed, index) only."""
    return np.random.default_rng(np.random.SeedSequence(root_seed, spawn_key=(index,)))


def generate_sample(sources: SourceSlices, root_seed: int, index: int, config: AugmentConfig,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Sample ``index``: (image, label, weight) each (H, W), and the source slice it came from."""
    rng = sample_rng(root_seed, index)
    s = int(rng.integers(sources.n_slices))
    img, lab, wgt = augment_sample(sources.image[s], sources.label[s], sources.weight[s], rng, config)
    return img, lab, wgt, s


def generate_samples(sources: SourceSlices, root_seed: int, indices: Sequence[int],
                     config: AugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples ``indices`` stacked: image, label (n, H, W) uint8 and weight (n, H, W) float16."""
    h, w = sources.sample_shape
    image = np.empty((len(indices), h, w), np.uint8)
    label = np.empty((len(indices), h, w), np.uint8)
    weight = np.empty((len(indices), h, w), np.float16)
    for j, i in enumerate(indices):
        image[j], label[j], weight[j], _ = generate_sample(sources, root_seed, i, config)
    return image, label, weight


def write_group(path: str, sources: SourceSlices, root_seed: int, group: int,
                config: AugmentConfig) -> int:
    """Generate group ``group`` of the training set at ``path`` and write it (marks it done)."""
    ts = resume_training_set(path)
    image, label, weight = generate_samples(sources, root_seed, list(ts.group_range(group)), config)
    ts.write_group(group, image, label, weight)
    return group


def write_pending_groups(path: str, sources: SourceSlices, root_seed: int, config: AugmentConfig, *,
                         scheduler: Scheduler = "threads", num_workers: int | None = None,
                         client: Any = None, progress: Progress | None = None) -> int:
    """Write every group the ledger of the training set at ``path`` lists as pending.

    Local Dask scheduler (``scheduler``, ``num_workers`` threads/processes at a time) or,
    when ``client`` (a ``distributed.Client``) is given, that cluster. ``progress(done,
    total)`` counts groups, including those finished by earlier runs. Returns the number of
    groups written by this call.
    """
    ts = resume_training_set(path)
    config.check_shape(tuple(ts.image.shape[1:]))  # type: ignore[arg-type]
    if tuple(ts.image.shape[1:]) != sources.sample_shape:
        raise ValueError(f"training set {path} holds samples of {tuple(ts.image.shape[1:])}, "
                         f"but the sources are {sources.sample_shape}")
    pending = ts.ledger.pending()
    total = ts.ledger.n_units
    # The sources travel once (one graph node locally, one broadcast to a cluster's workers).
    fan_out(_write_unit, pending, shared=(path, sources, root_seed, config), client=client,
            scheduler=scheduler, num_workers=num_workers, progress=progress,
            done=total - len(pending), total=total)
    return len(pending)


def _write_unit(path: str, sources: SourceSlices, root_seed: int, config: AugmentConfig, group: int) -> int:
    return write_group(path, sources, root_seed, group, config)


def overlay_membranes(image: np.ndarray, label: np.ndarray, interior_value: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the grey image with membrane (non-interior) pixels tinted red."""
    rgb = np.repeat(image[..., None], 3, axis=-1).astype(np.float32)
    membrane = label != interior_value
    rgb[membrane] = 0.55 * rgb[membrane] + 0.45 * np.array([255.0, 0.0, 0.0], np.float32)
    return rgb.astype(np.uint8)


def preview_grid(sources: SourceSlices, root_seed: int, config: AugmentConfig,
                 indices: Sequence[int]) -> np.ndarray:
    """RGB preview (rows × (H, 2W + gap), uint8): each row is a sample's source slice beside the
    sample itself (regenerated from (root_seed, i)), labels overlaid in red."""
    h, w = sources.sample_shape
    gap = max(2, w // 64)
    rows = []
    for i in indices:
        img, lab, _, s = generate_sample(sources, root_seed, i, config)
        left = overlay_membranes(sources.image[s], sources.label[s], config.interior_value)
        right = overlay_membranes(img, lab, config.interior_value)
        rows.append(np.concatenate([left, np.full((h, gap, 3), 255, np.uint8), right], axis=1))
        rows.append(np.full((gap, 2 * w + gap, 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)
