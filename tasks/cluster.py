"""A Dask ``distributed.Client`` for the length of a task, or none (the stage then runs locally)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def cluster(address: str | None) -> Iterator[Any]:
    """A client of the scheduler at ``address`` (tcp://host:8786), closed afterwards; None without one."""
    if not address:
        yield None
        return
    from distributed import Client

    with Client(address, timeout="30s") as client:
        yield client
