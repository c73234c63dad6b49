"""Scores of a membrane probability map against membrane labels, as in ISBI 2012.

Arrays are (Z, H, W) or (H, W): slices, y, x in pixels; probabilities are floats in [0, 1]
(membrane = 1), truths are boolean membrane masks. Slices are scored in 2-D, like the
challenge, and averaged.

ISBI 2012 scores (Arganda-Carreras et al. 2015, Front. Neuroanat. 9:142):

* segments of the prediction: threshold the map, take connected components of the
  non-membrane pixels, then grow them into the membrane pixels (watershed on the map),
  which thins the predicted boundaries to nothing, as the challenge did;
* segments of the truth: connected components of the non-membrane pixels; the truth's
  membrane pixels are ignored (foreground-restricted scoring);
* V_rand: the Rand F-score, ``skimage.metrics.adapted_rand_error`` (it implements this
  paper's definition, counting pixel pairs), as ``1 - error``;
* V_info: ``2 I(S;T) / (H(S) + H(T))`` on the same contingency table. skimage's
  ``variation_of_information`` gives only the conditional entropies, so the normalised
  score is computed here from ``skimage.metrics.contingency_table``;
* both taken at the best of several thresholds (each score its own best), by default
  0.0, 0.1, ..., 1.0 as the challenge's Fiji script sweeps them; the threshold at which
  each peaks is reported (``v_rand_threshold``, ``v_info_threshold``): a peak at the edge
  of the sweep says a wider or finer sweep could score higher;
* ISBI pixel error: ``1 -`` the best F-score of the cell-interior class over the same
  thresholds (``isbi_pixel_error``, with its threshold). This, not ``1 - accuracy``, is
  the challenge's "pixel error"; it is the only field of that name.

A pixel is predicted membrane where ``prob >= threshold`` and cell interior where
``prob < threshold`` (the seeds of the segmentation above). Pixel accuracy, Dice and IoU
of the membrane class are reported at 0.5 (``*_at_half``) and at the threshold that
maximises pixel accuracy (``pixel_accuracy_best``, ``*_at_best_accuracy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error, contingency_table
from skimage.segmentation import watershed

# The challenge's sweep: 0.0 to 1.0 in steps of 0.1 (rounded, so 0.3 is 0.3 and not 0.30000000000000004).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def segment_membrane_map(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Segments (H, W) int32 from a membrane probability map (H, W): components of
    ``prob < threshold``, grown into the membrane pixels by a watershed on ``prob``."""
    _check_2d(prob, "prob")
    seeds, n = ndimage.label(prob < threshold, structure=_FOUR_CONNECTED)
    if n == 0:
        return np.ones(prob.shape, np.int32)  # all membrane: one segment (everything merged)
    return watershed(prob, seeds).astype(np.int32)


def truth_segments(membrane: np.ndarray) -> np.ndarray:
    """Cells (H, W) int32 of a truth membrane mask; 0 on membrane pixels (ignored in scoring)."""
    _check_2d(membrane, "membrane")
    cells, _ = ndimage.label(~membrane.astype(bool), structure=_FOUR_CONNECTED)
    return cells.astype(np.int32)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def rand_and_info(truth_cells: np.ndarray, segments: np.ndarray) -> tuple[float, float]:
    """(V_rand, V_info) of ``segments`` against ``truth_cells``, pixels where the truth is 0 ignored.

    Both are 1 for a perfect segmentation and fall towards 0 for splits and merges. Label 0
    means "ignored" only in the truth (its membrane pixels); in ``segments`` it would be an
    ordinary segment, silently merging every pixel so labelled (a boundary or background
    label of another tool), so segments labelled 0 are refused: label segments from 1, as
    :func:`segment_membrane_map` does. Negative labels are refused in both.
    """
    if truth_cells.shape != segments.shape:
        raise ValueError(f"truth shape {truth_cells.shape} differs from segments shape {segments.shape}")
    if segments.size and segments.min() < 1:
        n_bad = int(np.count_nonzero(segments < 1))
        raise ValueError(f"segments must be labelled from 1 (0 is the truth's ignore label, not a "
                         f"segment's), got {n_bad} pixels labelled {int(segments.min())} or below 1")
    if truth_cells.size and truth_cells.min() < 0:
        raise ValueError(f"truth cells must be labelled >= 0 (0 = ignored), got {int(truth_cells.min())}")
    if not (truth_cells != 0).any():
        raise ValueError("the truth has no non-membrane pixels to score")
    table = contingency_table(truth_cells, segments, ignore_labels=[0], sparse_type="array")
    with np.errstate(invalid="ignore", divide="ignore"):  # precision/recall are 0/0 for all-singletons
        error, _, _ = adapted_rand_error(table=table)
    v_rand = 0.0 if not np.isfinite(error) else 1.0 - float(error)
    joint = np.asarray(table.data, dtype=np.float64)
    h_truth = _entropy(np.asarray(table.sum(axis=1)).ravel())
    h_seg = _entropy(np.asarray(table.sum(axis=0)).ravel())
    mutual = h_truth + h_seg - _entropy(joint)
    v_info = 1.0 if h_truth + h_seg == 0 else 2.0 * mutual / (h_truth + h_seg)
    return v_rand, float(v_info)


