"""What a user tells the CLI about their data: label polarity, thresholds, and one name for the
workspace (``--workspace`` everywhere; ``--out`` still accepted). Runs in-process, no Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cli_options import parse_thresholds, workspace_root
from storage.ingest_labels import LabelsRefusedError
from storage.volume import create_volume, open_volume
from tests.storage.test_label_store import membranes_255
from tests.storage.tiff_factory import make_stack, write_kind


@pytest.fixture(autouse=True)
def _direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("EMSEG_DEBUG", raising=False)


@pytest.fixture
def stacks(tmp_path: Path) -> tuple[str, str]:
    image = write_kind("multipage", make_stack(shape=(4, 32, 48)), tmp_path / "img")
    return image, write_kind("multipage", membranes_255((4, 32, 48)), tmp_path / "lab")


def test_ingest_takes_the_polarity_records_it_and_refuses_inverted_labels(tmp_path: Path,
                                                                          stacks: tuple[str, str]) -> None:
    image, labels = stacks
    ws = str(tmp_path / "ws")
    runner = CliRunner()
    refused = runner.invoke(app, ["ingest", image, "--labels", labels, "--workspace", ws, "--name", "lab",
                                  "--voxel-size", "30", "4.6", "4.6"])
    assert isinstance(refused.exception, LabelsRefusedError) and "--label-polarity" in str(refused.exception)
    assert not (tmp_path / "ws" / "labels" / "lab.zarr").exists()
    for flag, name in (("--polarity", "a"), ("--label-polarity", "b")):
        out = runner.invoke(app, ["ingest", image, "--labels", labels, "--workspace", ws, "--name", name,
                                  "--voxel-size", "30", "4.6", "4.6", flag, "nonzero_is_membrane"])
        assert out.exit_code == 0, out.output
        lab = open_volume(tmp_path / "ws" / "labels" / f"{name}.zarr")
        assert lab.attrs["label_polarity"] == "nonzero_is_membrane"
        assert lab.group.attrs["ome"]["image-label"]["source"] == {  # type: ignore[index,call-overload]
            "image": f"../../volumes/{name}.zarr"}
    bad = runner.invoke(app, ["ingest", image, "--labels", labels, "--workspace", ws, "--name", "c",
                              "--polarity", "255_is_membrane"])
    assert isinstance(bad.exception, ValueError) and "--label-polarity must be" in str(bad.exception)


def test_workspace_is_the_option_everywhere_and_out_still_works(tmp_path: Path,
                                                                stacks: tuple[str, str]) -> None:
    runner = CliRunner()
    for command in ("ingest", "infer", "augment", "train", "evaluate", "segment"):
        shown = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert "--workspace" in shown and "--out " not in shown, command
    old = runner.invoke(app, ["ingest", stacks[0], "--out", str(tmp_path / "old"), "--name", "v",
                              "--voxel-size", "30", "4", "4"])
    assert old.exit_code == 0, old.output
    assert "--out is deprecated; use --workspace" in old.stderr
    assert open_volume(tmp_path / "old" / "volumes" / "v.zarr").shape == (4, 32, 48)
    with pytest.raises(ValueError, match="--out 'a' and --workspace 'b' disagree"):
        workspace_root("b", "a", "workspace")
    assert workspace_root("a", "a", "workspace") == "a" and workspace_root("w", None, "workspace") == "w"


def test_thresholds_parse_and_bad_ones_are_refused() -> None:
    from unet.evaluate_stage import EvaluateConfig
    from unet.metrics import DEFAULT_THRESHOLDS

    assert EvaluateConfig().thresholds == DEFAULT_THRESHOLDS and 0.1 in DEFAULT_THRESHOLDS
    with pytest.raises(ValueError, match="distinct values in"):  # the Python API and the flow check too
        EvaluateConfig(thresholds=(0.5, 1.5))
    assert parse_thresholds(None) is None
    assert parse_thresholds("0.1, 0.2,1") == (0.1, 0.2, 1.0)
    for bad in ("", "0.1,,0.2", "0.1,x", "1.5", "-0.1", "0.2,0.2", "nan"):
        with pytest.raises(ValueError, match="--thresholds takes distinct comma-separated numbers in"):
            parse_thresholds(bad)


def write_labels_and_prediction(ws: Path, labels: np.ndarray, prediction: np.ndarray) -> None:
    """labels/v.zarr (membrane = nonzero, recorded) and predictions/v.zarr of workspace ``ws``."""
    for folder, kind, data in (("labels", "label", labels), ("predictions", "prediction", prediction)):
        w = create_volume(ws / folder / "v.zarr", data.shape, np.uint8, (30, 4, 4), kind=kind)  # type: ignore[arg-type]
        if kind == "label":
            w.update_attrs(label_polarity="nonzero_is_membrane")
        w.write(0, data)
        w.mark_complete()


def test_evaluate_sweeps_the_given_thresholds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    ws = tmp_path / "ws"
    labels = membranes_255((2, 32, 48))
    write_labels_and_prediction(ws, labels, labels)
    args = ["emseg", "evaluate", "--prediction", "v", "--labels", "v", "--run", "r", "--workspace", str(ws),
            "--polarity", "nonzero_is_membrane"]
    monkeypatch.setattr("sys.argv", [*args, "--thresholds", "0.2,0.9"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    metrics = json.loads((ws / "reports" / "r" / "metrics.json").read_text())
    assert metrics["thresholds"] == [0.2, 0.9] and metrics["v_rand_threshold"] in (0.2, 0.9)
    assert metrics["v_rand"] == pytest.approx(1.0)
    monkeypatch.setattr("sys.argv", [*args, "--run", "s", "--thresholds", "0.1,1.2"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith("emseg: error: ValueError: --thresholds takes") and "'0.1,1.2'" in err
    assert not (ws / "reports" / "s").exists()


def test_evaluate_scores_the_given_slices_and_refuses_bad_ones(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    ws = tmp_path / "ws"
    labels = membranes_255((4, 32, 48))
    prediction = labels.copy()
    prediction[2:] = 0  # right on slices 0-1, nothing predicted on 2-3
    write_labels_and_prediction(ws, labels, prediction)
    args = ["emseg", "evaluate", "--prediction", "v", "--labels", "v", "--workspace", str(ws),
            "--polarity", "nonzero_is_membrane"]
    scores = {}
    for run, chosen in (("right", ["--slices", "0-1"]), ("whole", [])):
        monkeypatch.setattr("sys.argv", [*args, "--run", run, *chosen])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 0, capsys.readouterr().err
        scores[run] = json.loads((ws / "reports" / run / "metrics.json").read_text())
    assert scores["right"]["slices"] == "0-1" and scores["right"]["n_slices"] == 2
    assert scores["right"]["v_rand"] == pytest.approx(1.0) and scores["right"]["isbi_pixel_error"] == 0.0
    assert scores["whole"]["slices"] is None and scores["whole"]["n_slices"] == 4
    assert scores["whole"]["v_rand"] < 0.9
    monkeypatch.setattr("sys.argv", [*args, "--run", "bad", "--slices", "2-9"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err == ("emseg: error: ValueError: --slices: slice selection '2-9' is out of range: the volume "
                   "has 4 slices (0..3)")
    assert not (ws / "reports" / "bad").exists()
