"""Is a stage's output current? Content digests of inputs and the records stages leave.

Every stage records what it was made from in its output: a Zarr store in
``attrs["emseg"]`` (with ``complete``), a model run folder in ``config.json``, a report
folder in ``metrics.json``. :func:`check_current` compares such a record with what a
caller expects (the same inputs and parameters) and says why not when it differs, so the
pipeline can skip a step whose output is complete and up to date and re-run any other.

Digests are ``"sha256:<hex>"`` strings of the bytes, so a renamed or re-copied file keeps
its digest and an edited one gets a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zarr

from storage.errors import StoreNotFoundError
from storage.files import lookup_dotted, read_json, write_json

_BLOCK = 8 << 20
# The record file of a stage that writes a folder rather than a Zarr store, in order of preference.
RECORD_FILES = ("config.json", "metrics.json", "record.json")


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 8 MiB blocks (constant memory for any size)."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise StoreNotFoundError(f"no file at {p}")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def content_digest(path: str | os.PathLike[str]) -> str:
    """Digest of a file, or of a folder (e.g. of TIFF slices): names and bytes of its files."""
    p = os.fspath(path)
    if os.path.isfile(p):
        return file_digest(p)
    if not os.path.isdir(p):
        raise StoreNotFoundError(f"no file or folder at {p}")
    h = hashlib.sha256()
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, p).encode() + b"\0" + file_digest(full).encode() + b"\0")
    return f"sha256:{h.hexdigest()}"


def _stat_signature(path: str) -> str:
    """Digest of the (relative name, size, mtime) of a file or of every file in a folder."""
    if os.path.isfile(path):
        st = os.stat(path)
        entries: list[list[Any]] = [["", st.st_size, st.st_mtime_ns]]
    else:
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                st = os.stat(full)
                entries.append([os.path.relpath(full, path), st.st_size, st.st_mtime_ns])
    return params_digest(entries)


def memo_content_digest(path: str | os.PathLike[str], memo_file: str | os.PathLike[str]) -> str:
    """:func:`content_digest` of ``path``, remembered in ``memo_file`` by its files' sizes and mtimes.

    An input whose files did not change (same names, sizes, mtimes) is not read again; a
    touched or re-copied one is hashed again and, holding the same bytes, keeps its digest.
    The memo is a JSON file {absolute path: {signature, digest}}, rewritten atomically; two
    writers at once can only lose an entry, which costs one more hash later.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise StoreNotFoundError(f"no file or folder at {p}")
    key, signature = os.path.abspath(p), _stat_signature(p)
    memo_path = os.fspath(memo_file)
    memo: dict[str, Any] = {}
    if os.path.isfile(memo_path):
        loaded = read_json(memo_path)
        memo = loaded if isinstance(loaded, dict) else {}
    hit = memo.get(key)
    if isinstance(hit, dict) and hit.get("signature") == signature and isinstance(hit.get("digest"), str):
        return str(hit["digest"])
    digest = content_digest(p)
    memo[key] = {"signature": signature, "digest": digest}
    write_json(memo_path, memo)
    return digest


def params_digest(values: Any) -> str:
    """A stable digest of JSON-able parameters (key order does not matter)."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a stage recorded in its output, or None when there is no output (or no record).

    A ``.zarr`` store: its ``attrs["emseg"]``. A folder: the first of :data:`RECORD_FILES`
    found in it (merged with ``{"complete": True}`` when it says nothing about
    completeness, because those files are written atomically and last). A ``.json`` file:
    its content.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        return None
    if p.rstrip("/").endswith(".zarr"):
        try:
            group = zarr.open_group(p, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None
        record = group.attrs.get("emseg", {})
        return dict(record) if isinstance(record, Mapping) else None
    if os.path.isdir(p):
        for name in RECORD_FILES:
            f = os.path.join(p, name)
            if os.path.isfile(f):
                record = read_json(f)
                if not isinstance(record, dict):
                    return None
                return {"complete": True, **record}
        return None
    if p.endswith(".json"):
        record = read_json(p)
        return {"complete": True, **record} if isinstance(record, dict) else None
    return None


@dataclass(frozen=True)
class Freshness:
    """Outcome of :func:`check_current`: ``current`` and, when not, why (for the logs)."""

    current: bool
    reason: str
    exists: bool


def _normalise(value: Any) -> Any:
    # Tuples and lists, ints and floats compare alike once both sides went through JSON.
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def check_current(record: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> Freshness:
    """Is an output with ``record`` complete and made from ``expected``?

    ``expected`` maps (dotted) record keys to values: ``{"config": {...}, "source_digest":
    "sha256:..."}``. Every key must be present with an equal value (after a JSON round
    trip); extra keys in the record are ignored.
    """
    if record is None:
        return Freshness(False, "no output yet", exists=False)
    if not record.get("complete", False):
        return Freshness(False, "output is incomplete (an earlier run stopped)", exists=True)
    for key, want in expected.items():
        try:
            have = lookup_dotted(record, key)
        except KeyError:
            return Freshness(False, f"output does not record {key!r}", exists=True)
        if _normalise(have) != _normalise(want):
            return Freshness(False, f"{key} differs: output has {have!r}, wanted {want!r}", exists=True)
    return Freshness(True, "complete and made from the same inputs and parameters", exists=True)


def is_current(path: str | os.PathLike[str], expected: Mapping[str, Any]) -> Freshness:
    """:func:`check_current` on the record found at ``path``."""
    return check_current(read_record(path), expected)


def write_stamp(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Record, atomically, that a step finished and what it was made from.

    For stages whose output cannot show completion by itself (a training run folder
    exists from its first step on), the orchestrator writes this after the stage returns
    and checks it with :func:`is_current` on the stamp's path.
    """
    nested: dict[str, Any] = {}
    for key, value in _normalise(dict(record)).items():
        # Dotted keys ("validation.z") are stored nested, as check_current looks them up.
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    write_json(path, {**nested, "complete": True})


def clear_stamp(path: str | os.PathLike[str]) -> None:
    """Remove a stamp before its step runs again, so a failure leaves none behind."""
    try:
        os.remove(os.fspath(path))
    except FileNotFoundError:
        pass
