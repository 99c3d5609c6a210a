"""The inbox through the official SDK: an intent created with `reply_to` delivers its lifecycle
and outcome into the owner's inbox as a thread (thread_id = intent_id), and the owner lists,
pages, reads, replies, delegates, approves, rejects and deletes messages with the SDK's own
inbox methods (reference/python-sdk.md, inbox table; axp-spec.md §5.1 Thread)."""

from __future__ import annotations

import uuid

import pytest
from axme import AxmeHttpError, AxmeValidationError

from conftest import intent_body, transition


def send_replying(client, workspace, reply_to: str, to: str = "handler") -> str:
    """Sends an intent from the workspace's sender to `to` whose outcome goes to `reply_to`."""
    return client.send_intent({**intent_body(workspace.agent("sender"), workspace.agent(to)), "reply_to": reply_to})


def event_types(thread: dict) -> list[str]:
    return [entry["event_type"] for entry in thread["timeline"]]


def test_reply_to_outcome_lands_in_the_inbox(workspace, make_client) -> None:
    """list_inbox shows the thread from creation; resolve reports the delivery, and
    get_inbox_thread carries the status, result and the completion message."""
    owner = workspace.agent("owner")
    sender = make_client(workspace.key())
    inbox = make_client(workspace.key(owner))
    intent_id = send_replying(sender, workspace, owner)

    threads = inbox.list_inbox()["threads"]
    assert [(t["thread_id"], t["intent_id"], t["status"], t["owner_agent"]) for t in threads] == [
        (intent_id, intent_id, "active", owner)
    ]
    resolved = sender.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"total": 3}})
    delivery = resolved["completion_delivery"]
    assert delivery["delivered"] is True and delivery["thread_id"] == intent_id and delivery["reply_to"] == owner

    thread = inbox.get_inbox_thread(intent_id, owner_agent=owner)["thread"]
    assert (thread["status"], thread["intent_status"], thread["result"]) == ("done", "COMPLETED", {"total": 3})
    assert event_types(thread)[-2:] == ["intent.completed", "message.completion"]
    assert [m["message_id"] for m in thread["messages"]] == [delivery["message_id"]]
    assert inbox.list_inbox(owner_agent=owner)["threads"][0]["status"] == "done"


def test_other_owners_threads_are_not_found(workspace, make_client) -> None:
    """A key that may not act for the owner gets 404 for the thread, as for a missing one."""
    owner = workspace.agent("owner")
    intent_id = send_replying(make_client(workspace.key()), workspace, owner)
    stranger = make_client(workspace.key(workspace.agent("stranger")))
    for call in (
        lambda: stranger.get_inbox_thread(intent_id),
        lambda: stranger.reply_inbox_thread(intent_id, message="hi"),
        lambda: stranger.get_inbox_thread(str(uuid.uuid4())),
    ):
        with pytest.raises(AxmeHttpError) as raised:
            call()
        assert raised.value.status_code == 404 and raised.value.body["error"]["code"] == "not_found"
    assert stranger.list_inbox()["threads"] == []


