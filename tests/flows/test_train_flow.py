"""The train and evaluate flows on a tiny synthetic workspace (temporary Prefect server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from storage.dataset import create_training_set
from storage.errors import ShapeMismatchError
from storage.files import read_json
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume
from storage.workspace import Workspace
from tasks.evaluate import score_volume
from unet.model import UNetConfig
from unet.train import TrainConfig


def _write(path: str, data: np.ndarray, kind: str) -> None:
    w = create_volume(path, data.shape, np.uint8, (50, 4, 4), kind=kind)  # type: ignore[arg-type]
    w.write(0, data)
    w.mark_complete()


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(str(tmp_path / "ws"))
    block = generate_volume(SyntheticSpec(shape=(6, 64, 64), seed=3, cell_yx=20.0))
    _write(ws.volume("em"), block.image, "image")
    _write(ws.labels("em"), block.labels, "label")
    # A perfect prediction (membrane probability 255 where the label is membrane) and a poor one.
    _write(ws.prediction("perfect"), np.where(block.labels == 0, 255, 0).astype(np.uint8), "prediction")
    _write(ws.prediction("blank"), np.zeros(block.labels.shape, np.uint8), "prediction")
    ts = create_training_set(ws.dataset("train"), 4, (64, 64), group_size=4)
    ts.write_group(0, block.image[:4], block.labels[:4], np.ones((4, 64, 64), np.float16))
    ts.mark_complete()
    return ws


def test_score_volume_streams_slabs(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import unet.evaluate_stage as ev

    whole = score_volume(workspace.prediction("perfect"), workspace.labels("em"), "zero_is_membrane")
    assert whole["v_rand"] == 1.0 and whole["pixel_accuracy_at_half"] == 1.0 and whole["n_slices"] == 6
    blank = score_volume(workspace.prediction("blank"), workspace.labels("em"), "zero_is_membrane")
    monkeypatch.setattr(ev, "SLAB_Z", 4)  # 4 + 2 slices merged must equal one slab of 6
    slabbed = score_volume(workspace.prediction("blank"), workspace.labels("em"), "zero_is_membrane")
    for key, value in blank.items():
        if key != "per_threshold":
            assert slabbed[key] == pytest.approx(value), key
    for a, b in zip(slabbed["per_threshold"], blank["per_threshold"], strict=True):
        assert a == pytest.approx(b)
    assert blank["v_rand"] < 0.5 and blank["dice_at_half"] == 0.0
    with pytest.raises(ShapeMismatchError, match="shape"):
        _write(workspace.prediction("small"), np.zeros((2, 64, 64), np.uint8), "prediction")
        score_volume(workspace.prediction("small"), workspace.labels("em"), "zero_is_membrane")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_train_then_evaluate_flows(workspace: Workspace) -> None:
    from flows.cli import app
    from flows.train import train_flow

    result = train_flow(workspace=workspace.root, dataset="train", val_image="em", val_labels="em",
                        val_slices="4-5", run="tiny",
                        train=TrainConfig(steps=4, batch_size=2, val_every=2, loader_threads=1),
                        unet=UNetConfig(depth=2, base_channels=4))
    model_dir = Path(workspace.model_dir("tiny"))
    assert result.best_checkpoint == str(model_dir / "checkpoint-best.pt")
    assert {"checkpoint-last.pt", "checkpoint-best.pt", "metrics.jsonl", "config.json"} <= {
        p.name for p in model_dir.iterdir()}
    assert 0 <= result.best_metrics["v_rand"] <= 1 and result.step == 4
    assert Path(result.preview).stat().st_size > 0

    out = CliRunner().invoke(app, ["evaluate", "--workspace", workspace.root, "--prediction", "perfect",
                                   "--labels", "em", "--run", "ev"])
    assert out.exit_code == 0, out.output
    assert "v_rand" in out.output and "1.0000" in out.output
    report = read_json(Path(workspace.report_dir("ev")) / "metrics.json")
    assert report["v_rand"] == 1.0 and report["prediction"].endswith("perfect.zarr")
    json.dumps(report)  # JSON-able
    # --slices passes through the flow: only those slices are scored, and the report says which.
    out = CliRunner().invoke(app, ["evaluate", "--workspace", workspace.root, "--prediction", "blank",
                                   "--labels", "em", "--run", "ev45", "--slices", "4-5"])
    assert out.exit_code == 0, out.output
    report = read_json(Path(workspace.report_dir("ev45")) / "metrics.json")
    assert report["slices"] == "4-5" and report["n_slices"] == 2


def test_train_cli_offers_the_overlap_override_and_a_report_split() -> None:
    from flows.cli import app

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert out.exit_code == 0, out.output
    assert "--allow-val-overlap" in out.output and "--report-slices" in out.output
