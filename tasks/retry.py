"""When a failed task is worth retrying: transient I/O only.

A flaky network file system or object store fails a read or write now and succeeds a
minute later; bad input, an existing output, a missing file, a full or read-only disk
(ENOSPC, EROFS) fail the same way every time, so retrying them only delays the report.
The resumable writers (ingest, training-set generation) retry with this condition: a
retry continues where the failed try stopped.
"""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from storage.errors import StorageError, is_permanent_os_error


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """A Prefect ``retry_condition_fn``: retry OSErrors that may go away, nothing else."""
    exc = state.data if isinstance(state.data, BaseException) else None
    cause = exc.__cause__ if isinstance(exc, StorageError) else exc
    return isinstance(cause, OSError) and not is_permanent_os_error(cause) and not isinstance(
        cause, FileNotFoundError | FileExistsError | PermissionError | IsADirectoryError | StorageError)
