"""Observability helpers for every stage: preview PNGs, a summary markdown and a metrics table.

Previews are strips ``raw | prediction | label`` of a few z slices, saved in the
workspace (``reports/<run>/preview-z<z>.png``) and linked from a markdown artifact. The
Prefect server stores only an image's URL and the browser loads it, so the markdown also
embeds a small thumbnail as a ``data:`` URI (a few kB) and links the full-size file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError

from unet.preview import preview_strip
from unet.volume_previews import save_previews, thumbnail_data_uri

__all__ = ["artifact_key", "preview_strip", "publish_metrics_table", "publish_png", "publish_summary",
           "save_previews", "save_previews_task", "summary_markdown", "thumbnail_data_uri", "thumbnail_of"]


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
