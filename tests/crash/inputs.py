"""Tiny synthetic inputs of the crash tests: a volume and its labels, a membrane probability
volume, an untrained checkpoint. Sizes are chosen so a stage runs for a few seconds on a CPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from storage.synthetic import SyntheticBlock, SyntheticSpec, generate_volume
from storage.volume import create_volume
from storage.workspace import Workspace

VOXEL_NM = (50.0, 4.0, 4.0)


def synthetic(shape: tuple[int, int, int], seed: int = 5) -> SyntheticBlock:
    return generate_volume(SyntheticSpec(shape=shape, cell_yx=16, seed=seed))


def write_volume(path: str, data: np.ndarray, kind: str = "image") -> None:
    writer = create_volume(path, data.shape, data.dtype, VOXEL_NM, kind=kind)  # type: ignore[arg-type]
    writer.write(0, data)
    writer.mark_complete()


def image_and_labels(ws: Workspace, shape: tuple[int, int, int], name: str = "em") -> SyntheticBlock:
    """``volumes/<name>.zarr`` and ``labels/<name>.zarr`` (0 = membrane, 255 = interior)."""
    block = synthetic(shape)
    write_volume(ws.volume(name), block.image)
    write_volume(ws.labels(name), block.labels, "label")
    return block


def membrane_probability(labels: np.ndarray) -> np.ndarray:
    """A plausible membrane probability map (uint8 0..255) of binary labels: high on membrane."""
    from scipy import ndimage

    return ndimage.uniform_filter(np.where(labels == 0, 230, 20).astype(np.uint8), size=(1, 3, 3))


def untrained_checkpoint(path: Path) -> str:
    """A small, seeded, untrained U-Net checkpoint (its outputs vary across the image)."""
    import torch

    from unet.checkpoint import save_checkpoint
    from unet.model import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(depth=3, base_channels=4, norm="none")
    save_checkpoint(path, UNet(config), config)
    return str(path)


def count_files(directory: str | os.PathLike[str]) -> int:
    """Files under ``directory`` (0 when it does not exist yet); tolerant of concurrent writers."""
    n = 0
    for _, _, files in os.walk(directory):
        n += len(files)
    return n


def remove(*paths: str) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def hidden_leftovers(directory: str) -> list[str]:
    """Temporary or moved-aside stores a killed writer left in ``directory`` (lock files aside)."""
    return sorted(e for e in os.listdir(directory) if e.startswith("."))
