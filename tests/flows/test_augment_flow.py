"""The augment flow end to end on tiny synthetic volumes (one temporary Prefect server)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from storage.dataset import open_training_set, resume_training_set
from storage.errors import ShapeMismatchError, StoreExistsError, StoreNotFoundError
from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume
from storage.workspace import Workspace
from unet.augment import AugmentConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CONFIG = AugmentConfig(max_displacement_px=6.0)


def write_volume(path, data, kind):
    writer = create_volume(path, data.shape, data.dtype, (50.0, 4.0, 4.0), kind=kind)
    writer.write(0, data)
    writer.mark_complete()


@pytest.fixture
def workspace(tmp_path):
    ws = Workspace(str(tmp_path / "ws"))
    block = generate_volume(SyntheticSpec(shape=(4, 128, 128), cell_yx=32, seed=5))
    write_volume(ws.volume("em"), block.image, "image")
    write_volume(ws.labels("em"), block.labels, "label")
    write_volume(ws.labels("short"), block.labels[:, :100], "label")
    return ws


def run(ws, **kw):
    from flows.augment import augment_flow

    args = dict(image="em", labels="em", dataset="train", workspace=ws.root, slices="0-2",
                n_samples=10, root_seed=3, config=CONFIG, group_size=4)
    args.update(kw)
    return augment_flow(**args)


def test_generate_resume_and_rerun(prefect_server, workspace):
    ws = workspace
    result = run(ws, preview=True)
    assert result.n_samples == 10 and result.groups_written == 3
    assert result.dataset == ws.dataset("train")
    ts = open_training_set(ws.dataset("train"))
    assert ts.attrs["sources"]["slices"] == [0, 1, 2]
    assert ts.attrs["params"]["root_seed"] == 3
    assert AugmentConfig.model_validate(ts.attrs["params"]["augment"]) == CONFIG
    assert set(np.unique(ts.label[:])) <= {0, 255}
    assert float(ts.weight[:].max()) > 1.0  # border weights present
    assert os.path.getsize(result.preview) > 1000
    saved = [ts.image[:], ts.label[:], ts.weight[:]]

    assert run(ws).groups_written == 0  # finished: nothing to do

    # Simulate an interrupted run: group 1 lost and the set not marked complete.
    group = zarr.open_group(ws.dataset("train"), mode="r+")
    group["image"][4:8] = 0
    group["done"][1] = 0
    group.attrs["emseg"] = {**group.attrs["emseg"], "complete": False}
    assert run(ws, group_size=2).groups_written == 1  # the stored grouping wins
    ts = open_training_set(ws.dataset("train"))
    for a, b in zip(saved, [ts.image[:], ts.label[:], ts.weight[:]], strict=True):
        assert a.tobytes() == b.tobytes()

    with pytest.raises(StoreExistsError, match="other inputs or parameters"):
        run(ws, root_seed=4)
    # overwrite=True replaces it with the new seed
    assert run(ws, root_seed=4, overwrite=True).groups_written == 3
    assert not np.array_equal(resume_training_set(ws.dataset("train")).image[:], saved[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"labels": "missing"}, StoreNotFoundError, "no volume at"),
        ({"labels": "short"}, ShapeMismatchError, "has shape"),
        ({"slices": "2-4"}, ValueError, "out of range"),
        ({"slices": "3-1"}, ValueError, "backwards"),
        ({"config": AugmentConfig(max_displacement_px=20)}, ValueError, "would fold"),
        ({"n_samples": 0}, ValueError, "n_samples"),
    ],
)
def test_bad_input_is_refused_and_nothing_written(prefect_server, workspace, kwargs, error, message):
    with pytest.raises(error, match=message):
        run(workspace, dataset="bad", **kwargs)
    assert not os.path.exists(workspace.dataset("bad"))


def test_cli_augment_with_preview(prefect_server, workspace):
    from flows.cli import app

    res = CliRunner().invoke(app, ["augment", "--image", "em", "--labels", "em", "--dataset", "cli",
                                   "--workspace", workspace.root, "--slices", "1-3", "--n-samples", "3",
                                   "--config", json.dumps({"mode": "affine", "max_displacement_px": 5}),
                                   "--preview"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["n_samples"] == 3
    assert os.path.exists(f"{workspace.report_dir('cli')}/augment-preview.png")
    assert open_training_set(workspace.dataset("cli")).attrs["params"]["augment"]["mode"] == "affine"
