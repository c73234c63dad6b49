"""The demo: its two variants never share outputs, and its Prefect home is in the workspace (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flows.demo import demo_params, use_workspace_prefect_home
from storage.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]


def _outputs(workspace: str, name: str, run: str) -> set[str]:
    ws = Workspace(workspace)
    return {ws.volume(name), ws.labels(name), ws.dataset(run), ws.model_dir(run), ws.prediction(name),
            ws.report_dir(run)}


def test_synthetic_and_isbi_demos_share_no_output(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"x")
    src = str(tmp_path / "a.tif")
    ws = str(tmp_path / "ws")
    synthetic = demo_params(ws, src, src)
    isbi = demo_params(ws, src, src, isbi=True)
    assert synthetic.run != isbi.run and synthetic.report_name != isbi.report_name
    assert not _outputs(ws, synthetic.name, synthetic.run) & _outputs(ws, isbi.name, isbi.run)


def test_prefect_home_defaults_to_the_workspace_unless_configured(tmp_path):
    env: dict[str, str] = {}
    assert use_workspace_prefect_home(str(tmp_path / "ws"), env) == str(tmp_path / "ws" / ".prefect")
    assert env["PREFECT_HOME"] == str(tmp_path / "ws" / ".prefect")
    mine = {"PREFECT_HOME": "/elsewhere"}
    assert use_workspace_prefect_home("ws", mine) == "/elsewhere" and mine == {"PREFECT_HOME": "/elsewhere"}
    server = {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    use_workspace_prefect_home("ws", server)
    assert "PREFECT_HOME" not in server


def test_demo_command_sets_prefect_home_before_prefect_reads_its_settings(tmp_path):
    # In a fresh process, as `emseg demo` runs: importing the demo must not import Prefect, so
    # the home chosen afterwards is the one Prefect's settings (and its SQLite database) use.
    code = ("import sys, json\n"
            "import flows.cli, flows.demo\n"
            "loaded = 'prefect' in sys.modules\n"
            f"flows.demo.use_workspace_prefect_home({str(tmp_path / 'ws')!r})\n"
            "from prefect.settings import get_current_settings\n"
            "s = get_current_settings()\n"
            "print(json.dumps([loaded, str(s.home), s.server.database.connection_url.get_secret_value()]))\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, home, db = json.loads(out.stdout.strip().splitlines()[-1])
    assert not loaded
    assert home == str(tmp_path / "ws" / ".prefect")
    assert str(tmp_path / "ws" / ".prefect") in db


def test_demo_quiets_prefects_info_logs_unless_the_user_set_a_level(tmp_path):
    # A re-run of the demo with nothing to do must print only the summary (issue 14): Prefect's
    # per-run INFO lines are lowered to warnings before Prefect configures its logging.
    from flows.demo import quiet_prefect

    env: dict[str, str] = {}
    quiet_prefect(env)
    assert env == {"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    mine = {"PREFECT_LOGGING_LEVEL": "DEBUG"}
    quiet_prefect(mine)
    assert mine["PREFECT_LOGGING_LEVEL"] == "DEBUG"
    code = ("import logging, flows.demo\n"
            "flows.demo.quiet_prefect()\n"
            "import prefect.logging.configuration as c\n"
            "c.setup_logging()\n"
            "print(logging.getLogger('prefect.flow_runs').getEffectiveLevel(),"
            " logging.getLogger('prefect.task_runs').getEffectiveLevel())\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PREFECT_LOGGING")}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert [int(v) for v in out.stdout.split()[-2:]] == [30, 30]  # logging.WARNING


def test_unknown_recipe_is_refused_before_prefect_starts(tmp_path: Path) -> None:
    """A typo in --recipe gets one line naming the option, before any server or import of Prefect."""
    import time

    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--workspace", str(tmp_path / "ws"),
                           "--recipe", "gpu-fast"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--recipe" in proc.stderr and "gpu-fast" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "ws").exists()


def test_the_temporary_server_gets_time_to_create_its_database():
    """`emseg demo` on a fresh workspace: the server's first start migrates a new database, longer
    than Prefect's 20 s default on a small machine (the demo failed before doing anything)."""
    from flows.cli import prefect_defaults

    env: dict[str, str] = {}
    prefect_defaults(env)
    assert int(env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 120
    mine = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "30"}
    prefect_defaults(mine)
    assert mine["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "30"
