"""Inference refuses a volume whose voxel size (y, x) is not the one the model was trained at."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.volume import create_volume, store_exists
from storage.workspace import Workspace
from unet.checkpoint import save_checkpoint
from unet.infer_config import InferConfig
from unet.infer_stage import infer_stage
from unet.model import UNet, UNetConfig
from unet.voxel_size import VoxelSizeMismatchError, check_voxel_size

TRAINED = {"image": "volumes/train.zarr", "voxel_size_nm": [30.0, 4.0, 4.0], "voxel_size_unknown": []}
CFG = InferConfig(tile=(32, 32), overlap=(8, 8), halo=(0, 8, 8), block_shape=(1, 32, 32), chunks=(1, 32, 32),
                  batch_size=2, device="cpu")


def test_in_plane_sizes_within_10_percent_pass_and_beyond_are_refused_in_one_line() -> None:
    assert check_voxel_size("v.zarr", (50.0, 4.0, 4.0), (), TRAINED, "m.pt") is None  # z may differ
    assert check_voxel_size("v.zarr", (30.0, 4.36, 3.64), (), TRAINED, "m.pt") is None  # 9 %
    with pytest.raises(VoxelSizeMismatchError) as err:
        check_voxel_size("v.zarr", (30.0, 4.6, 4.6), (), TRAINED, "m.pt")
    message = str(err.value)
    assert "4.6 x 4.6 nm" in message and "4 x 4 nm" in message and "m.pt" in message and "v.zarr" in message
    assert "--allow-voxel-size-mismatch" in message and "\n" not in message
    with pytest.raises(VoxelSizeMismatchError):
        check_voxel_size("v.zarr", (30.0, 4.0, 3.5), (), TRAINED, "m.pt")  # x alone, 12.5 % off
    allowed = check_voxel_size("v.zarr", (30.0, 4.6, 4.6), (), TRAINED, "m.pt", allow=True)
    assert allowed is not None and "4.6 x 4.6 nm" in allowed and "predicting anyway" in allowed


def test_unknown_sizes_warn_instead_of_refusing_and_old_checkpoints_are_not_checked() -> None:
    warned = check_voxel_size("v.zarr", (1.0, 1.0, 1.0), ("z", "y", "x"), TRAINED, "m.pt")
    assert warned is not None and "unknown on axes y, x" in warned and "4 x 4 nm" in warned
    blind = {**TRAINED, "voxel_size_nm": [1.0, 1.0, 1.0], "voxel_size_unknown": ["z", "y", "x"]}
    warned = check_voxel_size("v.zarr", (30.0, 4.6, 4.6), (), blind, "m.pt")
    assert warned is not None and "unknown voxel size" in warned and "4.6 x 4.6 nm" in warned
    assert check_voxel_size("v.zarr", (1.0, 1.0, 1.0), ("z", "y", "x"), blind, "m.pt") is None
    with pytest.raises(VoxelSizeMismatchError):  # only an unknown z: y, x are still compared
        check_voxel_size("v.zarr", (1.0, 9.0, 9.0), ("z",), TRAINED, "m.pt")
    assert check_voxel_size("v.zarr", (30.0, 46.0, 46.0), (), {}, "old.pt") is None


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Workspace, str]:
    ws = Workspace(str(tmp_path / "ws"))
    image = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    for name, voxel, unknown in (("same", (30, 4.1, 4.1), None), ("finer", (30, 4.6, 4.6), None),
                                 ("blind", (1, 1, 1), ["z", "y", "x"])):
        w = create_volume(ws.volume(name), image.shape, np.uint8, voxel)
        w.write(0, image)
        if unknown:
            w.update_attrs(voxel_size_unknown=unknown)
        w.mark_complete()
    torch.manual_seed(0)
    mcfg = UNetConfig(depth=2, base_channels=4, norm="none")
    ckpt = str(tmp_path / "model.pt")
    save_checkpoint(ckpt, UNet(mcfg), mcfg, training_data=TRAINED)
    return ws, ckpt


def test_infer_refuses_a_mismatched_volume_before_writing_anything(workspace: tuple[Workspace, str]) -> None:
    ws, ckpt = workspace
    with pytest.raises(VoxelSizeMismatchError, match=r"4\.6 x 4\.6 nm .* 4 x 4 nm"):
        infer_stage(ws, "finer", ckpt, CFG)
    assert not store_exists(ws.prediction("finer"))
    result = infer_stage(ws, "finer", ckpt, CFG.model_copy(update={"allow_voxel_size_mismatch": True}))
    assert store_exists(result.prediction) and result.blocks_run == 2
    assert infer_stage(ws, "same", ckpt, CFG).blocks_run == 2  # 2.5 % off: no question asked


def test_infer_on_a_volume_of_unknown_voxel_size_warns_and_predicts(workspace: tuple[Workspace, str],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    ws, ckpt = workspace
    with caplog.at_level(logging.WARNING, logger="emseg"):
        result = infer_stage(ws, "blind", ckpt, CFG)
    assert store_exists(result.prediction)
    assert any("voxel size unknown on axes y, x" in r.getMessage() for r in caplog.records)


def test_cli_infer_says_so_in_one_line_and_the_flag_lets_it_run(workspace: tuple[Workspace, str],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    ws, ckpt = workspace
    args = ["emseg", "infer", "finer", "--model", ckpt, "--workspace", ws.root, "--device", "cpu",
            "--tile", "32", "--overlap", "8", "--halo", "8"]
    monkeypatch.delenv("EMSEG_DEBUG", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr("sys.argv", args)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emseg: error: VoxelSizeMismatchError:") and "\n" not in err
    assert "4.6 x 4.6 nm" in err and "4 x 4 nm" in err and "--allow-voxel-size-mismatch" in err
    assert not store_exists(ws.prediction("finer"))
    monkeypatch.setattr("sys.argv", [*args, "--allow-voxel-size-mismatch"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0 and store_exists(ws.prediction("finer"))
    assert "predicting anyway" in capsys.readouterr().err  # the warning reaches stderr


def test_infer_loads_the_checkpoint_once_and_lets_the_model_go_after(workspace: tuple[Workspace, str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The check before any write and the run share one loaded model; none stays cached after the stage."""
    import unet.predictor

    ws, ckpt = workspace
    loads: list[str] = []
    real = unet.predictor.load_predictor

    def counting(checkpoint: str, cfg: InferConfig) -> unet.predictor.ModelPredictor:
        loads.append(checkpoint)
        return real(checkpoint, cfg)

    monkeypatch.setattr(unet.predictor, "load_predictor", counting)
    assert infer_stage(ws, "same", ckpt, CFG).blocks_run == 2
    assert loads == [ckpt]
    assert not unet.predictor._PREDICTORS
    with pytest.raises(VoxelSizeMismatchError):  # a refused run lets it go too
        infer_stage(ws, "finer", ckpt, CFG)
    assert loads == [ckpt, ckpt] and not unet.predictor._PREDICTORS


def test_cli_infer_under_prefect_refuses_before_the_flow_starts(workspace: tuple[Workspace, str],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    ws, ckpt = workspace
    started: list[object] = []
    monkeypatch.setattr("flows.infer.infer_flow", lambda **kw: started.append(kw))
    monkeypatch.delenv("EMSEG_DEBUG", raising=False)
    monkeypatch.setattr("sys.argv", ["emseg", "infer", "finer", "--model", ckpt, "--workspace", ws.root,
                                     "--device", "cpu", "--tile", "32", "--overlap", "8", "--prefect"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and not started
    err = capsys.readouterr().err.strip()
    assert err.startswith("emseg: error: VoxelSizeMismatchError:") and "\n" not in err
    monkeypatch.setattr("sys.argv", ["emseg", "infer", "same", "--model", ckpt, "--workspace", ws.root,
                                     "--tile", "33", "--overlap", "8", "--prefect"])  # odd: a U-Net pools
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and not started and "must be a multiple of 2" in capsys.readouterr().err
    assert not store_exists(ws.prediction("finer"))
