"""The per-output write lock is created once and looked up afterwards (issue 14: a re-run
printed the server's IntegrityError traceback for every lock it created blindly)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_lock_is_created_once_and_reused(prefect_server, tmp_path, monkeypatch):
    from prefect.client.orchestration import SyncPrefectClient, get_client

    from tasks.locks import ensure_limit, lock_name, output_lock

    creates: list[str] = []
    real_create = SyncPrefectClient.create_global_concurrency_limit

    def counting_create(self, limit):  # type: ignore[no-untyped-def]
        creates.append(limit.name)
        return real_create(self, limit)

    monkeypatch.setattr(SyncPrefectClient, "create_global_concurrency_limit", counting_create)
    out = str(tmp_path / "predictions" / "v.zarr")
    name = lock_name(out)
    for _ in range(3):  # three runs writing the same output, one after another
        with output_lock(out, timeout_s=30):
            pass
    assert creates == [name]  # created by the first run only: the others found it
    assert ensure_limit(name) is False
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
        assert limit.limit == 1 and limit.active_slots == 0
