"""``emseg view``: which stores of a workspace become which neuroglancer layers (no browser).

The servers and the headless screenshot are tested in ``tests/e2e/test_view.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.view import PROBABILITY_SHADER, Store, find_stores, label_shader, viewer_state
from storage.errors import IncompleteStoreError, StoreNotFoundError
from storage.volume import create_volume
from storage.workspace import Workspace

VOXEL = (40.0, 4.0, 4.0)


def make_view_workspace(root: Path, shape: tuple[int, int, int] = (4, 64, 64), pyramid_levels: int = 1
                        ) -> Workspace:
    """A workspace with one of each store ``emseg view`` shows, all named ``demo``: a synthetic
    EM volume, its membrane labels, a blurred-membrane "prediction" and its segmentation."""
    from scipy import ndimage

    from storage.synthetic import SyntheticSpec, generate_volume
    from storage.volume import build_pyramid
    from unet.segment_config import SegmentConfig
    from unet.segment_run import segment_blockwise

    ws = Workspace(str(root))
    block = generate_volume(SyntheticSpec(shape=shape, seed=1, cell_yx=24.0))
    membrane = ndimage.gaussian_filter((block.labels == 0).astype(np.float32), (0, 1.0, 1.0))
    probability = np.clip(membrane * 400, 0, 255).astype(np.uint8)
    for path, data, kind, attrs in (
            (ws.volume("demo"), block.image, "image", {}),
            (ws.labels("demo"), block.labels, "label", {"label_polarity": "zero_is_membrane"}),
            (ws.prediction("demo"), probability, "prediction", {})):
        writer = create_volume(path, shape, data.dtype, VOXEL, kind=kind, pyramid_levels=pyramid_levels,  # type: ignore[arg-type]
                               attrs=attrs)
        writer.write(0, data)
        build_pyramid(writer, method="nearest" if kind == "label" else "mean")
        writer.mark_complete()
    segment_blockwise(ws.prediction("demo"), ws.segmentation("demo"),
                      SegmentConfig(block_shape=(2, 32, 32), halo=(8, 8), pyramid_levels=pyramid_levels))
    return ws


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return make_view_workspace(tmp_path_factory.mktemp("view") / "ws")


def _sources(stores: list[Store]) -> dict[str, str]:
    return {s.path: f"zarr3://http://127.0.0.1:1/t/{s.layer}.zarr/" for s in stores}


def test_a_workspace_gives_one_layer_per_finished_store_in_drawing_order(workspace: Workspace) -> None:
    create_volume(workspace.prediction("unfinished"), (2, 16, 16), np.uint8, VOXEL, kind="prediction")
    stores, notes = find_stores([workspace.root])
    assert [(s.layer, s.kind) for s in stores] == [
        ("volumes/demo", "image"), ("predictions/demo", "prediction"),
        ("segmentations/demo", "segmentation"), ("labels/demo", "label")]
    assert [s.levels for s in stores] == [2, 2, 2, 2]
    assert stores[2].dtype == "uint32" and stores[0].shape == (4, 64, 64) and stores[0].voxel_size == VOXEL
    assert len(notes) == 1 and "unfinished.zarr" in notes[0] and "unfinished" in notes[0]
    assert all(s.root == str(Path(workspace.root).resolve()) for s in stores)


def test_stores_given_by_path_and_by_name(workspace: Workspace) -> None:
    stores, _ = find_stores([workspace.segmentation("demo"), workspace.volume("demo")])
    # Drawn images first whatever the order given; each store served from its own folder.
    assert [s.layer for s in stores] == ["volumes/demo", "segmentations/demo"]
    assert stores[0].root.endswith("volumes") and stores[1].root.endswith("segmentations")
    stores, _ = find_stores([workspace.root], names=["demo"])
    assert len(stores) == 4
    with pytest.raises(StoreNotFoundError, match="named other .found: demo"):
        find_stores([workspace.root], names=["other"])


def test_bad_targets_are_refused_with_the_path(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="neither a workspace"):
        find_stores([str(tmp_path)])
    path = workspace.prediction("half-written")
    create_volume(path, (2, 16, 16), np.uint8, VOXEL, kind="prediction")
    with pytest.raises(IncompleteStoreError, match="half-written"):
        find_stores([path])


def test_viewer_state_layers_shaders_and_geometry(workspace: Workspace) -> None:
    stores, _ = find_stores([workspace.root])
    sources = _sources(stores)
    state = viewer_state(stores, sources, size=(640, 400)).to_json()

    layers = {layer["name"]: layer for layer in state["layers"]}
    assert [layer["type"] for layer in state["layers"]] == ["image", "image", "segmentation", "image"]
    for store in stores:
        assert layers[store.layer]["source"] in (sources[store.path], [{"url": sources[store.path]}])
    assert layers["predictions/demo"]["shader"] == PROBABILITY_SHADER
    assert layers["labels/demo"]["shader"] == label_shader("zero_is_membrane")
    assert layers["labels/demo"]["visible"] is False  # ground truth starts hidden
    assert "visible" not in layers["segmentations/demo"]
    assert layers["segmentations/demo"]["selectedAlpha"] == pytest.approx(0.4)
    assert state["selectedLayer"]["layer"] == "segmentations/demo"
    # Display axes x, y, z in metres (neuroglancer's unit) at the voxel size, centred, 64 px in 400 px.
    assert state["dimensions"] == {"x": [4e-09, "m"], "y": [4e-09, "m"], "z": [4e-08, "m"]}
    assert state["position"] == [32.0, 32.0, 2.5]
    assert state["crossSectionScale"] == pytest.approx(1.02 * 64 / 400)
    assert state["layout"] == "xy"

    state = viewer_state(stores, sources, z=0, layout="4panel", size=(640, 400)).to_json()
    assert state["position"][2] == 0.5 and state["layout"] == "4panel"
    assert state["crossSectionScale"] == pytest.approx(1.02 * 64 / 200)
    with pytest.raises(ValueError, match="z must be a slice index in .0, 4., got 4"):
        viewer_state(stores, sources, z=4)


def test_label_shader_follows_the_polarity() -> None:
    assert "v == 0.0" in label_shader("zero_is_membrane")
    assert "v > 0.0" in label_shader("nonzero_is_membrane")


def test_segmentations_get_a_pyramid_by_default_for_large_planes() -> None:
    from unet.segment_config import SegmentConfig

    assert SegmentConfig().pyramid_levels is None
    assert SegmentConfig().levels_for((4, 512, 512)) == 0
    assert SegmentConfig().levels_for((4, 4096, 3000)) == 2
    assert SegmentConfig(pyramid_levels=1).levels_for((4, 64, 64)) == 1
    assert "pyramid_levels" not in SegmentConfig().identity()  # execution only: resumes either way
