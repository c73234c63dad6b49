"""Retry policy of the ingest task: transient I/O errors are retried, bad input is not."""

from __future__ import annotations

import errno

import pytest
from prefect.states import Failed

from storage.errors import InputError, StoreExistsError
from tasks.ingest import ingest_stack
from tasks.retry import is_transient


def _wrapped(cause: BaseException) -> InputError:
    try:
        raise InputError("stack.tif: cannot read slices 0..15") from cause
    except InputError as e:
        return e


@pytest.mark.parametrize(("exc", "retry"), [
    (OSError(errno.EIO, "Input/output error"), True),
    (_wrapped(OSError(errno.ESTALE, "Stale file handle")), True),
    (_wrapped(ValueError("failed to read 65536 bytes, got 32768")), False),
    (InputError("stack.tif: no such file or folder"), False),
    (StoreExistsError("v.zarr already exists"), False),
    (FileNotFoundError("gone"), False),
])
def test_only_transient_io_errors_are_retried(exc: BaseException, retry: bool) -> None:
    assert is_transient(ingest_stack, None, Failed(data=exc)) is retry  # type: ignore[arg-type]
