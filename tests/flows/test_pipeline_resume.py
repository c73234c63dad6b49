"""A step of the pipeline fails: earlier outputs stay intact, and the re-run continues at that step.

In-process, on the session's temporary Prefect server, with the e2e tests' small parameters.
The failure is injected into the infer step (as a full disk or a lost mount would fail it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.pipeline_config import PipelineParams
from tests.e2e.conftest import small_pipeline_params, write_stack

pytestmark = pytest.mark.slow


def _mtimes(ws: Path) -> dict[str, int]:
    """Modification times of every file under the outputs made before the failing step."""
    out = {}
    for sub in ("volumes", "labels", "datasets", "models"):
        for f in (ws / sub).rglob("*"):
            if f.is_file():
                out[str(f.relative_to(ws))] = f.stat().st_mtime_ns
    return out


def test_failed_step_keeps_earlier_outputs_and_rerun_resumes(prefect_server, tmp_path, monkeypatch):
    import flows.infer
    from flows.pipeline import pipeline_flow
    from storage.volume import open_volume

    inputs, ws = tmp_path / "inputs", tmp_path / "ws"
    write_stack(inputs)
    params = PipelineParams.model_validate(small_pipeline_params(ws, inputs))

    real_infer = flows.infer.infer_flow

    def broken_infer(**kwargs: object) -> None:
        raise OSError("No space left on device (injected)")

    monkeypatch.setattr(flows.infer, "infer_flow", broken_infer)
    with pytest.raises(OSError, match="injected"):
        pipeline_flow(params)
    for path in (ws / "volumes" / "stack.zarr", ws / "labels" / "stack.zarr"):
        assert open_volume(path).is_complete
    assert (ws / "models" / "r1" / "checkpoint-best.pt").is_file()
    assert not (ws / "predictions" / "stack.zarr").exists()
    assert not (ws / "reports" / "r1" / "metrics.json").exists()
    before = _mtimes(ws)

    monkeypatch.setattr(flows.infer, "infer_flow", real_infer)
    result = pipeline_flow(params)
    actions = {s["step"]: s["action"] for s in result["steps"]}
    assert actions == {"ingest": "skipped", "augment": "skipped", "train": "skipped",
                       "infer": "create", "evaluate": "create"}
    assert _mtimes(ws) == before  # nothing made before the failure was rewritten
    assert open_volume(ws / "predictions" / "stack.zarr").is_complete
    assert (ws / "reports" / "r1" / "metrics.json").is_file()
    # one report folder per run: the infer step leaves the previews to the pipeline's own
    assert sorted(p.name for p in (ws / "reports").iterdir()) == ["r1"]

    # The stacks copied in again (same bytes, new mtimes): nothing to do.
    import os

    for f in (inputs / "stack.tif", inputs / "stack_labels.tif"):
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    touched = pipeline_flow(params)
    assert [s["action"] for s in touched["steps"]] == ["skipped"] * 5

    # The run folder removed by hand (the pipeline's own stamp stays): training runs again.
    import shutil

    shutil.rmtree(ws / "models" / "r1")
    again = pipeline_flow(params)
    assert [s["action"] for s in again["steps"]] == ["skipped", "skipped", "create", "replace", "replace"]
    assert (ws / "models" / "r1" / "checkpoint-best.pt").is_file()
