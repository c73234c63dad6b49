"""One fan-out of independent units of work over Dask, with progress.

::

    units u0 u1 u2 ...  ──fn(*shared, u)──▶  results (in unit order)
                         local Dask threads, or a distributed cluster (``client``);
                         progress(done, total) after each unit, done += weight(result)

``shared`` arguments (a job, sources, a config) travel once: one graph node locally,
broadcast once to every worker on a cluster. The units run in any order; each must be
safe to run alone (they write disjoint blocks, groups or slabs of a store).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

Progress = Callable[[int, int], None]
Scheduler = Literal["threads", "sync"]
T = TypeVar("T")


def fan_out(fn: Callable[..., T], units: Sequence[Any], *, shared: Sequence[Any] = (), client: Any = None,
            scheduler: Scheduler = "threads", num_workers: int | None = None,
            progress: Progress | None = None, done: int = 0, total: int | None = None,
            weight: Callable[[T], int] | None = None, submit: Mapping[str, Any] | None = None) -> list[T]:
    """Call ``fn(*shared, unit)`` for every unit; return the results in unit order.

    ``client`` (a ``distributed.Client``) runs them on its cluster with ``submit`` options
    (e.g. ``{"resources": {"GPU": 1}, "retries": 2}``); without one, Dask's local
    ``scheduler`` with ``num_workers`` threads. ``progress(done, total)`` is called once at
    the start and after each unit: ``done`` starts at ``done`` (units finished by earlier
    runs) and grows by ``weight(result)`` (default 1); ``total`` defaults to done + units.
    """
    total = done + len(units) if total is None else total
    count = [done]

    def advance(result: T) -> None:
        count[0] += 1 if weight is None else int(weight(result))
        if progress is not None:
            progress(count[0], total)

    if progress is not None:
        progress(done, total)
    if not units:
        return []
    if client is not None:
        return _on_cluster(fn, units, shared, client, dict(submit or {}), advance)
    import dask
    from dask.callbacks import Callback

    token = uuid.uuid4().hex[:12]
    # Named nodes: dask would otherwise hash every shared argument (arrays included) to name it.
    nodes = [dask.delayed(a, name=f"fanout-shared-{j}-{token}", traverse=False) for j, a in enumerate(shared)]
    tasks = [dask.delayed(fn, pure=False)(*nodes, u, dask_key_name=f"fanout-{i}-{token}")
             for i, u in enumerate(units)]
    keys = {t.key for t in tasks}

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in keys:
            advance(result)

    with Callback(posttask=posttask):
        return list(dask.compute(*tasks, scheduler=scheduler, num_workers=num_workers))


def _on_cluster(fn: Callable[..., T], units: Sequence[Any], shared: Sequence[Any], client: Any,
                submit: dict[str, Any], advance: Callable[[T], None]) -> list[T]:
    from distributed import as_completed

    remote = client.scatter(list(shared), broadcast=True) if shared else []
    futures = [client.submit(fn, *remote, u, pure=False, **submit) for u in units]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(units)
    for fut in as_completed(futures):
        results[index[fut.key]] = value = fut.result()
        advance(value)
    return results
