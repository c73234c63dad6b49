"""Issue 16 item 1: two nightly runs at once, each with its own Prefect home (so no Prefect-side lock
is shared), on one inbox and workspace: both succeed, the ledger records every stack as done, and
every output is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from storage.runs import mark_run_complete
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import open_volume
from tests.crash.inputs import untrained_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_two_nightly_runs_with_separate_prefect_homes(tmp_path: Path) -> None:
    ws, inbox = tmp_path / "ws", tmp_path / "inbox"
    inbox.mkdir()
    for i in range(2):
        tifffile.imwrite(inbox / f"s{i}.tif", generate_volume(SyntheticSpec(shape=(3, 64, 56), seed=i)).image,
                         photometric="minisblack")
    run = ws / "models" / "r1"
    run.mkdir(parents=True)
    untrained_checkpoint(run / "checkpoint-best.pt")
    mark_run_complete(run)

    procs = []
    for k in range(2):
        # Each starts Prefect's temporary server: as the session's own (tests/conftest.py), allowed
        # 90 s to come up on a loaded machine instead of Prefect's default 20 s.
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{k}"), "PREFECT_API_URL": "",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
        env.pop("PREFECT_API_URL")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "nightly", "--inbox", str(inbox), "--workspace", str(ws),
             "--settle-s", "0"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True))
    try:
        outputs = [p.communicate(timeout=420)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    ledger = json.loads((ws / "nightly" / "processed.json").read_text())["stacks"]
    assert sorted(e["status"] for e in ledger.values()) == ["done", "done"], ledger
    assert sorted(Path(e["source"]).name for e in ledger.values()) == ["s0.tif", "s1.tif"]
    for entry in ledger.values():  # each output complete (open_volume refuses anything else)
        assert open_volume(entry["volume"]).is_complete and open_volume(entry["prediction"]).is_complete
    # Both runs found every stack: processed by one, found current (done) by the other, none failed.
    for out in outputs:  # each run printed its summary: nothing failed, both stacks accounted for
        summary = json.loads(out[out.rindex('{\n  "processed"'):out.rindex("}") + 1])
        assert summary["failed"] == [], summary
        seen = [e["name"] for e in summary["processed"]] + [str(e) for e in summary["already_seen"]]
        assert len(seen) == 2, summary
