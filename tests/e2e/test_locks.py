"""tasks.locks: one writer per output, through a global concurrency limit on the real server."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from tasks.locks import lock_name, output_lock
from tests.e2e.conftest import PrefectStack


def test_lock_names_are_stable_valid_and_distinct():
    a = lock_name("/ws/predictions/a.zarr")
    assert a == lock_name("/ws/predictions/a.zarr/") and a.startswith("emseg-write-predictions-a-zarr-")
    assert a != lock_name("/other/predictions/a.zarr")


@pytest.mark.e2e
def test_second_writer_of_an_output_waits(prefect_stack: PrefectStack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    events: list[str] = []
    other_done = threading.Event()
    with temporary_settings({PREFECT_API_URL: prefect_stack.api_url}):
        def first() -> None:
            with output_lock("/ws/predictions/locked.zarr"):
                events.append("first in")
                # Held until the other output's lock was taken (were that one to wait for this
                # one, "first out" would come first), then 2 s more while the second writer waits.
                other_done.wait(timeout=120)
                time.sleep(2.0)
                events.append("first out")

        # Settings live in a context variable: the thread gets a copy of this context.
        t = threading.Thread(target=contextvars.copy_context().run, args=(first,))
        t.start()
        while not events:
            time.sleep(0.05)
        with output_lock("/ws/predictions/other.zarr"):  # another output: no waiting
            events.append("other")
        other_done.set()
        with output_lock("/ws/predictions/locked.zarr"):
            events.append("second in")
        t.join()
    assert events == ["first in", "other", "first out", "second in"]
