"""Prefect events for what a team must hear about: promoted, refused, rolled back, data anomaly.

    distillery.promoted      a run's INT8 student became <name>/production
    distillery.refused       a run finished but was not promoted (the reasons in the payload)
    distillery.rolled-back   production went back to the run before (by whom)
    distillery.data-anomaly  new data the checks refuse stopped a run before training

Each is about the resource `distillery.workload.<name>`, related to the run record
(`distillery.run.<digest>`), with the decision and its reasons in the payload, so an
Automation can react (deployments/automations.py ships one that calls a webhook on refusals
and anomalies) and the UI's event feed shows them. Emitting is best effort: a server that is
briefly away must not fail a run that has done its work; it is said on stderr instead.
"""

from __future__ import annotations

import sys

PROMOTED, REFUSED, ROLLED_BACK, DATA_ANOMALY = "promoted", "refused", "rolled-back", "data-anomaly"
EVENTS = tuple(f"distillery.{kind}" for kind in (PROMOTED, REFUSED, ROLLED_BACK, DATA_ANOMALY))


def resource(name: str) -> dict:
    return {"prefect.resource.id": f"distillery.workload.{name}", "prefect.resource.name": name}


def emit(kind: str, name: str, payload: dict, run: str | None = None, drain: bool = False) -> bool:
    """Emits `distillery.<kind>` about workload `name`; False (and a line on stderr) when it could not.

    `drain`: wait until it is sent (a command about to exit; a flow run drains at its end).
    Outside a flow run only with a server named (PREFECT_API_URL): a bare command must not
    start a temporary server just to tell nobody."""
    import os

    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None and not os.environ.get("PREFECT_API_URL"):
        return False
    try:
        from prefect.events import emit_event
        from prefect.events.worker import EventsWorker

        related = [{"prefect.resource.id": f"distillery.run.{run}", "prefect.resource.role": "run"}] if run else []
        event = emit_event(event=f"distillery.{kind}", resource=resource(name), related=related, payload=payload)
        if drain:
            EventsWorker.drain_all(timeout=30)
    except Exception as exc:  # noqa: BLE001 - the run's work is done and recorded; the event is news
        print(f"warning: event distillery.{kind} of {name} not emitted ({type(exc).__name__}: {exc})", file=sys.stderr)
        return False
    return event is not None
