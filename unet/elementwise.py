"""Element-wise passes over block tensors, where they live: torch kernels on a GPU, numpy on the CPU.

Why numpy on the CPU: torch's CPU kernels for these passes allocate their results and fan out to
its intra-op thread pool, which measured 2-5x slower on the 2-core machine while the engine's
reader and writer threads compete for the cores; numpy works in place, single-threaded, and
releases the GIL, so :func:`each` spreads independent items over the cores instead. All tensors
are (…, y, x) in pixels; probabilities are on the 0..1 scale, quantised to uint8 0..255.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

_STRIP_BYTES = 4 * 1024 * 1024


def quantise_into(dst: torch.Tensor, prob: torch.Tensor, scale: float | torch.Tensor = 255.0) -> None:
    """``dst`` (uint8) ← round(clamp(prob × scale, 0, 255)), rounding half to even as ``np.rint``.

    On the CPU the same arithmetic runs through numpy in place: torch's CPU kernels for these
    element-wise passes allocate and fan out to its intra-op thread pool, which measured 2-5x
    slower on the 2-core machine while reader and writer threads compete for the cores.
    """
    if dst.device.type == "cpu":
        factor = scale.numpy() if isinstance(scale, torch.Tensor) else np.float32(scale)
        d, p = dst.numpy(), prob.numpy()
        for z in range(d.shape[0]) if d.ndim == 3 else [None]:
            _quantise_rows(d if z is None else d[z], p if z is None else p[z], factor)
        return
    q = torch.mul(prob, scale)
    dst.copy_(q.clamp_(0, 255).round_())


def _quantise_rows(d: np.ndarray, p: np.ndarray, factor: np.ndarray | np.float32) -> None:
    """The CPU quantisation of one (y, x) plane, in strips of rows (``_STRIP_BYTES``) that stay in
    the shared cache: the four passes then cost one trip to memory (whole-plane passes made
    quantising half of the CPU engine's time). Why 4 MiB and not a core's 256 KiB: :func:`each`
    quantises a block's tiles on two threads, and with small strips their hundreds of short numpy
    calls per tile contend for the GIL; measured on the 2-core machine, one default block
    (4 tiles of 2560²) took 35 ms at 256 KiB and 29 ms at 1-4 MiB (medians of 45 runs)."""
    rows = max(1, _STRIP_BYTES // max(1, 4 * p.shape[1]))
    tmp = np.empty((min(rows, p.shape[0]), p.shape[1]), np.float32)
    for r0 in range(0, p.shape[0], rows):
        r1 = min(r0 + rows, p.shape[0])
        t = tmp[: r1 - r0]
        np.multiply(p[r0:r1], factor[r0:r1] if isinstance(factor, np.ndarray) else factor, out=t)
        np.clip(t, 0, 255, out=t)
        np.rint(t, out=t)
        np.copyto(d[r0:r1], t, casting="unsafe")  # exact integers in 0..255: the cast loses nothing


def load_tile(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst`` (float32) ← ``src`` (any dtype), converting as it copies (numpy on the CPU, see above)."""
    if dst.device.type == "cpu":
        np.copyto(dst.numpy(), src.numpy(), casting="unsafe")
    else:
        dst.copy_(src)


def rescale(x: torch.Tensor, scale: float, offset: float) -> None:
    """``x`` ← ``x`` × scale + offset in place."""
    if x.device.type == "cpu":
        a = x.numpy()
        np.multiply(a, np.float32(scale), out=a)
        np.add(a, np.float32(offset), out=a)
    else:
        x.mul_(scale).add_(offset)


def accumulate(acc: torch.Tensor, pred: torch.Tensor, window: torch.Tensor) -> None:
    """``acc`` += ``pred`` × ``window`` in place."""
    if acc.device.type == "cpu":
        a = acc.numpy()
        a += pred.numpy() * window.numpy()
    else:
        acc.addcmul_(pred, window)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device`` without waiting for the copy: through pinned memory on CUDA
    (a copy from pageable memory synchronises the host with the device; block geometries first met
    mid-run would do so), a view on the CPU."""
    host = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


_NUMPY_DTYPES = {torch.uint8: np.uint8, torch.float32: np.float32}


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor; on the CPU backed by numpy's allocator. Why: torch's CPU allocator
    hands back freshly mapped pages for every large tensor (measured: 5,300 page faults for each
    22 MB block output, 10-20 ms of kernel time a block on the 2-core machine), while numpy's
    allocation comes from glibc's heap, which keeps freed pages mapped
    (:func:`unet.streaming.keep_freed_memory_for_reuse`)."""
    if device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(tuple(shape), _NUMPY_DTYPES[dtype]))
    return torch.empty(tuple(shape), dtype=dtype, device=device)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def each(device: torch.device, fn: Callable[..., None], items: Sequence[tuple[Any, ...]]) -> None:
    """``fn(*item)`` for every item: in order on a GPU (the calls only queue kernels); on the CPU
    spread over one thread per core (numpy releases the GIL), so one block's element-wise work
    uses every core, not only the thread that drives the pipeline. Items must touch disjoint memory."""
    global _POOL
    if device.type != "cpu" or len(items) < 2:
        for item in items:
            fn(*item)
        return
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(min(8, os.cpu_count() or 1), "emseg-tiles")
    for f in [_POOL.submit(fn, *item) for item in items]:
        f.result()


def row_parts(n: int, parts: int) -> list[slice]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
