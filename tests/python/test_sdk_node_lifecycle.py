"""SDK clients across the node's own lifecycle, each test on a node of its own: SDK cursors
(`since`) and idempotency keys stay valid across a restart, what the node answered survives a
SIGKILL, and SIGTERM stops the node promptly even while agents hold streams open."""

from __future__ import annotations

import time

import httpx
import pytest
from axme import AxmeClient, AxmeValidationError

from conftest import (
    Node,
    assert_event_log,
    drain,
    in_background,
    intent_body,
    new_correlation_id,
    send_demo,
    take,
)

SENDER, WORKER = "agent://acme/lifecycle/sender", "agent://acme/lifecycle/worker"
PROMPT_STOP_SECONDS = 5.0


def restart(node: Node, how: str) -> None:
    if how == "sigterm":
        assert node.stop() == 0
    else:
        node.kill()
    node.start()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_cursors_and_idempotency_keys_survive_a_restart(fresh_node: Node, make_client, how: str) -> None:
    """Before the restart: intents sent, one taken from listen, a keyed create. After it (new port,
    new clients): listen resumes from the old cursor with the rest, the keyed create replays (and
    conflicts for another body), and observe resumes from an old seq."""
    before = make_client(fresh_node.admin_token, on=fresh_node)
    sent = [send_demo(before, SENDER, WORKER, n=n) for n in range(3)]
    [first] = take(before.listen(WORKER, wait_seconds=1, timeout_seconds=5), 1)
    assert first["intent_id"] == sent[0]
    correlation_id = new_correlation_id()

    def keyed_create(client: AxmeClient, payload: dict) -> dict:
        body = intent_body(SENDER, WORKER, payload)
        return client.create_intent(body, correlation_id=correlation_id, idempotency_key="restart-key")

    keyed = keyed_create(before, {"keyed": 1})

    restart(fresh_node, how)
    after = make_client(fresh_node.admin_token, on=fresh_node)

    rest = drain(after.listen(WORKER, since=first["seq"], wait_seconds=1, timeout_seconds=1))
    assert [item["intent_id"] for item in rest] == sent[1:] + [keyed["intent_id"]]
    assert first["seq"] < rest[0]["seq"]
    assert keyed_create(after, {"keyed": 1}) == keyed
    with pytest.raises(AxmeValidationError) as conflict:
        keyed_create(after, {"keyed": 2})
    assert conflict.value.status_code == 409

    after.resolve_intent(sent[0], {"status": "COMPLETED", "result": {"after_restart": True}})
    resumed = list(after.observe(sent[0], since=3, wait_seconds=1, timeout_seconds=5))
    assert_event_log(resumed, [("intent.in_progress", "IN_PROGRESS"), ("intent.completed", "COMPLETED")], first_seq=4)
    assert_event_log(
        after.list_intent_events(sent[0])["events"][:3],
        [("intent.created", "CREATED"), ("intent.submitted", "SUBMITTED"), ("intent.delivered", "DELIVERED")],
    )


def test_sigterm_ends_open_sdk_streams_promptly(fresh_node: Node, make_client) -> None:
    """An agent listening and an initiator observing, both with the SDK's long holds
    (wait_seconds=30): SIGTERM must still stop the node within a few seconds, exit 0, and end
    both streams. Agents always hold a listen stream, so a node that waits for every hold to
    run out needs up to 60 s to stop, longer than a container runtime waits before SIGKILL."""
    client = make_client(fresh_node.admin_token, on=fresh_node)
    intent_id = send_demo(client, SENDER, WORKER)
    listened: list[dict] = []
    observed: list[dict] = []

    def follow(generator, into: list[dict]) -> None:
        for item in generator:
            into.append(item)

    listening = in_background(lambda: follow(client.listen(WORKER, wait_seconds=30), listened))
    observing = in_background(lambda: follow(client.observe(intent_id, wait_seconds=30), observed))
    deadline = time.monotonic() + 5
    while (len(listened) < 1 or len(observed) < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (len(listened), len(observed)) == (1, 3), "both streams must be open and holding before SIGTERM"

    started = time.monotonic()
    code = fresh_node.stop(timeout=PROMPT_STOP_SECONDS)
    assert code == 0
    assert time.monotonic() - started < PROMPT_STOP_SECONDS
    for stream in (listening, observing):
        with pytest.raises(httpx.TransportError):  # the SDK reconnects at once and finds no node
            stream.result(timeout=5)
