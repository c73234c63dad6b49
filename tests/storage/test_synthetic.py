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


HARD = SyntheticSpec.hard(shape=(6, 70, 90), seed=3)


@pytest.mark.parametrize("spec", [SPEC, HARD], ids=["plain", "hard"])
def test_blocks_tile_the_volume_exactly(spec: SyntheticSpec) -> None:
    SPEC = spec  # noqa: N806
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


def test_hard_volume_has_faint_membranes_and_membrane_like_organelles() -> None:
    spec = SyntheticSpec.hard(shape=(4, 160, 160), seed=2)
    vol = generate_volume(spec)
    easy = generate_volume(SyntheticSpec(shape=spec.shape, seed=2, cell_yx=spec.cell_yx, cell_z=spec.cell_z,
                                         membrane_px=spec.membrane_px, blur_sigma=spec.blur_sigma,
                                         noise_std=spec.noise_std))
    np.testing.assert_array_equal(vol.labels, easy.labels)  # same cells: only the picture is harder
    membrane = vol.labels == MEMBRANE
    contrast = vol.image[~membrane].mean() - vol.image[membrane].mean()
    assert contrast < easy.image[~membrane].mean() - easy.image[membrane].mean() - 10
    # Organelle rims: interior pixels as dark as membrane (seen without blur and noise).
    import dataclasses

    clean = generate_volume(dataclasses.replace(spec, blur_sigma=0.0, noise_std=0.0))
    rims = (clean.image <= 60) & ~membrane
    assert 0.002 < rims.mean() < 0.05


def test_bad_region_refused() -> None:
    with pytest.raises(ValueError, match="is not inside a volume of shape"):
        generate_block(SPEC, slice(0, 7), slice(0, 10), slice(0, 10))
