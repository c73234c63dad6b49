"""augment and train default to the volume's own split, not ISBI's 0-19 / 20-29 (issue 14)."""

from __future__ import annotations

import numpy as np

from storage.synthetic import SyntheticSpec, generate_volume
from storage.volume import create_volume
from storage.workspace import Workspace
from tasks.split import volume_split
from unet.augment import AugmentConfig
from unet.augment_stage import AugmentStageConfig, plan_augment
from unet.split import SliceSplit


def test_a_16_slice_volume_defaults_to_its_own_split(tmp_path):
    ws = Workspace(str(tmp_path / "ws"))
    block = generate_volume(SyntheticSpec(shape=(16, 64, 64), seed=3, cell_yx=20.0))
    volumes = ((ws.volume("em"), block.image, "image"), (ws.labels("em"), block.labels, "label"))
    for path, data, kind in volumes:
        w = create_volume(path, data.shape, np.uint8, (40, 4, 4), kind=kind)  # type: ignore[arg-type]
        w.write(0, data)
        w.mark_complete()
    assert volume_split(ws.root, "em") == SliceSplit("0-10", "11-15")
    plan = plan_augment(ws, "em", "em", "set", AugmentStageConfig(
        n_samples=8, group_size=4, augment=AugmentConfig(max_displacement_px=3.0)))
    assert plan.slices == tuple(range(11)) and plan.attrs["sources"]["split"] == {"train": "0-10"}
