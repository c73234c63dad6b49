"""tasks.observe: preview strips, preview files and the summary markdown (no server needed)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from storage.volume import create_volume
from tasks.observe import artifact_key, preview_strip, save_previews, summary_markdown
from unet.preview import CAPTION_PX, label_panel


def test_preview_strip_places_panels_side_by_side():
    raw = np.full((4, 3), 10, np.uint8)
    pred = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(4, 3)
    strip = preview_strip(raw, pred, None, gap=2)
    assert strip.shape == (4, 3 + 2 + 3) and strip.dtype == np.uint8
    assert (strip[:, :3] == 10).all() and (strip[:, 3:5] == 255).all()
    assert strip[0, 5] == 0 and strip[-1, -1] == 255  # float panel stretched to 0..255
    with pytest.raises(ValueError, match="share their height"):
        preview_strip(raw, np.zeros((5, 3), np.uint8), None)


def _volume(path, value_fn, shape=(5, 6, 8)):
    w = create_volume(path, shape, np.uint8, (40, 4, 4))
    data = value_fn(np.indices(shape)).astype(np.uint8)
    w.write(0, data)
    w.mark_complete()
    return data


def test_save_previews_writes_strips_of_chosen_slices(tmp_path):
    raw = _volume(tmp_path / "raw.zarr", lambda i: i[0] * 10)
    _volume(tmp_path / "pred.zarr", lambda i: i[1] * 20)
    _volume(tmp_path / "lab.zarr", lambda i: (i[2] % 2) * 255)
    out = save_previews(str(tmp_path / "raw.zarr"), str(tmp_path / "rep"), str(tmp_path / "pred.zarr"),
                        str(tmp_path / "lab.zarr"), n_slices=3)
    assert [p["z"] for p in out] == [0, 2, 4]
    img = np.asarray(Image.open(out[1]["path"]))
    assert img.shape == (CAPTION_PX + 6, 8 * 3 + 4 * 2)
    assert (img[CAPTION_PX:, :8] == raw[2]).all()
    # The label (ISBI polarity: 0 = membrane, the odd columns 255 = interior) is drawn as its
    # membrane mask, membrane white as in the prediction: the even columns.
    label_panel = img[CAPTION_PX:, 8 * 2 + 4 * 2:]
    assert (label_panel[:, 0::2] == 255).all() and (label_panel[:, 1::2] == 0).all()
    thumb = Image.open(io.BytesIO(base64.b64decode(out[1]["thumb"].split(",", 1)[1])))
    assert thumb.size == (img.shape[1], img.shape[0])
    with pytest.raises(ValueError, match="has shape"):
        _volume(tmp_path / "small.zarr", lambda i: i[0], shape=(5, 6, 7))
        save_previews(str(tmp_path / "raw.zarr"), str(tmp_path / "rep"), str(tmp_path / "small.zarr"))


def test_summary_markdown_lists_outputs_metrics_previews():
    text = summary_markdown("Run r1", {"prediction": "/ws/predictions/v.zarr"}, {"v_rand": 0.91234, "n": 3},
                            [{"z": 2, "path": "/ws/reports/r1/preview-z0002.png", "thumb": "data:x"}],
                            ["1 stack failed"])
    assert "| prediction | `/ws/predictions/v.zarr` |" in text
    assert "| v_rand | 0.9123 |" in text and "| n | 3 |" in text
    assert "(file:///ws/reports/r1/preview-z0002.png)" in text and "![z=2](data:x)" in text
    assert "- 1 stack failed" in text


def test_artifact_keys_are_made_valid():
    assert artifact_key("Nightly_Summary v1") == "nightly-summary-v1"


def test_captions_name_each_panel_and_labels_of_either_polarity_draw_membranes_white():
    raw = np.full((20, 60), 100, np.uint8)
    isbi = np.full((20, 60), 255, np.uint8)
    isbi[:, 30] = 0  # one membrane column, ISBI polarity
    other = 255 - isbi  # the same membrane, membranes non-zero
    assert (label_panel(isbi, "zero_is_membrane") == label_panel(other, "nonzero_is_membrane")).all()
    assert label_panel(isbi, "zero_is_membrane")[:, 30].min() == 255
    strip = preview_strip(raw, None, label_panel(isbi, "zero_is_membrane"), gap=2, captions=["raw", "label"])
    assert strip.shape == (CAPTION_PX + 20, 60 + 2 + 60)
    caption = strip[:CAPTION_PX]
    assert (caption[:, :60] < 128).any() and (caption[:, 62:] < 128).any()  # text drawn over each panel
    assert (strip[CAPTION_PX:, :60] == 100).all()
    with pytest.raises(ValueError, match="captions"):
        preview_strip(raw, None, None, captions=["raw", "extra"])


def test_infer_summary_shows_each_preview_as_a_linked_thumbnail(tmp_path):
    from tasks.infer import infer_markdown
    from unet.infer_stage import InferResult

    png = tmp_path / "infer-z0003.png"
    Image.fromarray(np.zeros((30, 500), np.uint8)).save(png)
    result = InferResult(prediction="/ws/predictions/em.zarr", voxels=10, blocks=1, blocks_run=1, seconds=1.0,
                         voxels_per_s=10.0, model_sha256="ab", shape=(1, 2, 5), voxel_size_nm=(40, 4, 4),
                         levels=("s0",), previews=(str(png),))
    text = infer_markdown(result)
    assert "| blocks_run | 1 |" in text and "previews |" not in text
    assert f"[infer-z0003.png](file://{png})" in text and "![infer-z0003.png](data:image/png;base64," in text
