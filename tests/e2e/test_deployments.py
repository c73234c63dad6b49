"""The deployments from prefect.yaml, run by process workers against a real Prefect server.

Covers: the pipeline triggered through the API with small parameters (outputs and
artifacts), the nightly inbox (good stack processed, corrupt one reported, nothing new
the second time) and parameter validation (rejected with the field named). A worker killed
mid-run: tests/e2e/test_worker_killed.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    SMALL_INFER,
    PipelineRun,
    PrefectStack,
    small_pipeline_params,
    wait_for_run,
    write_stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture()
def api(prefect_stack: PrefectStack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
        yield prefect_stack


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    """The artifacts of one flow run, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


def _run(name: str, parameters: dict[str, Any], timeout: float = 300) -> tuple[Any, Any]:
    from prefect.deployments import run_deployment

    run = run_deployment(name, parameters=parameters, timeout=0)
    return run, wait_for_run(run.id, timeout=timeout)


def test_pipeline_deployment_writes_outputs_and_artifacts(api, finished_pipeline: PipelineRun):
    from storage.files import read_json
    from storage.volume import open_volume

    ws = finished_pipeline.workspace
    pred = open_volume(ws / "predictions" / "stack.zarr")
    assert pred.is_complete and pred.shape == (8, 128, 128)
    metrics = read_json(ws / "reports" / "r1" / "metrics.json")
    assert 0.0 <= metrics["isbi_pixel_error"] <= 1.0 and metrics["prediction"].endswith("stack.zarr")
    assert (ws / "models" / "r1" / "checkpoint-best.pt").is_file()
    assert sorted(p.name for p in (ws / "reports" / "r1").glob("preview-z*.png"))

    arts = _artifacts(finished_pipeline.flow_run_id)
    summary = arts["pipeline-r1-summary"]
    assert summary.type == "markdown"
    assert str(ws / "predictions" / "stack.zarr") in summary.data and "data:image/png;base64," in summary.data
    for step in ("ingest", "augment", "train", "infer", "evaluate"):
        assert f"{step}: create" in summary.data
    table = arts["pipeline-r1-metrics"]
    assert table.type == "table" and "v_rand" in table.data


def test_finished_pipeline_rerun_does_nothing(api, finished_pipeline: PipelineRun):
    params = small_pipeline_params(finished_pipeline.workspace, finished_pipeline.inputs)
    before = (finished_pipeline.workspace / "predictions" / "stack.zarr" / "zarr.json").stat().st_mtime_ns
    run, state = _run("pipeline/pipeline", {"params": params})
    assert state.is_completed(), state.message
    summary = _artifacts(run.id)["pipeline-r1-summary"].data
    for step in ("ingest", "augment", "train", "infer", "evaluate"):
        assert f"{step}: skipped" in summary
    after = (finished_pipeline.workspace / "predictions" / "stack.zarr" / "zarr.json").stat().st_mtime_ns
    assert after == before


def test_nightly_processes_good_stack_reports_bad_one_and_runs_once(api, finished_pipeline: PipelineRun,
                                                                      tmp_path: Path):
    inbox = tmp_path / "inbox"
    good = write_stack(inbox, stem="good", seed=11, z=4)
    (inbox / "broken.tif").write_bytes(b"II*\x00" + b"\x00not a tiff" * 64)
    params = {"params": {"inbox": str(inbox), "workspace": str(finished_pipeline.workspace), "settle_s": 1.0,
                         "infer": SMALL_INFER, "ingest": {"voxel_size": [40.0, 4.0, 4.0]}}}
    run, state = _run("nightly/nightly", params)
    assert state.is_completed(), state.message

    ledger = json.loads((finished_pipeline.workspace / "nightly" / "processed.json").read_text())["stacks"]
    by_source = {e["source"]: e for e in ledger.values()}
    assert by_source[str(good)]["status"] == "done"
    assert by_source[str(inbox / "broken.tif")]["status"] == "failed"
    assert "broken.tif" in by_source[str(inbox / "broken.tif")]["error"]
    name = by_source[str(good)]["name"]
    assert (finished_pipeline.workspace / "predictions" / f"{name}.zarr").is_dir()
    assert json.loads((finished_pipeline.workspace / "reports" / f"nightly-{name}" / "metrics.json")
                      .read_text())["labels"].endswith(f"{name}.zarr")
    summary = _artifacts(run.id)["nightly-summary"].data
    assert "1 processed, 1 failed" in summary and "FAILED" in summary and "broken.tif" in summary

    # A renamed copy of the good stack is the same content: nothing new to do.
    (inbox / "good.tif").rename(inbox / "good-renamed.tif")
    (inbox / "good_labels.tif").rename(inbox / "good-renamed_labels.tif")
    run2, state2 = _run("nightly/nightly", params)
    assert state2.is_completed(), state2.message
    assert "0 processed, 0 failed" in _artifacts(run2.id)["nightly-summary"].data
    assert json.loads((finished_pipeline.workspace / "nightly" / "processed.json").read_text())["stacks"] \
        .keys() == ledger.keys()


@pytest.mark.parametrize("change, field", [
    ({"bogus": 1}, "bogus"),
    ({"n_samples": "many"}, "n_samples"),
    ({"train": {"steps": 0}}, "steps"),
])
def test_bad_parameters_are_rejected_at_creation(api, finished_pipeline: PipelineRun, change, field):
    from prefect.deployments import run_deployment

    params = small_pipeline_params(finished_pipeline.workspace, finished_pipeline.inputs, **change)
    with pytest.raises(Exception) as err:
        run_deployment("pipeline/pipeline", parameters={"params": params}, timeout=0)
    assert field in str(err.value)


def test_unknown_top_level_parameter_is_rejected(api, finished_pipeline: PipelineRun, tmp_path: Path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment

    # The CLI (and the UI form) refuse it before creating the run; the raw API creates the
    # run, which then stops when its parameters are bound, before the flow body runs.
    workspace = tmp_path / "ws"
    params = small_pipeline_params(workspace, finished_pipeline.inputs)
    try:
        run = run_deployment("pipeline/pipeline", parameters={"params": params, "extra_param": 1}, timeout=0)
    except Exception as e:
        assert "extra_param" in str(e)
        return
    state = wait_for_run(run.id, timeout=120)
    assert not state.is_completed()
    assert not workspace.exists()
    time.sleep(1)  # the engine's last log lines are sent in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert any("extra_param" in log.message for log in logs), [log.message for log in logs]


def test_missing_input_fails_before_any_work(api, tmp_path: Path):
    workspace = tmp_path / "ws"
    params = small_pipeline_params(workspace, tmp_path / "nowhere")
    run, state = _run("pipeline/pipeline", {"params": params}, timeout=120)
    assert state.is_failed()
    assert "source" in state.message and "no file or folder" in state.message
    assert not workspace.exists()
