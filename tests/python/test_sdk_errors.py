"""Error answers as the SDK maps them (reference/python-sdk.md §1.3): HTTP status to exception
class, the message from `error.message`, `request_id` from `x-request-id` and `trace_id` from the
echoed `X-Trace-Id`."""

from __future__ import annotations

import uuid

import pytest
from axme import AxmeAuthError, AxmeHttpError, AxmeValidationError

from conftest import intent_body, new_correlation_id, send_demo


def assert_api_error(error: AxmeHttpError, exception: type, status: int, code: str) -> None:
    """The exception class and status the SDK chose, the node's error body, and the ids it copied."""
    assert type(error) is exception, f"expected {exception.__name__}, got {type(error).__name__}: {error}"
    assert error.status_code == status
    assert error.body["error"]["code"] == code, error.body
    assert error.message == error.body["error"]["message"] and error.message
    assert error.body["error"]["retryable"] is False
    assert error.request_id, "x-request-id must be set on errors"
    assert error.trace_id, "X-Trace-Id must be echoed on errors"


@pytest.fixture
def pair(workspace, make_client):
    """(client, sender, worker): a client whose key acts for the whole workspace, and two addresses."""
    return make_client(workspace.key()), workspace.agent("sender"), workspace.agent("worker")


@pytest.mark.parametrize(
    "bad_key",
    ["not-an-axp-key", "axp_000000000000_" + "0" * 64, "wrong-secret"],
    ids=["garbage", "unknown-key-id", "known-key-id-wrong-secret"],
)
def test_bad_api_key_is_an_auth_error(node, make_client, workspace, bad_key: str) -> None:
    """A key that is malformed, unknown, or has a wrong secret: AxmeAuthError, HTTP 401."""
    if bad_key == "wrong-secret":
        key_id_part, _, secret = node.admin_token.rpartition("_")
        bad_key = f"{key_id_part}_{'0' if secret[0] != '0' else '1'}{secret[1:]}"
    client = make_client(bad_key)
    for call in (
        lambda: client.send_intent(intent_body(workspace.agent("a"), workspace.agent("b"))),
        lambda: client.get_intent(str(uuid.uuid4())),
    ):
        with pytest.raises(AxmeAuthError) as raised:
            call()
        assert raised.value.status_code == 401
        assert raised.value.request_id and raised.value.trace_id


def test_idempotency_conflict_is_a_validation_error(pair) -> None:
    """The same Idempotency-Key with a different body: AxmeValidationError, HTTP 409."""
    client, sender, worker = pair
    key, correlation_id = f"conflict-{uuid.uuid4()}", new_correlation_id()
    def create(payload: dict) -> dict:
        body = intent_body(sender, worker, payload)
        return client.create_intent(body, correlation_id=correlation_id, idempotency_key=key)

    created = create({"n": 1})
    with pytest.raises(AxmeValidationError) as raised:
        create({"n": 2})
    assert_api_error(raised.value, AxmeValidationError, 409, "idempotency_conflict")
    assert client.get_intent(created["intent_id"])["intent"]["payload"] == {"n": 1}


def test_changing_a_terminal_intent_is_a_validation_error(pair) -> None:
    """Resolve, resume or update controls of an intent that already ended: AxmeValidationError,
    HTTP 409 intent_terminal, and nothing is recorded."""
    client, sender, worker = pair
    intent_id = send_demo(client, sender, worker)
    client.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"first": True}})
    for call in (
        lambda: client.resolve_intent(intent_id, {"status": "COMPLETED", "result": {"second": True}}),
        lambda: client.resolve_intent(intent_id, {"status": "CANCELED", "reason": "too late"}),
        lambda: client.resume_intent(intent_id, {"approve_current_step": True}, owner_agent=sender),
        lambda: client.update_intent_controls(intent_id, {"controls_patch": {"x": 1}}, owner_agent=sender),
    ):
        with pytest.raises(AxmeValidationError) as raised:
            call()
        assert_api_error(raised.value, AxmeValidationError, 409, "intent_terminal")
    intent = client.get_intent(intent_id)["intent"]
    assert (intent["status"], intent["seq"], intent["result"]) == ("COMPLETED", 4, {"first": True})


