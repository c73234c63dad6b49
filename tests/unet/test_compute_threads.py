"""How many blocks the CPU engine computes at once: one for a model (torch spreads each forward pass
over the cores itself), one per core (at most 2) for a predictor that computes single-threaded; and
how many tiles a CPU forward pass holds: one unless configured."""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from storage.volume import open_volume
from unet.inference import InferConfig, infer_volume

from .test_inference import make_volume


class _Overlap:
    """x / 255, holding each call 30 ms, recording the most calls in progress at once."""

    device = torch.device("cpu")
    counts: dict[bool, int] = {}

    def __init__(self, single_threaded: bool) -> None:
        self.single_threaded = single_threaded
        self._lock, self._active = threading.Lock(), 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self._active += 1
            _Overlap.counts[self.single_threaded] = max(_Overlap.counts.get(self.single_threaded, 0),
                                                         self._active)
        time.sleep(0.03)
        with self._lock:
            self._active -= 1
        return batch / 255


def test_blocks_at_once_follow_the_predictor(tmp_path: Path) -> None:
    src = make_volume(tmp_path / "in.zarr", (4, 32, 32))
    data = open_volume(src).read(slice(None))
    cfg = InferConfig(tile=(16, 16), overlap=(4, 4), halo=(0, 4, 4), block_shape=(1, 16, 16),
                      chunks=(1, 8, 8), batch_size=8, device="cpu")
    for single in (False, True):
        out = tmp_path / f"pred-{single}.zarr"
        infer_volume(src, str(out), functools.partial(_Overlap, single), "overlap", cfg)
        np.testing.assert_array_equal(open_volume(out).read(slice(None)), data)
    assert _Overlap.counts[False] == 1  # a model: one block at a time
    assert _Overlap.counts[True] == min(2, os.cpu_count() or 1)
    assert cfg.model_copy(update={"compute_threads": 3}).compute_threads_for("cpu") == 3  # as configured
    assert cfg.compute_threads_for("cuda", single_threaded=True) == 1


class _BatchSizes:
    """x / 255, recording the number of tiles of every forward pass."""

    device = torch.device("cpu")
    seen: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        _BatchSizes.seen.append(int(batch.shape[0]))
        return batch / 255


def test_cpu_passes_hold_one_tile_unless_configured(tmp_path: Path) -> None:
    src = make_volume(tmp_path / "in.zarr", (2, 32, 32))
    data = open_volume(src).read(slice(None))
    cfg = InferConfig(tile=(16, 16), overlap=(4, 4), halo=(0, 4, 4), block_shape=(1, 32, 32),
                      chunks=(1, 8, 8), device="cpu")  # 9 tiles a block
    for batch, expect in ((0, {1}), (4, {4, 1})):  # automatic: one; 4 as configured (9 = 4 + 4 + 1)
        _BatchSizes.seen = []
        out = tmp_path / f"pred-{batch}.zarr"
        infer_volume(src, str(out), _BatchSizes, "sizes", cfg.model_copy(update={"batch_size": batch}))
        np.testing.assert_array_equal(open_volume(out).read(slice(None)), data)
        assert set(_BatchSizes.seen) == expect
        assert sum(_BatchSizes.seen) == 2 * 9
    assert cfg.batch_size_for("cpu") == 1 and cfg.batch_size_for("cuda") == 2