def _pixel_counts_scores(tp: float, fp: float, fn: float, n: float) -> dict[str, float]:
    """Scores of membrane-class counts (tp, fp, fn of membrane; n pixels in all)."""
    tn = n - tp - fp - fn  # true cell interior
    # Interior is the positive class: its false positives are missed membrane (fn), and back.
    return {"pixel_accuracy": 1.0 - (fp + fn) / n,
            "interior_f_score": 1.0 if tn + fp + fn == 0 else 2 * tn / (2 * tn + fp + fn),
            "dice": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
            "iou": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)}


def pixel_scores(prob: np.ndarray, membrane: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """At one ``threshold``: pixel accuracy, F-score of the cell-interior class (ISBI pixel error
    is ``1 -`` its best over thresholds), Dice and IoU of the membrane class."""
    if prob.shape != membrane.shape:
        raise ValueError(f"prob shape {prob.shape} differs from membrane shape {membrane.shape}")
    pred = prob >= threshold
    truth = membrane.astype(bool)
    tp = float(np.count_nonzero(pred & truth))
    fp = float(np.count_nonzero(pred & ~truth))
    fn = float(np.count_nonzero(~pred & truth))
    return _pixel_counts_scores(tp, fp, fn, float(truth.size))


def score_rows(prob: np.ndarray, membrane: np.ndarray,
               thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict[str, float]]:
    """Per-threshold sums over the slices of (Z, H, W) or (H, W) arrays, to be merged across
    slabs of a large volume with :func:`merge_rows` and turned into scores by :func:`summarize`."""
    prob = np.asarray(prob, dtype=np.float32)
    membrane = np.asarray(membrane).astype(bool)
    if prob.shape != membrane.shape:
        raise ValueError(f"prediction shape {prob.shape} differs from label shape {membrane.shape}")
    if prob.ndim == 2:
        prob, membrane = prob[None], membrane[None]
    if prob.ndim != 3:
        raise ValueError(f"expected (Z, H, W) or (H, W) arrays, got shape {prob.shape}")
    check_thresholds(thresholds)
    truths = [truth_segments(m) for m in membrane]
    rows = []
    for t in sorted({*thresholds, 0.5}):
        scores = [rand_and_info(truth, segment_membrane_map(p, t))
                  for truth, p in zip(truths, prob, strict=True)]
        pred = prob >= t
        rows.append({"threshold": float(t), "v_rand_sum": float(sum(s[0] for s in scores)),
                     "v_info_sum": float(sum(s[1] for s in scores)), "n_slices": float(len(scores)),
                     "tp": float(np.count_nonzero(pred & membrane)),
                     "fp": float(np.count_nonzero(pred & ~membrane)),
                     "fn": float(np.count_nonzero(~pred & membrane)), "n_pixels": float(membrane.size),
                     "in_search": float(t in thresholds)})
    return rows


def merge_rows(a: list[dict[str, float]], b: list[dict[str, float]]) -> list[dict[str, float]]:
    """Add the sums of two :func:`score_rows` results over the same thresholds."""
    if [r["threshold"] for r in a] != [r["threshold"] for r in b]:
        raise ValueError("cannot merge scores computed at different thresholds")
    keep = ("threshold", "in_search")
    return [{k: (ra[k] if k in keep else ra[k] + rb[k]) for k in ra} for ra, rb in zip(a, b, strict=True)]


def _row_scores(r: dict[str, float]) -> dict[str, float]:
    return {"threshold": r["threshold"], "v_rand": r["v_rand_sum"] / r["n_slices"],
            "v_info": r["v_info_sum"] / r["n_slices"],
            **_pixel_counts_scores(r["tp"], r["fp"], r["fn"], r["n_pixels"])}


def _best(rows: list[dict[str, float]], key: str) -> dict[str, float]:
    # Ties go to the threshold nearest 0.5 (then the lower): a flat peak reports its middle.
    return max(rows, key=lambda r: (r[key], -abs(r["threshold"] - 0.5), -r["threshold"]))


def summarize(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Scores from per-threshold sums: see :func:`evaluate_membrane`."""
    all_rows = [_row_scores(r) for r in rows]
    searched = [s for s, r in zip(all_rows, rows, strict=True) if r["in_search"]]
    at_half = next(s for s in all_rows if s["threshold"] == 0.5)
    best_rand = _best(searched, "v_rand")
    best_info = _best(searched, "v_info")
    best_acc = _best(searched, "pixel_accuracy")
    best_f = _best(searched, "interior_f_score")
    return {
        "v_rand": best_rand["v_rand"], "v_rand_threshold": best_rand["threshold"],
        "v_info": best_info["v_info"], "v_info_threshold": best_info["threshold"],
        "isbi_pixel_error": 1.0 - best_f["interior_f_score"],
        "isbi_pixel_error_threshold": best_f["threshold"],
        "pixel_accuracy_at_half": at_half["pixel_accuracy"],
        "pixel_accuracy_best": best_acc["pixel_accuracy"],
        "pixel_accuracy_best_threshold": best_acc["threshold"],
        "dice_at_half": at_half["dice"], "iou_at_half": at_half["iou"],
        "dice_at_best_accuracy": best_acc["dice"], "iou_at_best_accuracy": best_acc["iou"],
        "thresholds": [s["threshold"] for s in searched],
        "n_slices": int(rows[0]["n_slices"]),
        "per_threshold": searched,
    }


def evaluate_membrane(prob: np.ndarray, membrane: np.ndarray,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """All scores of a probability map (Z, H, W) or (H, W) against a membrane mask of that shape.

    Returns a flat JSON-able dict, means over slices for V_rand / V_info and pooled pixel
    counts for the rest:

    * ``v_rand``, ``v_info``: each the best over ``thresholds``, with the threshold where it
      peaks (``v_rand_threshold``, ``v_info_threshold``);
    * ``isbi_pixel_error``: the ISBI 2012 pixel error, ``1 -`` the best F-score of the
      cell-interior class over ``thresholds``, and ``isbi_pixel_error_threshold``;
    * ``pixel_accuracy_at_half`` (threshold 0.5) and ``pixel_accuracy_best`` with
      ``pixel_accuracy_best_threshold``; Dice / IoU of the membrane class at those two
      thresholds (``dice_at_half``, ``dice_at_best_accuracy``, ...);
    * ``thresholds`` swept, ``n_slices``, and ``per_threshold`` rows (threshold, v_rand,
      v_info, pixel_accuracy, interior_f_score, dice, iou).

    Ties between thresholds go to the one nearest 0.5.
    """
    return summarize(score_rows(prob, membrane, thresholds))


def check_thresholds(thresholds: Sequence[float]) -> None:
    """ValueError unless ``thresholds`` is a non-empty list of distinct values in [0, 1]."""
    values = list(thresholds)
    if not values or any(not 0 <= t <= 1 for t in values) or len(set(values)) != len(values):
        raise ValueError(f"thresholds must be a non-empty list of distinct values in [0, 1], got {values}")


def _check_2d(a: np.ndarray, name: str) -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) slice, got shape {a.shape}")
