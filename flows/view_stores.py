"""The stores ``emseg view`` shows: found in workspaces or given by path, one :class:`Store` each."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.errors import StoreNotFoundError
from storage.volume import Volume, group_attr, open_volume

# Workspace folders whose stores are OME-Zarr volumes, in the order their layers are drawn
# (later ones on top). datasets/ holds training sets (N, H, W), not volumes: not shown.
FOLDERS = ("volumes", "predictions", "segmentations", "labels")
KIND_FOLDER = {"image": "volumes", "prediction": "predictions", "segmentation": "segmentations",
               "label": "labels"}


@dataclass(frozen=True)
class Store:
    """One OME-Zarr volume to show. ``shape`` (z, y, x) voxels, ``voxel_size`` (z, y, x) nm."""

    path: str
    layer: str                      # layer name, e.g. "predictions/synthetic"
    kind: str                       # image, prediction, segmentation or label
    dtype: str
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    levels: int
    root: str = ""                  # the folder served over HTTP that holds it ("" for a URL)
    attrs: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return self.layer.rsplit("/", 1)[-1]

    @property
    def extent_nm(self) -> tuple[float, float, float]:
        return tuple(n * v for n, v in zip(self.shape, self.voxel_size, strict=True))  # type: ignore[return-value]


def _kind_of(vol: Volume, folder: str | None = None) -> str:
    kind = vol.attrs.get("kind")
    if kind in KIND_FOLDER:
        return str(kind)
    # An OME-Zarr volume from elsewhere: an image-label holds binary membrane labels when it
    # records a label polarity or lies in a workspace's labels/, cell IDs otherwise; anything
    # else is an image.
    if "image-label" not in group_attr(vol.group, "ome"):
        return "image"
    return "label" if "label_polarity" in vol.attrs or folder == "labels" else "segmentation"


def _store(vol: Volume, root: str, folder: str | None) -> Store:
    kind = _kind_of(vol, folder)
    name = os.path.basename(vol.path.rstrip("/")).removesuffix(".zarr")
    return Store(path=vol.path, layer=f"{folder or KIND_FOLDER[kind]}/{name}", kind=kind,
                 dtype=str(vol.dtype), shape=vol.shape, voxel_size=vol.voxel_size.as_tuple(),
                 levels=len(vol.levels), root=root, attrs=vol.attrs)


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _is_store(path: str) -> bool:
    return _is_url(path) or os.path.isfile(os.path.join(path, "zarr.json"))


def find_stores(targets: Sequence[str], names: Sequence[str] = ()) -> tuple[list[Store], list[str]]:
    """The volumes to show, and notes on what was left out.

    Each target is a workspace root (its volumes/, predictions/, segmentations/ and
    labels/ are scanned; unfinished stores are left out with a note) or one OME-Zarr
    store (refused if unfinished: its writer's data would be partial). ``names`` keeps
    only stores with these names. Raises StoreNotFoundError when nothing is left.
    """
    stores: list[Store] = []
    notes: list[str] = []
    for target in targets:
        path = target.removeprefix("file://")
        if _is_store(path):
            root = "" if _is_url(path) else os.path.dirname(os.path.abspath(path.rstrip("/")))
            stores.append(_store(open_volume(path), root, None))
            continue
        folders = [f for f in FOLDERS if os.path.isdir(os.path.join(path, f))]
        if not folders:
            raise StoreNotFoundError(f"{target} is neither a workspace (with {', '.join(FOLDERS)}) nor an "
                                     "OME-Zarr volume")
        for folder in folders:
            for entry in sorted(os.listdir(os.path.join(path, folder))):
                if not entry.endswith(".zarr"):
                    continue
                store_path = os.path.join(path, folder, entry)
                try:
                    vol = open_volume(store_path, require_complete=False)
                except StoreNotFoundError as e:
                    notes.append(f"{store_path}: not shown ({e})")
                    continue
                if not vol.is_complete:
                    notes.append(f"{store_path}: not shown (unfinished: its writer did not complete)")
                    continue
                stores.append(_store(vol, os.path.abspath(path), folder))
    found = sorted({s.name for s in stores})
    if names:
        stores = [s for s in stores if s.name in names]
    if not stores:
        raise StoreNotFoundError(f"no finished volume to show in {', '.join(targets)}"
                                 + (f" named {', '.join(names)} (found: {', '.join(found) or 'none'})"
                                    if names else ""))
    order = {f: i for i, f in enumerate(FOLDERS)}
    stores.sort(key=lambda s: order[KIND_FOLDER[s.kind]])  # stable: targets' order within a folder
    seen: dict[str, int] = {}
    for i, s in enumerate(stores):  # two targets may hold stores of the same folder and name
        seen[s.layer] = seen.get(s.layer, 0) + 1
        if seen[s.layer] > 1:
            stores[i] = Store(**{**s.__dict__, "layer": f"{s.layer} ({seen[s.layer]})"})
    return stores, notes
