"""Cheap checks of a command's inputs, before anything heavy is imported or any server starts.

Headers only (a Zarr group's attributes, a file's first bytes): a missing, incomplete or
corrupt input is reported in about a second. Imports only ``storage`` (numpy, zarr).
"""

from __future__ import annotations

import os
import zipfile

from storage.errors import InputError, StoreNotFoundError
from storage.workspace import Workspace, is_path


def require_volume(path: str) -> str:
    """Open the volume at ``path`` (refused if missing or incomplete); returns the path."""
    from storage.volume import open_volume

    open_volume(path)
    return path


def require_named(workspace: Workspace, kind: str, value: str) -> str:
    """A ``kind`` volume (volumes, labels, predictions, segmentations) by name or path, checked."""
    if is_path(value):
        return require_volume(value)
    where = {"volumes": workspace.volume, "labels": workspace.labels, "predictions": workspace.prediction,
             "segmentations": workspace.segmentation}[kind]
    return require_volume(where(value))


def require_checkpoint(path: str) -> str:
    """A checkpoint file that torch can read (a zip archive), checked without importing torch."""
    if not os.path.isfile(path):
        raise StoreNotFoundError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or another file?)")
    return path


def require_dataset(workspace: Workspace, name: str) -> str:
    from storage.dataset import open_training_set

    return open_training_set(workspace.dataset(name)).path
