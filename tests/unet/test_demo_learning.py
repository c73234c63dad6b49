"""The synthetic demo's volume is hard enough to show a model learning (issue 14).

The demo's own volume (:meth:`SyntheticSpec.hard`, its shape and seed) and its model, trained
briefly with :func:`unet.train.train` on slices 0-11 and validated on 12-13 as the demo
validates: V_rand is far below 0.99 before training (and for a plain threshold of the raw
image), and rises with training. About 15 s on an idle 2-core CPU (a minute under load).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flows.demo import SYNTHETIC_SHAPE, demo_params
from storage.dataset import create_training_set
from storage.files import read_jsonl
from storage.synthetic import SyntheticSpec, generate_volume
from unet.train import Trainer, ValidationData, train
from unet.validation import score_prediction

pytestmark = pytest.mark.slow
TRAIN_Z, VAL_Z = (0, 12), (12, 14)


def test_validation_v_rand_starts_below_0_99_and_rises_with_training(tmp_path: Path) -> None:
    vol = generate_volume(SyntheticSpec.hard(shape=SYNTHETIC_SHAPE, seed=1))  # what the demo writes
    (tmp_path / "unused.tif").write_bytes(b"")  # demo_params checks that its inputs exist
    demo = demo_params(str(tmp_path), str(tmp_path / "unused.tif"), str(tmp_path / "unused.tif"))
    # The demo's model and batches; fewer steps, a quicker warm-up, validation scored inline.
    cfg = demo.train.model_copy(update={"steps": 60, "val_every": 20, "warmup_steps": 5, "lr": 5e-3,
                                        "val_scoring": "inline"})
    n, size = TRAIN_Z[1] - TRAIN_Z[0], SYNTHETIC_SHAPE[1:]
    ts = create_training_set(tmp_path / "set.zarr", n, size, group_size=4, attrs={"source": "synthetic"})
    for g in range(n // 4):
        r = ts.group_range(g)
        ts.write_group(g, vol.image[r.start:r.stop], vol.labels[r.start:r.stop],
                       np.ones((len(r), *size), np.float16))
    ts.mark_complete()
    val = ValidationData(vol.image[slice(*VAL_Z)], vol.labels[slice(*VAL_Z)] == 0, {"z": list(VAL_Z)})

    raw = score_prediction((1.0 - val.image / 255.0).astype(np.float32), val.membrane, cfg.val_thresholds)
    assert raw["v_rand"] < 0.9, raw  # dark is not simply membrane: organelles, faint membranes, noise
    untrained = Trainer(demo.unet, cfg, torch.device("cpu")).predict(val.image, cfg.val_batch_size, tta=False)
    step0 = score_prediction(untrained, val.membrane, cfg.val_thresholds)["v_rand"]
    assert step0 < 0.99

    result = train(ts, val, str(tmp_path / "run"), demo.unet, cfg, device="cpu")
    curve = [r["v_rand"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("kind") == "val"]
    print(f"V_rand: raw threshold {raw['v_rand']:.3f}, step 0 {step0:.3f}, steps 20/40/60 "
          f"{', '.join(f'{v:.3f}' for v in curve)}")
    assert len(curve) == 3
    assert result.best_metrics["v_rand"] > step0 + 0.3
    assert curve[-1] > curve[0] and curve[-1] > step0 + 0.3
