"""``emseg view`` for real: its servers, and a screenshot rendered in headless Chromium.

The command runs as a child process in its own process group that the kernel kills if
this test process dies (``PR_SET_PDEATHSIG``), and that teardown kills in any case, so no
server outlives the test. Screenshots are saved in the test's tmp dir (and copied to
``$EMSEG_SCREENSHOTS`` when set, e.g. ``docs/images``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import _kill_group, die_with_parent
from tests.flows.test_view import make_view_workspace

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
@pytest.fixture
def spawn() -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "view", *args], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=die_with_parent)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        _kill_group(proc)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("view-e2e") / "ws"
    make_view_workspace(root, shape=(6, 192, 192), pyramid_levels=1)
    return root


def test_view_serves_the_client_and_the_stores(workspace: Path) -> None:
    """In-process: the viewer page, and the stores over HTTP with CORS and Range (shard indexes)."""
    from flows.view import open_view

    view = open_view([str(workspace)])
    try:
        with urllib.request.urlopen(view.url, timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        seg = next(s for s in view.stores if s.kind == "segmentation")
        base = view.data.source(seg).removeprefix("zarr3://")
        with urllib.request.urlopen(f"{base}zarr.json", timeout=10) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert b'"image-label"' in r.read()
        store = workspace / "segmentations" / "demo.zarr"
        shard = next(p for p in sorted((store / "s0" / "c").rglob("*")) if p.is_file())
        rel = shard.relative_to(store).as_posix()
        request = urllib.request.Request(f"{base}{rel}", headers={"Range": "bytes=-20"})
        with urllib.request.urlopen(request, timeout=10) as r:  # the shard index sits at the end
            assert r.status == 206 and r.read() == shard.read_bytes()[-20:]
    finally:
        view.close()


def test_view_command_prints_a_working_url(workspace: Path, spawn) -> None:
    proc = spawn(str(workspace), "--name", "demo")
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while not any(line.startswith("http://") for line in lines):
        line = proc.stdout.readline()
        assert line or proc.poll() is None, f"emseg view exited: {proc.stderr.read()}"
        lines.append(line.strip())
        assert time.monotonic() < deadline, lines
    assert lines[0] == "layers: volumes/demo, predictions/demo, segmentations/demo, labels/demo"
    url = next(line for line in lines if line.startswith("http://127.0.0.1:"))
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200


@pytest.mark.slow
def test_view_screenshot_renders_the_layers_headless(workspace: Path, spawn, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: run `make browser` (apt-get install chromium)")
    from PIL import Image

    out = tmp_path / "emseg-view.png"
    proc = spawn(str(workspace), "--screenshot", str(out), "--size", "800", "600")
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert f"screenshot: {out} (800 x 600)" in stdout
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (600, 800, 3)
    # Rendered data, not an empty canvas: many colours (cells), and the magenta membrane overlay.
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 1000
    r, g, b = (image[..., i].astype(int) for i in range(3))
    assert ((r - g > 60) & (b - g > 60)).mean() > 0.01
    if os.environ.get("EMSEG_SCREENSHOTS"):
        shutil.copy(out, Path(os.environ["EMSEG_SCREENSHOTS"]) / out.name)
