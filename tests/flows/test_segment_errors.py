"""``emseg segment`` refuses what it cannot segment, in one line, and writes nothing.

Run as a user runs it (a subprocess, no Prefect server): a float volume (values out of
0..1), a label volume, an existing output without ``--overwrite``, blocks smaller than the
halo. Each exits 2 with the reason on stderr and no traceback; the workspace is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume
from storage.workspace import Workspace
from tests.crash.harness import Commands, tree_digests
from tests.unet.test_segment import synthetic_probability, write_probability

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(str(tmp_path_factory.mktemp("ws")))
    write_probability(Path(ws.prediction("em")), synthetic_probability((2, 64, 64), seed=3))
    floats = np.random.default_rng(0).uniform(-0.5, 4.0, (2, 32, 32)).astype(np.float32)
    labels = generate_volume(SyntheticSpec(shape=(2, 64, 64), seed=3)).labels
    for path, data, kind in ((ws.volume("floats"), floats, "image"), (ws.labels("em"), labels, "label")):
        w = create_volume(path, data.shape, data.dtype, (40.0, 4.0, 4.0), kind=kind)  # type: ignore[arg-type]
        w.write(0, data)
        w.mark_complete()
    return ws


def segment(ws: Workspace, source: str, *extra: str) -> tuple[int, str]:
    out = Commands().run(["segment", source, "--workspace", ws.root, "--block", "2", "64", "64",
                          "--halo", "8", *extra], timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stderr


def everything(ws: Workspace) -> dict[str, str]:
    return tree_digests(Path(ws.root))


@pytest.mark.parametrize("source, extra, message", [
    ("floats", (), "float32, not uint8"),                                    # float data out of 0..1
    ("LABELS", (), "is a label volume, not a membrane probability map"),
    ("em", ("--block", "1", "16", "16", "--halo", "32"), "smaller than the halo"),
    ("em", ("--seed-distance", "8"), "must exceed seed_distance"),
])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(
        ws: Workspace, source: str, extra: tuple[str, ...], message: str) -> None:
    before = everything(ws)
    code, err = segment(ws, ws.labels("em") if source == "LABELS" else source, "--name", "out", *extra)
    assert code == 2 and err.startswith("emseg: error:") and message in err, err
    assert everything(ws) == before and not Path(ws.segmentation("out")).exists()


def test_existing_output_is_kept_without_overwrite(ws: Workspace) -> None:
    code, err = segment(ws, "em", "--name", "kept")
    assert code == 0, err
    before = everything(ws)
    code, err = segment(ws, "em", "--name", "kept", "--threshold", "0.3")
    assert code == 2 and "complete segmentation already" in err and "--overwrite" in err, err
    assert everything(ws) == before
    code, err = segment(ws, "em", "--name", "kept", "--threshold", "0.3", "--overwrite")
    assert code == 0, err
