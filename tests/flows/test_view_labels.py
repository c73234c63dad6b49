"""``emseg view`` tells binary membrane labels from cell segmentations, both OME image-labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flows.view import find_stores
from storage.ingest import IngestConfig, ingest_with_labels
from storage.ome import write_image_label
from storage.volume import create_volume
from storage.workspace import Workspace
from tests.storage.test_label_store import membranes_255
from tests.storage.tiff_factory import make_stack, write_kind


def _foreign(path: str, image_label: bool, attrs: dict[str, Any]) -> None:
    """An OME-Zarr volume written elsewhere: no emseg ``kind``, maybe an image-label."""
    writer = create_volume(path, (2, 16, 16), np.uint8, (40, 4, 4))
    if image_label:
        write_image_label(writer.group, path)
    writer.group.attrs["emseg"] = {"complete": True, **attrs}


def test_ingested_labels_stay_labels_and_foreign_image_labels_are_told_apart(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    img = write_kind("multipage", make_stack(shape=(4, 32, 32)), tmp_path / "img")
    lab = write_kind("multipage", membranes_255((4, 32, 32)), tmp_path / "lab")
    ingest_with_labels(img, lab, ws.volume("em"), ws.labels("em"),
                       IngestConfig(label_polarity="nonzero_is_membrane"))
    _foreign(ws.labels("theirs"), image_label=True, attrs={})  # in labels/: membrane labels
    stores, _ = find_stores([ws.root])
    assert {(s.layer, s.kind) for s in stores} == {("volumes/em", "image"), ("labels/em", "label"),
                                                   ("labels/theirs", "label")}
    assert next(s for s in stores if s.layer == "labels/em").attrs["label_polarity"] == "nonzero_is_membrane"

    _foreign(str(tmp_path / "cells.zarr"), image_label=True, attrs={})
    _foreign(str(tmp_path / "mask.zarr"), image_label=True, attrs={"label_polarity": "zero_is_membrane"})
    _foreign(str(tmp_path / "raw.zarr"), image_label=False, attrs={})
    given, _ = find_stores([str(tmp_path / n) for n in ("cells.zarr", "mask.zarr", "raw.zarr")])
    assert {(s.layer, s.kind) for s in given} == {("segmentations/cells", "segmentation"),
                                                  ("labels/mask", "label"), ("volumes/raw", "image")}
