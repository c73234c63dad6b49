"""The streaming pipeline: reads, host↔device copies, compute and writes of blocks, overlapped.

::

    reader threads           compute thread (owns the device)             writer threads
    read block n+2  ──▶  upload n+1 (copy stream) ─┐                      wait for n-1's copy,
    (decode, mirror pad,     compute n (default stream: tiles, model,    write shard n-1,
     pinned copy)            blend, quantise; never waits)  ──▶ download n (copy stream,
                                                             pinned, event) ──▶ mark it done

At most ``prefetch`` blocks are read ahead and ``write_threads`` finished blocks wait for a
writer, so at most ``prefetch + 1 + write_threads`` blocks are alive at once whatever the
volume size: host memory is bounded by the block size, device memory by the batch size and
one block in and out. The compute thread only enqueues work on the device; the writer that
takes a block waits on that block's own copy event, so nothing synchronises per batch.
On the CPU the same code runs with the copies reduced to views (``torch.from_numpy``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from unet.blocks import Block

R = TypeVar("R")
C = TypeVar("C")


@dataclass
class InFlightMeter:
    """Counts blocks (and their bytes) alive between read and write; keeps the maxima.

    Instrumentation for the bounded-memory guarantee: tests assert the maxima stay under
    the configured bound on a volume many times larger.
    """

    blocks: int = 0
    bytes: int = 0
    max_blocks: int = 0
    max_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def enter(self, nbytes: int) -> None:
        with self._lock:
            self.blocks += 1
            self.bytes += nbytes
            self.max_blocks = max(self.max_blocks, self.blocks)
            self.max_bytes = max(self.max_bytes, self.bytes)

    def leave(self, nbytes: int) -> None:
        with self._lock:
            self.blocks -= 1
            self.bytes -= nbytes


def block_bytes(block: Block, in_itemsize: int = 1) -> int:
    """Host bytes one in-flight block holds at most: padded input (and its pinned copy), uint8 output."""
    padded = int(np.prod(block.padded_shape))
    return 2 * padded * in_itemsize + block.write.size


def stream_blocks(blocks: Iterable[Block], read: Callable[[Block], R], compute: Callable[[Block, R], C],
                  write: Callable[[Block, C], None], *, prefetch: int = 2, read_threads: int = 2,
                  write_threads: int = 2, compute_threads: int = 1, meter: InFlightMeter | None = None,
                  on_done: Callable[[Block], None] | None = None) -> int:
    """Read → compute → write every block, overlapping the three; returns the blocks written.

    ``read`` runs in a reader thread; ``compute`` in the calling thread (the one that drives
    the device) or, with ``compute_threads`` > 1 (CPU engines), in that many threads at once;
    ``write`` in a writer thread. At most ``prefetch`` reads, ``compute_threads`` computations
    and ``write_threads`` writes are outstanding. The first error from any stage is raised.
    Blocks may finish out of order (each is written and recorded on its own).
    """
    meter = meter or InFlightMeter()
    it = iter(blocks)
    reads: deque[tuple[Block, Future[R]]] = deque()
    write_slots = threading.Semaphore(write_threads)
    compute_slots = threading.Semaphore(compute_threads)
    jobs: list[Future[Any]] = []  # writes, or (pooled) computations that queue their write
    written = 0

    def do_write(block: Block, data: C) -> None:
        try:
            write(block, data)
            if on_done is not None:
                on_done(block)
        finally:
            meter.leave(block_bytes(block))
            write_slots.release()

    def queue_write(block: Block, result: C) -> Future[None]:
        write_slots.acquire()  # back-pressure: wait while write_threads blocks are queued
        return writers.submit(do_write, block, result)

    def compute_then_queue(block: Block, data: R) -> Future[None]:
        try:
            return queue_write(block, compute(block, data))
        finally:
            compute_slots.release()

    def reap(all_: bool = False) -> None:
        nonlocal written
        for job in [j for j in jobs if all_ or j.done()]:
            result = job.result()
            if isinstance(result, Future):  # a pooled computation: wait for the write it queued
                result.result()
            jobs.remove(job)
            written += 1

    with ThreadPoolExecutor(read_threads, "emseg-read") as readers, \
            ThreadPoolExecutor(write_threads, "emseg-write") as writers, \
            ThreadPoolExecutor(compute_threads, "emseg-compute") as computers:

        def submit_read() -> None:
            block = next(it, None)
            if block is not None:
                meter.enter(block_bytes(block))
                reads.append((block, readers.submit(read, block)))

        try:
            for _ in range(prefetch):
                submit_read()
            while reads:
                block, fut = reads.popleft()
                data = fut.result()
                submit_read()
                if compute_threads == 1:
                    jobs.append(queue_write(block, compute(block, data)))
                else:
                    compute_slots.acquire()
                    jobs.append(computers.submit(compute_then_queue, block, data))
                del data
                reap()
            reap(all_=True)
        finally:
            for _, fut in reads:
                fut.cancel()
    return written


class DeviceTransfer:
    """Host↔device copies of blocks that never block the compute thread.

    CUDA: :meth:`stage` (reader thread) copies a block into pinned memory; :meth:`upload`
    queues its copy on an upload stream that the compute stream waits for (an event, not the
    host); :meth:`download` queues the result's copy into pinned memory on a download stream
    and returns a function that a writer thread calls to wait for that copy alone. CPU: all
    three are views, so tests run the same path.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._up = torch.cuda.Stream(device)
            self._down = torch.cuda.Stream(device)

    def stage(self, data: np.ndarray) -> torch.Tensor:
        """A host tensor of ``data`` ready for a fast upload (pinned on CUDA, a view on CPU)."""
        host = torch.from_numpy(np.ascontiguousarray(data))
        if not self.cuda:
            return host
        pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        pinned.copy_(host)
        return pinned

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        """The block on the device, ordered before whatever the compute stream queues next."""
        if not self.cuda:
            return host
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._up):
            dev = host.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(self._up)
        compute.wait_event(done)
        dev.record_stream(compute)  # the allocator must not reuse it before compute is done
        return dev

    def download(self, results: Sequence[torch.Tensor]) -> Callable[[], list[np.ndarray]]:
        """Queue the copies of ``results`` to the host; the returned function waits for them and
        gives numpy arrays."""
        if not self.cuda:
            arrays = [r.numpy() for r in results]
            return lambda: arrays
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        self._down.wait_event(ready)
        hosts = []
        with torch.cuda.stream(self._down):
            for result in results:
                host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
                host.copy_(result, non_blocking=True)
                result.record_stream(self._down)
                hosts.append(host)
            copied = torch.cuda.Event()
            copied.record(self._down)

        def wait() -> list[np.ndarray]:
            copied.synchronize()
            return [h.numpy() for h in hosts]

        return wait


_HEAP_TUNED = False


def keep_freed_memory_for_reuse() -> None:
    """Let glibc serve large allocations from its heap and keep them after ``free``.

    By default glibc maps every allocation above 32 MiB (and, until it adapts, above 128 KiB)
    freshly from the kernel and unmaps it on free, so each block's tens of megabytes of
    temporaries cost a page fault per 4 KiB on the next touch: on the 2-core machine that was
    a third of the CPU engine's time. Raising the mmap and trim thresholds (``mallopt``) keeps
    the pages mapped between blocks; memory stays bounded by the blocks in flight. No-op where
    glibc is absent. (Setting MALLOC_MMAP_THRESHOLD_ in the environment would do the same, but
    only before the process starts.)
    """
    global _HEAP_TUNED
    if _HEAP_TUNED:
        return
    _HEAP_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def device_of(predictor: Any) -> torch.device:
    """Where a predictor wants its tiles: its ``device`` attribute, else the CPU."""
    dev = getattr(predictor, "device", None)
    return dev if isinstance(dev, torch.device) else torch.device("cpu")
