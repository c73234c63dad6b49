"""The pipeline's skip/resume/replace rule and its parameter validation (no server, no files run)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from flows.pipeline import decide
from flows.pipeline_config import PipelineParams
from unet.infer_config import InferConfig

EXPECTED = {"params": {"steps": 10}, "sources.image": "/ws/volumes/v.zarr"}
DONE = {"complete": True, "params": {"steps": 10}, "sources": {"image": "/ws/volumes/v.zarr"}}


def test_decide_skips_current_output_unless_upstream_ran():
    assert decide(DONE, EXPECTED, upstream_ran=False).run is False
    again = decide(DONE, EXPECTED, upstream_ran=True)
    assert again.run and again.mode == "replace"


def test_decide_creates_resumes_or_replaces():
    assert decide(None, EXPECTED, False).mode == "create"
    unfinished = decide({**DONE, "complete": False}, EXPECTED, False)
    assert unfinished.run and unfinished.mode == "resume" and "incomplete" in unfinished.reason
    stale = decide({**DONE, "params": {"steps": 20}}, EXPECTED, False)
    assert stale.run and stale.mode == "replace" and "params differs" in stale.reason
    stale_unfinished = decide({**DONE, "complete": False, "params": {"steps": 20}}, EXPECTED, False)
    assert stale_unfinished.mode == "replace"


@pytest.fixture()
def inputs(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    (tmp_path / "a_labels.tif").write_bytes(b"y")
    return {"source": str(tmp_path / "a.tif"), "labels": str(tmp_path / "a_labels.tif")}


def test_params_defaults_and_schema(inputs):
    p = PipelineParams(**inputs)
    assert p.report_name == "run1" and p.train.steps > 0 and p.infer.tile == InferConfig().tile
    schema = PipelineParams.model_json_schema()
    assert schema["additionalProperties"] is False
    assert all(f.get("description") for f in schema["properties"].values())


@pytest.mark.parametrize("change, field, message", [
    ({"bogus": 1}, "bogus", "Extra inputs are not permitted"),
    ({"n_samples": "many"}, "n_samples", "valid integer"),
    ({"train": {"steps": 0}}, "train.steps", "greater than or equal to 1"),
    ({"source": "/nowhere/x.tif"}, "source", "no file or folder"),
    ({"name": "../escape"}, "name", "letters, digits"),
    ({"val_slices": "20"}, "val_slices", "inclusive"),
    ({"train_slices": "0-21", "val_slices": "20-29"}, "train_slices", "overlap val_slices"),
])
def test_bad_params_name_the_field(inputs, change, field, message):
    with pytest.raises(ValidationError) as err:
        PipelineParams(**{**inputs, **change})
    text = str(err.value)
    assert message in text
    assert field.split(".")[0] in text


def test_slices_default_to_the_stack_split(inputs):
    # Empty: decided from the stack's depth when the run starts (any stack, not only ISBI's 30).
    p = PipelineParams(**inputs)
    assert p.train_slices == "" and p.val_slices == ""
    assert PipelineParams(**inputs, train_slices="0-4").val_slices == ""


def test_skipped_training_reports_the_scores_of_the_checkpoint_on_disk(tmp_path):
    """The summary of a re-run takes the best checkpoint's own scores, not the best record of a
    metrics.jsonl that may hold an earlier, replaced run (issue 14)."""
    from flows.pipeline import _checkpoint_scores
    from storage.files import write_jsonl
    from unet.checkpoint import save_checkpoint
    from unet.model import UNet, UNetConfig

    cfg = UNetConfig(depth=2, base_channels=4)
    best = tmp_path / "checkpoint-best.pt"
    save_checkpoint(best, UNet(cfg), cfg, step=30, extra={"metrics": {"step": 30, "v_rand": 0.91,
                                                                      "per_threshold": [0.1]}})
    write_jsonl(tmp_path / "metrics.jsonl", [{"kind": "val", "step": 300, "v_rand": 1.0},
                                             {"kind": "start", "step": 0},
                                             {"kind": "val", "step": 30, "v_rand": 0.91}])
    assert _checkpoint_scores(str(best)) == {"step": 30, "v_rand": 0.91}


def test_params_are_frozen(inputs):
    p = PipelineParams(**inputs)
    with pytest.raises(ValidationError):
        p.name = "other"  # type: ignore[misc]
