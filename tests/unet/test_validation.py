"""Validation scoring beside training: same scores as scoring inline, in submission order."""

from __future__ import annotations

import numpy as np
import pytest

from unet.metrics import evaluate_membrane
from unet.validation import BackgroundScorer, score_prediction


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    membrane = np.zeros((2, 16, 16), bool)
    membrane[:, :, 8] = True
    noise = np.random.default_rng(seed).random(membrane.shape) * 0.4
    return np.where(membrane, 0.6 + noise, noise).astype(np.float32), membrane


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_scores_come_back_in_order_and_equal_inline_scores(mode: str) -> None:
    cases = [_case(seed) for seed in range(3)]
    with BackgroundScorer(mode) as scorer:  # type: ignore[arg-type]
        for i, (prob, membrane) in enumerate(cases):
            scorer.submit(prob, membrane, (0.3, 0.5, 0.7), tag=i)
        results = list(scorer.drain())
        assert scorer.n_pending == 0
    assert [tag for tag, _ in results] == [0, 1, 2]
    for (_, scores), (prob, membrane) in zip(results, cases, strict=True):
        expected = evaluate_membrane(prob, membrane, (0.3, 0.5, 0.7))
        assert scores == {k: v for k, v in expected.items() if k not in ("per_threshold", "thresholds")}
    assert score_prediction(*cases[0], (0.5,))["v_rand_threshold"] == 0.5


def test_errors_reach_the_collector() -> None:
    with BackgroundScorer("thread") as scorer:
        scorer.submit(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool), (0.5,), tag="bad")
        with pytest.raises(ValueError, match="differs"):
            list(scorer.drain())
    with pytest.raises(ValueError, match="scoring mode"):
        BackgroundScorer("gpu")  # type: ignore[arg-type]
