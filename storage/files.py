"""Small files written atomically: checkpoints, JSON reports, metric logs, PNG previews.

A file is written to a temporary name in the same directory and renamed over the target,
so a reader (or a resumed run) sees either the old complete file or the new complete file,
never a torn one. Local paths only; bytes are produced by the caller (storage never
imports torch: a checkpoint arrives here already serialised).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from storage.errors import StoreExistsError, StoreNotFoundError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    p = os.fspath(path)
    if not overwrite and os.path.exists(p):
        raise StoreExistsError(f"{p} already exists; pass "
                               "--overwrite (overwrite=True from Python) to replace it")
    directory = os.path.dirname(p) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(p)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise StoreNotFoundError(f"no file at {p}")
    with open(p, "rb") as f:
        return f.read()


def write_json(path: str | os.PathLike[str], obj: Any, *, overwrite: bool = True) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode(), overwrite=overwrite)


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(read_bytes(path))


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON record as a line (metric logs); the line is flushed and fsynced."""
    p = os.fspath(path)
    os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
    with open(p, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Start a metric log afresh with ``records`` (atomically replacing any earlier log)."""
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def remove_partial_writes(store: str | os.PathLike[str]) -> list[str]:
    """Remove the ``*.partial`` files a killed writer left inside a local Zarr store; returns them.

    zarr's local store writes each object to ``<key>.<uuid>.partial`` and renames it into place;
    a kill between the two leaves the temporary file, which no re-run rewrites. Call only while
    no one writes the store (under its lock, before a resumed run starts writing), so a resumed
    store ends with the files of an uninterrupted one.
    """
    root = os.fspath(store)
    if "://" in root and not root.startswith("file://"):
        return []
    found = [os.path.join(d, f) for d, _, files in os.walk(root.removeprefix("file://"))
             for f in files if f.endswith(".partial")]
    remove_files(*found)
    return found


def remove_files(*paths: str | os.PathLike[str]) -> None:
    """Remove the files that exist among ``paths`` (an earlier run's leftovers)."""
    for p in paths:
        if os.path.isfile(p):
            os.unlink(p)


def remove_stale(directory: str | os.PathLike[str], pattern: str, keep: Iterable[str]) -> list[str]:
    """Remove the files in ``directory`` matching the glob ``pattern`` whose names are not in
    ``keep``: an earlier run's outputs this run did not rewrite. Returns the removed paths."""
    import fnmatch

    d, kept = os.fspath(directory), set(keep)
    if not os.path.isdir(d):
        return []
    stale = [os.path.join(d, f) for f in sorted(os.listdir(d))
             if fnmatch.fnmatch(f, pattern) and f not in kept]
    remove_files(*stale)
    return stale


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    p = os.fspath(path)
    if not os.path.isfile(p):
        return []
    with open(p, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_png(path: str | os.PathLike[str], image: Any, *, overwrite: bool = True) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as a PNG, atomically."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)


def lookup_dotted(record: Mapping[str, Any], dotted: str) -> Any:
    """``record["a"]["b"]`` for ``dotted`` = ``"a.b"`` (a record's nested key); KeyError if absent."""
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def write_png_in(directory: str | os.PathLike[str], name: str, image: Any) -> str:
    """:func:`write_png` of ``image`` as ``directory/name``; returns the path written."""
    path = os.path.join(os.fspath(directory), name)
    write_png(path, image)
    return path


def check_report_target(path: str | os.PathLike[str], made_from: dict[str, Any], *,
                        overwrite: bool = False) -> None:
    """Refuse to replace the JSON report at ``path`` when it was made from other inputs.

    ``made_from`` holds the keys that name the inputs (``{"prediction": ..., "labels": ...}``;
    a dotted key such as ``"held_out.slices"`` names a nested one, and a key the report lacks reads
    as None); a report of the same inputs is simply made again. Call before the (long) scoring.
    """
    p = os.fspath(path)
    if overwrite or not os.path.isfile(p):
        return
    try:
        existing = read_json(p)
    except ValueError:
        existing = None
    if not isinstance(existing, dict):
        raise StoreExistsError(f"{p} exists and is not an emseg report; pass --overwrite (overwrite=True) "
                               "to replace it")
    def have(key: str) -> Any:
        try:
            return lookup_dotted(existing, key)
        except KeyError:
            return None

    differ = [k for k, v in made_from.items() if have(k) != json.loads(json.dumps(v))]
    if differ:
        k = differ[0]
        raise StoreExistsError(f"{p} is a report made from other inputs ({k}: {have(k)!r}, now "
                               f"{made_from[k]!r}); pass --overwrite (overwrite=True) to replace it, or "
                               "choose another run name")
