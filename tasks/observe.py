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

THUMB_WIDTH = 384


def _to_u8(slice2d: np.ndarray) -> np.ndarray:
    if slice2d.dtype == np.uint8:
        return slice2d
    a = slice2d.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def evenly_spaced(z0: int, z1: int, n: int) -> list[int]:
    """At most ``n`` distinct slice indices spread evenly over [z0, z1), both ends included."""
    return sorted({int(round(z)) for z in np.linspace(z0, z1 - 1, num=min(n, z1 - z0))})


def preview_strip(raw: np.ndarray, prediction: np.ndarray | None, label: np.ndarray | None,
                  gap: int = 4) -> np.ndarray:
    """Side-by-side uint8 image (H, W') of the given (H, W) slices with white gaps between."""
    panels = [_to_u8(p) for p in (raw, prediction, label) if p is not None]
    h = panels[0].shape[0]
    for p in panels:
        if p.shape[0] != h:
            raise ValueError(f"preview panels must share their height, got {[q.shape for q in panels]}")
    sep = np.full((h, gap), 255, np.uint8)
    parts: list[np.ndarray] = []
    for p in panels:
        parts.extend([p, sep])
    return np.concatenate(parts[:-1], axis=1)


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
                  label_path: str | None = None, n_slices: int = 3) -> list[dict[str, Any]]:
    """Write preview strips of ``n_slices`` evenly spaced z slices; return [{z, path, thumb}].

    Paths are OME-Zarr volumes of the same shape (z, y, x); missing ones are left out of
    the strip. Reads only the chosen slices, so it is cheap on any volume size. Other
    ``preview-z*.png`` files in ``out_dir`` (an earlier run's) are removed.
    """
    raw = open_volume(raw_path)
    pred = open_volume(prediction_path) if prediction_path else None
    lab = open_volume(label_path) if label_path else None
    for other in (pred, lab):
        if other is not None and other.shape != raw.shape:
            raise ValueError(f"{other.path} has shape {other.shape}, {raw.path} has {raw.shape}")
    nz = raw.shape[0]
    zs = evenly_spaced(0, nz, n_slices)
    out: list[dict[str, Any]] = []
    for z in zs:
        def one(v: Any, z: int = z) -> np.ndarray | None:
            return None if v is None else v.read(slice(z, z + 1))[0]
        strip = preview_strip(one(raw), one(pred), one(lab))  # type: ignore[arg-type]
        path = os.path.join(out_dir, f"preview-z{z:04d}.png")
        write_png(path, strip)
        out.append({"z": z, "path": path, "thumb": thumbnail_data_uri(strip)})
    # Previews of an earlier volume (other depth, other slices) must not sit beside these.
    remove_stale(out_dir, "preview-z*.png", {os.path.basename(o["path"]) for o in out})
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
        lines += ["", "## Previews (raw | prediction | label)", ""]
        for p in previews:
            lines += [f"z = {p['z']}: [{p['path']}](file://{os.path.abspath(p['path'])})", "",
                      f"![z={p['z']}]({p['thumb']})", ""]
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
                       label_path: str | None = None, n_slices: int = 3) -> list[dict[str, Any]]:
    """:func:`save_previews` as a task (retried on transient I/O errors)."""
    return save_previews(raw_path, out_dir, prediction_path, label_path, n_slices)
