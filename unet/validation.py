"""Validation scoring beside training: the training thread predicts, a worker scores.

Scoring a validation prediction (a watershed per slice and threshold, ~11 per slice) costs
seconds of CPU; done on the training thread it stalls the GPU for as long. Here the
training thread hands the predicted probabilities to a worker and trains on; finished
scores are collected in submission order, each with what was handed in with it (the step,
a copy of the weights to save should it be the best)::

    training thread   predict ─▶ submit ─▶ step ─▶ step ─▶ step ─▶ collect ─▶ step ...
    worker                         └──── score (watersheds) ───────┘

``mode``: ``"process"`` (default: a spawned worker process, so the scoring's Python and
Cython code never holds the training thread's GIL), ``"thread"`` (one worker thread: no
start-up cost, shares the GIL) or ``"inline"`` (scored at submission, on the calling thread).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from unet.metrics import evaluate_membrane

ScoringMode = Literal["process", "thread", "inline"]
SCORING_MODES: tuple[ScoringMode, ...] = ("process", "thread", "inline")


def score_prediction(prob: np.ndarray, membrane: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    """Scalar scores of a probability map (Z, H, W) against its membrane mask (see
    :func:`unet.metrics.evaluate_membrane`), without the per-threshold rows and lists."""
    scores = evaluate_membrane(prob, membrane, thresholds)
    return {k: v for k, v in scores.items() if not isinstance(v, list | dict)}


class BackgroundScorer:
    """Scores predictions on one worker; results come back in the order they were submitted.

    Use as a context manager (or call :meth:`close`): on exit, scores not yet collected are
    cancelled or abandoned, and the worker stops.
    """

    def __init__(self, mode: ScoringMode = "process") -> None:
        if mode not in SCORING_MODES:
            raise ValueError(f"scoring mode must be one of {SCORING_MODES}, got {mode!r}")
        self.mode = mode
        self._executor: Executor | None = None
        self._pending: deque[tuple[Future[dict[str, Any]], Any]] = deque()

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.mode == "process":
                # spawn, not fork: the parent holds CUDA state and loader threads, which a
                # forked child must not inherit. The worker imports numpy/scipy/skimage only.
                self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            else:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="emseg-val-scoring")
        return self._executor

    def submit(self, prob: np.ndarray, membrane: np.ndarray, thresholds: Sequence[float],
               tag: Any = None) -> None:
        """Queue ``prob`` (Z, H, W) float32 for scoring against ``membrane`` (Z, H, W) bool;
        ``tag`` comes back with the scores."""
        future: Future[dict[str, Any]]
        if self.mode == "inline":
            future = Future()
            try:
                future.set_result(score_prediction(prob, membrane, tuple(thresholds)))
            except BaseException as e:  # re-raised by collect, like a worker's error
                future.set_exception(e)
        else:
            future = self._pool().submit(score_prediction, prob, membrane, tuple(thresholds))
        self._pending.append((future, tag))

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def ready(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(tag, scores) of the finished scorings at the head of the queue; never waits."""
        while self._pending and self._pending[0][0].done():
            future, tag = self._pending.popleft()
            yield tag, future.result()

    def wait_oldest(self) -> tuple[Any, dict[str, Any]]:
        """(tag, scores) of the oldest queued scoring, waiting for it (IndexError if none)."""
        future, tag = self._pending.popleft()
        return tag, future.result()

    def drain(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(tag, scores) of every queued scoring, in order, waiting for each."""
        while self._pending:
            yield self.wait_oldest()

    def close(self) -> None:
        for future, _ in self._pending:
            future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> BackgroundScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
