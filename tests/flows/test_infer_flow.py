"""The infer flow and ``emseg infer``: a tiny checkpoint over a small synthetic volume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.errors import StoreExistsError
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume, open_volume
from storage.workspace import Workspace
from unet.checkpoint import CheckpointError, save_checkpoint
from unet.infer_config import InferConfig
from unet.model import UNet, UNetConfig

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

CFG = InferConfig(tile=(32, 32), overlap=(8, 8), halo=(0, 8, 8), block_shape=(2, 32, 32), chunks=(1, 32, 32),
                  batch_size=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("ws")
    ws = Workspace(str(root))
    image = generate_volume(SyntheticSpec(shape=(3, 48, 40), seed=1)).image
    w = create_volume(ws.volume("em"), image.shape, np.uint8, (50, 4, 4))
    w.write(0, image)
    w.mark_complete()
    torch.manual_seed(0)
    mcfg = UNetConfig(depth=3, base_channels=4, norm="none")
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, UNet(mcfg), mcfg)
    return root, str(ckpt)


def test_flow_writes_a_complete_prediction_and_refuses_to_overwrite(setup: tuple[Path, str]) -> None:
    from flows.infer import infer_flow

    root, ckpt = setup
    result = infer_flow(workspace=str(root), volume="em", checkpoint=ckpt, config=CFG)
    pred = open_volume(result.prediction)
    assert result.prediction == Workspace(str(root)).prediction("em")
    assert pred.shape == (3, 48, 40) and pred.dtype == np.uint8 and pred.voxel_size.as_tuple() == (50, 4, 4)
    assert result.voxels == 3 * 48 * 40 and result.blocks == 2 * 2 * 2 and result.blocks_run == 8
    assert len(result.model_sha256) == 64 and result.voxels_per_s > 0
    assert pred.attrs["inference"]["model_sha256"] == result.model_sha256
    data = pred.read(slice(None))
    assert data.std() > 0  # a real (random) model output, not the fill value

    with pytest.raises(StoreExistsError, match="complete prediction already"):
        infer_flow(workspace=str(root), volume="em", checkpoint=ckpt, config=CFG)
    again = infer_flow(workspace=str(root), volume="em", checkpoint=ckpt, config=CFG.model_copy(
        update={"batch_size": 1}), overwrite=True)
    assert np.array_equal(open_volume(again.prediction).read(slice(None)), data)  # deterministic on CPU


def test_bad_checkpoint_or_tile_fails_before_any_write(setup: tuple[Path, str], tmp_path: Path) -> None:
    from flows.infer import infer_flow

    root, ckpt = setup
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        infer_flow(workspace=str(root), volume="em", checkpoint=str(bad), output="bad", config=CFG)
    with pytest.raises(ValueError, match=r"tile \(34, 34\) must be a multiple of 4"):
        infer_flow(workspace=str(root), volume="em", checkpoint=ckpt, output="bad",
                   config=CFG.model_copy(update={"tile": (34, 34)}))
    assert not Path(Workspace(str(root)).prediction("bad")).exists()


def test_cli_infer(setup: tuple[Path, str]) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    root, ckpt = setup
    res = CliRunner().invoke(app, ["infer", "em", "--model", ckpt, "--workspace", str(root), "--name", "cli",
                                   "--tile", "32", "--overlap", "8", "--halo", "8", "--pyramid-levels", "1"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output[res.output.index("{"):])
    pred = open_volume(result["prediction"])
    assert pred.levels == ["s0", "s1"] and pred.is_complete
