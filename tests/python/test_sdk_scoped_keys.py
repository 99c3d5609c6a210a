"""API keys scoped to addresses, used through the SDK: a key sees only intents from, to or
replying to an address it may act for, and answers 404 for the others exactly as for an intent
that does not exist (reference/python-sdk.md §1.3, DESIGN.md §6)."""

from __future__ import annotations

import uuid

import pytest
from axme import AxmeAuthError, AxmeHttpError

from conftest import intent_body, send_demo


def assert_invisible(client, intent_id: str) -> None:
    """Every way of reading or touching the intent answers the same 404 as a missing intent."""
    for call in (
        lambda: client.get_intent(intent_id),
        lambda: client.list_intent_events(intent_id),
        lambda: client.wait_for(intent_id, wait_seconds=1, timeout_seconds=3),
        lambda: client.resolve_intent(intent_id, {"status": "CANCELED", "reason": "not mine"}),
    ):
        with pytest.raises(AxmeHttpError) as raised:
            call()
        assert type(raised.value) is AxmeHttpError and raised.value.status_code == 404
        assert raised.value.body["error"]["code"] == "not_found"
    with pytest.raises(AxmeHttpError) as missing:
        client.get_intent(str(uuid.uuid4()))
    assert raised.value.body["error"]["code"] == missing.value.body["error"]["code"]


def test_key_cannot_see_intents_between_other_agents(workspace, admin, make_client) -> None:
    """A key for agent A gets 404 for an intent from B to C, while B and C can read it."""
    a, b, c = (workspace.agent(name) for name in "abc")
    intent_id = send_demo(admin, b, c)
    assert_invisible(make_client(workspace.key(a)), intent_id)
    for party in (b, c):
        assert make_client(workspace.key(party)).get_intent(intent_id)["intent"]["intent_id"] == intent_id
    assert admin.get_intent(intent_id)["intent"]["status"] == "SUBMITTED"


def test_key_reads_its_own_intents(workspace, make_client) -> None:
    """A key for A sends without naming from_agent (its address is the default), then reads,
    lists and observes its intent; so does the recipient, and nobody else."""
    a, b = workspace.agent("a"), workspace.agent("b")
    client_a = make_client(workspace.key(a))
    body = intent_body(a, b, {"mine": True})
    del body["from_agent"]
    intent_id = client_a.send_intent(body)

    intent = client_a.get_intent(intent_id)["intent"]
    assert (intent["from_agent"], intent["to_agent"], intent["payload"]) == (a, b, {"mine": True})
    assert [event["seq"] for event in client_a.list_intent_events(intent_id)["events"]] == [1, 2]
    make_client(workspace.key(b)).resolve_intent(intent_id, {"status": "COMPLETED", "result": {"ok": 1}})
    assert client_a.wait_for(intent_id, wait_seconds=1, timeout_seconds=5)["status"] == "COMPLETED"
    assert_invisible(make_client(workspace.key(workspace.agent("c"))), intent_id)


def test_reply_to_address_may_see_the_intent(workspace, admin, make_client) -> None:
    """An intent from B to C naming A as reply_to is visible to A's key."""
    a, b, c = (workspace.agent(name) for name in "abc")
    intent_id = admin.send_intent({**intent_body(b, c), "reply_to": a})
    assert make_client(workspace.key(a)).get_intent(intent_id)["intent"]["reply_to"] == a


def test_prefix_grant_covers_only_its_subtree(workspace, admin, make_client) -> None:
    """A key granted `agent://acme/<ws>/team/*` sees intents to the team's agents only."""
    team_member, outsider, sender = workspace.agent("team/bot"), workspace.agent("other/bot"), workspace.agent("s")
    team_key = make_client(workspace.key(workspace.agent("team/*")))
    for_team, for_outsider = send_demo(admin, sender, team_member), send_demo(admin, sender, outsider)
    assert team_key.get_intent(for_team)["intent"]["to_agent"] == team_member
    assert_invisible(team_key, for_outsider)


def test_key_cannot_listen_for_another_agent(workspace, make_client) -> None:
    """listen on an address the key may not act for: AxmeAuthError, HTTP 403."""
    client = make_client(workspace.key(workspace.agent("a")))
    with pytest.raises(AxmeAuthError) as raised:
        next(client.listen(workspace.agent("b"), wait_seconds=1, timeout_seconds=3))
    assert raised.value.status_code == 403


def test_actor_token_does_not_replace_the_api_key(node, workspace, make_client) -> None:
    """With x-api-key present, `Authorization: Bearer` is a person's actor token: a valid key with
    an actor token works, and a valid key sent only as the actor token does not authenticate."""
    a = workspace.agent("a")
    token = workspace.key(a)
    with_actor = make_client(token, actor_token="person-actor-token")
    intent_id = send_demo(with_actor, a, workspace.agent("b"))
    assert with_actor.get_intent(intent_id)["intent"]["from_agent"] == a

    key_as_actor = make_client("not-the-key", actor_token=token)
    with pytest.raises(AxmeAuthError) as raised:
        key_as_actor.get_intent(intent_id)
    assert raised.value.status_code == 401
