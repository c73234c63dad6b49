"""A worker killed mid-run, on a Prefect stack of its own (server, the pipeline deployment and a
``gpu`` worker): the run ends Crashed through the zombie automation, and a re-run finishes the
work without redoing finished steps.

Its own stack, not the session's (tests/e2e/conftest.py): most of this test is waiting (for the
missed heartbeats, for the killed run's lock lease to expire), and under pytest-xdist it waits
beside the other e2e tests instead of before or after them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    PrefectStack,
    small_pipeline_params,
    start_prefect_stack,
    wait_for_run,
    write_stack,
)
from tests.e2e.test_deployments import _artifacts, _run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def private_prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # The pipeline deployment runs in the gpu pool (its steps run in the flow's own process).
    with start_prefect_stack(tmp_path_factory.mktemp("prefect-stack"), pools=("gpu",),
                             deploy=("--name", "pipeline")) as stack, \
            temporary_settings({PREFECT_API_URL: stack.api_url}):
        yield stack


def test_killed_worker_run_crashes_and_rerun_resumes(private_prefect_stack: PrefectStack, tmp_path: Path):
    inputs, workspace = tmp_path / "inputs", tmp_path / "ws"
    write_stack(inputs, seed=5)
    # Heavier steps than the other tests, so that the run is still training when it is killed: the
    # first validation (step 20, scored in a worker process) shows up about 10 steps later.
    steps = 100
    params = small_pipeline_params(workspace, inputs, run="long",
                                   unet={"depth": 3, "base_channels": 16},
                                   train={"steps": steps, "batch_size": 4, "crop": 128, "val_every": 20,
                                          "log_every": 10, "loader_threads": 1, "prefetch": 2})
    from prefect.deployments import run_deployment

    run = run_deployment("pipeline/pipeline", parameters={"params": params}, timeout=0)
    metrics_log = workspace / "models" / "long" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics_log.exists() and '"kind": "val"' in metrics_log.read_text()):
        assert time.monotonic() < deadline, "training never validated"
        time.sleep(0.2)
    private_prefect_stack.kill_worker("gpu")  # the pipeline deployment runs in the gpu pool
    killed_at = max(json.loads(line)["step"] for line in metrics_log.read_text().splitlines())
    assert killed_at < steps
    state = wait_for_run(run.id, timeout=180)
    assert state.name == "Crashed", f"{state.name}: {state.message}"
    assert not (workspace / "reports" / "long" / "metrics.json").exists()

    private_prefect_stack.start_worker("gpu")
    run2, state2 = _run("pipeline/pipeline", {"params": params}, timeout=300)
    assert state2.is_completed(), state2.message
    summary = _artifacts(run2.id)["pipeline-long-summary"].data
    assert "ingest: skipped" in summary and "augment: skipped" in summary
    assert "train: resume" in summary  # from its last checkpoint, not from step 0
    starts = [json.loads(line) for line in metrics_log.read_text().splitlines()]
    assert [r["kind"] for r in starts if r["kind"] in ("start", "resume")] == ["start", "resume"]
    assert (workspace / "reports" / "long" / "metrics.json").is_file()
