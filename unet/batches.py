"""Batches of a training set: batch ``s`` a pure function of (seed, s), prepared ahead in threads."""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from storage.dataset import TrainingSet
from storage.errors import ShapeMismatchError
from unet.labels import Polarity, check_labels, membrane_mask
from unet.train_config import TrainConfig

# Above this many bytes the training set is read from zarr per batch instead of held in memory.
IN_MEMORY_LIMIT = 8 * 2**30


class BatchSource:
    """Batches of the training set; batch ``s`` depends only on (seed, s).

    Returns float32 image (B, 1, h, w) scaled to [0, 1], membrane target (B, h, w) in {0, 1}
    and weight (B, h, w), pinned when ``pin`` so the copy to the GPU can be asynchronous.
    """

    def __init__(self, ts: TrainingSet, cfg: TrainConfig, polarity: Polarity, pin: bool) -> None:
        self.cfg, self.polarity, self.pin = cfg, polarity, pin
        n, h, w = ts.image.shape
        if n < 1:
            raise ValueError(f"training set {ts.path} is empty")
        for name, arr in (("label", ts.label), ("weight", ts.weight)):
            if arr.shape != ts.image.shape:
                raise ShapeMismatchError(f"training set {ts.path}: {name} shape {arr.shape} "
                                         f"differs from image shape {ts.image.shape}")
        self.n, self.size = n, (h, w)
        if cfg.crop is not None and cfg.crop > min(h, w):
            raise ValueError(f"crop {cfg.crop} is larger than the training samples ({h}x{w})")
        nbytes = n * h * w * 4
        if nbytes <= IN_MEMORY_LIMIT:
            # Zarr chunks hold a whole group of samples: reading samples one by one would
            # decode each chunk many times, so small sets are read once.
            self.image: Any = np.asarray(ts.image[:])
            self.label: Any = np.asarray(ts.label[:])
            self.weight: Any = np.asarray(ts.weight[:])
            check_labels(self.label, polarity, f"training set {ts.path} labels")
        else:
            self.image, self.label, self.weight = ts.image, ts.label, ts.weight
            check_labels(np.asarray(ts.label[: ts.group_size]), polarity, f"training set {ts.path} labels")

    def batch(self, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, self.n, cfg.batch_size)
        h, w = self.size
        c = cfg.crop
        imgs, tgts, wts = [], [], []
        for i in idx:
            y0 = int(rng.integers(0, h - c + 1)) if c else 0
            x0 = int(rng.integers(0, w - c + 1)) if c else 0
            ys, xs = slice(y0, y0 + c) if c else slice(None), slice(x0, x0 + c) if c else slice(None)
            img, lab = np.asarray(self.image[int(i), ys, xs]), np.asarray(self.label[int(i), ys, xs])
            wt = np.asarray(self.weight[int(i), ys, xs], dtype=np.float32)
            if cfg.flips:
                k, flip = int(rng.integers(4)), bool(rng.integers(2))
                img, lab, wt = (_dihedral(a, k, flip) for a in (img, lab, wt))
            imgs.append(img)
            tgts.append(membrane_mask(lab, self.polarity))
            wts.append(wt)
        image = torch.from_numpy(np.stack(imgs)[:, None].astype(np.float32) / 255.0)
        target = torch.from_numpy(np.stack(tgts).astype(np.float32))
        weight = torch.from_numpy(np.stack(wts))
        if not cfg.use_border_weights:
            weight = torch.ones_like(weight)
        if self.pin:
            image, target, weight = image.pin_memory(), target.pin_memory(), weight.pin_memory()
        return image, target, weight


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k)
    return np.ascontiguousarray(a[:, ::-1] if flip else a)


def prefetched(source: BatchSource, seed: int, steps: range, threads: int,
               ahead: int) -> Generator[tuple[torch.Tensor, torch.Tensor, torch.Tensor], None, None]:
    """Yield the batches of ``steps`` in order, preparing up to ``ahead`` of them in threads
    (numpy, zarr decoding and pinning release the GIL, so threads overlap with the GPU)."""
    with ThreadPoolExecutor(threads, thread_name_prefix="emseg-batches") as pool:
        pending: list[Future[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        it = iter(steps)
        for s in it:
            pending.append(pool.submit(source.batch, seed, s))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(source.batch, seed, nxt))
            yield result
