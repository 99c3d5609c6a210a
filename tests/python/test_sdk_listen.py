"""`AxmeClient.listen`: an agent's SSE stream of deliveries (reference/python-sdk.md §1.5, §4 item 8).

The SDK tracks `next_since = max(seq)` and reconnects with `since=` after every `stream.timeout`,
so `seq` must be a per-agent cursor that grows across intents; terminal intents are left out
unless a `status=` filter asks for them.
"""

from __future__ import annotations

import time

import pytest

from conftest import assert_event_log, drain, in_background, send_demo, take

WAIT_SECONDS = 1  # the server holds each stream segment this long, then sends stream.timeout
DELIVERED_LOG = [("intent.created", "CREATED"), ("intent.submitted", "SUBMITTED"), ("intent.delivered", "DELIVERED")]


def assert_cursors_increase(items: list[dict]) -> None:
    cursors = [item["seq"] for item in items]
    assert all(isinstance(cursor, int) for cursor in cursors), cursors
    assert cursors == sorted(set(cursors)), f"listen cursors must strictly increase across intents: {cursors}"


@pytest.mark.parametrize(
    "listen_name",
    ["two-segments", "three-segments", "five-segments", "bare-three-segments"],
)
def test_listen_receives_intents_in_order(workspace, admin, make_client, listen_name: str) -> None:
    """An agent's listen generator yields the intents sent to it in send order, each with its
    payload, a cursor that grows across intents, and DELIVERED recorded on the first hand-out.
    Addresses of any depth are accepted, with or without the `agent://` prefix."""
    worker = {
        "two-segments": f"agent://acme/{workspace.name}",
        "three-segments": workspace.agent("worker"),
        "five-segments": workspace.agent("team/eu/worker"),
        "bare-three-segments": workspace.agent("worker"),
    }[listen_name]
    sender = workspace.agent("sender")
    worker_client = make_client(workspace.key(worker))
    sent = [send_demo(admin, sender, worker, n=n) for n in range(3)]

    address = worker.removeprefix("agent://") if listen_name.startswith("bare") else worker
    items = take(worker_client.listen(address, wait_seconds=WAIT_SECONDS, timeout_seconds=5), 3)

    assert [item["intent_id"] for item in items] == sent
    assert_cursors_increase(items)
    for n, item in enumerate(items):
        assert (item["event_type"], item["status"], item["intent_seq"]) == ("intent.delivered", "DELIVERED", 3)
        assert (item["from_agent"], item["to_agent"], item["intent_type"]) == (sender, worker, "intent.demo.v1")
        assert item["payload"] == {"n": n}
        assert item["correlation_id"] and item["at"]
    for intent_id in sent:
        assert worker_client.get_intent(intent_id)["intent"]["status"] == "DELIVERED"
        assert_event_log(worker_client.list_intent_events(intent_id)["events"], DELIVERED_LOG)


def test_listen_resumes_from_since(workspace, admin, make_client) -> None:
    """A listener that stops and comes back with `since=<last seq>` gets exactly the intents sent
    after it left; from since=0 it gets every open intent again, but DELIVERED is recorded once."""
    sender, worker = workspace.agent("sender"), workspace.agent("worker")
    worker_client = make_client(workspace.key(worker))
    first = [send_demo(admin, sender, worker, batch=1, n=n) for n in range(2)]
    seen = take(worker_client.listen(worker, wait_seconds=WAIT_SECONDS, timeout_seconds=5), 2)
    assert [item["intent_id"] for item in seen] == first

    later = [send_demo(admin, sender, worker, batch=2, n=n) for n in range(2)]
    resumed = drain(worker_client.listen(worker, since=seen[-1]["seq"], wait_seconds=WAIT_SECONDS, timeout_seconds=1))
    assert [item["intent_id"] for item in resumed] == later
    assert_cursors_increase(seen + resumed)

    replayed = take(worker_client.listen(worker, since=0, wait_seconds=WAIT_SECONDS, timeout_seconds=5), 4)
    assert [item["intent_id"] for item in replayed] == first + later
    assert [item["seq"] for item in replayed] == [item["seq"] for item in seen + resumed]
    for intent_id in first + later:
        assert_event_log(worker_client.list_intent_events(intent_id)["events"], DELIVERED_LOG)


def test_listen_across_reconnects_while_intents_arrive(workspace, admin, make_client) -> None:
    """Intents sent while one listen generator runs through several 1 s stream segments (each
    ended by stream.timeout and reconnected with since=) all arrive once, in order."""
    sender, worker = workspace.agent("sender"), workspace.agent("worker")
    worker_client = make_client(workspace.key(worker))
    gaps = [0.0, 0.4, 1.3, 1.2]  # crosses at least two segment boundaries

    def send_slowly() -> list[str]:
        sent = []
        for n, gap in enumerate(gaps):
            time.sleep(gap)
            sent.append(send_demo(admin, sender, worker, n=n))
        return sent

    sending = in_background(send_slowly)
    started = time.monotonic()
    items = take(worker_client.listen(worker, wait_seconds=WAIT_SECONDS, timeout_seconds=8), len(gaps))
    assert time.monotonic() - started >= sum(gaps) - 0.1
    sent = sending.result(timeout=5)

    assert [item["intent_id"] for item in items] == sent
    assert_cursors_increase(items)
    after = drain(worker_client.listen(worker, since=items[-1]["seq"], wait_seconds=WAIT_SECONDS, timeout_seconds=1))
    assert after == []


def test_listen_leaves_out_terminal_intents_unless_asked(workspace, admin, make_client) -> None:
    """Completed and canceled intents are not delivered by default, also not after a reconnect
    from an older cursor; an explicit `status=` filter returns them."""
    sender, worker = workspace.agent("sender"), workspace.agent("worker")
    worker_client = make_client(workspace.key(worker))
    completed, canceled, open_ = (send_demo(admin, sender, worker, n=n) for n in range(3))
    worker_client.resolve_intent(completed, {"status": "COMPLETED", "result": {"done": True}})
    admin.resolve_intent(canceled, {"status": "CANCELED", "reason": "no longer needed"})

    items = drain(worker_client.listen(worker, wait_seconds=WAIT_SECONDS, timeout_seconds=1))
    assert [item["intent_id"] for item in items] == [open_]

    worker_client.resolve_intent(open_, {"status": "COMPLETED", "result": {"done": True}})
    assert drain(worker_client.listen(worker, since=0, wait_seconds=WAIT_SECONDS, timeout_seconds=1)) == []

    terminal = drain(
        worker_client.listen(worker, wait_seconds=WAIT_SECONDS, timeout_seconds=1, status="COMPLETED,CANCELED")
    )
    assert [(item["intent_id"], item["status"], item["event_type"]) for item in terminal] == [
        (completed, "COMPLETED", "intent.completed"),
        (canceled, "CANCELED", "intent.canceled"),
        (open_, "COMPLETED", "intent.completed"),
    ]
    assert_cursors_increase(terminal)
    assert terminal[-1]["seq"] == items[0]["seq"], "an intent keeps its cursor when its status changes"
