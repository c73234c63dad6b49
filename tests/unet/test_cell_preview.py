"""Segmentation previews: outlines where cells meet, one stable random colour per cell."""

from __future__ import annotations

import numpy as np
import pytest

from unet.cell_preview import OUTLINE_RGB, cell_colours, cell_outlines, segmentation_preview


def test_outlines_are_drawn_where_neighbouring_ids_differ() -> None:
    cells = np.array([[1, 1, 2],
                      [1, 1, 2],
                      [3, 3, 3]], np.uint32)
    assert cell_outlines(cells).tolist() == [[False, True, False],
                                             [True, True, True],
                                             [False, False, False]]


def test_colours_depend_only_on_the_id_and_zero_stays_black() -> None:
    cells = np.array([[0, 1, 2], [2, 1, 70000]], np.uint64)
    rgb = cell_colours(cells)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert (rgb[0, 1] == rgb[1, 1]).all() and (rgb[0, 2] == rgb[1, 0]).all()
    assert not (rgb[0, 1] == rgb[0, 2]).all()  # consecutive IDs look different
    assert rgb[cells > 0].max(axis=-1).min() >= 64  # no near-black cell
    assert (cell_colours(cells.astype(np.uint32)) == rgb).all()  # the same in either label dtype


def test_preview_puts_outlined_raw_beside_coloured_cells() -> None:
    raw = np.full((4, 6), 100, np.uint8)
    cells = np.zeros((4, 6), np.uint32)
    cells[:, 3:] = 5
    image = segmentation_preview(raw, cells, gap=2)
    assert image.shape == (4, 14, 3) and image.dtype == np.uint8
    assert image[0, 2].tolist() == list(OUTLINE_RGB) and image[0, 0].tolist() == [100, 100, 100]
    assert (image[:, 6:8] == 255).all()  # white gap
    assert image[0, 8].tolist() == [35, 35, 35]  # background: 35 % of the raw grey, no colour
    assert image[0, 12].tolist() != image[0, 8].tolist()
    with pytest.raises(ValueError, match=r"\(4, 6\) and \(4, 5\)"):
        segmentation_preview(raw, cells[:, :5])
