"""The evaluate stage scores chosen slices (``EvaluateConfig.slices``) and, in the same pass, a
held-out selection on its own; hand-computed on a 4-slice volume that is right on 0-1 and blank on 2-3.

Each slice (4 x 9 pixels) holds two cells of 16 pixels split by a membrane column. The prediction
is the truth on slices 0-1 and all zeros (everything one merged segment) on 2-3. A merged slice has
V_rand 2 * 480 / (480 + 992) = 15/23 (same-cell pairs 2 * 16 * 15, merged pairs 32 * 31), V_info 0,
and ISBI pixel error 1 - F(interior) = 1 - 2 * (8/9) / (8/9 + 1) = 1/17 (all interior predicted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.errors import StoreExistsError
from storage.files import read_json
from storage.workspace import Workspace
from tests.crash.inputs import write_volume
from unet.evaluate_stage import EvaluateConfig, evaluate_stage, score_volume
from unet.split import runs_of

MERGED = 15 / 23


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace(str(tmp_path / "ws"))
    labels = np.full((4, 4, 9), 255, np.uint8)
    labels[:, :, 4] = 0  # the membrane column
    prediction = np.where(labels == 0, 255, 0).astype(np.uint8)
    prediction[2:] = 0  # slices 2-3: nothing predicted, one merged segment
    cells = np.where(np.arange(9) < 4, 1, 2)[None, None, :].repeat(4, axis=1).repeat(4, axis=0)
    cells[2:] = 1  # a segmentation right on 0-1, merged on 2-3
    write_volume(ws.labels("em"), labels, "label")
    write_volume(ws.prediction("half"), prediction, "prediction")
    write_volume(ws.segmentation("half"), cells.astype(np.uint32), "segmentation")
    return ws


def test_runs_of_cuts_a_selection_into_slabs() -> None:
    assert runs_of([0, 1, 2, 5, 6, 9], 2) == [slice(0, 2), slice(2, 3), slice(5, 7), slice(9, 10)]
    assert runs_of([], 8) == []


def test_chosen_slices_score_differently_from_the_whole_volume(ws: Workspace) -> None:
    args = (ws.prediction("half"), ws.labels("em"), "zero_is_membrane")
    right, wrong, whole = (score_volume(*args, slices=s) for s in ([0, 1], [2, 3], None))  # type: ignore[arg-type]
    assert (right["v_rand"], right["v_info"], right["isbi_pixel_error"]) == (1.0, 1.0, 0.0)
    assert right["n_slices"] == 2
    assert wrong["v_rand"] == pytest.approx(MERGED) and wrong["v_info"] == pytest.approx(0.0)
    assert wrong["isbi_pixel_error"] == pytest.approx(1 / 17) and wrong["n_slices"] == 2
    # The whole volume: V_rand the mean of 1, 1, 15/23, 15/23; interior pixels pooled: 128 true of
    # 136 predicted, F = 32/33.
    assert whole["v_rand"] == pytest.approx((1 + MERGED) / 2) and whole["n_slices"] == 4
    assert whole["isbi_pixel_error"] == pytest.approx(1 / 33)


def test_stage_writes_the_slices_and_the_held_out_scores_in_one_pass(ws: Workspace,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import unet.evaluate_stage as ev

    scored: list[int] = []
    real = ev.score_rows
    monkeypatch.setattr(ev, "score_rows", lambda p, m, t: scored.append(1) or real(p, m, t))
    result = evaluate_stage(ws, "em", "r", EvaluateConfig(), prediction="half", held_out="0-1")
    assert len(scored) == 4  # each slice scored once, though 0-1 count twice
    metrics = read_json(ws.report_file("r", "metrics.json"))
    assert metrics == result.metrics and metrics["slices"] is None and metrics["n_slices"] == 4
    assert metrics["v_rand"] == pytest.approx((1 + MERGED) / 2)
    held = metrics["held_out"]
    assert held["slices"] == "0-1" and held["v_rand"] == 1.0 and held["n_slices"] == 2

    only = evaluate_stage(ws, "em", "s", EvaluateConfig(slices="2 - 3"), prediction="half",
                          segmentation="half")
    assert only.metrics is not None and only.segmentation is not None
    assert only.metrics["slices"] == "2-3" and "held_out" not in only.metrics
    assert only.metrics["v_rand"] == pytest.approx(MERGED)
    assert only.segmentation["slices"] == "2-3" and only.segmentation["n_slices"] == 2
    assert only.segmentation["v_rand"] == pytest.approx(MERGED) and only.segmentation["n_cells"] == 1


def test_a_report_of_other_slices_is_not_reused_or_overwritten(ws: Workspace) -> None:
    evaluate_stage(ws, "em", "r", EvaluateConfig(slices="0-1"), prediction="half", held_out="2-3")
    evaluate_stage(ws, "em", "r", EvaluateConfig(slices="0-1"), prediction="half", held_out="2-3")  # again
    for cfg, held, message in ((EvaluateConfig(), "2-3", r"slices: '0-1', now None"),
                               (EvaluateConfig(slices="0-1"), "", r"held_out.slices: '2-3', now None"),
                               (EvaluateConfig(slices="0-1"), "3", r"held_out.slices: '2-3', now '3'")):
        with pytest.raises(StoreExistsError, match=message):
            evaluate_stage(ws, "em", "r", cfg, prediction="half", held_out=held)
    assert read_json(ws.report_file("r", "metrics.json"))["slices"] == "0-1"
    evaluate_stage(ws, "em", "r", EvaluateConfig(), prediction="half", overwrite=True)
    assert read_json(ws.report_file("r", "metrics.json"))["slices"] is None


@pytest.mark.parametrize(("slices", "held_out", "message"), [
    ("2-4", "", r"^slices: slice selection '2-4' is out of range: the volume has 4 slices \(0..3\)$"),
    ("", "9", r"^held_out: slice selection '9' is out of range: the volume has 4 slices \(0..3\)$"),
    ("", "1-x", r"^held_out: slice selection '1-x': cannot read '1-x'"),
])
def test_bad_slices_are_refused_in_one_line_and_nothing_is_written(ws: Workspace, slices: str, held_out: str,
                                                                   message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        evaluate_stage(ws, "em", "r", EvaluateConfig(slices=slices), prediction="half", held_out=held_out)
    assert "\n" not in str(err.value)
    assert not Path(ws.report_dir("r")).exists()


def test_held_out_needs_a_prediction(ws: Workspace) -> None:
    with pytest.raises(ValueError, match="held_out '0-1' scores slices of a prediction"):
        evaluate_stage(ws, "em", "r", EvaluateConfig(), segmentation="half", held_out="0-1")


def test_config_checks_the_form_of_slices() -> None:
    assert EvaluateConfig().slices == "" and EvaluateConfig(slices="0-9, 15").slices == "0-9,15"
    for bad, reason in (("2-x", "cannot read"), ("5-2", "runs backwards"), ("1,1", "twice")):
        with pytest.raises(ValueError, match=f"slices: slice selection .*{reason}"):
            EvaluateConfig(slices=bad)
