"""The demo's two sides, both through the official AXME Python SDK.

An approver agent listens for intents and handles them: it completes small invoices at once,
waits for a human on large ones, and refuses foreign currencies. The initiator submits three
intents, approves the waiting one as the human, and prints every lifecycle event it observes.
"""

import json
import os
import threading
import urllib.request
import uuid

from axme import AxmeClient, AxmeClientConfig

URL = os.environ["AXP_URL"]
APPROVER = "agent://acme/finance/approver"
REQUESTER = "agent://acme/billing/requester"


def post(path, body, token):
    """A plain POST, for the node's calls that the SDK has no method for."""
    request = urllib.request.Request(
        f"{URL}{path}", data=json.dumps(body).encode(), headers={"x-api-key": token, "content-type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def issue_key(agents):
    return post("/v1/admin/keys", {"owner": agents[0], "agents": agents}, os.environ["AXP_ADMIN_KEY"])["token"]


def client(token):
    return AxmeClient(AxmeClientConfig(base_url=URL, api_key=token))


def approver(sdk, token, expected):
    handled = 0
    for delivery in sdk.listen(APPROVER, wait_seconds=5, timeout_seconds=60):
        intent = sdk.get_intent(delivery["intent_id"])["intent"]
        invoice = intent["payload"]
        path = f"/v1/intents/{intent['intent_id']}/transition"
        print(f"  [approver] received {invoice['invoice']} ({invoice['amount']} {invoice['currency']})")
        if invoice["currency"] != "EUR":
            sdk.resolve_intent(intent["intent_id"], {"status": "FAILED", "error": {"code": "currency", "message": "EUR only"}})
        elif invoice["amount"] > 1000:
            post(path, {"status": "WAITING", "waiting_reason": "WAITING_FOR_HUMAN"}, token)
        else:
            post(path, {"status": "IN_PROGRESS"}, token)
            sdk.resolve_intent(intent["intent_id"], {"status": "COMPLETED", "result": {"approved": True}})
        handled += 1
        if handled == expected:
            return


def main():
    approver_token = issue_key([APPROVER])
    approver_sdk = client(approver_token)
    requester_sdk = client(issue_key([REQUESTER]))
    invoices = [("INV-1", 120, "EUR"), ("INV-2", 4800, "EUR"), ("INV-3", 75, "USD")]
    worker = threading.Thread(target=approver, args=(approver_sdk, approver_token, len(invoices)), daemon=True)
    worker.start()

    ids = {}
    for number, amount, currency in invoices:
        ids[number] = requester_sdk.send_intent(
            {"intent_type": "intent.invoice.approve.v1", "to_agent": APPROVER,
             "payload": {"invoice": number, "amount": amount, "currency": currency}},
            idempotency_key=f"demo-{number}-{uuid.uuid4()}",
        )
        print(f"[requester] submitted {number} as intent {ids[number]}")
    worker.join(timeout=60)

    # The large invoice waits for a person; they approve it, and the approver's side finishes it.
    waiting = ids["INV-2"]
    print(f"[human] approving {waiting}")
    requester_sdk.resume_intent(waiting, {"approve_current_step": True, "reason": "checked by finance"})
    approver_sdk.resolve_intent(waiting, {"status": "COMPLETED", "result": {"approved": True, "by": "human"}})

    for number, intent_id in ids.items():
        print(f"\n[requester] lifecycle of {number} ({intent_id}):")
        for event in requester_sdk.observe(intent_id, wait_seconds=2, timeout_seconds=30):
            reason = f" ({event['waiting_reason']})" if event.get("waiting_reason") else ""
            print(f"  seq {event['seq']:>2}  {event['event_type']:<22} {event['status']}{reason}")
    print("\ndemo finished: every intent reached a terminal status")


if __name__ == "__main__":
    main()
