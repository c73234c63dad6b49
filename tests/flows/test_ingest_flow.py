"""The ingest flow on a temporary Prefect server, and the ``emseg ingest`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from storage.ingest_config import IngestConfig
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import open_volume
from tests.storage.tiff_factory import write_kind


@pytest.mark.e2e
@pytest.mark.slow
def test_ingest_flow_writes_image_and_labels(prefect_server: None, tmp_path: Path) -> None:
    from flows.ingest import ingest_flow

    vol = generate_volume(SyntheticSpec(shape=(6, 64, 64), seed=1))
    img = write_kind("ome", vol.image, tmp_path / "img")
    lab = write_kind("folder", vol.labels, tmp_path / "lab")
    result = ingest_flow(sources=[img], workspace=str(tmp_path / "ws"), name="syn", labels=[lab],
                         config=IngestConfig(chunk_yx=32, shard_z=2))
    assert result.labels is not None
    assert result.image.path == str(tmp_path / "ws" / "volumes" / "syn.zarr")
    assert result.labels.path == str(tmp_path / "ws" / "labels" / "syn.zarr")
    assert result.image.shape == (6, 64, 64) and result.image.voxel_size_nm == (50.0, 4.0, 5.0)
    np.testing.assert_array_equal(open_volume(result.image.path).read(slice(None)), vol.image)
    labels = open_volume(result.labels.path)
    np.testing.assert_array_equal(labels.read(slice(None)), vol.labels)
    assert labels.voxel_size.as_tuple() == (50.0, 4.0, 5.0)


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_ingest_prints_summary_and_refuses_bad_input(prefect_server: None, tmp_path: Path) -> None:
    from flows.cli import app

    data = generate_volume(SyntheticSpec(shape=(5, 48, 40), seed=2)).image
    src = write_kind("multipage", data, tmp_path / "in")
    runner = CliRunner()
    out = runner.invoke(app, ["ingest", src, "--workspace", str(tmp_path / "ws"), "--name", "cli",
                              "--voxel-size", "30", "4", "4"])
    assert out.exit_code == 0, out.output
    path = tmp_path / "ws" / "volumes" / "cli.zarr"
    assert f"image: {path} (create)" in out.output
    assert "shape (z, y, x) (5, 48, 40), dtype uint8, voxel size (z, y, x) (30.0, 4.0, 4.0) nm" in out.output
    np.testing.assert_array_equal(open_volume(path).read(slice(None)), data)
    bad = runner.invoke(app, ["ingest", str(tmp_path / "missing.tif"), "--workspace", str(tmp_path / "ws"),
                              "--name", "bad"])
    assert bad.exit_code != 0
    assert "missing.tif: no such file or folder" in str(bad.exception)
    assert not (tmp_path / "ws" / "volumes" / "bad.zarr").exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_ingest_with_prefect_is_a_flow_run_with_its_artifact(prefect_server: None,
                                                                 tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
    )

    from flows.cli import app

    data = generate_volume(SyntheticSpec(shape=(3, 32, 32), seed=4)).image
    src = write_kind("multipage", data, tmp_path / "in")
    out = CliRunner().invoke(app, ["ingest", src, "--workspace", str(tmp_path / "ws"), "--name", "viaprefect",
                                   "--voxel-size", "30", "4", "4", "--prefect"])
    assert out.exit_code == 0, out.output
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="")))
        by_key = ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-summary"]))
        arts = client.read_artifacts(artifact_filter=by_key)
    assert any(r.state is not None and r.state.is_completed() for r in runs)
    assert any("viaprefect" in str(a.data) for a in arts)
