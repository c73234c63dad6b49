"""What the CLI prints for a stage's typed result (no Prefect, no torch imported here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from storage.ingest_stage import IngestResult
    from unet.evaluate_stage import EvaluateResult

TABLE_KEYS = ("v_rand", "v_rand_threshold", "v_info", "v_info_threshold", "isbi_pixel_error",
              "isbi_pixel_error_threshold", "pixel_accuracy_at_half", "pixel_accuracy_best",
              "pixel_accuracy_best_threshold", "dice_at_half", "iou_at_half", "n_slices")
SEGMENTATION_KEYS = ("v_rand", "v_info", "n_cells", "n_slices")


def unknown_voxel_warning(path: str, axes: tuple[str, ...] | list[str]) -> str:
    return (f"{path}: voxel size unknown on axes {', '.join(axes)} (neither --voxel-size nor the file's "
            "metadata gives it); 1 nm recorded there. Pass --voxel-size Z Y X (nm) with --overwrite to "
            "record the real size.")


def print_ingest(result: IngestResult, warn: bool) -> None:
    """One paragraph per volume, then the result as JSON; ``warn``: also the unknown-voxel warning
    (in direct mode the stage's own warning has reached stderr already)."""
    for kind, s in (("image", result.image), ("labels", result.labels)):
        if s is None:
            continue
        typer.echo(f"{kind}: {s.path} ({s.action})\n  shape (z, y, x) {s.shape}, dtype {s.dtype}, voxel size "
                   f"(z, y, x) {s.voxel_size_nm} nm [{s.voxel_size_origin}], chunks {s.chunks}, shards "
                   f"{s.shards}, levels {list(s.levels)}")
        if warn and s.voxel_size_unknown:
            typer.secho(f"emseg: warning: {unknown_voxel_warning(s.path, s.voxel_size_unknown)}", err=True,
                        fg=typer.colors.YELLOW)
    typer.echo(result.model_dump_json(indent=2))


def print_scores(result: EvaluateResult) -> None:
    """A two-column table of the scores (the segmentation's prefixed ``segmentation_``), after the
    slices scored."""
    rows: list[tuple[str, object]] = [("slices", (result.metrics or result.segmentation or {}).get("slices")
                                       or "all")]
    if result.metrics is not None:
        rows += [(key, result.metrics[key]) for key in TABLE_KEYS]
    if result.segmentation is not None:
        rows += [(f"segmentation_{key}", result.segmentation[key]) for key in SEGMENTATION_KEYS]
    width = max(len(key) for key, _ in rows)
    typer.echo(f"{'metric':<{width}}  value")
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
