"""The nightly inbox: TIFF stacks dropped into a folder, and the ledger of processed ones.

::

    inbox/
        stack-a.tif            a stack to segment
        stack-a_labels.tif     optional ground truth for it (same stem + "_labels")
        stack-b.ome.tiff
    workspace/nightly/processed.json     {content digest: {name, source, status, ...}}

A file is taken only once it is *stable*: its size and modification time did not change
over a settle interval, so a stack still being copied in is left for the next scan. A
stack is keyed by the digest of its bytes, so renaming it or copying it in again does not
process it twice. The ledger is rewritten atomically (temp file + rename) after each
stack, under a file lock (concurrent runs merge their entries), so a killed run loses at
most the stack in flight.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from storage.errors import StoreNotFoundError
from storage.files import read_json, write_json
from storage.locks import store_lock
from storage.runs import newest_finished_checkpoint

TIFF_SUFFIXES = (".tif", ".tiff")
LABEL_SUFFIX = "_labels"
LEDGER_RELPATH = os.path.join("nightly", "processed.json")


def _stem(filename: str) -> str:
    name = filename
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_tiff(filename: str) -> bool:
    return filename.lower().endswith(TIFF_SUFFIXES) and not filename.startswith(".")


def stack_name(filename: str, digest: str, n_hex: int = 8) -> str:
    """A workspace name for a stack: its stem made safe plus a short content digest."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", _stem(os.path.basename(filename))).strip("-._") or "stack"
    return f"{stem[:60]}-{digest.split(':')[-1][:n_hex]}"


@dataclass(frozen=True)
class InboxStack:
    """One stack found in the inbox: its path and the path of its labels, if any."""

    path: str
    labels: str | None


def _snapshot(inbox: str) -> dict[str, tuple[int, int]]:
    out = {}
    for entry in os.scandir(inbox):
        if entry.is_file() and is_tiff(entry.name):
            st = entry.stat()
            out[entry.path] = (st.st_size, st.st_mtime_ns)
    return out


def scan_stable(inbox: str | os.PathLike[str], settle_s: float,
                sleep: Callable[[float], None] = time.sleep) -> tuple[list[InboxStack], list[str]]:
    """Stacks in ``inbox`` whose size and mtime stayed the same over ``settle_s`` seconds.

    Returns (stable stacks sorted by path, paths still changing). A stack's labels
    (``<stem>_labels.tif``) are attached when they are stable too; labels files are never
    stacks of their own. Empty files count as still changing (a copy that has not started).
    """
    root = os.fspath(inbox)
    if not os.path.isdir(root):
        raise StoreNotFoundError(f"inbox folder {root} does not exist")
    if settle_s < 0:
        raise ValueError(f"settle_s must be >= 0, got {settle_s}")
    before = _snapshot(root)
    if settle_s:
        sleep(settle_s)
    after = _snapshot(root)
    stable = {p for p, stat in after.items() if before.get(p) == stat and stat[0] > 0}
    changing = sorted(p for p in after if p not in stable)
    by_stem = {_stem(os.path.basename(p)): p for p in stable}
    stacks = []
    for p in sorted(stable):
        stem = _stem(os.path.basename(p))
        if stem.endswith(LABEL_SUFFIX):  # labels, with or without their stack
            continue
        labels = by_stem.get(stem + LABEL_SUFFIX)
        stacks.append(InboxStack(path=p, labels=labels))
    return stacks, changing


class ProcessedLedger:
    """Which stacks (by content digest) were processed, with their outcome.

    Entries: ``{"name", "source", "status": "done" | "failed", "error", "outputs", "at"}``.
    A failed stack stays recorded so it is not retried every night; a corrected file has
    a new digest and is picked up again (or pass ``retry_failed`` to the nightly flow).

    Several nightly runs may share a ledger (two started at once, or on two hosts): each
    :meth:`record` re-reads the file and rewrites it under the ledger's lock
    (``processed.json.lock``), so no run's entries are lost. A ``failed`` outcome does not
    replace a ``done`` that another run recorded after this ledger was loaded: that run
    made the stack's outputs.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._loaded_at = _now()
        self._entries: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not os.path.exists(self.path):
            return {}
        data = read_json(self.path)
        if not isinstance(data, dict) or not isinstance(data.get("stacks"), dict):
            raise ValueError(f"{self.path} is not an emseg inbox ledger (no 'stacks' mapping)")
        return cast(dict[str, dict[str, Any]], data["stacks"])

    @classmethod
    def in_workspace(cls, workspace: str | os.PathLike[str]) -> ProcessedLedger:
        return cls(os.path.join(os.fspath(workspace), LEDGER_RELPATH))

    def get(self, digest: str) -> dict[str, Any] | None:
        return self._entries.get(digest)

    def entries(self) -> dict[str, dict[str, Any]]:
        return dict(self._entries)

    def record(self, digest: str, **entry: Any) -> None:
        """Record one stack's outcome: read, update and rewrite the file (atomically) under its lock."""
        with store_lock(self.path, what="updated"):
            entries = self._read()
            current = entries.get(digest)
            newer_done = (current is not None and current.get("status") == "done"
                          and str(current.get("at", "")) >= self._loaded_at)
            if not (entry.get("status") == "failed" and newer_done):
                entries[digest] = {**entry, "at": _now()}
                write_json(self.path, {"version": 1, "stacks": entries})
            self._entries = entries


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def newest_best_checkpoint(models_dir: str | os.PathLike[str],
                           filename: str = "checkpoint-best.pt") -> str:
    """``<run>/checkpoint-best.pt`` of the most recently written *finished* training run in
    ``models_dir`` (one whose training wrote ``complete.json``; see :mod:`storage.runs`)."""
    return newest_finished_checkpoint(models_dir, filename)
