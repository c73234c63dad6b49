"""A training run killed with SIGKILL resumes to the same parameters as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unet.test_train import make_training_set, make_validation
from unet.checkpoint import load_checkpoint
from unet.model import UNetConfig
from unet.train import TrainConfig, ValidationData, train

MODEL = UNetConfig(depth=2, base_channels=4, norm="batch")
CONFIG = TrainConfig(steps=8, batch_size=2, crop=32, val_every=8, checkpoint_every=2, log_every=1,
                     deterministic=True, warmup_steps=2, loader_threads=2)

_CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    # The same intra-op thread count as the parent: CPU convolutions reduce in a thread-dependent
    # order, and a Dask nanny started in the parent earlier may have set OMP_NUM_THREADS=1 in the
    # environment this child inherits. Bit-identical resume holds for equal thread counts.
    torch.set_num_threads(int(sys.argv[2]))
    from storage.dataset import open_training_set
    from storage.volume import open_volume
    from tests.unet.test_train_kill import CONFIG, MODEL
    from unet.train import ValidationData, train

    tmp = sys.argv[1]
    val = ValidationData.from_volumes(open_volume(tmp + "/img.zarr"), open_volume(tmp + "/lab.zarr"), (0, 2))

    def hang_at_5(step, total, **_):
        if step == 5:
            print("AT-STEP-5", flush=True)
            time.sleep(120)  # killed here, between the checkpoints of steps 4 and 6

    train(open_training_set(tmp + "/set.zarr"), val, tmp + "/killed", MODEL, CONFIG, progress=hang_at_5)
    """
)


@pytest.mark.slow
def test_sigkilled_training_resumes_to_identical_parameters(tmp_path: Path) -> None:
    ts = make_training_set(tmp_path / "set.zarr")
    image, labels = make_validation(tmp_path)
    val = ValidationData.from_volumes(image, labels, (0, 2))
    root = Path(__file__).resolve().parents[2]
    threads = str(torch.get_num_threads())
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), threads], cwd=root,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if "AT-STEP-5" in line:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "killed" / "checkpoint-last.pt")["step"] == 4

    resumed = train(ts, val, str(tmp_path / "killed"), MODEL, CONFIG, resume=True)
    whole = train(ts, val, str(tmp_path / "whole"), MODEL, CONFIG)
    assert resumed.step == whole.step == 8
    a: dict[str, Any] = load_checkpoint(tmp_path / "whole" / "checkpoint-last.pt")
    b: dict[str, Any] = load_checkpoint(tmp_path / "killed" / "checkpoint-last.pt")
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=0, msg=key)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 8
