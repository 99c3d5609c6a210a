"""Human tasks answered by people in a real browser: headless Chromium (Debian's `chromium`,
driven by Playwright from PyPI) follows the magic link a real node mailed to a real SMTP server
on loopback (aiosmtpd from PyPI), fills the task's page and submits it; the intent resumes with
the answer. Covers approval, form and manual_action (with an uploaded evidence file), a reused
link, and the task list of a person signed in by an emailed link.

A missing Chromium fails these tests: scripts/test installs it (apt-get install chromium).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from conftest import Node, axp_binary, intent_body, raw_get, raw_post
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# As the machine notes say: without the background-networking flags Chromium keeps dialling
# out, and this machine refuses those connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FROM = "agent://acme/web/initiator"
HANDLER = "agent://acme/web/desk"

pytestmark = pytest.mark.timeout(90)


class Mailbox:
    """What the SMTP server on loopback received: (recipients, parsed message) pairs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's hook name)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def wait_for(self, to: str, count: int = 1, timeout: float = 15.0) -> email.message.EmailMessage:
        """The `count`th message to `to`, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [message for rcpts, message in self.messages if to in rcpts]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.05)
        pytest.fail(f"no mail number {count} to {to} within {timeout}s; got {len(self.messages)} mails")


def link_in(message: email.message.EmailMessage, part: str) -> str:
    body = message.get_body(preferencelist=("plain",)).get_content()
    match = re.search(r"https?://\S*" + re.escape(part) + r"\S*", body)
    assert match, f"no link with {part} in:\n{body}"
    return match.group(0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture(scope="module")
def web_node(tmp_path_factory: pytest.TempPathFactory, mailbox: Mailbox) -> Iterator[Node]:
    """A node that mails through the loopback SMTP server."""
    node = Node(axp_binary(), tmp_path_factory.mktemp("axp-web-node"))
    config = node.data_dir / "axp.toml"
    port = mailbox.port
    config.write_text(
        config.read_text()
        + f'\n[email]\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\ntls = "none"\n'
        + 'from = "axp tasks <tasks@acme.test>"\nretry_base_ms = 200\n'
    )
    node.start()
    yield node
    assert node.stop() == 0, node.log_tail()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does)", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    opened = context.new_page()
    yield opened
    context.close()


def create(node: Node, human_task: dict[str, Any]) -> str:
    body = intent_body(FROM, HANDLER)
    body["human_task"] = human_task
    body["correlation_id"] = str(uuid.uuid4())
    response = raw_post(node, node.admin_token, "/v1/intents", body)
    assert response.status_code == 200, response.text
    return response.json()["intent_id"]


def last_event(node: Node, intent_id: str) -> dict[str, Any]:
    response = raw_get(node, node.admin_token, f"/v1/intents/{intent_id}/events")
    assert response.status_code == 200, response.text
    return response.json()["events"][-1]


def person() -> str:
    return f"p-{uuid.uuid4().hex[:10]}@example.com"


def assert_every_input_is_labelled(page: Page) -> None:
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                .filter(el => el.labels.length === 0).map(el => el.name)"""
    )
    assert unlabelled == [], f"inputs without a label: {unlabelled}"


def test_an_approval_is_answered_from_the_mailed_link_once(web_node: Node, mailbox: Mailbox, page: Page) -> None:
    ann = person()
    intent_id = create(web_node, {"title": "Approve the offsite", "description": "Budget 2,400 EUR", "notify_email": ann})
    message = mailbox.wait_for(ann)
    assert message["Subject"] == "Your approval is needed: Approve the offsite"
    link = link_in(message, "/tasks/link/")

    response = page.goto(link)
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", level=1)).to_have_text("Approve the offsite")
    expect(page.get_by_text("Budget 2,400 EUR")).to_be_visible()
    assert_every_input_is_labelled(page)
    page.get_by_label("Comment").fill("Within budget")
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Thank you: your answer is recorded")

    resumed = last_event(web_node, intent_id)
    assert resumed["status"] == "IN_PROGRESS"
    assert resumed["details"]["decision"]["by"] == ann
    assert resumed["details"]["decision"]["via"] == "email_link"
    assert resumed["details"]["task_result"] == {"outcome": "approved", "comment": "Within budget", "data": {}}

    # The same link again: a clear page, no form, nothing changed.
    again = page.goto(link)
    assert again is not None and again.status == 410
    expect(page.get_by_role("heading", level=1)).to_have_text("This link was already used")
    assert page.locator("form").count() == 0
    assert last_event(web_node, intent_id)["seq"] == resumed["seq"]


