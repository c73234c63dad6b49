"""A replaced training run leaves nothing of the run it replaces (issue 14: stale scores on re-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage.files import read_jsonl
from tests.unet.test_train import TINY, make_training_set, make_validation
from unet.checkpoint import load_checkpoint
from unet.train import TrainConfig, ValidationData, train


class Killed(Exception):
    pass


def test_replaced_run_starts_its_log_afresh_and_drops_old_checkpoints(tmp_path: Path) -> None:
    ts = make_training_set(tmp_path / "set.zarr")
    image, labels = make_validation(tmp_path)
    val = ValidationData.from_volumes(image, labels, (0, 2))
    run = tmp_path / "run"
    cfg = TrainConfig(steps=4, batch_size=2, crop=32, warmup_steps=1, val_every=2, log_every=1,
                      loader_threads=1)
    train(ts, val, str(run), TINY, cfg)
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "val"] == [2, 4]

    # The replacement is killed before its first validation: no file may still hold the old run.
    def kill_at_1(step: int, total: int, **_: Any) -> None:
        raise Killed

    with pytest.raises(Killed):
        train(ts, val, str(run), TINY, cfg.model_copy(update={"steps": 3, "val_every": 3}),
              overwrite=True, progress=kill_at_1)
    records = read_jsonl(run / "metrics.jsonl")
    assert records[0] == {"kind": "start", "step": 0}
    assert all(r["kind"] != "val" and r.get("step", 0) <= 1 for r in records)
    assert not (run / "checkpoint-best.pt").exists() and not (run / "checkpoint-last.pt").exists()

    result = train(ts, val, str(run), TINY, cfg.model_copy(update={"steps": 3, "val_every": 3}),
                   overwrite=True)
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["kind"] for r in records].count("start") == 1
    assert [r["step"] for r in records if r["kind"] == "val"] == [3]
    best = load_checkpoint(run / "checkpoint-best.pt")
    assert best["step"] == 3 and best["extra"]["metrics"]["v_rand"] == result.best_metrics["v_rand"]
