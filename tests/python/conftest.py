"""Shared fixtures of the SDK compatibility tests: one real `axp` node per test session, driven
through the official AXME Python SDK (PyPI `axme`).

The node is started from `target/debug/axp` (or `$AXP_BIN`) in a temporary data dir; a missing
binary fails the run. Tests share the node and isolate themselves by using agent addresses in a
workspace of their own (`workspace` fixture), with API keys scoped to it.

The helpers below are imported by the test modules (`from conftest import ...`).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from axme import AxmeClient, AxmeClientConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
ORG = "acme"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
READY_LINE = re.compile(r"^axp node listening on (http://127\.0\.0\.1:\d+)$")
START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 15.0


# --- the node process -------------------------------------------------------------------------


def axp_binary() -> Path:
    """The node binary: `$AXP_BIN`, else the debug build of this repository."""
    binary = Path(os.environ.get("AXP_BIN") or REPO_ROOT / "target" / "debug" / "axp")
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"axp binary not found or not executable at {binary}: build it with `cargo build` "
            "(or point AXP_BIN at one); these tests never skip for a missing node",
            pytrace=False,
        )
    return binary


class Node:
    """An `axp` node on its own data dir: `axp node init` once, then `axp node run` until stopped.
    `base_url` is where the current run listens (a new ephemeral port after each restart)."""

    def __init__(self, binary: Path, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = data_dir / "node.log"
        self.admin_token = init_node(binary, data_dir)
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> Node:
        """Runs the node until it prints its one ready line on stdout (logs go to node.log)."""
        assert self.process is None or self.process.poll() is not None, "the node is already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "node", "run", "--config", str(self.data_dir / "axp.toml")],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.base_url = self._wait_ready()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM, then wait for the exit code (the node flushes its store and exits 0). A node
        still running after `timeout` seconds is killed and the test fails."""
        process = self.process
        assert process is not None, "the node was never started"
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"axp did not stop within {timeout}s of SIGTERM (killed it)\n{self.log_tail()}")
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: the node gets no chance to flush (what it answered must already be on disk)."""
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        text = ANSI_ESCAPE.sub("", text)
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> str:
        """Reads the first stdout line, `axp node listening on http://127.0.0.1:PORT`."""
        stdout = self.process.stdout
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=0.2):
                    if self.process.poll() is not None:
                        break
                    continue
                line = stdout.readline()
                if not line:
                    break
                match = READY_LINE.match(line.rstrip("\n"))
                if match:
                    return match.group(1)
                self.stop()
                pytest.fail(f"unexpected first stdout line from axp node run: {line!r}\n{self.log_tail()}")
        code = self.stop()
        pytest.fail(f"axp node run did not become ready (exit code {code})\n{self.log_tail()}", pytrace=False)


def init_node(binary: Path, data_dir: Path) -> str:
    """Runs `axp node init` and returns the admin key, checking the printed one against admin.key."""
    init = subprocess.run(
        [str(binary), "node", "init", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--org", ORG],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if init.returncode != 0:
        pytest.fail(f"axp node init failed ({init.returncode}):\n{init.stdout}\n{init.stderr}", pytrace=False)
    admin_token = (data_dir / "admin.key").read_text().strip()
    assert admin_token in init.stdout.split(), "node init must print the admin key it wrote to admin.key"
    return admin_token


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node for the whole session; it must exit 0 on SIGTERM at the end."""
    running = Node(axp_binary(), tmp_path_factory.mktemp("axp-node")).start()
    yield running
    code = running.stop()
    assert code == 0, f"axp node exited with {code} after SIGTERM (expected 0)\n{running.log_tail()}"


@pytest.fixture
def fresh_node(tmp_path: Path) -> Iterator[Node]:
    """A node of its own, for tests that stop or restart it; stopped afterwards if still running."""
    running = Node(axp_binary(), tmp_path / "axp-node").start()
    yield running
    if running.process.poll() is None:
        running.stop()


# --- clients and keys -------------------------------------------------------------------------


@pytest.fixture
def make_client(node: Node) -> Iterator[Callable[..., AxmeClient]]:
    """Builds SDK clients (`make_client(token, on=node, **config)`) for the session node, or for
    the node given as `on` as it runs now; all are closed after the test."""
    clients: list[AxmeClient] = []

    def build(api_key: str, *, on: Node | None = None, **config: Any) -> AxmeClient:
        base_url = (on or node).base_url
        client = AxmeClient(AxmeClientConfig(base_url=base_url, api_key=api_key, **config))
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def admin(node: Node, make_client: Callable[..., AxmeClient]) -> AxmeClient:
    """An SDK client holding the admin key from `axp node init` (may act for every address)."""
    return make_client(node.admin_token)


