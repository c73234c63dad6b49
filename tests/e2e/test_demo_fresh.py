"""`make demo` as a new user runs it: `emseg demo` in a fresh workspace, no Prefect configured.

Its first start creates and migrates the temporary server's database; on the 2-core machine that
took longer than Prefect's 20 s start-up limit and the demo failed before doing anything (fixed by
:func:`flows.cli.prefect_defaults`). The demo runs in its own process group, killed at the end,
and dies with this process (``PR_SET_PDEATHSIG``) if pytest is killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.volume import open_volume
from storage.workspace import Workspace
from tests.e2e.conftest import _kill_group, die_with_parent

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_demo_runs_in_a_fresh_workspace_without_prefect_configured(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    ws = tmp_path / "workspace"
    command = [sys.executable, "-m", "flows.cli", "demo", "--workspace", str(ws), "--steps", "40"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=die_with_parent)
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        _kill_group(proc)  # type: ignore[arg-type]
    assert proc.returncode == 0, out[-3000:]
    assert "held-out slices" in out and "v_rand" in out
    assert (ws / ".prefect").is_dir()  # the server's database lives in the workspace
    w = Workspace(str(ws))
    assert open_volume(w.prediction("synthetic")).is_complete
    assert Path(w.report_dir("demo-synthetic"), "metrics.json").is_file()
