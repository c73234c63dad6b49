"""Observability helpers for every stage: preview PNGs, a summary markdown and a metrics table.

Previews are strips ``raw | prediction | label`` of a few z slices, saved in the
workspace (``reports/<run>/preview-z<z>.png``) and linked from a markdown artifact. The
Prefect server stores only an image's URL and the browser loads it, so the markdown also
embeds a small thumbnail as a ``data:`` URI (a few kB) and links the full-size file.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError

from storage.files import remove_stale, write_png
from storage.volume import open_volume
from unet.cell_preview import segmentation_preview
from unet.labels import polarity_of_dataset
from unet.preview import PANEL_CAPTIONS, evenly_spaced, label_panel, preview_strip, to_u8

THUMB_WIDTH = 384


def thumbnail_data_uri(image: np.ndarray) -> str:
    """A small PNG of ``image`` as a ``data:`` URI, for markdown artifacts."""
    from PIL import Image

    pil = Image.fromarray(image)
    if pil.width > THUMB_WIDTH:
        pil = pil.resize((THUMB_WIDTH, max(1, round(pil.height * THUMB_WIDTH / pil.width))))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def save_previews(raw_path: str, out_dir: str, prediction_path: str | None = None,
                  label_path: str | None = None, n_slices: int = 3,
                  segmentation_path: str | None = None) -> list[dict[str, Any]]:
    """Write preview strips of ``n_slices`` evenly spaced z slices; return [{z, path, thumb}].

    Paths are OME-Zarr volumes of the same shape (z, y, x); missing ones are left out of
    the strip. With a segmentation, each slice also gets ``segmentation-z<z>.png`` (raw with
    cell outlines | cells in random colours; keys ``segmentation_path``, ``segmentation_thumb``).
    Reads only the chosen slices, so it is cheap on any volume size. Other ``preview-z*.png``
    and ``segmentation-z*.png`` files in ``out_dir`` (an earlier run's) are removed.
    """
    raw = open_volume(raw_path)
    pred = open_volume(prediction_path) if prediction_path else None
    lab = open_volume(label_path) if label_path else None
    seg = open_volume(segmentation_path) if segmentation_path else None
    for other in (pred, lab, seg):
        if other is not None and other.shape != raw.shape:
            raise ValueError(f"{other.path} has shape {other.shape}, {raw.path} has {raw.shape}")
    polarity = polarity_of_dataset(dict(lab.attrs) if lab is not None else {})
    nz = raw.shape[0]
    zs = evenly_spaced(0, nz, n_slices)
    out: list[dict[str, Any]] = []
    for z in zs:
        def one(v: Any, z: int = z) -> np.ndarray | None:
            return None if v is None else v.read(slice(z, z + 1))[0]
        label = one(lab)
        panels = (one(raw), one(pred), None if label is None else label_panel(label, polarity))
        names = (f"raw z={z}", *PANEL_CAPTIONS[1:])
        captions = [c for c, v in zip(names, panels, strict=True) if v is not None]
        strip = preview_strip(*panels, captions=captions)  # type: ignore[arg-type]
        path = os.path.join(out_dir, f"preview-z{z:04d}.png")
        write_png(path, strip)
        out.append({"z": z, "path": path, "thumb": thumbnail_data_uri(strip)})
        if seg is not None:
            cells = segmentation_preview(to_u8(one(raw)), one(seg))  # type: ignore[arg-type]
            seg_png = os.path.join(out_dir, f"segmentation-z{z:04d}.png")
            write_png(seg_png, cells)
            out[-1].update(segmentation_path=seg_png, segmentation_thumb=thumbnail_data_uri(cells))
    # Previews of an earlier volume (other depth, other slices) must not sit beside these.
    remove_stale(out_dir, "preview-z*.png", {os.path.basename(o["path"]) for o in out})
    remove_stale(out_dir, "segmentation-z*.png",
                 {os.path.basename(o["segmentation_path"]) for o in out if "segmentation_path" in o})
    return out


def summary_markdown(title: str, outputs: Mapping[str, str], metrics: Mapping[str, Any] | None = None,
                     previews: Sequence[Mapping[str, Any]] = (), notes: Sequence[str] = ()) -> str:
    """Markdown: output locations, metrics, then the previews (thumbnail linked to the PNG)."""
    lines = [f"# {title}", "", "| output | location |", "| --- | --- |"]
    lines += [f"| {k} | `{v}` |" for k, v in outputs.items()]
    if metrics:
        lines += ["", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                  for k, v in metrics.items()]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if previews:
        cells = any("segmentation_thumb" in p for p in previews)
        lines += ["", "## Previews (raw | prediction | label" + (
            "; beside it raw with cell outlines | cells)" if cells else ")"), ""]
        for p in previews:
            lines += [f"z = {p['z']}: [{p['path']}](file://{os.path.abspath(p['path'])})"]
            if "segmentation_thumb" in p:
                lines[-1] += (f", [{p['segmentation_path']}]"
                              f"(file://{os.path.abspath(p['segmentation_path'])})")
                lines += ["", f"![z={p['z']}]({p['thumb']}) ![cells z={p['z']}]({p['segmentation_thumb']})",
                          ""]
            else:
                lines += ["", f"![z={p['z']}]({p['thumb']})", ""]
    return "\n".join(lines)


def artifact_key(key: str) -> str:
    """``key`` made a valid Prefect artifact key."""
    # Artifact keys allow only lowercase letters, digits and dashes.
    cleaned = "".join(c if c.isalnum() else "-" for c in key.lower())
    return "-".join(filter(None, cleaned.split("-")))


@task(name="publish-summary", retries=2, retry_delay_seconds=[2, 10])
def publish_summary(key: str, title: str, outputs: dict[str, str], metrics: dict[str, Any] | None = None,
                    previews: list[dict[str, Any]] | None = None, notes: list[str] | None = None) -> str:
    """Markdown artifact (key ``key``) with the outputs, metrics and previews; returns the text."""
    text = summary_markdown(title, outputs, metrics, previews or [], notes or [])
    try:
        create_markdown_artifact(text, key=artifact_key(key), description=title)
    except MissingContextError:
        pass
    return text


@task(name="publish-metrics-table", retries=2, retry_delay_seconds=[2, 10])
def publish_metrics_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """Table artifact: one row per volume (or run), one column per metric."""
    create_table_artifact(rows, key=artifact_key(key), description=description)


@task(name="save-previews", retries=2, retry_delay_seconds=[2, 10])
def save_previews_task(raw_path: str, out_dir: str, prediction_path: str | None = None,
                       label_path: str | None = None, n_slices: int = 3,
                       segmentation_path: str | None = None) -> list[dict[str, Any]]:
    """:func:`save_previews` as a task (retried on transient I/O errors)."""
    return save_previews(raw_path, out_dir, prediction_path, label_path, n_slices, segmentation_path)


def thumbnail_of(path: str) -> str:
    """:func:`thumbnail_data_uri` of the PNG file at ``path``."""
    from PIL import Image

    with Image.open(path) as im:
        return thumbnail_data_uri(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))


def publish_png(key: str, title: str, path: str, caption: str = "") -> None:
    """Markdown artifact showing the PNG at ``path`` (a small inline thumbnail) and where it is."""
    uri = thumbnail_of(path)
    try:
        create_markdown_artifact(f"### {title}\n\n{caption} Full size: `{path}`\n\n![preview]({uri})\n",
                                 key=artifact_key(key), description=title)
    except MissingContextError:
        pass
