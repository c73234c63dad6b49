"""Checkpoints round-trip with weights_only loading; bad files give errors naming the path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unet.checkpoint import (
    CheckpointError,
    checkpoint_sha256,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from unet.model import UNet, UNetConfig


def _model() -> tuple[UNet, UNetConfig]:
    torch.manual_seed(0)
    cfg = UNetConfig(depth=2, base_channels=4, norm="group")
    return UNet(cfg), cfg


def test_round_trip_restores_model_optimizer_and_step(tmp_path: Path) -> None:
    model, cfg = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 1, 16, 16)).sum().backward()
    opt.step()
    path = tmp_path / "m" / "checkpoint-last.pt"
    save_checkpoint(path, model, cfg, optimizer=opt, step=7, extra={"v_rand": 0.5})
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == cfg
    assert not loaded.training
    x = torch.randn(1, 1, 16, 16)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))
    payload = load_checkpoint(path)
    assert payload["step"] == 7 and payload["extra"] == {"v_rand": 0.5}
    opt2 = torch.optim.AdamW(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(payload["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1
    assert len(checkpoint_sha256(path)) == 64
    assert not list(path.parent.glob("*.tmp"))


def test_missing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    for fn in (load_model, load_checkpoint, checkpoint_sha256):
        with pytest.raises(CheckpointError, match="nope.pt"):
            fn(path)


def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    model, cfg = _model()
    good = tmp_path / "good.pt"
    save_checkpoint(good, model, cfg)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_model(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_model(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt.*not an emseg"):
        load_model(foreign)
