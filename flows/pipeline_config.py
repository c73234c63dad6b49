"""Parameters of the end-to-end pipeline (one frozen model, the ``params`` flow parameter).

The Prefect UI renders it as a form: plain values first (workspace, inputs, names, slice
split), then one group per stage holding that stage's own config model. Everything is
checked before any step starts: unknown fields and wrong types by pydantic (in the UI
and at run creation, through the JSON schema), missing input files and bad names by the
validators below (when the run starts, before any work).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from storage.ingest_config import IngestConfig
from storage.workspace import check_name
from unet.augment import AugmentConfig
from unet.evaluate_stage import EvaluateConfig
from unet.infer_config import InferConfig
from unet.model import UNetConfig
from unet.segment_config import SegmentConfig
from unet.split import parse_slice_range, parse_slices
from unet.train import TrainConfig

# The pipeline's scoring settings are the evaluate stage's own config (one model, one form).
EvaluateSettings = EvaluateConfig


# Only the form of the slices is checked here; the pipeline checks them against the stack's depth
# (read from its header) before any step runs.
# The bound keeps a typo such as '0-999999999' from expanding into a billion-entry list.
MAX_SLICES = 1 << 20


class PipelineParams(BaseModel):
    """ingest -> augment -> train -> infer -> evaluate on one labelled stack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(..., description="Image stack to segment and train on: a TIFF file (multi-page, "
                        "BigTIFF, OME-TIFF) or a folder of single-slice TIFFs.",
                        json_schema_extra={"position": 0})
    labels: str = Field(..., description="Label stack of the same shape (255 = cell interior, 0 = membrane "
                        "for ISBI-style labels; see evaluate.polarity).", json_schema_extra={"position": 1})
    workspace: str = Field("workspace", description="Workspace root (local path); outputs go to "
                           "volumes/, labels/, datasets/, models/, predictions/, reports/ under it.",
                           json_schema_extra={"position": 2})
    name: str = Field("volume", description="Name of the ingested volume and of its prediction "
                      "(`volumes/<name>.zarr`, `predictions/<name>.zarr`).",
                      json_schema_extra={"position": 3})
    run: str = Field("run1", description="Training run: `models/<run>/` and `datasets/<run>.zarr`.",
                     json_schema_extra={"position": 4})
    report: str = Field("", description="Report name: `reports/<report>/` (empty: the run name).",
                        json_schema_extra={"position": 5})
    train_slices: str = Field("", description="Slices the training set is augmented from, inclusive "
                              "ranges: '0-19' or '0-9,15'. Empty: the first two thirds of the stack.",
                              json_schema_extra={"position": 6})
    val_slices: str = Field("", description="Held-out validation slices, one inclusive range "
                            "'first-last'. Empty: the last third of the stack (at least one slice).",
                            json_schema_extra={"position": 7})
    n_samples: int = Field(400, ge=1, description="Augmented training samples to generate.",
                           json_schema_extra={"position": 8})
    dask_address: str | None = Field(None, description="Address of an existing Dask scheduler "
                                     "(tcp://host:8786) for augmentation and inference; none = in-process.",
                                     json_schema_extra={"position": 9})
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Ingest settings.",
        json_schema_extra={"position": 10})
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentation settings.",
        json_schema_extra={"position": 11})
    unet: UNetConfig = Field(default_factory=UNetConfig, description="U-Net architecture.",
        json_schema_extra={"position": 12})
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings.",
        json_schema_extra={"position": 13})
    infer: InferConfig = Field(default_factory=InferConfig, description="Blockwise inference settings.",
        json_schema_extra={"position": 14})
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings, description="Scoring settings.",
        json_schema_extra={"position": 15})
    segment: SegmentConfig | None = Field(None, description="Cell segmentation of the prediction "
                                          "(segmentations/<name>.zarr) after the other steps; none = skip.",
                                          json_schema_extra={"position": 16})

    @field_validator("source", "labels")
    @classmethod
    def _input_exists(cls, value: str) -> str:
        # A local input must exist before any step starts (URLs are checked by ingest).
        if "://" not in value and not os.path.exists(value):
            raise ValueError(f"no file or folder at {value!r}")
        return value

    @field_validator("name", "run", "report")
    @classmethod
    def _safe_name(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "report" and value == "":
            return value
        return check_name(value, info.field_name or "name")

    @field_validator("val_slices")
    @classmethod
    def _val_range(cls, value: str) -> str:
        if value:  # empty: decided from the stack's depth when the run starts (unet.split)
            parse_slice_range(value, "val_slices")
        return value

    @field_validator("train_slices")
    @classmethod
    def _train_selection(cls, value: str) -> str:
        if not value:
            return value
        try:
            parse_slices(value, n_slices=MAX_SLICES)
        except ValueError as e:
            raise ValueError(f"train_slices: {e}") from None
        return value

    @model_validator(mode="after")
    def _disjoint_split(self) -> PipelineParams:
        if not (self.train_slices and self.val_slices):
            return self  # checked against the stack's depth when the run starts
        held_out = range(*parse_slice_range(self.val_slices, "val_slices"))
        if set(parse_slices(self.train_slices, n_slices=MAX_SLICES)) & set(held_out):
            raise ValueError(f"train_slices {self.train_slices!r} overlap val_slices "
                             f"{self.val_slices!r}: validation must be held out")
        return self

    @property
    def report_name(self) -> str:
        return self.report or self.run

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "labels": self.labels, "workspace": self.workspace, "name": self.name,
                "run": self.run, "report": self.report_name}
