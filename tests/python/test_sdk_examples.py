"""The four example programs of axme-examples (reference/python-sdk.md §2.2), reproduced call by
call against the node: the same SDK calls, idempotency keys, bodies and the values they print.

Each flow runs twice: once as an operator would configure it here (a key scoped to a workspace,
`agent://acme/<workspace>/...` addresses through the AXME_*_AGENT variables), and once with the
examples' own default two-segment addresses (`agent://examples/...`) and the admin key.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import uuid4

import pytest
from axme import AxmeClient

from conftest import Node, assert_event_log, new_correlation_id, raw_get

# The log of a flow that resumed (IN_PROGRESS) before it resolved COMPLETED.
RESUMED_AND_COMPLETED = [
    ("intent.created", "CREATED"),
    ("intent.submitted", "SUBMITTED"),
    ("intent.in_progress", "IN_PROGRESS"),
    ("intent.completed", "COMPLETED"),
]


@dataclass
class ExampleEnv:
    """What an example reads from its environment: a client built from AXME_API_KEY and the
    agent addresses of AXME_*_AGENT (`agent(default_name)`)."""

    client: AxmeClient
    api_key: str
    agent: Callable[[str], str]


@pytest.fixture(params=["workspace-key", "example-defaults"])
def env(request, node, workspace, make_client) -> ExampleEnv:
    if request.param == "workspace-key":
        token = workspace.key()
        return ExampleEnv(make_client(token), token, workspace.agent)
    return ExampleEnv(make_client(node.admin_token), node.admin_token, lambda name: f"agent://examples/{name}")


def assert_final(client: AxmeClient, intent_id: str, status: str) -> dict[str, Any]:
    """The examples' last step: GET the intent and print `status` and `lifecycle_status`."""
    final = client.get_intent(intent_id)
    assert final["ok"] is True
    intent = final["intent"]
    assert (intent["intent_id"], intent["status"], intent["lifecycle_status"]) == (intent_id, status, status)
    return intent


def assert_created(created: dict[str, Any]) -> str:
    """What the examples read from a create: a string `intent_id` and `status`."""
    assert created["ok"] is True
    assert isinstance(created["intent_id"], str) and created["intent_id"]
    assert created["status"] == "SUBMITTED"
    return created["intent_id"]


def assert_resolved(resolved: dict[str, Any], intent_id: str, status: str, event_type: str) -> None:
    """What the examples read from a resolve: `event.event_type` and `event.status`."""
    assert resolved["ok"] is True and resolved["applied"] is True
    assert (resolved["event"]["intent_id"], resolved["event"]["event_type"], resolved["event"]["status"]) == (
        intent_id,
        event_type,
        status,
    )
    assert resolved["intent"]["status"] == status


def assert_resumed(resumed: dict[str, Any]) -> None:
    """What the examples read from a resume: `applied` and `policy_generation`."""
    assert resumed["ok"] is True and resumed["applied"] is True
    assert resumed["policy_generation"] == resumed["intent"]["policy_generation"]
    assert resumed["intent"]["status"] == "IN_PROGRESS"


# --- approval-workflow ------------------------------------------------------------------------


def test_approval_workflow(env: ExampleEnv) -> None:
    """examples/approval-workflow: create with `approval-<corr>`, resume as the approval owner,
    resolve COMPLETED, list the events, read the final intent."""
    from_agent, to_agent = env.agent("requester"), env.agent("approver")
    owner_agent = from_agent  # AXME_APPROVAL_OWNER_AGENT defaults to the sender
    correlation_id = new_correlation_id()
    intent_payload = {
        "intent_type": "intent.approval.demo.v1",
        "correlation_id": correlation_id,
        "from_agent": from_agent,
        "to_agent": to_agent,
        "payload": {
            "request_id": f"req-{correlation_id[:8]}",
            "summary": "Auto-approved rollout request.",
            "requested_by": from_agent,
            "approval_mode": "automatic",
        },
    }
    client = env.client

    created = client.create_intent(
        intent_payload, correlation_id=correlation_id, idempotency_key=f"approval-{correlation_id}"
    )
    intent_id = assert_created(created)

    resumed = client.resume_intent(
        intent_id, {"approve_current_step": True, "reason": "auto-approved by policy"}, owner_agent=owner_agent
    )
    assert_resumed(resumed)

    result = {"approval_result": "auto-approved", "approval_mode": "automatic"}
    resolved = client.resolve_intent(intent_id, {"status": "COMPLETED", "result": result})
    assert_resolved(resolved, intent_id, "COMPLETED", "intent.completed")

    events = client.list_intent_events(intent_id)["events"]
    assert_event_log(events, RESUMED_AND_COMPLETED)
    assert [event["waiting_reason"] for event in events] == [None] * 4
    assert {event["intent_id"] for event in events} == {intent_id}

    final = assert_final(client, intent_id, "COMPLETED")
    assert (final["from_agent"], final["to_agent"], final["correlation_id"]) == (from_agent, to_agent, correlation_id)
    assert final["payload"] == intent_payload["payload"]
    assert final["result"] == result
    assert final["policy_generation"] == resumed["policy_generation"]


