"""``emseg export`` then ``emseg ingest``: the same voxels and voxel size back (issue 14), in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli_export import resolve_source
from storage.volume import create_volume, open_volume

VOXEL = (50.0, 4.0, 4.0)


def _store(path: Path, data: np.ndarray, kind: str) -> None:
    w = create_volume(path, data.shape, data.dtype, VOXEL, kind=kind)  # type: ignore[arg-type]
    w.write(0, data)
    w.mark_complete()


def test_export_a_prediction_then_ingest_it_gives_the_same_voxels_and_voxel_size(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    prob = np.concatenate([np.zeros((1, 32, 32), np.uint8), np.full((1, 32, 32), 255, np.uint8),
                           rng.integers(0, 256, (1, 32, 32), dtype=np.uint8)])
    _store(ws / "volumes" / "s.zarr", image, "image")
    _store(ws / "predictions" / "s.zarr", prob, "prediction")
    with pytest.raises(ValueError, match="--kind volume|prediction"):
        resolve_source(str(ws), "s", None)  # the name is both a volume and a prediction
    runner = CliRunner()
    for kind, data in (("prediction", prob), ("volume", image)):
        tif = tmp_path / f"{kind}.ome.tif"
        out = runner.invoke(app, ["export", "s", str(tif), "--workspace", str(ws), "--kind", kind])
        assert out.exit_code == 0, out.output
        assert "voxel size (z, y, x) 50, 4, 4 nm" in out.stdout and "dtype uint8" in out.stdout
        out = runner.invoke(app, ["ingest", str(tif), "--workspace", str(tmp_path / "back"), "--name", kind])
        assert out.exit_code == 0, out.output
        back = open_volume(tmp_path / "back" / "volumes" / f"{kind}.zarr")
        assert back.dtype == np.uint8 and back.voxel_size.as_tuple() == VOXEL
        np.testing.assert_array_equal(back.read(slice(None)), data)
    # A second export to the same file is refused (exit 2 through main), the file kept.
    before = (tmp_path / "volume.ome.tif").read_bytes()
    out = runner.invoke(app, ["export", str(ws / "volumes" / "s.zarr"), str(tmp_path / "volume.ome.tif")])
    assert out.exit_code != 0 and "already exists" in str(out.exception)
    assert (tmp_path / "volume.ome.tif").read_bytes() == before
