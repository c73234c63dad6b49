"""With no Prefect server configured, the CLI runs stages in-process: fast, and fast to refuse.

Each command runs in a subprocess, as a user runs it, with ``PREFECT_API_URL`` unset; a
small wrapper reports which heavy packages the command imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.storage.tiff_factory import write_kind

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ("import json, sys\n"
           "from flows.cli import main\n"
           "sys.argv = ['emseg', *sys.argv[1:]]\n"
           "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
           "top = {m.split('.')[0] for m in sys.modules}\n"
           "heavy = sorted({'prefect', 'torch', 'dask', 'distributed'} & top)\n"
           "print('HEAVY=' + json.dumps(heavy), file=sys.stderr)\n"
           "sys.exit(code)\n")
# Generous for a loaded CI machine; the figure on an idle one is well under 2 s (printed with -s).
BOUND_S = 6.0


def _emseg(*args: str) -> tuple[subprocess.CompletedProcess[str], float, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    seconds = time.perf_counter() - t0
    heavy = json.loads(out.stderr.rsplit("HEAVY=", 1)[1].splitlines()[0])
    print(f"emseg {args[0]}: exit {out.returncode} in {seconds:.2f} s, heavy imports {heavy}")
    return out, seconds, heavy


def test_missing_and_corrupt_inputs_are_reported_in_seconds_with_nothing_heavy_imported(tmp_path):
    ws = str(tmp_path / "ws")
    out, seconds, heavy = _emseg("ingest", str(tmp_path / "missing.tif"), "--workspace", ws, "--name", "m")
    assert out.returncode == 2 and "emseg: error:" in out.stderr and "missing.tif" in out.stderr
    assert "Traceback" not in out.stderr and seconds < BOUND_S and heavy == []
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x07" * 64)
    out, seconds, heavy = _emseg("ingest", str(tmp_path / "bad.tif"), "--workspace", ws, "--name", "b")
    assert out.returncode == 2 and "bad.tif" in out.stderr and seconds < BOUND_S and heavy == []
    assert not (tmp_path / "ws" / "volumes").exists() or not os.listdir(tmp_path / "ws" / "volumes")
    out, seconds, heavy = _emseg("infer", "nowhere", "--model", str(tmp_path / "none.pt"), "--workspace", ws)
    assert out.returncode == 2 and "nowhere" in out.stderr and seconds < BOUND_S and heavy == []


def test_ingest_runs_in_process_without_prefect(tmp_path):
    data = (np.arange(5 * 64 * 64) % 251).astype(np.uint8).reshape(5, 64, 64)
    src = write_kind("multipage", data, tmp_path / "in")
    out, seconds, heavy = _emseg("ingest", src, "--workspace", str(tmp_path / "ws"), "--name", "v",
                                 "--voxel-size", "30", "4", "4")
    assert out.returncode == 0, out.stderr
    assert f"image: {tmp_path / 'ws' / 'volumes' / 'v.zarr'} (create)" in out.stdout
    assert "prefect" not in heavy and "torch" not in heavy
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["image"]["shape"] == [5, 64, 64] and result["labels"] is None
    again, _, _ = _emseg("ingest", src, "--workspace", str(tmp_path / "ws"), "--name", "v",
                         "--voxel-size", "30", "4", "4")
    assert again.returncode == 0 and "(reuse)" in again.stdout
