"""Ingested labels are an OME-Zarr image-label of their image, with their polarity recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from storage.ingest import IngestConfig, ingest_with_labels
from storage.ingest_labels import LabelsRefusedError
from storage.volume import open_volume, store_exists
from tests.storage.tiff_factory import make_stack, write_kind

SMALL = IngestConfig(chunk_yx=32, shard_z=4, slab_z=4, workers=2)


def membranes_255(shape: tuple[int, int, int] = (6, 32, 48)) -> np.ndarray:
    """Labels as a lab stack gives them: membrane 255 (a grid, a minority), cell interior 0."""
    labels = np.zeros(shape, np.uint8)
    labels[:, ::8, :] = 255
    labels[:, :, ::8] = 255
    return labels


def test_labels_are_a_valid_image_label_naming_each_value(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image_label import ImageLabel

    img_src = write_kind("ome", make_stack(shape=(6, 32, 48)), tmp_path / "img")
    lab_src = write_kind("multipage", membranes_255(), tmp_path / "lab")
    cfg = SMALL.model_copy(update={"pyramid_levels": 1, "label_polarity": "nonzero_is_membrane"})
    _, lab = ingest_with_labels(img_src, lab_src, tmp_path / "v.zarr", tmp_path / "l.zarr", cfg)
    assert lab.is_complete and lab.attrs["label_polarity"] == "nonzero_is_membrane"
    assert lab.attrs["kind"] == "label" and lab.attrs["label_values"] == [0, 255]
    label = ImageLabel.from_zarr(zarr.open_group(tmp_path / "l.zarr", mode="r"))
    meta = label.attributes.ome.image_label
    assert meta is not None and meta.source is not None and meta.source.image == "../v.zarr"
    assert lab.group.attrs["ome"]["image-label"]["properties"] == [  # type: ignore[index,call-overload]
        {"label-value": 0, "class": "cell interior"}, {"label-value": 255, "class": "membrane"}]
    nodes = list(Reader(parse_url(str(tmp_path / "l.zarr")))())
    found = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(found) == 1 and [d.shape for d in found[0].data] == [(6, 32, 48), (6, 16, 24)]
    np.testing.assert_array_equal(open_volume(tmp_path / "l.zarr").read(slice(None)), membranes_255())


def test_isbi_polarity_names_zero_membrane_and_inverted_labels_leave_no_store(tmp_path: Path) -> None:
    img_src = write_kind("multipage", make_stack(shape=(6, 32, 48)), tmp_path / "img")
    isbi = write_kind("multipage", 255 - membranes_255(), tmp_path / "isbi")  # 0 = membrane, 255 = interior
    _, lab = ingest_with_labels(img_src, isbi, tmp_path / "v.zarr", tmp_path / "l.zarr", SMALL)
    assert lab.attrs["label_polarity"] == "zero_is_membrane"
    assert lab.group.attrs["ome"]["image-label"]["properties"][0] == {  # type: ignore[index,call-overload]
        "label-value": 0, "class": "membrane"}
    lab_src = write_kind("multipage", membranes_255(), tmp_path / "lab")
    with pytest.raises(LabelsRefusedError, match="--label-polarity"):
        ingest_with_labels(img_src, lab_src, tmp_path / "v.zarr", tmp_path / "m.zarr", SMALL)
    assert not store_exists(tmp_path / "m.zarr")