def test_a_form_is_checked_then_submitted_with_typed_fields(web_node: Node, mailbox: Mailbox, page: Page) -> None:
    bob = person()
    schema = {
        "type": "object",
        "required": ["amount", "currency"],
        "properties": {
            "amount": {"type": "number", "title": "Amount", "minimum": 1},
            "currency": {"type": "string", "title": "Currency", "enum": ["EUR", "USD"]},
            "urgent": {"type": "boolean", "title": "Urgent"},
            "notes": {"type": "string", "title": "Notes", "maxLength": 200},
        },
    }
    intent_id = create(web_node, {"title": "Price the order", "task_type": "form", "form_schema": schema, "assignees": [bob]})
    page.goto(link_in(mailbox.wait_for(bob), "/tasks/link/"))
    assert_every_input_is_labelled(page)

    # Required fields left empty: the form comes back with the field marked, nothing recorded.
    page.get_by_label("Notes").fill("call first")
    page.get_by_role("button", name="Submit").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Amount: is required")
    expect(page.get_by_label("Amount (required)")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Notes")).to_have_value("call first")
    assert last_event(web_node, intent_id)["event_type"] == "intent.human_task_assigned"

    page.get_by_label("Amount (required)").fill("12.5")
    page.get_by_label("Currency (required)").select_option("EUR")
    page.get_by_label("Urgent").check()
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Thank you: your answer is recorded")
    answered = last_event(web_node, intent_id)
    assert answered["details"]["task_result"]["data"] == {
        "amount": 12.5,
        "currency": "EUR",
        "urgent": True,
        "notes": "call first",
    }


def test_a_manual_action_is_done_with_an_uploaded_evidence_file(
    web_node: Node, mailbox: Mailbox, page: Page, tmp_path: Path
) -> None:
    carol = person()
    intent_id = create(web_node, {"title": "Replace the router", "task_type": "manual_action", "notify_email": carol})
    page.goto(link_in(mailbox.wait_for(carol), "/tasks/link/"))

    # Done without evidence is refused.
    page.get_by_role("button", name="Mark as done").click()
    expect(page.get_by_role("alert")).to_contain_text("Evidence: is required")

    photo = tmp_path / "router.jpg"
    photo.write_bytes(b"\xff\xd8\xff" + b"router photo" * 100)
    page.get_by_label("Evidence files").set_input_files(str(photo))
    page.get_by_label("Evidence", exact=True).fill("Swapped the unit in rack 4")
    page.get_by_role("button", name="Mark as done").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Thank you: your answer is recorded")

    evidence = last_event(web_node, intent_id)["details"]["task_result"]["data"]["evidence"]
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    assert evidence == [
        "Swapped the unit in rack 4",
        {"name": "router.jpg", "size": photo.stat().st_size, "sha256": digest},
    ]
    kept = web_node.data_dir / "evidence" / digest
    assert kept.read_bytes() == photo.read_bytes(), "the node keeps the file it names in the answer"


def test_a_signed_in_person_answers_from_the_task_list(web_node: Node, mailbox: Mailbox, page: Page) -> None:
    dan = person()
    intent_id = create(web_node, {"title": "Confirm the delivery date", "task_type": "confirmation", "assignees": [dan]})
    mailbox.wait_for(dan)

    page.goto(f"{web_node.base_url}/tasks")
    page.get_by_label("Email address").fill(dan)
    page.get_by_role("button", name="Email me a sign-in link").click()
    expect(page.get_by_role("status")).to_contain_text(f"If {dan} has tasks")
    page.goto(link_in(mailbox.wait_for(dan, count=2), "/tasks/sign-in/"))
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Your tasks")
    page.get_by_role("link", name="Confirm the delivery date").click()
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Thank you: your answer is recorded")
    answered = last_event(web_node, intent_id)
    assert answered["details"]["decision"] == {"by": dan, "at": answered["details"]["decision"]["at"], "via": "web"}

    page.get_by_role("link", name="Back to your tasks").click()
    expect(page.get_by_role("status")).to_have_text("Nothing is waiting for you.")
    page.get_by_role("button", name="Sign out").click()
    page.goto(f"{web_node.base_url}/tasks")
    expect(page.get_by_label("Email address")).to_be_visible()