# --- external-callback ------------------------------------------------------------------------


class CallbackListener:
    """The example's local HTTP listener for the external system's callback: it queues the first
    JSON body POSTed to it. Bound to an ephemeral port (the example's AXME_CALLBACK_PORT)."""

    path = "/external/callback"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=1)
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's handler contract)
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                try:
                    received.put_nowait((self.path, body if isinstance(body, dict) else {"payload": body}))
                except queue.Full:
                    pass
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}{self.path}"

    def __enter__(self) -> CallbackListener:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def simulate_callback(callback_url: str, payload: dict[str, Any], delay_seconds: float) -> threading.Thread:
    """The example's AXME_SIMULATE_CALLBACK: the external system POSTs its result after a delay."""

    def post() -> None:
        time.sleep(delay_seconds)
        request = urllib.request.Request(
            callback_url,
            data=json.dumps(payload).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def test_external_callback(env: ExampleEnv) -> None:
    """examples/external-callback: create with `external-callback-<corr>` naming a local callback
    URL, receive the external system's callback over HTTP, resume, resolve COMPLETED with it."""
    from_agent, to_agent = env.agent("orchestrator"), env.agent("external-worker")
    owner_agent = from_agent  # AXME_OWNER_AGENT defaults to the sender
    callback = {
        "provider": "billing-gateway",
        "callback_status": "approved",
        "external_reference": f"ext-{uuid4().hex[:10]}",
        "amount_cents": 4999,
    }
    client = env.client

    with CallbackListener() as listener:
        simulate_callback(listener.url, callback, delay_seconds=0.2)  # the example waits 2 s
        correlation_id = new_correlation_id()
        intent_payload = {
            "intent_type": "intent.external_callback.demo.v1",
            "correlation_id": correlation_id,
            "from_agent": from_agent,
            "to_agent": to_agent,
            "payload": {
                "operation": "capture_payment",
                "order_id": f"order-{correlation_id[:8]}",
                "callback_url": listener.url,
            },
        }
        created = client.create_intent(
            intent_payload, correlation_id=correlation_id, idempotency_key=f"external-callback-{correlation_id}"
        )
        intent_id = assert_created(created)

        path, callback_payload = listener.received.get(timeout=5)  # AXME_CALLBACK_TIMEOUT_SECONDS
        assert (path, callback_payload) == (CallbackListener.path, callback)

    resumed = client.resume_intent(
        intent_id, {"approve_current_step": True, "reason": "external callback received"}, owner_agent=owner_agent
    )
    assert_resumed(resumed)

    result = {"source": "external_callback", "callback_payload": callback_payload}
    resolved = client.resolve_intent(intent_id, {"status": "COMPLETED", "result": result})
    assert_resolved(resolved, intent_id, "COMPLETED", "intent.completed")

    final = assert_final(client, intent_id, "COMPLETED")
    assert final["payload"]["callback_url"] == listener.url
    assert final["result"] == result
    assert_event_log(client.list_intent_events(intent_id)["events"], RESUMED_AND_COMPLETED)


# --- retry-workflow ---------------------------------------------------------------------------

MAX_ATTEMPTS = 5  # AXME_MAX_ATTEMPTS
BASE_BACKOFF_SECONDS = 1  # AXME_BASE_BACKOFF_SECONDS


def run_external_step(attempt: int, *, simulated_failures: int) -> dict[str, Any]:
    """The example's flaky dependency: fails the first `simulated_failures` attempts."""
    if attempt <= simulated_failures:
        raise RuntimeError(f"transient dependency failure on attempt {attempt}")
    return {"status": "ok", "attempt": attempt, "job_reference": f"job-{uuid4().hex[:10]}"}


def intents_with_correlation(node: Node, token: str, from_agent: str, correlation_id: str) -> list[dict[str, Any]]:
    """The intents `from_agent` sent with this correlation id (`GET /v1/intents?from_agent=`)."""
    response = raw_get(node, token, "/v1/intents", from_agent=from_agent, limit="500")
    assert response.status_code == 200, response.text
    return [intent for intent in response.json()["intents"] if intent["correlation_id"] == correlation_id]


@pytest.mark.parametrize(
    ("simulated_failures", "final_status"),
    [(2, "COMPLETED"), (MAX_ATTEMPTS, "FAILED")],
    ids=["recovers-after-2-failures", "max-attempts-exceeded"],
)
def test_retry_workflow(env: ExampleEnv, node: Node, simulated_failures: int, final_status: str) -> None:
    """examples/retry-workflow: the same create twice with `retry-<corr>` (one intent), a controls
    update per failed attempt with a growing policy_generation, then resolve COMPLETED (or FAILED
    with max_attempts_exceeded). Backoff delays are computed as the example does but not slept."""
    from_agent, to_agent = env.agent("retry-orchestrator"), env.agent("retry-worker")
    owner_agent = from_agent  # AXME_OWNER_AGENT defaults to the sender
    correlation_id = new_correlation_id()
    payload = {
        "intent_type": "intent.retry.demo.v1",
        "correlation_id": correlation_id,
        "from_agent": from_agent,
        "to_agent": to_agent,
        "payload": {"task": "sync_remote_inventory", "target_system": "warehouse-api"},
    }
    client = env.client
    idempotency_key = f"retry-{correlation_id}"

    created_first = client.create_intent(payload, correlation_id=correlation_id, idempotency_key=idempotency_key)
    created_second = client.create_intent(payload, correlation_id=correlation_id, idempotency_key=idempotency_key)
    intent_id = assert_created(created_first)
    assert created_second == created_first, "a replayed create must return the original answer"
    [only] = intents_with_correlation(node, env.api_key, from_agent, correlation_id)
    assert only["intent_id"] == intent_id

    attempts, delays, generations = 0, [], []
    external_result: dict[str, Any] | None = None
    while attempts < MAX_ATTEMPTS:
        attempts += 1
        try:
            external_result = run_external_step(attempts, simulated_failures=simulated_failures)
            break
        except RuntimeError:
            delay_seconds = BASE_BACKOFF_SECONDS * (2 ** (attempts - 1))
            delays.append(delay_seconds)
            control_body = client.update_intent_controls(
                intent_id,
                {
                    "controls_patch": {"last_retry_attempt": attempts, "next_retry_delay_seconds": delay_seconds},
                    "reason": f"retry attempt {attempts} failed",
                },
                owner_agent=owner_agent,
            )
            assert control_body["ok"] is True and control_body["applied"] is True
            generations.append(control_body["policy_generation"])

    failures = min(simulated_failures, MAX_ATTEMPTS)
    assert generations == list(range(1, failures + 1)), "each applied controls update bumps the generation by one"
    assert delays == [BASE_BACKOFF_SECONDS * 2**n for n in range(failures)]

    if external_result is not None:
        outcome = {
            "status": "COMPLETED",
            "result": {"attempts": attempts, "retry_backoff_seconds": delays, "external_result": external_result},
        }
        expected_log = [("intent.created", "CREATED"), ("intent.submitted", "SUBMITTED")]
        expected_log += [("intent.in_progress", "IN_PROGRESS"), ("intent.completed", "COMPLETED")]
    else:
        outcome = {
            "status": "FAILED",
            "error": {"code": "max_attempts_exceeded", "attempts": attempts, "retry_backoff_seconds": delays},
        }
        expected_log = [("intent.created", "CREATED"), ("intent.submitted", "SUBMITTED"), ("intent.failed", "FAILED")]
    resolved = client.resolve_intent(intent_id, outcome)
    assert_resolved(resolved, intent_id, final_status, f"intent.{final_status.lower()}")

    final = assert_final(client, intent_id, final_status)
    assert final["policy_generation"] == failures
    assert final["controls"] == {"last_retry_attempt": failures, "next_retry_delay_seconds": delays[-1]}
    assert final["result"] == outcome.get("result")
    assert final["error"] == outcome.get("error")
    assert_event_log(client.list_intent_events(intent_id)["events"], expected_log)


# --- multi-service-coordination ---------------------------------------------------------------


def create_child_intent(
    client: AxmeClient, *, from_agent: str, to_agent: str, service_name: str, parent_intent_id: str
) -> str:
    """The example's `_create_child_intent`: one step for one service, keyed `child-<service>-<corr>`."""
    correlation_id = new_correlation_id()
    body = {
        "intent_type": "intent.service_step.demo.v1",
        "correlation_id": correlation_id,
        "from_agent": from_agent,
        "to_agent": to_agent,
        "payload": {
            "service": service_name,
            "parent_intent_id": parent_intent_id,
            "task": f"run_{service_name}_step",
        },
    }
    created = client.create_intent(
        body, correlation_id=correlation_id, idempotency_key=f"child-{service_name}-{correlation_id}"
    )
    return assert_created(created)


def test_multi_service_coordination(env: ExampleEnv) -> None:
    """examples/multi-service-coordination: a parent intent (`parent-<corr>`) resumed to start the
    orchestration, two child intents naming it as parent_intent_id resolved COMPLETED, then the
    parent resolved COMPLETED with the children's results."""
    from_agent = env.agent("coordinator")
    owner_agent = from_agent  # AXME_OWNER_AGENT defaults to the sender
    services = {"service_b": env.agent("service-b"), "service_c": env.agent("service-c")}
    client = env.client

    parent_correlation = new_correlation_id()
    parent_payload = {
        "intent_type": "intent.multi_service.demo.v1",
        "correlation_id": parent_correlation,
        "from_agent": from_agent,
        "to_agent": env.agent("orchestrator-runtime"),
        "payload": {"operation": "provision_enterprise_workspace", "steps": ["service_b", "service_c"]},
    }
    parent = client.create_intent(
        parent_payload, correlation_id=parent_correlation, idempotency_key=f"parent-{parent_correlation}"
    )
    parent_intent_id = assert_created(parent)

    resumed_parent = client.resume_intent(
        parent_intent_id, {"approve_current_step": True, "reason": "start orchestration"}, owner_agent=owner_agent
    )
    assert_resumed(resumed_parent)

    children = {
        service: create_child_intent(
            client, from_agent=from_agent, to_agent=to_agent, service_name=service, parent_intent_id=parent_intent_id
        )
        for service, to_agent in services.items()
    }
    assert len(set(children.values()) | {parent_intent_id}) == 3

    child_results = {
        service: {"service": service, "status": "done", "artifact": f"artifact-{uuid4().hex[:8]}"}
        for service in services
    }
    for service, child_id in children.items():
        resolved = client.resolve_intent(child_id, {"status": "COMPLETED", "result": child_results[service]})
        assert_resolved(resolved, child_id, "COMPLETED", "intent.completed")

    parent_result = {
        "operation": "provision_enterprise_workspace",
        "children": [
            {"intent_id": children[service], "result": child_results[service]} for service in services
        ],
    }
    resolved_parent = client.resolve_intent(parent_intent_id, {"status": "COMPLETED", "result": parent_result})
    assert_resolved(resolved_parent, parent_intent_id, "COMPLETED", "intent.completed")

    final_parent = assert_final(client, parent_intent_id, "COMPLETED")
    assert final_parent["result"] == parent_result
    assert_event_log(client.list_intent_events(parent_intent_id)["events"], RESUMED_AND_COMPLETED)
    for service, child_id in children.items():
        child = assert_final(client, child_id, "COMPLETED")
        assert child["to_agent"] == services[service]
        assert child["payload"]["parent_intent_id"] == parent_intent_id
        assert child["result"] == child_results[service]
        # A child resolved straight from SUBMITTED: the node records the skipped IN_PROGRESS.
        assert_event_log(client.list_intent_events(child_id)["events"], RESUMED_AND_COMPLETED)
