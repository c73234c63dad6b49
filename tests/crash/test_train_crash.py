"""``emseg train`` killed at several points and run again with the same arguments finishes the run,
to the parameters of an uninterrupted run, bit for bit (deterministic mode); other settings are
refused naming the differing fields and the flag that overrides."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from storage.files import read_jsonl
from storage.workspace import Workspace
from tests.crash.harness import Commands, Outcome, iter_kill_points, tree_digests
from tests.crash.test_augment_crash import augment_args, make_workspace
from unet.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
STEPS = 60
CONFIG = {"steps": STEPS, "batch_size": 2, "crop": 32, "val_every": 30, "checkpoint_every": 3,
          "log_every": 1, "warmup_steps": 2, "deterministic": True, "loader_threads": 1, "prefetch": 2,
          "val_scoring": "inline"}
UNET = {"depth": 2, "base_channels": 4}


def train_args(ws: Workspace, run: str, config: dict[str, object] = CONFIG) -> list[str]:
    return ["train", "--dataset", "set", "--val-image", "em", "--val-labels", "em", "--val-slices", "4-5",
            "--run", run, "--workspace", ws.root, "--config", json.dumps(config), "--unet", json.dumps(UNET)]


def last_logged_step(ws: Workspace, run: str) -> int:
    path = Path(ws.model_dir(run)) / "metrics.jsonl"
    try:
        return max((int(r["step"]) for r in read_jsonl(path) if r.get("kind") == "train"), default=0)
    except (OSError, ValueError):  # not there yet, or a line being written
        return 0


def losses(ws: Workspace, run: str) -> dict[int, float]:
    """Loss by step; a step logged twice (before a kill and again after) keeps its last record."""
    return {int(r["step"]): r["loss"] for r in read_jsonl(Path(ws.model_dir(run)) / "metrics.jsonl")
            if r["kind"] == "train"}


def test_killed_training_runs_again_to_identical_parameters(tmp_path: Path, commands: Commands,
                                                            record: Callable[[Outcome], None]) -> None:
    ws = make_workspace(tmp_path / "ws")
    made = commands.run(augment_args(ws, "set", 4))
    assert made.returncode == 0, made.stdout + made.stderr
    whole = commands.run(train_args(ws, "whole"))
    assert whole.returncode == 0, whole.stdout + whole.stderr

    log = tmp_path / "killed.log"
    outcome = Outcome("train")
    for k in iter_kill_points(seed=15, total=STEPS, n=3):
        proc = commands.start(train_args(ws, "killed"), log=log)
        commands.kill_when(proc, lambda k=k: last_logged_step(ws, "killed") >= k, f"step {k}")
        ckpt = Path(ws.model_dir("killed")) / "checkpoint-last.pt"
        assert not ckpt.exists() or load_checkpoint(ckpt)["step"] < STEPS
        outcome.continued += outcome.kills > 0
        outcome.kills += 1
    again = commands.run(train_args(ws, "killed"))
    outcome.continued += again.returncode == 0
    outcome.compared = "checkpoint-best.pt bytes; checkpoint-last.pt tensors and states; losses"
    try:
        assert again.returncode == 0, again.stdout + again.stderr + log.read_text()
        _assert_same_run(ws)
        outcome.identical = True
    except AssertionError:
        outcome.identical = False
        raise
    finally:
        record(outcome)
    _assert_refused_with_the_flag(commands, ws)


def _assert_same_run(ws: Workspace) -> None:
    killed, uninterrupted = Path(ws.model_dir("killed")), Path(ws.model_dir("whole"))
    assert tree_digests(killed)["checkpoint-best.pt"] == tree_digests(uninterrupted)["checkpoint-best.pt"]
    # checkpoint-last.pt: the same tensors and states (its bytes may differ in pickle memo layout:
    # the resumed optimiser's keys are strings read back from a file).
    a = load_checkpoint(uninterrupted / "checkpoint-last.pt")
    b = load_checkpoint(killed / "checkpoint-last.pt")
    assert a["step"] == b["step"] == STEPS and a["scheduler"] == b["scheduler"]
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert a["extra"]["best"] == b["extra"]["best"]
    assert losses(ws, "killed") == losses(ws, "whole")
    config = json.loads((killed / "config.json").read_text())
    assert config["deterministic"] is True and "bit for bit" in config["reproducibility"]


def _assert_refused_with_the_flag(commands: Commands, ws: Workspace) -> None:
    # Other settings: refused, naming the field and the command-line flag (no Python keyword).
    other = commands.run(train_args(ws, "killed", {**CONFIG, "lr": 0.002}))
    assert other.returncode == 2
    assert "train.lr: 0.001 -> 0.002" in other.stderr and "--overwrite" in other.stderr, other.stderr
    assert "=True" not in other.stderr and "resume=" not in other.stderr
