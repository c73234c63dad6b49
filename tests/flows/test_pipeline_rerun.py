"""Issue 14 end to end, in-process on the session's temporary Prefect server: the pipeline runs
on a 16-slice stack with default slices, refuses a stack it cannot split before ingesting
anything, and a re-run after a replaced training run reports that run's scores. The prediction
is scored on the whole volume and, on its own, on the held-out validation slices."""

from __future__ import annotations

import pytest

from flows.pipeline_config import PipelineParams
from storage.files import read_json, read_jsonl
from tests.e2e.conftest import small_pipeline_params, write_stack

pytestmark = pytest.mark.slow


def _params(ws, inputs, **changes):
    raw = small_pipeline_params(ws, inputs)
    for key in ("train_slices", "val_slices"):  # the defaults, as a user who gives none gets them
        raw.pop(key)
    return PipelineParams.model_validate({**raw, **changes})


def test_slices_out_of_a_small_stack_are_refused_before_ingest(prefect_server, tmp_path):
    from flows.pipeline import pipeline_flow

    ws = tmp_path / "ws"
    write_stack(tmp_path / "one", z=1)
    with pytest.raises(ValueError, match="the stack has 1 slice"):
        pipeline_flow(_params(ws, tmp_path / "one"))
    write_stack(tmp_path / "sixteen", z=16)
    with pytest.raises(ValueError, match="out of range: the volume has 16 slices"):
        pipeline_flow(_params(ws, tmp_path / "sixteen", train_slices="0-19", val_slices="20-29"))
    assert not (ws / "volumes").exists()


def test_default_split_and_rerun_after_replaced_training(prefect_server, tmp_path, capsys):
    from flows.demo import print_summary
    from flows.pipeline import SCORE_KEYS, pipeline_flow
    from storage.dataset import resume_training_set

    inputs, ws = tmp_path / "inputs", tmp_path / "ws"
    write_stack(inputs, z=16)
    first = pipeline_flow(_params(ws, inputs))
    assert [s["action"] for s in first["steps"]] == ["create"] * 5
    split = resume_training_set(str(ws / "datasets" / "r1.zarr")).attrs["sources"]["split"]
    assert split == {"train": "0-10"}
    assert (ws / "reports" / "r1" / "validation.png").is_file()
    report = read_json(ws / "reports" / "r1" / "metrics.json")
    assert report["slices"] is None and report["n_slices"] == 16  # the whole volume, as before
    assert first["metrics"]["volume_v_rand"] == report["v_rand"]
    assert report["held_out"]["slices"] == "11-15" and report["held_out"]["n_slices"] == 5
    assert first["held_out"] == {"slices": "11-15", **{k: report["held_out"][k] for k in SCORE_KEYS}}

    # Training replaced (other settings): its log starts afresh, its scores are reported...
    train = {**small_pipeline_params(ws, inputs)["train"], "steps": 15, "val_every": 15}  # type: ignore[dict-item]
    replaced = pipeline_flow(_params(ws, inputs, train=train))
    actions = {s["step"]: s["action"] for s in replaced["steps"]}
    assert actions["augment"] == "skipped" and actions["train"] == "replace"
    log = read_jsonl(ws / "models" / "r1" / "metrics.jsonl")
    assert [r["kind"] for r in log].count("start") == 1
    assert [r["step"] for r in log if r["kind"] == "val"] == [15]
    assert replaced["validation"]["step"] == 15

    # ...and by the re-run that skips everything: the same scores, never the first run's.
    again = pipeline_flow(_params(ws, inputs, train=train))
    assert [s["action"] for s in again["steps"]] == ["skipped"] * 5
    assert again["validation"]["step"] == 15
    assert again["validation"]["v_rand"] == replaced["validation"]["v_rand"]
    assert again["held_out"] == replaced["held_out"] and again["held_out"]["slices"] == "11-15"
    print_summary(again)
    shown = capsys.readouterr().out
    assert "held-out slices 11-15 (the prediction, as inferred):" in shown
    assert f"v_rand           {again['held_out']['v_rand']:.4f}" in shown

    # Other thresholds: the prediction is scored again (and only that), with those thresholds.
    swept = pipeline_flow(_params(ws, inputs, train=train, evaluate={"thresholds": [0.3, 0.5, 0.7]}))
    assert {s["step"]: s["action"] for s in swept["steps"]}["evaluate"] == "replace"
    assert [s["action"] for s in swept["steps"][:4]] == ["skipped"] * 4
    assert read_json(ws / "reports" / "r1" / "metrics.json")["thresholds"] == [0.3, 0.5, 0.7]
