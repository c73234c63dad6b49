"""One-time (idempotent) set-up of a Prefect server for emseg: work pools and the zombie automation.

``emseg setup`` (or :func:`setup_server`) creates

- the work pools ``cpu`` and ``gpu`` (type ``process``; ``gpu`` runs one flow at a time,
  because one process drives one GPU), and
- the automation "emseg: crash zombie flows" from
  https://docs.prefect.io/v3/advanced/detect-zombie-flows : a flow run that stops sending
  heartbeats (its worker or machine died) is marked Crashed after ``zombie_after_s``, so
  it does not stay "Running" forever holding its deployment's concurrency slot.

Heartbeats are sent by flow runs whose environment sets ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
(>= 30 s); ``prefect.yaml`` sets it for every emseg deployment. ``zombie_after_s`` must
exceed that frequency; three missed beats at the default 30 s is 90 s.

Running it again changes nothing, except that it brings the automation's window up to
date. Needs ``PREFECT_API_URL`` (a real server): with none, Prefect would set up a
temporary server that vanishes with the process.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

POOLS = {"cpu": None, "gpu": 1}  # pool name -> concurrency limit (None: unlimited)
ZOMBIE_AUTOMATION = "emseg: crash zombie flows"
HEARTBEAT_FREQUENCY_S = 30
DEFAULT_ZOMBIE_AFTER_S = 90


def _zombie_automation(zombie_after_s: float) -> Any:
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=ZOMBIE_AUTOMATION,
        description="Mark flow runs Crashed when their heartbeats stop (worker or machine died).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=zombie_after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="Flow run marked as crashed: its heartbeats stopped.")],
    )


def ensure_work_pools() -> list[str]:
    """Create the ``cpu`` and ``gpu`` process pools if missing; return the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    created = []
    with get_client(sync_client=True) as client:
        for name, limit in POOLS.items():
            try:
                client.read_work_pool(name)
                continue
            except ObjectNotFound:
                pass
            client.create_work_pool(WorkPoolCreate(
                name=name, type="process", concurrency_limit=limit,
                description=f"emseg {name} workers (process type)",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            ))
            created.append(name)
    return created


def ensure_zombie_automation(zombie_after_s: float = DEFAULT_ZOMBIE_AFTER_S) -> str:
    """Create (or update the window of) the crash-zombie-flows automation; return what was done."""
    from prefect.automations import Automation

    if zombie_after_s <= HEARTBEAT_FREQUENCY_S:
        raise ValueError(f"zombie_after_s must exceed the heartbeat frequency ({HEARTBEAT_FREQUENCY_S} s), "
                         f"got {zombie_after_s}")
    wanted = _zombie_automation(zombie_after_s)
    try:
        # Called from sync code, Prefect's async_dispatch returns the Automation, not a coroutine.
        existing = cast(Automation, Automation.read(name=ZOMBIE_AUTOMATION))
    except ValueError:
        wanted.create()
        return "created"
    if existing.trigger.within == wanted.trigger.within and existing.enabled:  # type: ignore[union-attr]
        return "unchanged"
    wanted.id = existing.id
    wanted.update()
    return "updated"


def setup_server(zombie_after_s: float = DEFAULT_ZOMBIE_AFTER_S) -> dict[str, Any]:
    """Pools and automation, idempotently. Returns a small report for the CLI."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise RuntimeError("PREFECT_API_URL is not set: point it at your Prefect server "
                           "(e.g. http://127.0.0.1:4200/api) before running setup")
    return {"pools_created": ensure_work_pools(), "automation": ensure_zombie_automation(zombie_after_s)}
