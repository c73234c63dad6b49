"""A volume's Zarr store as such: where it is, whether it exists, its level-0 chunk files.

A complete store records how many level-0 chunk (or shard) files it has
(``attrs["emseg"]["stored_objects"]``), counted here from the files on disk, so a reader can
tell a file lost later from a region that was never written.
"""

from __future__ import annotations

import os
from typing import Any, cast

import numpy as np
import zarr

from storage.errors import StoreNotFoundError

LEVEL0 = "s0"
_ZARR_LOCAL_PREFIXES = ("file://",)
# attrs["emseg"] key: how many level-0 chunk (or shard) files the writer left, when it wrote all.
STORED_OBJECTS_KEY = "stored_objects"


def _path_str(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def group_attr(group: zarr.Group, key: str) -> dict[str, Any]:
    """A dict-valued group attribute (zarr types attributes as arbitrary JSON)."""
    value = group.attrs.get(key, {})
    return dict(cast(dict[str, Any], value))


def group_array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``; a clear error if it is missing or a sub-group."""
    node = group.get(name)
    if not isinstance(node, zarr.Array):
        raise StoreNotFoundError(f"{group.store_path} has no array {name!r}")
    return node


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith(_ZARR_LOCAL_PREFIXES)


def store_exists(path: str | os.PathLike[str]) -> bool:
    """True when something (complete or not) already lives at ``path``."""
    p = _path_str(path)
    if _is_local(p):
        return os.path.exists(p.removeprefix("file://"))
    try:
        zarr.open_group(p, mode="r")
        return True
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False


def remove_store(path: str | os.PathLike[str]) -> None:
    """Delete a (local) store, e.g. one a failed writer left half-written; no-op if absent."""
    import shutil

    local = _path_str(path).removeprefix("file://")
    if _is_local(local) and os.path.isdir(local):
        shutil.rmtree(local, ignore_errors=True)


def _level0_dir(path: str) -> str:
    return os.path.join(path.removeprefix("file://"), LEVEL0, "c")


def _stored_objects(path: str) -> set[str] | None:
    """Keys (``z/y/x``) of the level-0 chunk or shard files of a local store; None if remote."""
    if not _is_local(path):
        return None
    root = _level0_dir(path)
    found = set()
    for directory, _dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        for f in files:
            found.add(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
    return found


def _grid(array: zarr.Array) -> tuple[int, ...]:
    unit = array.shards if array.shards is not None else array.chunks
    return tuple(-(-s // u) for s, u in zip(array.shape, unit, strict=True))


def _expected_objects(array: zarr.Array) -> int:
    return int(np.prod(_grid(array)))
