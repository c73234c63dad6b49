"""``emseg ingest`` without a voxel size says loudly that it is unknown (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from storage.volume import open_volume
from tests.storage.tiff_factory import make_stack, write_kind

pytestmark = pytest.mark.slow


def test_cli_ingest_warns_on_stderr_when_the_voxel_size_is_unknown(prefect_server: None,
                                                                    tmp_path: Path) -> None:
    from flows.cli import app

    src = write_kind("multipage", make_stack(shape=(4, 32, 32)), tmp_path / "in")  # no resolution tags
    out = CliRunner().invoke(app, ["ingest", src, "--workspace", str(tmp_path / "ws"), "--name", "nometa"])
    assert out.exit_code == 0, out.output
    assert "warning" in out.stderr and "voxel size unknown on axes z, y, x" in out.stderr
    assert "--voxel-size" in out.stderr
    vol = open_volume(tmp_path / "ws" / "volumes" / "nometa.zarr")
    assert vol.attrs["voxel_size_unknown"] == ["z", "y", "x"]
    # (A given voxel size records no unknown axes: tests/storage/test_ingest.py. One CLI call per
    # test: Prefect's console handler keeps the first CliRunner's stream, closed afterwards.)