def raw_post(node: Node, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
    """A plain HTTP POST, for node endpoints the SDK has no method for (admin keys, transitions)."""
    return httpx.post(f"{node.base_url}{path}", json=body, headers={"x-api-key": token}, timeout=10)


def raw_get(node: Node, token: str, path: str, **params: str) -> httpx.Response:
    """A plain HTTP GET, for node endpoints the SDK has no method for (intent listings)."""
    return httpx.get(f"{node.base_url}{path}", params=params, headers={"x-api-key": token}, timeout=10)


def issue_key(node: Node, agents: list[str], owner: str = "sdk-tests") -> str:
    """Issues a non-admin API key that may act for `agents` (exact addresses or `.../*` prefixes)."""
    response = raw_post(node, node.admin_token, "/v1/admin/keys", {"owner": owner, "agents": agents, "admin": False})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["ok"] is True and answer["token"].startswith("axp_"), answer
    return answer["token"]


def transition(node: Node, token: str, intent_id: str, status: str, waiting_reason: str | None = None) -> dict:
    """The handler reports progress (`POST /v1/intents/{id}/transition`; not an SDK method)."""
    body: dict[str, Any] = {"status": status}
    if waiting_reason is not None:
        body["waiting_reason"] = waiting_reason
    response = raw_post(node, token, f"/v1/intents/{intent_id}/transition", body)
    assert response.status_code == 200, response.text
    return response.json()


@dataclass
class Workspace:
    """A workspace of agent addresses only one test uses, `agent://acme/<name>/...`."""

    node: Node
    name: str

    def agent(self, name: str) -> str:
        return f"agent://{ORG}/{self.name}/{name}"

    @property
    def everyone(self) -> str:
        """The prefix pattern granting every address of the workspace."""
        return f"agent://{ORG}/{self.name}/*"

    def key(self, *agents: str) -> str:
        """A key for the given addresses of this workspace, or for all of them when none are given."""
        return issue_key(self.node, list(agents) or [self.everyone], owner=self.name)


@pytest.fixture
def workspace(node: Node, request: pytest.FixtureRequest) -> Workspace:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return Workspace(node, f"{slug}-{uuid.uuid4().hex[:8]}")


# --- intents and events -----------------------------------------------------------------------


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def intent_body(
    from_agent: str, to_agent: str, payload: dict | None = None, intent_type: str = "intent.demo.v1"
) -> dict[str, Any]:
    """A create-intent body as the examples build it (correlation_id is passed separately)."""
    return {
        "intent_type": intent_type,
        "from_agent": from_agent,
        "to_agent": to_agent,
        "payload": payload if payload is not None else {},
    }


def send_demo(client: AxmeClient, from_agent: str, to_agent: str, **payload: Any) -> str:
    """Sends an `intent.demo.v1` with `payload` through `send_intent` and returns its id."""
    return client.send_intent(intent_body(from_agent, to_agent, payload))


def in_background(action: Callable[[], Any]) -> Future:
    """Runs `action` on another thread; `.result()` re-raises what it raised."""
    executor = ThreadPoolExecutor(max_workers=1)
    future = executor.submit(action)
    executor.shutdown(wait=False)
    return future


def log_of(events: Iterable[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """(seq, event_type, status) of each event, the columns the examples print."""
    return [(event["seq"], event["event_type"], event["status"]) for event in events]


def assert_event_log(events: list[dict[str, Any]], expected: list[tuple[str, str]], first_seq: int = 1) -> None:
    """The events are `expected` (event_type, status) pairs, numbered first_seq, first_seq+1, ... without gaps."""
    wanted = [(first_seq + index, event_type, status) for index, (event_type, status) in enumerate(expected)]
    assert log_of(events) == wanted


def take(iterator: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The next `count` items of an SDK generator, then closes it (ends its HTTP stream)."""
    items: list[dict[str, Any]] = []
    try:
        for item in iterator:
            items.append(item)
            if len(items) == count:
                break
    finally:
        iterator.close()
    return items


def drain(iterator: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything an SDK generator with `timeout_seconds` yields before its TimeoutError."""
    items: list[dict[str, Any]] = []
    try:
        for item in iterator:
            items.append(item)
    except TimeoutError:
        return items
    raise AssertionError(f"the generator ended without its TimeoutError after {len(items)} items")
