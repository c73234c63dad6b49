"""One writer per output: a Prefect global concurrency limit of 1 named after the output path.

Deployment concurrency limits keep two runs of *one* deployment apart; this keeps apart
any two runs (pipeline, nightly, the same pipeline started twice with other names...)
that would write the same store. The lock is a lease: its holder renews it while alive,
so a killed worker's lock expires ``lease_s`` seconds after it died instead of blocking
the output forever. Zarr has no cross-process locking of its own (and a second
writer's ``overwrite`` would delete what the first is writing), hence a lock here.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LEASE_S = 60.0  # the server's minimum; renewed by the holder while it runs


def lock_name(path: str) -> str:
    """A readable, unique limit name for an output path: ``emseg-write-<tail>-<digest12>``."""
    full = os.path.abspath(path) if "://" not in path else path
    tail = re.sub(r"[^A-Za-z0-9-]+", "-", "-".join(full.rstrip("/").split("/")[-2:])).strip("-")[-60:]
    return f"emseg-write-{tail}-{hashlib.sha1(full.encode()).hexdigest()[:12]}"


def ensure_limit(name: str) -> bool:
    """Create the global concurrency limit ``name`` (limit 1) unless it exists; True if created.

    Looked up first: a blind create of an existing name fails inside the server, which logs
    a long IntegrityError traceback, so every re-run would print one per output. Only two
    runs creating the same new lock at the same instant still meet ObjectAlreadyExists.
    """
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if existing.limit != 1:  # changed by hand in the UI: one writer per output, always
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1))
            return False
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            return False
        return True


@contextmanager
def output_lock(path: str, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the write lock of ``path`` (waiting for another holder, at most ``timeout_s``)."""
    name = lock_name(path)
    ensure_limit(name)
    with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=LEASE_S, strict=True):
        yield
