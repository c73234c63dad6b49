"""Exceptions raised by the storage layer.

A small hierarchy (in the spirit of zarr's ``errors.py``) so callers can catch
"anything storage refused" or one precise case. Every message names the path and
the problem.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

# Errors that come back the same on every try: a read-only or full file system, no permission.
PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


class StorageError(Exception):
    """Base class for every error raised by :mod:`storage`."""


class InputError(StorageError, ValueError):
    """An input file or folder is missing, unreadable, corrupt or of the wrong kind."""


class StoreExistsError(StorageError, FileExistsError):
    """An output store already exists and ``overwrite=True`` was not given."""


class IncompleteStoreError(StorageError):
    """A store exists but its writer never marked it complete (killed, failed, or still running)."""


class StoreNotFoundError(StorageError, FileNotFoundError):
    """No store exists at the given path."""


class ShapeMismatchError(StorageError, ValueError):
    """Two arrays that must share a geometry (image and labels, say) do not."""


class DamagedStoreError(StorageError):
    """A store marked complete lacks data it was written with (a chunk or shard file is gone)."""


class OutputWriteError(StorageError):
    """An output cannot be written: the disk is full or read-only, or permission is denied.

    Not transient: retrying gives the same error. ``__cause__`` is the original OSError.
    """


def is_permanent_os_error(exc: BaseException) -> bool:
    """True for an OSError that a retry would meet again (see :data:`PERMANENT_ERRNOS`)."""
    return isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS


@contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a permanent OSError (read-only or full disk, no permission) raised while writing
    ``path`` into one :class:`OutputWriteError` line naming ``path`` (ENOSPC names no file)."""
    try:
        yield
    except OSError as e:
        if not is_permanent_os_error(e) or isinstance(e, StorageError):
            raise
        where = f" ({e.filename})" if e.filename and os.fspath(e.filename) != os.fspath(path) else ""
        raise OutputWriteError(f"cannot write {os.fspath(path)}{where}: {e.strerror or e} "
                               f"[errno {e.errno}]") from e
