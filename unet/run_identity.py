"""A training run's identity, and the decision to start, continue or refuse a run folder.

``models/<run>`` records the run's identity (:func:`run_identity`: model config, train
config, what the training set was made from, the validation slices), in ``config.json``
and in every checkpoint. A run of the same identity continues from ``checkpoint-last.pt``
(or starts, if killed before its first checkpoint); another identity is refused with the
differing fields named (:class:`RunMismatchError`), unless ``overwrite``.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from storage.dataset import TrainingSet
from storage.errors import StoreExistsError
from storage.runs import TrainingRun
from storage.workspace import store_key
from unet.checkpoint import CheckpointError, load_checkpoint
from unet.model import UNetConfig
from unet.train_config import SPEED_ONLY_FIELDS, TrainConfig
from unet.validation_data import ValidationData


class RunMismatchError(StoreExistsError):
    """The model folder holds a run of another identity; ``fields`` are the differing ones."""

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields


def run_identity(dataset: TrainingSet, validation: ValidationData, model_cfg: UNetConfig,
                 cfg: TrainConfig) -> dict[str, Any]:
    """What makes a training run the run it is (JSON): the model config, the train config
    (less :data:`SPEED_ONLY_FIELDS`), the training set (its store and what it was made from)
    and the validation source. Equal identities may continue each other's checkpoints."""
    made = dataset.attrs
    sources = dict(made.get("sources") or {})
    for key in ("image", "labels"):
        if key in sources:
            sources[key] = store_key(sources[key])
    identity = {
        "unet": model_cfg.model_dump(mode="json"),
        "train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in SPEED_ONLY_FIELDS},
        "dataset": {"path": store_key(dataset.path), "sources": sources, "params": made.get("params"),
                    "n_samples": made.get("n_samples"), "sample_shape": made.get("sample_shape")},
        "validation": {k: store_key(v) if k in ("image", "labels") else v
                       for k, v in validation.source.items()},
    }
    return json.loads(json.dumps(identity))  # as read back from config.json: lists, not tuples


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def identity_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields (dotted, e.g. ``train.lr``) where ``current`` differs from ``stored``, each
    as "field: stored value -> current value". Fields only ``current`` has (added to a
    config since the stored run) are not counted."""
    old, new = _flatten(stored), _flatten(current)
    return [f"{k}: {json.dumps(old[k])} -> {json.dumps(new.get(k))}"
            for k in old if k in new and old[k] != new[k] or k not in new and old[k] is not None]


def _stored_identity(run: TrainingRun, payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """The identity a run folder records: its checkpoint's, else config.json's (runs written
    before identities were recorded: their configs and inputs), else None (nothing there)."""
    if payload is not None and "identity" in payload.get("extra", {}):
        return dict(payload["extra"]["identity"])
    recorded = run.read_config()
    if recorded is None:
        return {"unet": payload["model_config"]} if payload is not None else None
    if "identity" in recorded:
        return dict(recorded["identity"])
    legacy = {"unet": recorded.get("unet"),
              "train": {k: v for k, v in (recorded.get("train") or {}).items() if k not in SPEED_ONLY_FIELDS},
              "dataset": {"path": store_key(recorded.get("dataset"))},
              "validation": {k: store_key(v) if k in ("image", "labels") else v
                             for k, v in (recorded.get("validation") or {}).items()}}
    return json.loads(json.dumps(legacy))


def plan_run(model_dir: str | TrainingRun, identity: dict[str, Any], *, resume: bool = False,
             overwrite: bool = False, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Start or continue the run in ``model_dir`` (a folder or its handle)? The checkpoint to
    continue from (its payload), or None to start from step 0.

    A folder whose recorded identity equals ``identity`` is continued from
    ``checkpoint-last.pt`` (or started, when killed before its first checkpoint); another
    identity raises :class:`RunMismatchError` naming the differing fields, unless
    ``overwrite`` (start again). ``resume`` insists on continuing: no checkpoint is then a
    :class:`CheckpointError`. Messages name the command-line flags (``--overwrite``).
    """
    run = model_dir if isinstance(model_dir, TrainingRun) else TrainingRun(model_dir)
    last_path = run.last_checkpoint
    if overwrite:
        if resume:
            raise ValueError("--resume continues a run and --overwrite starts it again: pass one of them")
        return None
    payload = load_checkpoint(last_path) if run.has_last() else None
    stored = _stored_identity(run, payload)
    if stored is not None:
        diff = identity_diff(stored, identity)
        if diff:
            fields = [d.partition(":")[0] for d in diff]
            raise RunMismatchError(
                f"{run.path} holds a training run with other settings ({'; '.join(diff)}); run the "
                "command with that run's settings to continue it, pass --overwrite to start it again "
                "from step 0 (its checkpoints and metrics are replaced), or choose another --run name",
                fields)
    if payload is None and resume:
        raise CheckpointError(f"cannot resume: no checkpoint at {last_path}")
    if payload is not None and map_location != "cpu":
        payload = load_checkpoint(last_path, map_location=map_location)
    return payload
