"""storage/synthetic.py: deterministic by seed, and blocks tile into the whole volume exactly."""

from __future__ import annotations

import numpy as np
import pytest

from storage.synthetic import INTERIOR, MEMBRANE, SyntheticSpec, generate_block, generate_volume, iter_slabs

SPEC = SyntheticSpec(shape=(6, 70, 90), seed=3, cell_yx=20.0, cell_z=3.0)


def test_deterministic_by_seed() -> None:
    a, b = generate_volume(SPEC), generate_volume(SPEC)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.cells, b.cells)
    other = generate_volume(SyntheticSpec(shape=SPEC.shape, seed=4, cell_yx=20.0, cell_z=3.0))
    assert not np.array_equal(a.image, other.image)


def test_blocks_tile_the_volume_exactly() -> None:
    whole = generate_volume(SPEC)
    tiled = np.zeros(SPEC.shape, np.uint8)
    for z0, z1 in ((0, 2), (2, 6)):
        for y0, y1 in ((0, 33), (33, 70)):
            for x0, x1 in ((0, 41), (41, 90)):
                block = generate_block(SPEC, slice(z0, z1), slice(y0, y1), slice(x0, x1))
                tiled[z0:z1, y0:y1, x0:x1] = block.image
                np.testing.assert_array_equal(block.labels, whole.labels[z0:z1, y0:y1, x0:x1])
    np.testing.assert_array_equal(tiled, whole.image)
    slabs = np.concatenate([b.image for _, b in iter_slabs(SPEC, 4)])
    np.testing.assert_array_equal(slabs, whole.image)


def test_em_like_content() -> None:
    vol = generate_volume(SPEC)
    assert vol.image.dtype == np.uint8 and set(np.unique(vol.labels)) == {MEMBRANE, INTERIOR}
    membrane = vol.labels == MEMBRANE
    assert 0.05 < membrane.mean() < 0.5  # thin membranes
    assert vol.image[membrane].mean() + 40 < vol.image[~membrane].mean()  # dark membranes


def test_bad_region_refused() -> None:
    with pytest.raises(ValueError, match="is not inside a volume of shape"):
        generate_block(SPEC, slice(0, 7), slice(0, 10), slice(0, 10))
