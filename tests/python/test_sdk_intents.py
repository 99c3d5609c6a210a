"""Intent operations the examples rely on, beyond their happy paths: idempotent retries of
creates and resolves (the SDK retries keyed POSTs), resume semantics, policy updates, and the
node-level reads (health, capabilities, agents) through the SDK."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from conftest import assert_event_log, intent_body, new_correlation_id, send_demo


def test_concurrent_keyed_creates_make_one_intent(workspace, make_client) -> None:
    """Eight clients racing the same keyed create (an SDK retry overlapping the original) all get
    the original answer; exactly one intent exists."""
    sender, worker = workspace.agent("sender"), workspace.agent("worker")
    token = workspace.key()
    clients = [make_client(token) for _ in range(8)]
    correlation_id, key = new_correlation_id(), f"race-{uuid.uuid4()}"
    body = intent_body(sender, worker, {"race": True})

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        answers = list(
            pool.map(lambda c: c.create_intent(body, correlation_id=correlation_id, idempotency_key=key), clients)
        )
    assert all(answer == answers[0] for answer in answers), answers
    assert_event_log(
        clients[0].list_intent_events(answers[0]["intent_id"])["events"],
        [("intent.created", "CREATED"), ("intent.submitted", "SUBMITTED")],
    )


def test_keyed_create_replays_for_the_same_canonical_body(workspace, make_client) -> None:
    """The same body with its fields in another order is the same request; the same
    Idempotency-Key under another API key is another caller's request (keys are per caller)."""
    sender, worker = workspace.agent("sender"), workspace.agent("worker")
    token = workspace.key()
    client, other_caller = make_client(token), make_client(workspace.key())
    correlation_id, key = new_correlation_id(), f"canonical-{uuid.uuid4()}"
    body = intent_body(sender, worker, {"a": 1, "b": {"c": 2, "d": 3}})
    reordered = {name: body[name] for name in reversed(body)}
    reordered["payload"] = {"b": {"d": 3, "c": 2}, "a": 1}

    first = client.create_intent(body, correlation_id=correlation_id, idempotency_key=key)
    assert client.create_intent(reordered, correlation_id=correlation_id, idempotency_key=key) == first
    elsewhere = other_caller.create_intent(body, correlation_id=correlation_id, idempotency_key=key)
    assert elsewhere["intent_id"] != first["intent_id"]


def test_keyed_resolve_replays_its_answer(workspace, make_client) -> None:
    """A resolve retried with its Idempotency-Key returns the first answer instead of 409
    intent_terminal, and the log records the completion once."""
    client = make_client(workspace.key())
    intent_id = send_demo(client, workspace.agent("sender"), workspace.agent("worker"))
    outcome = {"status": "COMPLETED", "result": {"n": 1}}
    first = client.resolve_intent(intent_id, outcome, idempotency_key=f"resolve-{intent_id}")
    again = client.resolve_intent(intent_id, outcome, idempotency_key=f"resolve-{intent_id}")
    assert again == first and first["event"]["seq"] == 4
    assert [event["event_type"] for event in client.list_intent_events(intent_id)["events"]].count(
        "intent.completed"
    ) == 1


def test_resume_moves_on_once_and_refusal_cancels(workspace, make_client) -> None:
    """Resume approves the current step once (a second resume is applied false with reason
    already_in_progress, recording nothing); resume with approve_current_step false cancels."""
    sender, worker = workspace.agent("sender"), workspace.agent("worker")
    client = make_client(workspace.key())
    approved, refused = send_demo(client, sender, worker), send_demo(client, sender, worker)
    step = {"approve_current_step": True, "reason": "go"}

    assert client.resume_intent(approved, step, owner_agent=sender)["applied"] is True
    repeated = client.resume_intent(approved, step, owner_agent=sender)
    assert (repeated["applied"], repeated["reason"], repeated["intent"]["seq"]) == (False, "already_in_progress", 3)

    answer = client.resume_intent(refused, {"approve_current_step": False, "reason": "rejected"}, x_owner_agent=sender)
    assert answer["applied"] is True and answer["intent"]["status"] == "CANCELED"
    terminal = client.wait_for(refused, wait_seconds=1, timeout_seconds=5)
    assert (terminal["event_type"], terminal["status"], terminal["seq"]) == ("intent.canceled", "CANCELED", 3)


def test_controls_and_policy_share_one_generation(workspace, make_client) -> None:
    """update_intent_controls and update_intent_policy each bump the same policy_generation by one
    and merge their patches into the intent (null removes a key)."""
    sender = workspace.agent("sender")
    client = make_client(workspace.key())
    intent_id = send_demo(client, sender, workspace.agent("worker"))
    updates = [
        client.update_intent_controls(
            intent_id, {"controls_patch": {"retry": {"max": 3}, "tmp": 1}}, owner_agent=sender
        ),
        client.update_intent_policy(
            intent_id, {"grants_patch": {"approve": ["ops"]}, "envelope_patch": {"budget": 10}}, owner_agent=sender
        ),
        client.update_intent_controls(
            intent_id, {"controls_patch": {"retry": {"delay": 2}, "tmp": None}, "expected_policy_generation": 2},
            owner_agent=sender,
        ),
    ]
    assert [(update["applied"], update["policy_generation"]) for update in updates] == [(True, 1), (True, 2), (True, 3)]
    intent = client.get_intent(intent_id)["intent"]
    assert intent["controls"] == {"retry": {"max": 3, "delay": 2}}
    assert (intent["grants"], intent["envelope"]) == ({"approve": ["ops"]}, {"budget": 10})
    assert intent["policy_generation"] == 3


def test_health_capabilities_and_agents(node, workspace, make_client) -> None:
    """health, get_capabilities, get_agent (with or without `agent://`) and list_agents for a
    workspace, as a key scoped to that workspace sees them."""
    worker = workspace.agent("worker")
    client = make_client(workspace.key(workspace.everyone, worker))
    send_demo(client, workspace.agent("sender"), worker)

    assert client.health()["ok"] is True
    assert client.get_capabilities()["ok"] is True
    for address in (worker, worker.removeprefix("agent://")):
        assert client.get_agent(address)["agent"]["address"] == worker
    listed = client.list_agents(org_id="acme", workspace_id=workspace.name)["agents"]
    assert worker in [agent["address"] for agent in listed]
