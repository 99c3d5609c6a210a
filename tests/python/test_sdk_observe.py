"""`AxmeClient.observe` and `wait_for`: the initiator follows one intent's lifecycle over SSE
(`/v1/intents/{id}/events/stream`), with the SDK's `GET .../events?since=` poll after each
stream segment (reference/python-sdk.md §1.5, §4 item 7)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from axme import AxmeClient

from conftest import assert_event_log, drain, in_background, send_demo, take, transition

STEP_SECONDS = 0.1  # pause between the handler's steps, so the observer sees them arrive live


@dataclass
class Parties:
    """An initiator and a handler, each with an SDK client whose key acts for its address only."""

    sender: str
    worker: str
    worker_token: str
    initiator: AxmeClient
    handler: AxmeClient

    def send(self) -> str:
        return send_demo(self.initiator, self.sender, self.worker, job="observe-me")


@pytest.fixture
def parties(workspace, make_client) -> Parties:
    sender, worker = workspace.agent("initiator"), workspace.agent("handler")
    worker_token = workspace.key(worker)
    return Parties(sender, worker, worker_token, make_client(workspace.key(sender)), make_client(worker_token))


def test_observe_follows_a_lifecycle_in_order(parties, node) -> None:
    """While the initiator observes, the handler takes the intent from its listen stream,
    acknowledges, works, waits for a tool, resumes and completes: observe yields every event
    once, in seq order, and ends by itself on the terminal event."""
    intent_id = parties.send()

    def handle() -> None:
        time.sleep(0.3)
        take(parties.handler.listen(parties.worker, wait_seconds=1, timeout_seconds=5), 1)
        for status, reason in [("ACKNOWLEDGED", None), ("IN_PROGRESS", None), ("WAITING", "WAITING_FOR_TOOL")]:
            time.sleep(STEP_SECONDS)
            transition(node, parties.worker_token, intent_id, status, reason)
        time.sleep(STEP_SECONDS)
        parties.handler.resume_intent(
            intent_id, {"approve_current_step": True, "reason": "tool answered"}, owner_agent=parties.worker
        )
        time.sleep(STEP_SECONDS)
        parties.handler.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"answer": 42}})

    handling = in_background(handle)
    events = list(parties.initiator.observe(intent_id, wait_seconds=2, poll_interval_seconds=0.2, timeout_seconds=8))
    handling.result(timeout=5)

    assert_event_log(
        events,
        [
            ("intent.created", "CREATED"),
            ("intent.submitted", "SUBMITTED"),
            ("intent.delivered", "DELIVERED"),
            ("intent.acknowledged", "ACKNOWLEDGED"),
            ("intent.in_progress", "IN_PROGRESS"),
            ("intent.waiting", "WAITING"),
            ("intent.in_progress", "IN_PROGRESS"),
            ("intent.completed", "COMPLETED"),
        ],
    )
    assert [event["waiting_reason"] for event in events] == [None] * 5 + ["WAITING_FOR_TOOL"] + [None] * 2
    assert events == parties.initiator.list_intent_events(intent_id)["events"]


@pytest.mark.parametrize(
    ("resolution", "by_handler", "event_type", "detail"),
    [
        ({"status": "COMPLETED", "result": {"answer": 42}}, True, "intent.completed", "result"),
        ({"status": "FAILED", "error": {"code": "boom", "message": "tool crashed"}}, True, "intent.failed", "error"),
        ({"status": "CANCELED", "reason": "no longer needed"}, False, "intent.canceled", "reason"),
    ],
    ids=["completed", "failed", "canceled"],
)
def test_wait_for_returns_the_terminal_event(parties, resolution, by_handler, event_type, detail) -> None:
    """wait_for blocks until another thread resolves the intent (handler: COMPLETED or FAILED;
    initiator: CANCELED) and returns that terminal event."""
    intent_id = parties.send()
    resolver = parties.handler if by_handler else parties.initiator

    def resolve_later() -> dict:
        time.sleep(0.5)
        return resolver.resolve_intent(intent_id, resolution)

    resolving = in_background(resolve_later)
    started = time.monotonic()
    terminal = parties.initiator.wait_for(intent_id, wait_seconds=3, poll_interval_seconds=0.2, timeout_seconds=8)
    elapsed = time.monotonic() - started
    resolved = resolving.result(timeout=5)

    assert (terminal["intent_id"], terminal["event_type"], terminal["status"]) == (
        intent_id,
        event_type,
        resolution["status"],
    )
    assert terminal["seq"] == resolved["event"]["seq"] == parties.initiator.get_intent(intent_id)["intent"]["seq"]
    assert terminal["details"][detail] == resolution[detail]
    assert 0.4 < elapsed < 3, f"wait_for should return as the intent ends, took {elapsed:.2f}s"


def test_observe_an_intent_already_terminal(parties) -> None:
    """observe and wait_for on an intent that already ended replay its log and return at once;
    observe from `since` replays only the later events."""
    intent_id = parties.send()
    parties.handler.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"answer": 42}})
    expected = [
        ("intent.created", "CREATED"),
        ("intent.submitted", "SUBMITTED"),
        ("intent.in_progress", "IN_PROGRESS"),
        ("intent.completed", "COMPLETED"),
    ]

    started = time.monotonic()
    assert_event_log(list(parties.initiator.observe(intent_id, wait_seconds=5, timeout_seconds=8)), expected)
    assert_event_log(list(parties.initiator.observe(intent_id, since=2, wait_seconds=5)), expected[2:], first_seq=3)
    terminal = parties.initiator.wait_for(intent_id, wait_seconds=5, timeout_seconds=8)
    assert time.monotonic() - started < 4, "an ended intent must not hold the stream for wait_seconds (5 s)"
    assert (terminal["seq"], terminal["event_type"]) == (4, "intent.completed")


def test_observe_across_stream_segments(parties) -> None:
    """An intent that ends after the first 1 s stream segment timed out: the SDK polls
    `events?since=`, reconnects, and still yields each event once, in order."""
    intent_id = parties.send()

    def resolve_later() -> None:
        time.sleep(1.6)
        parties.handler.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"late": True}})

    resolving = in_background(resolve_later)
    events = list(parties.initiator.observe(intent_id, wait_seconds=1, poll_interval_seconds=0.1, timeout_seconds=8))
    resolving.result(timeout=5)
    assert_event_log(
        events,
        [
            ("intent.created", "CREATED"),
            ("intent.submitted", "SUBMITTED"),
            ("intent.in_progress", "IN_PROGRESS"),
            ("intent.completed", "COMPLETED"),
        ],
    )


def test_observe_an_open_intent_times_out(parties) -> None:
    """observe with `timeout_seconds` on an intent that does not end yields what happened so far,
    then raises TimeoutError."""
    intent_id = parties.send()
    events = drain(parties.initiator.observe(intent_id, wait_seconds=1, poll_interval_seconds=0.1, timeout_seconds=1.5))
    assert_event_log(events, [("intent.created", "CREATED"), ("intent.submitted", "SUBMITTED")])
