"""Exceptions raised by the storage layer.

A small hierarchy (in the spirit of zarr's ``errors.py``) so callers can catch
"anything storage refused" or one precise case. Every message names the path and
the problem.
"""

from __future__ import annotations


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