def test_list_inbox_changes_pages_with_cursors(workspace, make_client) -> None:
    """Five threads paged two at a time: every thread once, oldest change first; a later reply
    brings its thread back after the last cursor."""
    owner = workspace.agent("owner")
    sender = make_client(workspace.key())
    inbox = make_client(workspace.key(owner))
    ids = [send_replying(sender, workspace, owner) for _ in range(5)]

    seen, cursor, shapes = [], None, []
    while True:
        page = inbox.list_inbox_changes(owner_agent=owner, cursor=cursor, limit=2)
        shapes.append((len(page["changes"]), page["has_more"]))
        seen += [change["thread"]["thread_id"] for change in page["changes"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert shapes == [(2, True), (2, True), (1, False)]
    assert seen == ids
    empty = inbox.list_inbox_changes(cursor=cursor)
    assert (empty["changes"], empty["next_cursor"], empty["has_more"]) == ([], None, False)

    inbox.reply_inbox_thread(ids[1], message="still there?")
    later = inbox.list_inbox_changes(cursor=cursor)
    assert [change["thread"]["thread_id"] for change in later["changes"]] == [ids[1]]
    with pytest.raises(AxmeValidationError) as raised:
        inbox.list_inbox_changes(cursor="not-a-cursor")
    assert raised.value.status_code == 422 and "cursor" in raised.value.message


def test_reply_and_delete_messages(workspace, make_client) -> None:
    """reply_inbox_thread adds messages (an idempotent retry adds none); delete_inbox_messages
    hides (self) or removes (both) them, and refuses bad input without deleting anything."""
    owner = workspace.agent("owner")
    inbox = make_client(workspace.key(owner))
    intent_id = send_replying(make_client(workspace.key()), workspace, owner)

    first = inbox.reply_inbox_thread(intent_id, message="one")["message"]["message_id"]
    inbox.reply_inbox_thread(intent_id, message="two", idempotency_key=f"two-{intent_id}")
    inbox.reply_inbox_thread(intent_id, message="two", idempotency_key=f"two-{intent_id}")
    inbox.reply_inbox_thread(intent_id, message="three")
    assert len(inbox.get_inbox_thread(intent_id)["thread"]["messages"]) == 3
    for bad in ("", "x" * 5001):
        with pytest.raises(AxmeValidationError) as raised:
            inbox.reply_inbox_thread(intent_id, message=bad)
        assert raised.value.status_code == 422 and "message" in raised.value.message

    for bad in ({"mode": "everything", "limit": 1}, {"mode": "self"}, {"mode": "both", "message_ids": [first, "nope"]}):
        with pytest.raises(AxmeValidationError):
            inbox.delete_inbox_messages(intent_id, bad)
    assert len(inbox.get_inbox_thread(intent_id)["thread"]["messages"]) == 3

    hidden = inbox.delete_inbox_messages(intent_id, {"mode": "self", "limit": 1})
    assert (hidden["mode"], hidden["deleted_count"]) == ("self", 1)
    removed = inbox.delete_inbox_messages(intent_id, {"mode": "both", "message_ids": [first]})
    assert (removed["deleted_count"], removed["message_ids"]) == (1, [first])
    texts = [m["details"]["message"] for m in removed["thread"]["messages"]]
    assert texts == ["two"]


def test_delegate_moves_the_thread(workspace, make_client) -> None:
    """delegate_inbox_thread hands the thread to another address's inbox."""
    owner, deputy = workspace.agent("owner"), workspace.agent("deputy")
    inbox = make_client(workspace.key(owner))
    deputy_inbox = make_client(workspace.key(deputy))
    intent_id = send_replying(make_client(workspace.key()), workspace, owner)

    with pytest.raises(AxmeValidationError):
        inbox.delegate_inbox_thread(intent_id, {"delegate_to": owner})
    with pytest.raises(AxmeValidationError):
        inbox.delegate_inbox_thread(intent_id, {"note": "who?"})
    thread = inbox.delegate_inbox_thread(intent_id, {"delegate_to": deputy, "note": "please take it"})["thread"]
    assert thread["owner_agent"] == deputy and event_types(thread)[-1] == "thread.delegated"
    assert inbox.list_inbox()["threads"] == []
    assert [t["thread_id"] for t in deputy_inbox.list_inbox()["threads"]] == [intent_id]


def test_approve_and_reject_waiting_intents(node, workspace, make_client) -> None:
    """approve_inbox_thread resumes a WAITING intent (IN_PROGRESS); reject_inbox_thread cancels
    one; neither works on an intent that is not waiting."""
    owner = workspace.agent("owner")
    sender_token = workspace.key()
    sender = make_client(sender_token)
    inbox = make_client(workspace.key(owner))
    to_approve, to_reject = send_replying(sender, workspace, owner), send_replying(sender, workspace, owner)

    with pytest.raises(AxmeValidationError) as raised:
        inbox.approve_inbox_thread(to_approve, {"comment": "too early"})
    assert raised.value.status_code == 409 and raised.value.body["error"]["code"] == "intent_not_waiting"
    for intent_id in (to_approve, to_reject):
        transition(node, sender_token, intent_id, "WAITING", "WAITING_FOR_HUMAN")
    pending = {t["thread_id"] for t in inbox.list_inbox()["threads"] if t["status"] == "pending"}
    assert pending == {to_approve, to_reject}

    approved = inbox.approve_inbox_thread(to_approve, {"comment": "looks right"})
    assert approved["applied"] is True and approved["thread"]["status"] == "active"
    assert sender.get_intent(to_approve)["intent"]["status"] == "IN_PROGRESS"
    rejected = inbox.reject_inbox_thread(to_reject, {"comment": "no"})
    assert rejected["thread"]["status"] == "done" and rejected["thread"]["completion"]["status"] == "CANCELED"
    assert sender.get_intent(to_reject)["intent"]["status"] == "CANCELED"
    with pytest.raises(AxmeValidationError) as raised:
        inbox.reject_inbox_thread(to_reject, {"comment": "again"})
    assert raised.value.body["error"]["code"] == "intent_terminal"
