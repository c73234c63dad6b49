"""The segment flow, ``emseg segment`` and ``emseg evaluate --segmentation`` on a small workspace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from storage.segmentation import open_segmentation
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume
from storage.workspace import Workspace

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    ws = Workspace(str(root))
    vol = generate_volume(SyntheticSpec(shape=(3, 96, 80), seed=2))
    prob = np.rint(ndimage.gaussian_filter((vol.labels == 0).astype(np.float32), (0, 1, 1)) * 255)
    for path, data, kind in ((ws.prediction("em"), prob.astype(np.uint8), "prediction"),
                             (ws.labels("em"), vol.labels, "label")):
        w = create_volume(path, data.shape, data.dtype, (50, 4, 4), kind=kind)  # type: ignore[arg-type]
        w.write(0, data)
        w.mark_complete()
    return root


def test_flow_refuses_to_overwrite_and_refuses_label_volumes(workspace: Path) -> None:
    from flows.segment import segment_flow
    from storage.errors import InputError, StoreExistsError
    from unet.segment_config import SegmentConfig

    cfg = SegmentConfig(block_shape=(3, 96, 80))
    result = segment_flow(workspace=str(workspace), probability="em", config=cfg)
    assert result.segmentation == Workspace(str(workspace)).segmentation("em") and result.blocks == 1
    with pytest.raises(StoreExistsError, match="overwrite"):
        segment_flow(workspace=str(workspace), probability="em", config=cfg)
    with pytest.raises(InputError, match="label volume"):
        segment_flow(workspace=str(workspace), probability=Workspace(str(workspace)).labels("em"), name="x")
    assert not (workspace / "segmentations" / "x.zarr").exists()


# After the flow test: a flow run's first log handler must not bind to the CLI runner's stream.
def test_cli_segments_a_prediction_and_evaluate_scores_the_cells(workspace: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["segment", "em", "--workspace", str(workspace), "--name", "cells",
                              "--block", "2", "48", "48", "--halo", "16"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output[out.output.index("{"):])
    seg = open_segmentation(Workspace(str(workspace)).segmentation("cells"))
    assert result["segmentation"] == seg.path and result["blocks"] == 2 * 2 * 2
    assert seg.attrs["segment"]["source"] == Workspace(str(workspace)).prediction("em")
    assert seg.attrs["segment"]["config"]["block_shape"] == [2, 48, 48] and seg.attrs["n_cells"] > 5

    scored = runner.invoke(app, ["evaluate", "--segmentation", "cells", "--labels", "em", "--run", "r1",
                                 "--workspace", str(workspace)])
    assert scored.exit_code == 0, scored.output
    assert "segmentation_v_rand" in scored.output and "segmentation_n_cells" in scored.output
    assert not (workspace / "reports" / "r1" / "metrics.json").exists()  # no prediction asked for
    both = runner.invoke(app, ["evaluate", "--prediction", "em", "--segmentation", "cells", "--labels", "em",
                               "--run", "r2", "--workspace", str(workspace)])
    assert both.exit_code == 0, both.output
    assert "v_rand_threshold" in both.output and "segmentation_v_info" in both.output
    report = json.loads((workspace / "reports" / "r1" / "segmentation-metrics.json").read_text())
    assert report["v_rand"] >= 0.99 and report["n_cells"] == seg.attrs["n_cells"]
