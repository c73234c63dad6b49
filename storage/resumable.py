"""The one check before resuming a blockwise store: is it an unfinished store of this kind, made
from the same inputs and parameters? Shared by predictions and segmentations.

A store is resumed only when it is of the expected ``kind``, not complete, and its recorded
identity (everything that shapes its bytes) and shape equal the ones asked for; every other
case is refused with one line naming what differs and the flag that replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from storage.errors import StoreExistsError, StoreNotFoundError
from storage.files import remove_partial_writes
from storage.volume import open_volume

REPLACE = "--overwrite (overwrite=True from Python)"


def normalised(identity: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON so tuples and lists (and int/float keys) compare as stored."""
    return json.loads(json.dumps(identity, sort_keys=True))


def check_resumable(path: str, *, kind: str, noun: str, identity_key: str, identity: dict[str, Any],
                    shape: Sequence[int], mismatch: type[Exception], started_with: str) -> None:
    """Raise unless ``path`` holds an unfinished ``kind`` store with ``identity`` and ``shape``; then
    remove what a killed writer left half-written (zarr's ``.partial`` objects).

    ``noun`` names the store in messages ("prediction"); ``started_with`` says what differs
    ("with another model or other parameters"); ``mismatch`` is the error raised for that case.
    """
    try:
        existing = open_volume(path, require_complete=False)
    except StoreNotFoundError as e:
        raise StoreExistsError(f"{path} exists but is not a {noun} volume; pass {REPLACE} "
                               "to replace it") from e
    if existing.attrs.get("kind") != kind:
        raise StoreExistsError(f"{path} exists and is a {existing.attrs.get('kind')!r} volume, not a {noun}; "
                               f"pass {REPLACE} to replace it")
    if existing.is_complete:
        raise StoreExistsError(f"{path} is a complete {noun} already; pass {REPLACE} to replace it")
    found, ident = normalised(existing.attrs.get(identity_key, {})), normalised(identity)
    if found != ident or list(existing.shape) != [int(s) for s in shape]:
        diff = sorted(k for k in set(found) | set(ident) if found.get(k) != ident.get(k))
        details = "; ".join(f"{k}: stored {found.get(k)!r}, asked {ident.get(k)!r}" for k in diff[:6])
        raise mismatch(f"{path} is an unfinished {noun} started {started_with} "
                       f"({details or 'shape ' + str(existing.shape)}); resume with the same ones, or pass "
                       f"{REPLACE} to start again")
    remove_partial_writes(path)  # a killed writer's unfinished objects: the same files as a whole run
