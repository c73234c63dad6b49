"""Scores of segmentations against membrane labels (V_rand, V_info per slice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from storage.errors import ShapeMismatchError
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume, open_volume
from unet.segment import segment_array
from unet.segment_config import SegmentConfig
from unet.segment_metrics import score_segmentation, segmentation_scores, segmentation_sums


def _volume(path: Path, data: np.ndarray, kind: str) -> None:
    w = create_volume(path, data.shape, data.dtype, (40, 4, 4), kind=kind)  # type: ignore[arg-type]
    w.write(0, data)
    w.mark_complete()


def test_true_cells_score_one_and_merged_cells_score_less() -> None:
    membrane = np.zeros((1, 10, 10), bool)
    membrane[0, :, 5] = True
    cells = np.where(np.arange(10)[None, None, :] < 5, 1, 2).repeat(10, axis=1).astype(np.uint32)
    assert segmentation_scores(segmentation_sums(cells, membrane)) == {"v_rand": 1.0, "v_info": 1.0,
                                                                       "n_slices": 1}
    merged = segmentation_scores(segmentation_sums(np.ones_like(cells), membrane))
    assert merged["v_rand"] < 0.8 and merged["v_info"] < 0.1


def test_blurred_true_membranes_give_cells_with_v_rand_above_099(tmp_path: Path) -> None:
    vol = generate_volume(SyntheticSpec(shape=(3, 128, 128), seed=3))
    prob = ndimage.gaussian_filter((vol.labels == 0).astype(np.float32), (0, 1.0, 1.0))
    prob8 = np.rint(prob * 255).astype(np.uint8)
    _volume(tmp_path / "seg.zarr", segment_array(prob8, SegmentConfig()), "segmentation")
    _volume(tmp_path / "lab.zarr", vol.labels, "label")
    scores = score_segmentation(open_volume(tmp_path / "seg.zarr"), open_volume(tmp_path / "lab.zarr"),
                                "zero_is_membrane")
    assert scores["v_rand"] >= 0.99 and scores["v_info"] >= 0.95 and scores["n_slices"] == 3
    assert scores["n_cells"] > 10


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    _volume(tmp_path / "seg.zarr", np.ones((2, 8, 8), np.uint32), "segmentation")
    _volume(tmp_path / "lab.zarr", np.zeros((2, 8, 9), np.uint8), "label")
    with pytest.raises(ShapeMismatchError, match="shape"):
        score_segmentation(open_volume(tmp_path / "seg.zarr"), open_volume(tmp_path / "lab.zarr"),
                           "zero_is_membrane")


def test_isbi_true_membranes_slightly_blurred_give_v_rand_above_099() -> None:
    from tests.conftest import ISBI_DIR

    path = ISBI_DIR / "train-labels.tif"
    if not path.exists():
        pytest.skip(f"ISBI 2012 labels not found at {path}")
    import tifffile

    membrane = tifffile.imread(path)[:10] == 0
    prob = np.rint(ndimage.gaussian_filter(membrane.astype(np.float32), (0, 1.0, 1.0)) * 255).astype(np.uint8)
    scores = segmentation_scores(segmentation_sums(segment_array(prob, SegmentConfig()), membrane))
    assert scores["v_rand"] >= 0.99
