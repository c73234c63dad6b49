"""ISBI 2012 scores on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import variation_of_information

from unet.labels import check_labels, membrane_mask
from unet.metrics import (
    DEFAULT_THRESHOLDS,
    evaluate_membrane,
    pixel_scores,
    rand_and_info,
    segment_membrane_map,
)

# Two cells of 2 pixels each; the middle column is truth membrane (label 0, ignored).
TRUTH = np.array([[1, 0, 2],
                  [1, 0, 2]])


def test_perfect_segmentation_scores_one() -> None:
    relabelled = np.where(TRUTH == 1, 7, 9)  # segment ids need not match; membrane pixels ignored
    assert rand_and_info(TRUTH, relabelled) == (1.0, 1.0)


def test_fully_merged() -> None:
    # Pairs: truth has 2 x (2 * 1) ordered same-cell pairs = 4, the merged segment 4 * 3 = 12,
    # shared 4 -> F = 2 * 4 / (4 + 12) = 0.5. I(S;T) = 0 -> V_info = 0.
    v_rand, v_info = rand_and_info(TRUTH, np.ones_like(TRUTH))
    assert v_rand == pytest.approx(0.5)
    assert v_info == pytest.approx(0.0)


def test_fully_split() -> None:
    # No two pixels share a segment: no same-segment pairs -> V_rand = 0.
    # H(T) = log 2, H(S) = log 4, I = log 2 -> V_info = 2 log 2 / (log 2 + log 4) = 2/3.
    split = np.arange(1, TRUTH.size + 1).reshape(TRUTH.shape)
    v_rand, v_info = rand_and_info(TRUTH, split)
    assert v_rand == pytest.approx(0.0)
    assert v_info == pytest.approx(2 * math.log(2) / (math.log(2) + math.log(4)))


def test_v_info_agrees_with_skimage_conditional_entropies() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (20, 20))
    seg = rng.integers(1, 6, (20, 20))
    _, v_info = rand_and_info(truth, seg)
    # skimage works in bits and sums to the variation of information VI = H(T) + H(S) - 2 I.
    vi = sum(variation_of_information(truth, seg, ignore_labels=[0]))
    keep = truth != 0
    h = [-(p * np.log2(p)).sum() for p in (np.unique(a[keep], return_counts=True)[1] / keep.sum()
                                           for a in (truth, seg))]
    mutual = (h[0] + h[1] - vi) / 2
    assert v_info == pytest.approx(2 * mutual / (h[0] + h[1]))


def test_segmentation_grows_into_membrane() -> None:
    prob = np.zeros((5, 7), np.float32)
    prob[:, 3] = 0.9  # a vertical membrane splits two cells
    seg = segment_membrane_map(prob, 0.5)
    assert (seg != 0).all()
    assert len(np.unique(seg[:, :3])) == 1 and len(np.unique(seg[:, 4:])) == 1
    assert seg[0, 0] != seg[0, 6]
    assert (segment_membrane_map(np.ones((4, 4)), 0.5) == 1).all()


def test_evaluate_perfect_and_gap_in_membrane() -> None:
    membrane = np.zeros((2, 16, 16), bool)
    membrane[:, :, 8] = True
    perfect = membrane.astype(np.float32)
    scores = evaluate_membrane(perfect, membrane)
    assert scores["v_rand"] == 1.0 and scores["v_info"] == 1.0
    assert scores["pixel_accuracy_at_half"] == 1.0 and scores["dice_at_half"] == 1.0
    assert scores["iou_at_half"] == 1.0 and scores["isbi_pixel_error"] == 0.0
    leaky = perfect.copy()
    leaky[:, 4, 8] = 0.0  # one missing membrane pixel merges the two cells
    merged = evaluate_membrane(leaky, membrane)
    assert merged["v_rand"] < 0.7 and merged["pixel_accuracy_at_half"] == pytest.approx(1 - 1 / 256)
    assert len(merged["per_threshold"]) == 11


def test_pixel_scores_by_hand() -> None:
    membrane = np.array([[True, True, False, False]])
    prob = np.array([[0.9, 0.2, 0.7, 0.1]])
    s = pixel_scores(prob, membrane, 0.5)  # tp 1, fp 1, fn 1, tn 1
    assert s == {"pixel_accuracy": 0.5, "interior_f_score": 0.5, "dice": 0.5, "iou": pytest.approx(1 / 3)}


def test_default_sweep_is_the_challenges() -> None:
    assert DEFAULT_THRESHOLDS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    scores = evaluate_membrane(np.zeros((4, 4)), np.zeros((4, 4), bool))
    assert 0.1 in scores["thresholds"] and 0.9 in scores["thresholds"]
    assert [r["threshold"] for r in scores["per_threshold"]] == list(DEFAULT_THRESHOLDS)


@pytest.mark.parametrize(("membrane_p", "interior_p", "peak"), [(0.15, 0.05, 0.1), (0.95, 0.85, 0.9)])
def test_v_rand_peak_and_its_threshold_are_found_at_the_ends_of_the_sweep(
        membrane_p: float, interior_p: float, peak: float) -> None:
    # Only ``peak`` separates the two cells: below it nothing is interior, above it all is.
    membrane = np.zeros((2, 16, 16), bool)
    membrane[:, :, 8] = True
    prob = np.where(membrane, membrane_p, interior_p).astype(np.float32)
    scores = evaluate_membrane(prob, membrane)
    assert scores["v_rand"] == 1.0 and scores["v_rand_threshold"] == peak
    assert scores["v_info_threshold"] == peak
    narrow = evaluate_membrane(prob, membrane, thresholds=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8))
    assert narrow["v_rand"] < 0.7  # the old 0.3-0.8 sweep under-reports this map


def test_isbi_pixel_error_by_hand() -> None:
    # a: membrane 0.9, b: membrane 0.2, c: interior 0.7, d: interior 0.1; interior predicted
    # where prob < t. F-score of the interior class (tn = interior kept, fp = membrane called
    # interior, fn = interior called membrane): t <= 0.1: no interior predicted, F = 0;
    # t = 0.2: {d}, F = 2/3; t in 0.3..0.7: {b, d}, F = 2/4; t = 0.8, 0.9: {b, c, d}, F = 4/5;
    # t = 1.0: all, F = 4/6. Best 0.8 (0.8 and 0.9 tie: the one nearer 0.5) -> error 0.2.
    prob = np.array([[0.9, 0.2], [0.7, 0.1]], np.float32)
    membrane = np.array([[True, True], [False, False]])
    scores = evaluate_membrane(prob, membrane)
    assert scores["isbi_pixel_error"] == pytest.approx(0.2)
    assert scores["isbi_pixel_error_threshold"] == 0.8
    f = {r["threshold"]: r["interior_f_score"] for r in scores["per_threshold"]}
    assert f[0.0] == 0.0 and f[0.2] == pytest.approx(2 / 3) and f[0.5] == pytest.approx(0.5)
    assert f[1.0] == pytest.approx(2 / 3)
    # Not 1 - accuracy: accuracy is 0.5 at 0.5 and 0.75 at its best (0.2 and 0.8 tie; 0.2 reported).
    assert scores["pixel_accuracy_at_half"] == 0.5
    assert scores["pixel_accuracy_best"] == 0.75 and scores["pixel_accuracy_best_threshold"] == 0.2
    assert "pixel_error" not in scores and "pixel_accuracy" not in scores


def test_segments_labelled_zero_are_refused() -> None:
    with pytest.raises(ValueError, match="labelled from 1"):
        rand_and_info(TRUTH, np.array([[0, 1, 1], [0, 1, 1]]))
    with pytest.raises(ValueError, match=">= 0"):
        rand_and_info(-TRUTH, np.ones_like(TRUTH))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="differs"):
        evaluate_membrane(np.zeros((4, 4)), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_membrane(np.zeros((4, 4)), np.zeros((4, 4), bool), thresholds=[1.5])
    with pytest.raises(ValueError, match="distinct"):
        evaluate_membrane(np.zeros((4, 4)), np.zeros((4, 4), bool), thresholds=[0.5, 0.5])


def test_label_polarity() -> None:
    isbi = np.full((10, 10), 255, np.uint8)
    isbi[:, 5] = 0
    check_labels(isbi, "zero_is_membrane")
    assert membrane_mask(isbi, "zero_is_membrane").sum() == 10
    with pytest.raises(ValueError, match="polarity 'nonzero_is_membrane'.*inverted"):
        check_labels(isbi, "nonzero_is_membrane")
    with pytest.raises(ValueError, match="binary"):
        check_labels(np.arange(9).reshape(3, 3), "zero_is_membrane", "validation labels")
