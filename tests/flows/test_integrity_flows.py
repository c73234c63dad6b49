"""Issue 16 through the flows: a nightly run that finds a stack's outputs already made counts
it done (item 1), and ``emseg evaluate`` refuses to replace a report of other inputs (item 5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from storage.errors import StoreExistsError
from storage.runs import mark_run_complete
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume
from storage.workspace import Workspace
from tests.crash.inputs import untrained_checkpoint
from unet.infer_config import InferConfig

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

CFG = InferConfig(tile=(32, 32), overlap=(8, 8), halo=(0, 8, 8), block_shape=(2, 32, 32), chunks=(1, 32, 32),
                  batch_size=4)


def test_nightly_counts_a_stack_whose_outputs_another_run_made_as_done(tmp_path: Path) -> None:
    from flows.nightly import NightlyParams, nightly_flow

    ws, inbox = tmp_path / "ws", tmp_path / "inbox"
    inbox.mkdir()
    tifffile.imwrite(inbox / "a.tif", generate_volume(SyntheticSpec(shape=(3, 48, 40), seed=1)).image,
                    photometric="minisblack")
    run = ws / "models" / "r1"
    run.mkdir(parents=True)
    untrained_checkpoint(run / "checkpoint-best.pt")
    mark_run_complete(run)
    params = NightlyParams(inbox=str(inbox), workspace=str(ws), settle_s=0, infer=CFG)

    first = nightly_flow(params)
    assert len(first["processed"]) == 1 and not first["failed"], first["failed"]
    prediction = Path(first["processed"][0]["prediction"])
    made = os.stat(prediction / "zarr.json").st_mtime_ns
    # A second run that loaded the ledger before the first recorded the stack (two runs at once).
    os.remove(ws / "nightly" / "processed.json")
    second = nightly_flow(params)
    assert not second["failed"], second["failed"]
    assert [p["name"] for p in second["processed"]] == [first["processed"][0]["name"]]
    assert os.stat(prediction / "zarr.json").st_mtime_ns == made  # found current, not made again
    ledger = json.loads((ws / "nightly" / "processed.json").read_text())["stacks"]
    assert [e["status"] for e in ledger.values()] == ["done"]


def test_evaluate_refuses_a_report_of_other_inputs(tmp_path: Path) -> None:
    from flows.evaluate import evaluate_flow

    ws = Workspace(str(tmp_path))
    vol = generate_volume(SyntheticSpec(shape=(2, 32, 32), seed=3))
    prob = ((vol.labels == 0) * 255).astype(np.uint8)
    volumes = ((ws.prediction("a"), prob, "prediction"), (ws.prediction("b"), 255 - prob, "prediction"),
               (ws.labels("a"), vol.labels, "label"))
    for path, data, kind in volumes:
        w = create_volume(path, data.shape, np.uint8, (50, 4, 4), kind=kind)  # type: ignore[arg-type]
        w.write(0, data)
        w.mark_complete()
    evaluate_flow(workspace=str(tmp_path), prediction="a", labels="a", run="r")
    evaluate_flow(workspace=str(tmp_path), prediction="a", labels="a", run="r")  # same inputs: made again
    report = Path(ws.report_dir("r")) / "metrics.json"
    before = report.read_bytes()
    with pytest.raises(StoreExistsError, match=r"made from other inputs .*--overwrite"):
        evaluate_flow(workspace=str(tmp_path), prediction="b", labels="a", run="r")
    assert report.read_bytes() == before
    evaluate_flow(workspace=str(tmp_path), prediction="b", labels="a", run="r", overwrite=True)
    assert json.loads(report.read_text())["prediction"] == ws.prediction("b")
