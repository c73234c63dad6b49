"""reports/<run>/ holds only the current run's previews (issue 14: ISBI previews mixed with
stale synthetic ones)."""

from __future__ import annotations

import numpy as np

from storage.volume import create_volume
from tasks.observe import save_previews


def _volume(path, nz):
    w = create_volume(path, (nz, 6, 8), np.uint8, (40, 4, 4))
    w.write(0, np.full((nz, 6, 8), 7, np.uint8))
    w.mark_complete()


def test_previews_of_an_earlier_volume_are_removed(tmp_path):
    rep = tmp_path / "rep"
    _volume(tmp_path / "deep.zarr", 30)
    _volume(tmp_path / "small.zarr", 16)
    first = save_previews(str(tmp_path / "deep.zarr"), str(rep), n_slices=3)
    assert sorted(p.name for p in rep.iterdir()) == ["preview-z0000.png", "preview-z0014.png",
                                                      "preview-z0029.png"]
    (rep / "metrics.json").write_text("{}")  # another stage's file stays
    second = save_previews(str(tmp_path / "small.zarr"), str(rep), n_slices=3)
    assert [p["z"] for p in first] == [0, 14, 29] and [p["z"] for p in second] == [0, 8, 15]
    assert sorted(p.name for p in rep.iterdir()) == ["metrics.json", "preview-z0000.png",
                                                      "preview-z0008.png", "preview-z0015.png"]
