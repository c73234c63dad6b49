"""Checkpoints that load with ``torch.load(..., weights_only=True)`` and nothing else.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes, so
loading one runs no code)::

    format        "emseg-unet-checkpoint"
    version       1
    model_config  UNetConfig as a dict of str/int/float
    model         state_dict of the UNet
    optimizer     optimiser state_dict (optional)
    scheduler     LR-scheduler state_dict (optional)
    step          training steps done
    extra         JSON-like dict (metrics, RNG states as uint8 tensors, ...)
    membrane_class  the output channel trained as membrane (0 for a single sigmoid logit)
    training_data   what the model was trained on (optional): ``voxel_size_nm`` (z, y, x) of the
                  training set's source volume, ``voxel_size_unknown`` (axes whose 1 nm is a
                  placeholder) and ``image`` (that volume's path)

Checkpoints written before ``membrane_class`` and ``training_data`` existed load as before:
inference then takes training's membrane class and checks no voxel size.

Serialisation happens here (into bytes); writing happens in :mod:`storage.files`, which
writes atomically, so a killed run leaves the previous complete checkpoint behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import ValidationError

from storage.errors import StoreNotFoundError
from storage.files import atomic_write_bytes, read_bytes
from unet.membrane import membrane_channel
from unet.model import UNet, UNetConfig

FORMAT = "emseg-unet-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not an emseg checkpoint; the message names the path."""


def _plain_state_dict(module_or_state: Any) -> dict[str, Any]:
    """state_dict of a module (unwrapping torch.compile's ``_orig_mod`` prefix), or a state
    dict as given (a copy of the weights taken earlier, e.g. when validation started)."""
    if isinstance(module_or_state, Mapping):
        return dict(module_or_state)
    module = getattr(module_or_state, "_orig_mod", module_or_state)
    return module.state_dict()


def checkpoint_bytes(model: torch.nn.Module | Mapping[str, torch.Tensor], config: UNetConfig, *,
                     optimizer: Any = None, scheduler: Any = None, step: int = 0,
                     extra: dict[str, Any] | None = None,
                     training_data: Mapping[str, Any] | None = None) -> bytes:
    """Serialise a checkpoint to bytes (see the module docstring for the layout)."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": config.model_dump(mode="json"),
        "model": _plain_state_dict(model),
        "step": int(step),
        "extra": extra or {},
        "membrane_class": membrane_channel(config.n_classes),  # the class training's loss calls membrane
    }
    if training_data is not None:
        payload["training_data"] = dict(training_data)
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(path: str | os.PathLike[str], model: torch.nn.Module | Mapping[str, torch.Tensor],
                    config: UNetConfig, *, optimizer: Any = None, scheduler: Any = None, step: int = 0,
                    extra: dict[str, Any] | None = None,
                    training_data: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (temp file + rename): readers never see a torn file."""
    data = checkpoint_bytes(model, config, optimizer=optimizer, scheduler=scheduler, step=step, extra=extra,
                            training_data=training_data)
    atomic_write_bytes(path, data)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint dict with ``weights_only=True``; CheckpointError naming ``path`` if unusable."""
    p = os.fspath(path)
    try:
        data = read_bytes(p)
    except StoreNotFoundError as e:
        raise CheckpointError(f"no checkpoint at {p}") from e
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise CheckpointError(f"{p} is not a readable checkpoint (corrupt or truncated?): {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{p} is a torch file but not an emseg U-Net checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{p} has checkpoint version {payload.get('version')}, "
                              f"this code reads version {VERSION}")
    return payload


def config_from_checkpoint(payload: dict[str, Any], path: str = "<checkpoint>") -> UNetConfig:
    try:
        return UNetConfig.model_validate(payload["model_config"])
    except (KeyError, ValidationError) as e:
        raise CheckpointError(f"{path} has no valid model config: {e}") from e


def recorded_membrane_class(payload: dict[str, Any]) -> int | None:
    """The channel a checkpoint says was trained as membrane; None for checkpoints older than that."""
    value = payload.get("membrane_class")
    return int(value) if isinstance(value, int) else None


def recorded_training_data(payload: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint says its model was trained on (``voxel_size_nm``, ...); {} if nothing."""
    value = payload.get("training_data")
    return dict(value) if isinstance(value, dict) else {}


def model_from_payload(payload: dict[str, Any], path: str = "<checkpoint>") -> tuple[UNet, UNetConfig]:
    """The UNet of a loaded checkpoint (on the device its tensors were loaded to, train mode)."""
    config = config_from_checkpoint(payload, path)
    model = UNet(config)
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights do not match its model config: {e}") from e
    return model, config


def load_model(path: str | os.PathLike[str],
               map_location: str | torch.device = "cpu") -> tuple[UNet, UNetConfig]:
    """Build the UNet stored in a checkpoint, in eval mode, on ``map_location``."""
    p = os.fspath(path)
    model, config = model_from_payload(load_checkpoint(p, map_location), p)
    return model.to(map_location).eval(), config


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the checkpoint file (identifies the model that produced a prediction)."""
    p = os.fspath(path)
    try:
        return hashlib.sha256(read_bytes(p)).hexdigest()
    except StoreNotFoundError as e:
        raise CheckpointError(f"no checkpoint at {p}") from e