def test_unknown_intent_is_a_plain_http_error_404(pair) -> None:
    """An intent id nobody created: the base AxmeHttpError with status 404, for reads and writes."""
    client, sender, _ = pair
    missing = str(uuid.uuid4())
    for call in (
        lambda: client.get_intent(missing),
        lambda: client.list_intent_events(missing),
        lambda: client.resolve_intent(missing, {"status": "CANCELED", "reason": "x"}),
        lambda: client.resume_intent(missing, {"approve_current_step": True}, owner_agent=sender),
    ):
        with pytest.raises(AxmeHttpError) as raised:
            call()
        assert_api_error(raised.value, AxmeHttpError, 404, "not_found")


def test_invalid_requests_are_validation_errors(pair) -> None:
    """Unknown create fields and malformed intent types (HTTP 422) and a payload over the node's
    limit (HTTP 413): AxmeValidationError."""
    client, sender, worker = pair
    cases = [
        ({**intent_body(sender, worker), "bogus_field": 1}, 422, "unknown_field"),
        (intent_body(sender, worker, intent_type="Not A Type"), 422, "invalid_field"),
        (intent_body(sender, worker, {"blob": "x" * 200_000}), 413, "payload_too_large"),
    ]
    for body, status, code in cases:
        with pytest.raises(AxmeValidationError) as raised:
            client.create_intent(body, correlation_id=new_correlation_id())
        assert_api_error(raised.value, AxmeValidationError, status, code)


def test_acting_outside_the_keys_addresses_is_an_auth_error(workspace, make_client) -> None:
    """Sending as, or completing for, an address the key may not act for: AxmeAuthError, 403."""
    sender, worker, stranger = workspace.agent("sender"), workspace.agent("worker"), workspace.agent("stranger")
    client = make_client(workspace.key(sender))
    with pytest.raises(AxmeAuthError) as raised:
        client.send_intent(intent_body(stranger, worker))
    assert_api_error(raised.value, AxmeAuthError, 403, "address_not_granted")

    intent_id = send_demo(client, sender, worker)
    with pytest.raises(AxmeAuthError) as raised:
        client.resolve_intent(intent_id, {"status": "COMPLETED", "result": {}})
    assert_api_error(raised.value, AxmeAuthError, 403, "not_handler")
    with pytest.raises(AxmeAuthError) as raised:
        client.resume_intent(intent_id, {"approve_current_step": True}, owner_agent=stranger)
    assert_api_error(raised.value, AxmeAuthError, 403, "address_not_granted")
    assert client.get_intent(intent_id)["intent"]["status"] == "SUBMITTED"


def test_errors_carry_the_callers_trace_id(pair) -> None:
    """An explicit trace_id comes back on the exception; auto-generated ones are echoed too, and
    every answer has its own request id."""
    client, _, _ = pair
    missing = str(uuid.uuid4())
    with pytest.raises(AxmeHttpError) as explicit:
        client.get_intent(missing, trace_id="trace-sdk-compat-1")
    assert explicit.value.trace_id == "trace-sdk-compat-1"
    with pytest.raises(AxmeHttpError) as automatic:
        client.get_intent(missing)
    assert uuid.UUID(automatic.value.trace_id)
    assert explicit.value.request_id != automatic.value.request_id


def test_stale_policy_generation_is_not_applied(pair) -> None:
    """`expected_policy_generation` that is no longer current: 200 with applied false and the
    current generation (the SDK's own test shape), and the intent is unchanged."""
    client, sender, worker = pair
    intent_id = send_demo(client, sender, worker)
    update = client.update_intent_controls(intent_id, {"controls_patch": {"a": 1}}, owner_agent=sender)
    assert (update["applied"], update["policy_generation"]) == (True, 1)

    stale_controls = client.update_intent_controls(
        intent_id, {"controls_patch": {"a": 2}, "expected_policy_generation": 0}, owner_agent=sender
    )
    assert (stale_controls["applied"], stale_controls["policy_generation"]) == (False, 1)
    stale_resolve = client.resolve_intent(
        intent_id, {"status": "COMPLETED", "result": {}, "expected_policy_generation": 0}
    )
    assert stale_resolve == {"ok": True, "applied": False, "reason": "stale_policy_generation", "policy_generation": 1}

    intent = client.get_intent(intent_id)["intent"]
    assert (intent["status"], intent["controls"], intent["policy_generation"]) == ("SUBMITTED", {"a": 1}, 1)
    current = client.resolve_intent(intent_id, {"status": "COMPLETED", "result": {}, "expected_policy_generation": 1})
    assert current["applied"] is True and current["intent"]["status"] == "COMPLETED"
