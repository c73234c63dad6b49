"""The real components, started once per session for the e2e tests.

``prefect server start`` on a free loopback port with its SQLite database in a temp
PREFECT_HOME, the pools and the zombie automation (``flows.setup``), ``prefect --no-prompt
deploy --all`` from the project's prefect.yaml, and one process worker per pool. Every
process runs in its own process group and is killed at teardown, also when a test fails.
:func:`start_prefect_stack` starts the same for a test that needs a stack of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Short enough for the worker-killed test, above the 30 s minimum heartbeat interval.
ZOMBIE_AFTER_S = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """``preexec_fn`` of a child that must die with this process, even when pytest is killed."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout)


@dataclass
class PrefectStack:
    """A running server plus workers; ``env`` is what a Prefect client process needs."""

    api_url: str
    ui_url: str
    env: dict[str, str]
    tmp: Path
    logs: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, pool: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"worker-{pool}-{time.time_ns()}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "1"],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers[pool] = proc
        return proc

    def kill_worker(self, pool: str) -> None:
        """SIGKILL the worker and every process it started, as when its machine dies."""
        import psutil

        proc = self.workers.pop(pool)
        children = psutil.Process(proc.pid).children(recursive=True)
        for p in [psutil.Process(proc.pid), *children]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=10)
        psutil.wait_procs(children, timeout=10)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "prefect", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectStack]:
    with start_prefect_stack(tmp_path_factory.mktemp("prefect-stack")) as stack:
        yield stack


@contextmanager
def start_prefect_stack(tmp: Path, pools: tuple[str, ...] = ("cpu", "gpu"),
                        deploy: tuple[str, ...] = ("--all",)) -> Iterator[PrefectStack]:
    """Server, pools and automation, the deployments (``prefect deploy`` arguments) and one
    worker per pool in ``pools``, all killed on exit."""
    logs = tmp / "logs"
    logs.mkdir()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "results"),
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
        # Proactive triggers (the zombie automation) are evaluated every few seconds.
        "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT2S",
        # A killed holder's lease (tasks/locks.py: 60 s) is taken back within a second of expiring,
        # instead of at the next 15 s sweep, so the worker-killed test's re-run waits no longer.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PWD": str(ROOT),  # prefect.yaml's pull step: the checkout the worker runs the code from
        "OMP_NUM_THREADS": "1",
    }
    server_log = open(logs / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    stack = PrefectStack(api_url=api, ui_url=f"http://127.0.0.1:{port}", env=env, tmp=tmp, logs=logs)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server did not start; see {logs / 'server.log'}")
            time.sleep(0.5)

        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}):
            from flows.setup import setup_server

            setup_server(zombie_after_s=ZOMBIE_AFTER_S)
            for pool in pools:  # they start up while the deployments are made
                stack.start_worker(pool)
            deployed = stack.cli("--no-prompt", "deploy", *deploy)
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
            yield stack
    finally:
        for proc in list(stack.workers.values()):
            _kill_group(proc)
        _kill_group(server)
        server_log.close()


def small_pipeline_params(workspace: Path, inputs: Path, **changes: object) -> dict[str, object]:
    """PipelineParams (as the API takes them) small enough for a 2-core CI machine."""
    params: dict[str, object] = {
        "source": str(inputs / "stack.tif"), "labels": str(inputs / "stack_labels.tif"),
        "workspace": str(workspace), "name": "stack", "run": "r1",
        "train_slices": "0-5", "val_slices": "6-7", "n_samples": 16,
        "ingest": {"voxel_size": [40.0, 4.0, 4.0], "shard_z": 4, "chunk_yx": 128, "shard_yx": 128},
        "augment": {"max_displacement_px": 6.0},
        "unet": {"depth": 2, "base_channels": 8},
        "train": {"steps": 30, "batch_size": 2, "crop": 64, "warmup_steps": 5, "val_every": 10,
                  "log_every": 10, "loader_threads": 1, "prefetch": 2},
        "infer": SMALL_INFER,
    }
    params.update(changes)
    return params


SMALL_INFER = {"tile": [128, 128], "overlap": [0, 0], "halo": [0, 8, 8], "blend": "crop", "batch_size": 2,
               "block_shape": [4, 128, 128], "chunks": [1, 128, 128], "read_threads": 1, "write_threads": 1}


def write_stack(folder: Path, stem: str = "stack", seed: int = 3, z: int = 8) -> Path:
    from storage.demo_data import write_synthetic_stack
    from storage.synthetic import SyntheticSpec

    image, _ = write_synthetic_stack(folder, SyntheticSpec(shape=(z, 128, 128), seed=seed, cell_yx=32.0),
                                     stem=stem)
    return Path(image)


def wait_for_run(flow_run_id: object, timeout: float = 300) -> object:
    """Poll the API until the flow run is final; return its state."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state  # type: ignore[arg-type]
            if state is not None and state.is_final():
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} still {state.name if state else None}")
            time.sleep(1)


@dataclass
class PipelineRun:
    workspace: Path
    inputs: Path
    flow_run_id: object


@pytest.fixture(scope="session")
def finished_pipeline(prefect_stack: PrefectStack, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The pipeline deployment run once through the API (as the UI does) with small parameters."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("pipeline")
    inputs, workspace = root / "inputs", root / "workspace"
    write_stack(inputs)
    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
        params = small_pipeline_params(workspace, inputs)
        run = run_deployment("pipeline/pipeline", parameters={"params": params}, timeout=0)
        state = wait_for_run(run.id, timeout=400)
    assert state.is_completed(), (  # type: ignore[attr-defined]
        f"pipeline run ended {state.name}: {state.message}; logs in {prefect_stack.logs}")  # type: ignore[attr-defined]
    return PipelineRun(workspace, inputs, run.id)
