"""The default train/validation split of an ingested volume (see :mod:`unet.split`)."""

from __future__ import annotations

from storage.volume import open_volume
from storage.workspace import Workspace
from unet.split import SliceSplit, default_split, resolve_split


def volume_split(workspace: str, volume: str) -> SliceSplit:
    """:func:`unet.split.default_split` of ``volumes/<volume>.zarr``'s depth (reads its header only)."""
    return default_split(open_volume(Workspace(workspace).volume(volume)).shape[0])


def stack_split(source: str, train: str = "", val: str = "", channel: int | None = None,
                scored: str = "") -> SliceSplit:
    """:func:`unet.split.resolve_split` against the depth of the TIFF stack ``source`` (its headers
    only), so a selection that does not fit is refused before anything is ingested; ``scored``
    (the evaluate step's ``slices``, if any) is checked against that depth too."""
    from storage.tiff import open_source
    from unet.evaluate_stage import select_slices

    depth = open_source(source, channel=channel).shape[0]
    select_slices(scored, depth, "evaluate.slices")
    return resolve_split(depth, train, val)
