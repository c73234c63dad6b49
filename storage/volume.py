"""OME-Zarr 0.5 (Zarr v3) volumes: creation, completion marker, reading, pyramid.

A volume is a Zarr v3 group laid out as an OME-NGFF 0.5 multiscale image::

    <name>.zarr/
        zarr.json        group; attributes["ome"] = NGFF metadata (axes z, y, x in nanometer)
                         attributes["emseg"] = {"complete": bool, "kind": ..., ...}
        s0/              level 0, full resolution, shape (z, y, x)
        s1/, s2/ ...     optional pyramid, 2x downsampled in y, x per level (z kept)

Axis order is always (z, y, x); voxel sizes are in nanometres.

Completion is marked last: a writer creates the group with ``complete: false``,
writes the data, then calls :meth:`VolumeWriter.mark_complete`. :func:`open_volume`
refuses a store that was never marked complete, so a killed writer never leaves a
store that looks finished. Existing stores are never replaced unless
``overwrite=True``.

Creation is atomic on local disks: the group, its arrays, the OME metadata and the
writer's identity attributes are built under ``.<name>.creating-<host>-<pid>-<rand>`` and
renamed into place, so a kill at any moment leaves either nothing (a hidden leftover,
removed by the next creation) or a store that says what it is and who made it. A
complete store records how many level-0 chunk (or shard) files it has; :func:`open_volume`
refuses one that lost any (zarr would read the gap as zeros).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from storage.errors import (
    DamagedStoreError,
    IncompleteStoreError,
    StoreExistsError,
    StoreNotFoundError,
    writing,
)

Kind = Literal["image", "label", "prediction"]
Compression = Literal["zstd", "blosc", "none"]

LEVEL0 = "s0"
# Chunks of one slice suit the slice-wise 2D model: a write block is one or more whole
# slices, and reading one slice touches only its own chunks.
DEFAULT_CHUNK_YX = 1024
_ZARR_LOCAL_PREFIXES = ("file://",)
# attrs["emseg"] key: how many level-0 chunk (or shard) files the writer left, when it wrote all.
STORED_OBJECTS_KEY = "stored_objects"


@dataclass(frozen=True)
class VoxelSize:
    """Physical voxel size in nanometres, axis order (z, y, x)."""

    z: float
    y: float
    x: float

    def __post_init__(self) -> None:
        for axis, value in zip("zyx", self.as_tuple(), strict=True):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"voxel size along {axis} must be a positive number, got {value}")

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.z, self.y, self.x)

    @classmethod
    def of(cls, value: VoxelSize | Sequence[float]) -> VoxelSize:
        if isinstance(value, VoxelSize):
            return value
        values = tuple(float(v) for v in value)
        if len(values) != 3:
            raise ValueError(f"voxel size needs 3 values (z, y, x) in nm, got {values}")
        return cls(*values)


def default_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    """One slice per chunk, at most 1024 x 1024 pixels in y, x."""
    _, y, x = shape
    return (1, max(1, min(y, DEFAULT_CHUNK_YX)), max(1, min(x, DEFAULT_CHUNK_YX)))


def _codecs(compression: Compression) -> Any:
    if compression == "zstd":
        return ZstdCodec(level=1)
    if compression == "blosc":
        return BloscCodec(cname="lz4", clevel=5)
    if compression == "none":
        return None
    raise ValueError(f"compression must be one of zstd, blosc, none; got {compression!r}")


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


def ome_datasets(voxel_size: VoxelSize, n_levels: int) -> list[dict[str, Any]]:
    """NGFF 0.5 ``datasets`` entries for ``n_levels`` levels, 2x in y, x per level.

    A level downsampled by f gets translation (f - 1) * voxel / 2 so that voxel centres
    line up across levels (the NGFF convention; ome-zarr-py writes the same values).
    """
    vz, vy, vx = voxel_size.as_tuple()
    datasets = []
    for level in range(n_levels):
        f = 2**level
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": [vz, vy * f, vx * f]},
                    {"type": "translation", "translation": [0.0, vy * (f - 1) / 2, vx * (f - 1) / 2]},
                ],
            }
        )
    return datasets


def _write_ome_metadata(group: zarr.Group, voxel_size: VoxelSize, n_levels: int, name: str) -> None:
    # ome-zarr-py writes (and validates) the NGFF 0.5 multiscales block; units are spelled
    # "nanometer" because neuroglancer rejects "nm".
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    write_multiscales_metadata(
        group,
        ome_datasets(voxel_size, n_levels),
        fmt=FormatV05(),
        axes=[{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        name=name,
    )


@dataclass
class Volume:
    """A complete (or, with ``require_complete=False``, any) volume opened for reading.

    ``array`` is level 0, shape (z, y, x). ``voxel_size`` is in nm.
    """

    path: str
    group: zarr.Group
    array: zarr.Array

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)  # type: ignore[arg-type]

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(self.array.chunks)  # type: ignore[return-value]

    @property
    def write_block_shape(self) -> tuple[int, int, int]:
        """The unit a parallel writer must align to: the shard if sharded, else the chunk."""
        shards = self.array.shards
        return tuple(shards if shards is not None else self.array.chunks)  # type: ignore[return-value]

    @property
    def attrs(self) -> dict[str, Any]:
        return group_attr(self.group, "emseg")

    @property
    def is_complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def voxel_size(self) -> VoxelSize:
        ds = self._datasets()[0]
        return VoxelSize.of(ds["coordinateTransformations"][0]["scale"])

    def _datasets(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], group_attr(self.group, "ome")["multiscales"][0]["datasets"])

    @property
    def levels(self) -> list[str]:
        return [str(d["path"]) for d in self._datasets()]

    def level(self, index: int) -> zarr.Array:
        return group_array(self.group, self.levels[index])

    def read(self, z: slice, y: slice = slice(None), x: slice = slice(None)) -> np.ndarray:
        """Read a region of level 0 into memory, axes (z, y, x)."""
        return np.asarray(self.array[z, y, x])

    def summary(self) -> dict[str, Any]:
        """Small JSON-able description (for logs, artifacts and the CLI)."""
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "voxel_size_nm": list(self.voxel_size.as_tuple()),
            "chunks": list(self.chunks),
            "shards": list(self.array.shards) if self.array.shards else None,
            "levels": self.levels,
            "complete": self.is_complete,
            "kind": self.attrs.get("kind"),
        }


class VolumeWriter(Volume):
    """A volume being written. Level 0 is open read-write; nothing reads it as done yet."""

    def write(self, z0: int, data: np.ndarray, y0: int = 0, x0: int = 0) -> None:
        """Write ``data`` (z, y, x) at offset (z0, y0, x0), refusing a region that overruns.

        zarr silently crops an oversized value, so the shape is checked here.
        """
        if data.ndim != 3:
            raise ValueError(f"data must be 3-D (z, y, x), got shape {data.shape}")
        end = (z0 + data.shape[0], y0 + data.shape[1], x0 + data.shape[2])
        if any(e > s for e, s in zip(end, self.shape, strict=True)) or min(z0, y0, x0) < 0:
            raise ValueError(
                f"region at {(z0, y0, x0)} of shape {data.shape} does not fit in {self.shape}"
            )
        self.array[z0 : end[0], y0 : end[1], x0 : end[2]] = data

    def update_attrs(self, **values: Any) -> None:
        """Merge ``values`` into the ``emseg`` attributes (coordinator only: not concurrency-safe)."""
        attrs = self.attrs
        attrs.update(values)
        self.group.attrs["emseg"] = attrs

    def mark_complete(self) -> Volume:
        """Mark the store finished. Call last, after every write (and the pyramid).

        When every level-0 chunk (or shard) file was written, their number is recorded, so
        a reader can tell a file lost later from a region that was never written.
        """
        stored = _stored_objects(self.path)
        values: dict[str, Any] = {"complete": True}
        if stored is not None and len(stored) == _expected_objects(self.array):
            values[STORED_OBJECTS_KEY] = len(stored)
        self.update_attrs(**values)
        return Volume(self.path, self.group, self.array)


def create_volume(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    voxel_size: VoxelSize | Sequence[float],
    *,
    kind: Kind = "image",
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    compression: Compression = "zstd",
    pyramid_levels: int = 0,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    name: str | None = None,
) -> VolumeWriter:
    """Create an empty, not-yet-complete OME-Zarr volume and return a writer for it.

    shape, chunks and shards are (z, y, x) in voxels; voxel_size is (z, y, x) in nm.
    ``pyramid_levels`` extra levels (s1, s2, ...) are created empty and filled by
    :func:`build_pyramid`. Raises :class:`StoreExistsError` if anything exists at
    ``path`` and ``overwrite`` is False.
    """
    p = _path_str(path)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive sizes (z, y, x), got {shape}")
    if pyramid_levels < 0:
        raise ValueError(f"pyramid_levels must be >= 0, got {pyramid_levels}")
    vs = VoxelSize.of(voxel_size)
    chunks = tuple(int(c) for c in (chunks or default_chunks(shape)))
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    if shards is not None:
        shards = tuple(int(s) for s in shards)
        if any(s % c for s, c in zip(shards, chunks, strict=True)):
            raise ValueError(f"shards {shards} must be a multiple of chunks {chunks}")
    if store_exists(p) and not overwrite:
        raise StoreExistsError(f"{p} already exists; pass overwrite=True to replace it")

    meta = {"complete": False, "kind": kind, "dtype": str(np.dtype(dtype))}
    meta.update(attrs or {})
    n_levels = 1 + pyramid_levels
    label = name or os.path.basename(p.rstrip("/"))

    def build(at: str) -> zarr.Group:
        # Identity and "incomplete" go into the group's first zarr.json: a store never exists
        # without them, whatever moment a kill comes at.
        group = zarr.create_group(at, overwrite=True, zarr_format=3, attributes={"emseg": meta})
        for level in range(n_levels):
            lshape = (shape[0], max(1, shape[1] >> level), max(1, shape[2] >> level))
            lchunks = tuple(min(c, s) for c, s in zip(chunks, lshape, strict=True))
            group.create_array(
                f"s{level}",
                shape=lshape,
                dtype=dtype,
                chunks=lchunks,
                shards=shards if level == 0 else None,
                compressors=_codecs(compression),
                fill_value=0,
                dimension_names=("z", "y", "x"),
            )
        _write_ome_metadata(group, vs, n_levels, label)
        return group

    with writing(p):
        if _is_local(p):
            # Built complete with metadata under a temporary name, then renamed into place: the
            # store appears at once, identified, or not at all.
            tmp = _temporary_name(p)
            try:
                build(tmp)
            except BaseException:
                remove_store(tmp)
                raise
            _publish(tmp, p)
            group = zarr.open_group(p, mode="r+", zarr_format=3)
        else:  # object stores cannot rename; identity is written first (above)
            group = build(p)
    return VolumeWriter(p, group, _dense_writes(group[LEVEL0]))  # type: ignore[arg-type]


def _dense_writes(array: zarr.Array) -> zarr.Array:
    """The array with zarr's "skip chunks equal to the fill value" check switched off.

    EM images and probability maps are dense, so the check (a full comparison pass over
    every chunk written, about a fifth of an ingest's CPU time) almost never skips a chunk.
    ``zarr.open_array(..., config=...)`` ignores the setting for an existing array (zarr
    3.1.6); ``Array.with_config`` applies it.
    """
    return array.with_config({"write_empty_chunks": True})


_TMP_MARK = ".creating-"
_OLD_MARK = ".replaced-"


def _temporary_name(final: str) -> str:
    """``<dir>/.<name>.creating-<host>-<pid>-<random>`` beside ``final``; an earlier killed
    creation's leftovers there (its process is gone) are removed first."""
    import socket
    import uuid

    local = final.removeprefix("file://").rstrip("/")
    directory, base = os.path.split(os.path.abspath(local))
    os.makedirs(directory, exist_ok=True)
    _remove_leftovers(directory, base)
    return os.path.join(directory, f".{base}{_TMP_MARK}{socket.gethostname()}-{os.getpid()}-"
                                   f"{uuid.uuid4().hex[:8]}")


def _remove_leftovers(directory: str, base: str) -> None:
    import shutil
    import socket

    host = socket.gethostname()
    for entry in os.listdir(directory):
        for mark in (_TMP_MARK, _OLD_MARK):
            prefix = f".{base}{mark}{host}-"
            if not entry.startswith(prefix):
                continue
            pid = entry[len(prefix):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(directory, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: str, final: str) -> None:
    """Rename the store built at ``built`` to ``final``, moving an existing one aside first
    (rename, not delete, so ``final`` never holds a half-deleted store) and deleting it after."""
    import shutil

    local = os.path.abspath(final.removeprefix("file://").rstrip("/"))
    old = None
    try:
        if os.path.lexists(local):
            old = tmp.replace(_TMP_MARK, _OLD_MARK)
            os.rename(local, old)
        os.rename(tmp, local)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        if os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)


def remove_store(path: str | os.PathLike[str]) -> None:
    """Delete a (local) store, e.g. one a failed writer left half-written; no-op if absent."""
    import shutil

    local = _path_str(path).removeprefix("file://")
    if _is_local(local) and os.path.isdir(local):
        shutil.rmtree(local, ignore_errors=True)


def open_volume(path: str | os.PathLike[str], *, require_complete: bool = True) -> Volume:
    """Open a volume for reading. Refuses a missing store, a non-volume, or an incomplete one."""
    p = _path_str(path)
    try:
        group = zarr.open_group(p, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreNotFoundError(f"no volume at {p}") from e
    if "ome" not in group.attrs or LEVEL0 not in group:
        raise StoreNotFoundError(f"{p} is a Zarr group but not an emseg/OME-Zarr volume")
    vol = Volume(p, group, group[LEVEL0])  # type: ignore[arg-type]
    if require_complete and not vol.is_complete:
        raise IncompleteStoreError(
            f"{p} is incomplete: its writer did not finish (killed, failed or still running); "
            "re-run the step that writes it"
        )
    if require_complete:
        verify_stored(vol)
    return vol


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


def verify_stored(volume: Volume) -> None:
    """Raise :class:`DamagedStoreError` when a complete volume lacks level-0 chunk files it was
    written with (zarr would read the gap as zeros, silently). Volumes whose writer did not
    record the count (remote stores, sparse writers) are not checked."""
    recorded = volume.attrs.get(STORED_OBJECTS_KEY)
    if not isinstance(recorded, int):
        return
    stored = _stored_objects(volume.path)
    if stored is None or len(stored) >= recorded:
        return
    missing = sorted({"/".join(map(str, i)) for i in np.ndindex(*_grid(volume.array))} - stored)
    unit = "shard" if volume.array.shards is not None else "chunk"
    raise DamagedStoreError(
        f"{volume.path} is damaged: {recorded - len(stored)} of its {recorded} level-0 {unit} files are "
        f"missing (first: {LEVEL0}/c/{missing[0] if missing else '?'}); that data would read as zeros. "
        "Restore the store or re-run the step that wrote it with --overwrite")


def open_volume_for_update(path: str | os.PathLike[str]) -> VolumeWriter:
    """Re-open an existing (typically incomplete) volume read-write, e.g. to resume writing."""
    p = _path_str(path)
    try:
        group = zarr.open_group(p, mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreNotFoundError(f"no volume at {p}") from e
    if LEVEL0 not in group:
        raise StoreNotFoundError(f"{p} is a Zarr group but not an emseg/OME-Zarr volume")
    return VolumeWriter(p, group, _dense_writes(group[LEVEL0]))  # type: ignore[arg-type]


def build_pyramid(writer: VolumeWriter, *, method: Literal["mean", "nearest"] = "mean",
                  first: int = 1) -> None:
    """Fill levels s<first>.. from the level above, streaming with Dask (2x in y, x; z kept).

    ``mean`` (of each 2 x 2, rounded half to even for integers) suits images and probabilities,
    ``nearest`` (stride sampling) suits labels, whose values must not be mixed. Levels below
    ``first`` were written already (e.g. block by block, by inference).
    """
    import dask.array as da

    levels = writer.levels
    for i in range(max(1, first), len(levels)):
        src_arr = group_array(writer.group, levels[i - 1])
        dst = group_array(writer.group, levels[i])
        src = da.from_zarr(src_arr, chunks=(src_arr.chunks[0], src_arr.chunks[1], src_arr.chunks[2]))
        ty, tx = dst.shape[1] * 2, dst.shape[2] * 2
        src = src[:, :ty, :tx]
        if method == "nearest":
            down = src[:, ::2, ::2]
        else:
            mean = da.coarsen(np.mean, src.astype(np.float32), {1: 2, 2: 2}, trim_excess=True)
            if np.issubdtype(dst.dtype, np.integer):
                mean = da.round(mean)
            down = mean.astype(dst.dtype)
        da.store(down.rechunk(dst.shards or dst.chunks), cast(Any, dst), lock=False)
