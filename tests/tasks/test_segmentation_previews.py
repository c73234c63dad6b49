"""Pipeline summaries show the segmentation beside the membranes (issue 13, item 5)."""

from __future__ import annotations

import numpy as np

from storage.volume import create_volume
from tasks.observe import save_previews, summary_markdown


def _volume(path, data, kind="image"):
    w = create_volume(path, data.shape, data.dtype, (40, 4, 4), kind=kind)
    w.write(0, data)
    w.mark_complete()
    return str(path)


def test_segmentation_previews_are_written_beside_the_strips_and_shown_side_by_side(tmp_path):
    raw = _volume(tmp_path / "raw.zarr", np.full((5, 8, 10), 90, np.uint8))
    cells = np.ones((5, 8, 10), np.uint32)
    cells[:, :, 5:] = 2
    seg = _volume(tmp_path / "seg.zarr", cells)
    rep = tmp_path / "rep"
    out = save_previews(raw, str(rep), n_slices=2, segmentation_path=seg)
    assert sorted(p.name for p in rep.iterdir()) == ["preview-z0000.png", "preview-z0004.png",
                                                      "segmentation-z0000.png", "segmentation-z0004.png"]
    assert out[1]["segmentation_path"] == str(rep / "segmentation-z0004.png")
    assert out[1]["segmentation_thumb"].startswith("data:image/png;base64,")
    text = summary_markdown("Run", {"segmentation": seg}, {"cells": 2}, out)
    assert "| cells | 2 |" in text and "cell outlines" in text
    assert f"![z=4]({out[1]['thumb']}) ![cells z=4]({out[1]['segmentation_thumb']})" in text

    # A later run without a segmentation leaves no stale segmentation previews behind.
    save_previews(raw, str(rep), n_slices=2)
    assert sorted(p.name for p in rep.iterdir()) == ["preview-z0000.png", "preview-z0004.png"]
