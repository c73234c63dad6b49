"""Cross-process write locks beside stores and files: ``<path>.lock``, held with ``flock``.

::

    predictions/a.zarr          the store
    predictions/a.zarr.lock     its lock file: "pid <n> on <host>" of the holder

Zarr does no locking, and two processes writing one store duplicate work or delete each
other's data (an ``overwrite`` removes what the other is writing). A writer holds the
store's lock from its decision ("create, resume or reuse?") to its last write. The lock is
an ``fcntl.flock`` on the lock file, so the kernel releases it when the holder dies: a
killed run never leaves a stale lock behind, and the lock file itself is left in place
(removing it would let two processes lock two different files).

Locks are re-entrant per process: a flow that holds a store's lock can call a stage that
takes it again. Only local paths are locked; an object store (``s3://...``) has no
``flock``, and writers there rely on the orchestrator's locks.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from storage.errors import StorageError

LOCK_SUFFIX = ".lock"
_POLL_S = 0.2
log = logging.getLogger(__name__)


class StoreLockedError(StorageError):
    """Another run holds the write lock of a store (and this one would not wait)."""


class _Held:
    def __init__(self, handle: IO[str]) -> None:
        self.handle, self.count = handle, 1


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def lock_path(path: str | os.PathLike[str]) -> str | None:
    """The lock file of ``path`` (``<path>.lock`` beside it), or None for a remote URL."""
    p = os.fspath(path)
    if "://" in p and not p.startswith("file://"):
        return None
    return os.path.abspath(p.removeprefix("file://").rstrip("/")) + LOCK_SUFFIX


def _holder(lock: str) -> str:
    try:
        with open(lock, encoding="utf-8") as f:
            return f.read().strip() or "another process"
    except OSError:
        return "another process"


def acquire(path: str | os.PathLike[str], *, timeout_s: float | None = None, what: str = "written") -> bool:
    """Take the write lock of ``path``, waiting at most ``timeout_s`` seconds (None: as long as it takes).

    Returns False (and does nothing) for a remote path. Raises :class:`StoreLockedError`,
    naming the lock file and its holder, when the wait times out.
    """
    lock = lock_path(path)
    if lock is None:
        return False
    with _GUARD:
        held = _HELD.get(lock)
        if held is not None:
            held.count += 1
            return True
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 (kept open while the lock is held)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waited = False
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and (timeout_s is None or timeout_s > 0):
                    log.info("%s: waiting for %s (%s holds it)", os.fspath(path), lock, _holder(lock))
                waited = True
                if deadline is not None and time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"{os.fspath(path)} is being {what} by another run ({_holder(lock)} holds "
                        f"{lock}); wait for it to finish (the lock goes when its holder exits)") from None
                time.sleep(_POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
    except BaseException:
        handle.close()
        raise
    with _GUARD:
        _HELD[lock] = _Held(handle)
    return True


def release(path: str | os.PathLike[str]) -> None:
    """Give back one hold of ``path``'s lock; the last one unlocks it. No-op if not held here."""
    lock = lock_path(path)
    if lock is None:
        return
    with _GUARD:
        held = _HELD.get(lock)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[lock]
    fcntl.flock(held.handle.fileno(), fcntl.LOCK_UN)
    held.handle.close()


def is_held_here(path: str | os.PathLike[str]) -> bool:
    """True when this process holds ``path``'s lock."""
    lock = lock_path(path)
    with _GUARD:
        return lock is not None and lock in _HELD


@contextmanager
def store_lock(path: str | os.PathLike[str], *, timeout_s: float | None = None,
               what: str = "written") -> Iterator[None]:
    """Hold the write lock of ``path`` for the ``with`` block (see :func:`acquire`)."""
    taken = acquire(path, timeout_s=timeout_s, what=what)
    try:
        yield
    finally:
        if taken:
            release(path)
