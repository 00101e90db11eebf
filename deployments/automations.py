"""Creates (or replaces) the team's Automation: a webhook called on refusals and data anomalies.

    eval "$(deployments/stack.sh env)"
    DISTILLERY_WEBHOOK_URL=https://hooks.example.com/... .venv/bin/python deployments/automations.py

It saves a Webhook block (`distillery-alerts`) holding the URL and an Automation
(`distillery: refused or data anomaly`) that, on each `distillery.refused` or
`distillery.data-anomaly` event (flows/events.py), POSTs the event's workload, kind and payload
as JSON to it. The Prefect server runs the Automation; nothing else is needed.
"""

from __future__ import annotations

import os
import sys

BLOCK, AUTOMATION = "distillery-alerts", "distillery: refused or data anomaly"
WATCHED = ["distillery.refused", "distillery.data-anomaly"]
# Jinja over the event, rendered by the server's action: what a chat webhook or a pager needs.
BODY = ('{"workload": "{{ event.resource.get(\'prefect.resource.name\') }}", "event": "{{ event.event }}", '
        '"payload": {{ event.payload | tojson }}}')


def main() -> int:
    url = os.environ.get("DISTILLERY_WEBHOOK_URL", "")
    if not url.startswith(("http://", "https://")):
        print("error: set DISTILLERY_WEBHOOK_URL to the http(s) address to notify", file=sys.stderr)
        return 2
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    # allow_private_urls: a team's hook is often on its own network (and the tests' on loopback).
    block_id = Webhook(method="POST", url=url, headers={"Content-Type": "application/json"},
                       allow_private_urls=True).save(BLOCK, overwrite=True)
    automation = AutomationCore(
        name=AUTOMATION, description="Tell the team when a retrained model was refused or new data was refused.",
        trigger=EventTrigger(expect=set(WATCHED), match={"prefect.resource.id": "distillery.workload.*"},
                             posture=Posture.Reactive, threshold=1),
        actions=[CallWebhook(block_document_id=block_id, payload=BODY)])
    with get_client(sync_client=True) as client:
        for existing in client.read_automations_by_name(AUTOMATION):
            client.delete_automation(existing.id)
        created = client.create_automation(automation)
    print(f"automation {created}: {', '.join(WATCHED)} -> {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
