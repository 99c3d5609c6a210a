"""The two-organisation demo's actors, all through the official AXME Python SDK (axme==0.2.0).

Run by federation/demo once the kit is up; reads everything from federation.json.

- globex's agent `agent://globex/sales/bot` listens (`listen`) on globex's node; for each intent
  it reports IN_PROGRESS (a plain HTTP call: the SDK has no method for it) and resolves it
  COMPLETED with a result (`resolve_intent`).
- acme's service `agent://acme/ops/buyer` sends three intents to that agent (`send_intent`) on
  acme's node, which carries them over Matrix to globex's node.
- Every lifecycle is printed as it happens on both sides: acme's view (`observe` on acme's node,
  a replica filled from globex's events) and globex's view (`observe` on globex's node, the owner).
- At the end both nodes' logs (`GET /v1/intents/{id}/events`) must be identical, event for event.

Exit status: 0 when every intent completed identically on both nodes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime

from axme import AxmeClient, AxmeClientConfig

BUYER = "agent://acme/ops/buyer"
SELLER = "agent://globex/sales/bot"
ORDERS = [
    {"order": "PO-1", "item": "widgets", "quantity": 40},
    {"order": "PO-2", "item": "gears", "quantity": 7},
    {"order": "PO-3", "item": "sprockets", "quantity": 125},
]
TERMINAL = {"COMPLETED", "FAILED", "CANCELED", "TIMED_OUT"}
TIMEOUT = float(os.environ.get("AXP_DEMO_TIMEOUT", "120"))

T0 = time.monotonic()
_print_lock = threading.Lock()


class DemoError(Exception):
    pass


def say(side: str, text: str) -> None:
    with _print_lock:
        print(f"[{time.monotonic() - T0:7.3f}s] {side:<15} {text}", flush=True)


def http(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    """A plain HTTP call; returns (status, JSON body). Connection errors propagate."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"x-api-key": token})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"raw": text}


def sdk(url: str, token: str) -> AxmeClient:
    return AxmeClient(AxmeClientConfig(base_url=url, api_key=token))


class Org:
    """One organisation's node as the demo sees it."""

    def __init__(self, name: str, state: dict):
        node = state["nodes"].get(name)
        if node is None:
            orgs = ", ".join(state["orgs"])
            raise DemoError(f"the kit has no {name} (its orgs: {orgs}); the demo needs acme and globex")
        self.name = name
        self.url = node["url"]
        self.admin_key = node["admin_key"]
        self.log = node["log"]
        if node.get("pid") is None:
            raise DemoError(f"{name}'s node is not running (federation.json shows no pid); run federation/up")
        try:
            status, body = http("GET", f"{self.url}/health", self.admin_key)
        except OSError as error:
            raise DemoError(f"{name}'s node does not answer at {self.url}: {error}") from error
        if status != 200:
            raise DemoError(f"{name}'s node at {self.url}/health answers {status}: {body}")

    def issue_key(self, address: str) -> str:
        """An API key that may act only for `address`."""
        status, body = http("POST", f"{self.url}/v1/admin/keys", self.admin_key, {"owner": address, "agents": [address]})
        if status != 200:
            raise DemoError(f"{self.name}: issuing a key for {address} failed: {status} {body}")
        return body["token"]


def short(intent_id: str) -> str:
    """The id's tail: UUIDv7 ids made in the same millisecond share their head."""
    return "…" + intent_id[-8:]


def wall(at: str | None) -> float | None:
    """An event's `at` (RFC 3339) as a Unix time."""
    try:
        return datetime.fromisoformat(at).timestamp() if at else None
    except ValueError:
        return None


def outline(answer: dict) -> str:
    """An events answer in a few words: the event types, or the error."""
    events = answer.get("events")
    if isinstance(events, list):
        return f"{len(events)} events ({', '.join(str(e.get('event_type', '?')).removeprefix('intent.') for e in events)})"
    error = answer.get("error") or {}
    return f"{error.get('code', 'no log')}: {error.get('message', answer)}"


def describe(event: dict) -> str:
    reason = f" ({event['waiting_reason']})" if event.get("waiting_reason") else ""
    return f"seq {event['seq']}  {event['event_type']:<22} {event['status']}{reason}"


class Demo:
    def __init__(self, state: dict):
        self.acme = Org("acme", state)
        self.globex = Org("globex", state)
        self.run = uuid.uuid4().hex[:12]
        self.buyer_key = self.acme.issue_key(BUYER)
        self.seller_key = self.globex.issue_key(SELLER)
        self.ids: dict[str, str] = {}  # order -> intent id
        self.orders: dict[str, str] = {}  # intent id -> order
        self.submitted_at: dict[str, float] = {}  # monotonic
        self.submitted_wall: dict[str, float] = {}  # Unix time, to place the nodes' `at` stamps
        self.handled_at: dict[str, float] = {}
        self.done_at: dict[tuple[str, str], float] = {}  # (side, intent id) -> terminal seen
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def fail(self, what: str) -> None:
        with self.lock:
            self.errors.append(what)
        say("error", what)

    def label(self, intent_id: str) -> str:
        return f"{self.orders.get(intent_id, '?')} {short(intent_id)}"

    # globex's side ---------------------------------------------------------------------------

    def seller_agent(self) -> None:
        """globex's agent: listen, report progress, resolve. Reconnects on errors, resuming."""
        client = sdk(self.globex.url, self.seller_key)
        since = 0
        say("globex agent", f"{SELLER} listening on {self.globex.url}")
        while not self.stop.is_set():
            try:
                for delivery in client.listen(SELLER, since=since, wait_seconds=5):
                    since = max(since, int(delivery.get("seq", 0)))
                    self.handle(client, delivery)
                    if self.stop.is_set():
                        return
            except Exception as error:  # the stream is not retried by the SDK: resume from `since`
                if self.stop.is_set():
                    return
                say("globex agent", f"listen interrupted ({type(error).__name__}: {error}); reconnecting")
                time.sleep(1)

    def handle(self, client: AxmeClient, delivery: dict) -> None:
        try:
            self._handle(client, delivery)
        except Exception as error:  # the node unreachable, an SDK error: the demo fails, clearly
            self.fail(f"globex agent: handling {short(delivery.get('intent_id', '?'))} failed: {type(error).__name__}: {error}")

    def _handle(self, client: AxmeClient, delivery: dict) -> None:
        intent_id = delivery["intent_id"]
        payload = delivery.get("payload") or {}
        ours = payload.get("demo_run") == self.run
        order = payload.get("order", "?")
        tag = f"{order} {short(intent_id)}" if ours else f"{short(intent_id)} (left over from an earlier run)"
        say(
            "globex agent",
            f"{tag}: received from {delivery.get('from_agent')}: {payload.get('quantity')} x {payload.get('item')}"
            f" (status {delivery.get('status')})",
        )
        with self.lock:
            self.handled_at.setdefault(intent_id, time.monotonic())
        status, body = http(
            "POST", f"{self.globex.url}/v1/intents/{intent_id}/transition", self.seller_key, {"status": "IN_PROGRESS"}
        )
        if status != 200:
            self.fail(f"globex agent: IN_PROGRESS for {tag} answered {status}: {body}")
            return
        say("globex agent", f"{tag}: reported IN_PROGRESS")
        result = {"accepted": True, "order": order, "unit_price_eur": 12.5, "ship_by": "2026-12-01"}
        try:
            client.resolve_intent(intent_id, {"status": "COMPLETED", "result": result}, idempotency_key=f"demo-resolve-{intent_id}")
        except Exception as error:
            self.fail(f"globex agent: resolving {tag} failed: {type(error).__name__}: {error}")
            return
        say("globex agent", f"{tag}: resolved COMPLETED with {json.dumps(result)}")

    # both sides' views ------------------------------------------------------------------------

    def follow(self, side: str, org: Org, token: str, intent_id: str) -> None:
        """Prints an intent's lifecycle on one node as it happens (SDK `observe`)."""
        try:
            self._follow(side, org, token, intent_id)
        except TimeoutError:
            self.fail(f"{side}: {self.label(intent_id)} did not reach a terminal status within {TIMEOUT:.0f} s")
        except Exception as error:
            self.fail(f"{side}: following {self.label(intent_id)} failed: {type(error).__name__}: {error}")

    def _follow(self, side: str, org: Org, token: str, intent_id: str) -> None:
        client = sdk(org.url, token)
        deadline = T0 + TIMEOUT
        label = f"{side:<6} {'observe' if side == 'acme' else 'events'}"
        if side == "globex":
            # The intent exists at globex only once it arrived over Matrix.
            while True:
                status, _ = http("GET", f"{org.url}/v1/intents/{intent_id}", token)
                if status == 200:
                    break
                if status != 404:
                    self.fail(f"globex: GET intent {intent_id} answered {status}")
                    return
                if time.monotonic() > deadline or self.stop.is_set():
                    self.fail(f"{self.label(intent_id)} never arrived at globex's node")
                    return
                time.sleep(0.02)
            took = time.monotonic() - self.submitted_at[intent_id]
            say(label, f"{self.label(intent_id)}: arrived over Matrix, {took * 1000:.0f} ms after submit")
        left = max(1.0, deadline - time.monotonic())
        for event in client.observe(intent_id, since=0, wait_seconds=10, timeout_seconds=left):
            seen = time.monotonic() - self.submitted_at[intent_id]
            at = wall(event.get("at"))
            recorded = f"recorded +{(at - self.submitted_wall[intent_id]) * 1000:.0f} ms, " if at else ""
            say(label, f"{self.label(intent_id)}: {describe(event)}  ({recorded}seen +{seen * 1000:.0f} ms)")
            if event.get("status") in TERMINAL:
                with self.lock:
                    self.done_at[(side, intent_id)] = time.monotonic()
                return

    # the run ------------------------------------------------------------------------------------

    def main(self) -> int:
        say("demo", f"acme node {self.acme.url}, globex node {self.globex.url}; keys issued for {BUYER} and {SELLER}")
        agent = threading.Thread(target=self.seller_agent, name="globex-agent", daemon=True)
        agent.start()

        buyer = sdk(self.acme.url, self.buyer_key)
        followers = []
        for order in ORDERS:
            payload = dict(order, demo_run=self.run)
            started, started_wall = time.monotonic(), time.time()
            intent_id = buyer.send_intent(
                {"intent_type": "intent.purchase.order.v1", "from_agent": BUYER, "to_agent": SELLER, "payload": payload},
                idempotency_key=f"demo-{self.run}-{order['order']}",
            )
            with self.lock:
                self.ids[order["order"]] = intent_id
                self.orders[intent_id] = order["order"]
                self.submitted_at[intent_id] = started
                self.submitted_wall[intent_id] = started_wall
            say("acme service", f"sent {order['order']} ({order['quantity']} x {order['item']}) to {SELLER}: intent {intent_id}")
            for side, org, token in (("acme", self.acme, self.buyer_key), ("globex", self.globex, self.seller_key)):
                thread = threading.Thread(target=self.follow, args=(side, org, token, intent_id), daemon=True)
                thread.start()
                followers.append(thread)

        for thread in followers:
            thread.join(timeout=max(0.0, T0 + TIMEOUT + 15 - time.monotonic()))
        self.stop.set()
        if any(thread.is_alive() for thread in followers):
            self.fail(f"some lifecycles were still open after {TIMEOUT:.0f} s")
        return self.verify()

    def verify(self) -> int:
        print()
        say("check", "comparing GET /v1/intents/{id}/events on both nodes")
        identical = 0
        lengths = set()
        for order, intent_id in self.ids.items():
            _, acme_log = http("GET", f"{self.acme.url}/v1/intents/{intent_id}/events", self.buyer_key)
            _, globex_log = http("GET", f"{self.globex.url}/v1/intents/{intent_id}/events", self.seller_key)
            _, acme_intent = http("GET", f"{self.acme.url}/v1/intents/{intent_id}", self.buyer_key)
            _, globex_intent = http("GET", f"{self.globex.url}/v1/intents/{intent_id}", self.seller_key)
            acme_events = acme_log.get("events")
            globex_events = globex_log.get("events")
            statuses = (acme_intent.get("intent", {}).get("status"), globex_intent.get("intent", {}).get("status"))
            problems = []
            if not isinstance(acme_events, list) or not isinstance(globex_events, list):
                problems.append(f"event logs: acme {outline(acme_log)}; globex {outline(globex_log)}")
            elif acme_events != globex_events:
                problems.append(
                    f"the logs differ: acme has {len(acme_events)} events, globex {len(globex_events)}:\n"
                    f"    acme:   {[(e.get('seq'), e.get('event_type')) for e in acme_events]}\n"
                    f"    globex: {[(e.get('seq'), e.get('event_type')) for e in globex_events]}"
                )
            elif [e.get("seq") for e in acme_events] != list(range(1, len(acme_events) + 1)):
                problems.append(f"seqs are not 1..{len(acme_events)}: {[e.get('seq') for e in acme_events]}")
            if statuses != ("COMPLETED", "COMPLETED"):
                problems.append(f"status at acme {statuses[0]}, at globex {statuses[1]}")
            elif acme_intent["intent"].get("result") != globex_intent["intent"].get("result"):
                problems.append("the result differs between the nodes")
            if problems:
                self.fail(f"{order} ({intent_id}): " + "; ".join(problems))
                continue
            identical += 1
            lengths.add(len(acme_events))
            trip = self.done_at.get(("acme", intent_id), time.monotonic()) - self.submitted_at[intent_id]
            handed = self.handled_at.get(intent_id)
            handed_text = f"at globex's agent after {(handed - self.submitted_at[intent_id]) * 1000:.0f} ms, " if handed else ""
            say(
                "check",
                f"{order} {intent_id}: COMPLETED on both nodes, {len(acme_events)} identical events "
                f"({', '.join(e['event_type'].removeprefix('intent.') for e in acme_events)}); "
                f"{handed_text}outcome back at acme after {trip * 1000:.0f} ms",
            )
        print()
        if self.errors or identical != len(ORDERS):
            print(f"federation/demo: FAILED: {identical} of {len(ORDERS)} intents completed identically on both nodes", file=sys.stderr)
            for error in self.errors:
                print(f"  - {error}", file=sys.stderr)
            print(f"  node logs: {self.acme.log}, {self.globex.log}", file=sys.stderr)
            print("  is everything running? federation/status (with the demo's --dir) shows it", file=sys.stderr)
            return 1
        events = "/".join(str(n) for n in sorted(lengths))
        print(
            f"OK: all {len(ORDERS)} intents COMPLETED identically on both nodes "
            f"(acme's replica == globex's log, {events} events each, seqs gapless) in {time.monotonic() - T0:.1f} s"
        )
        return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `federation/demo | head` ends quietly
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, help="the kit's federation.json")
    args = parser.parse_args(argv)
    try:
        with open(args.state) as file:
            state = json.load(file)
        return Demo(state).main()
    except DemoError as error:
        print(f"federation/demo: FAILED: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the SDK's errors, an unreachable node, a damaged federation.json
        print(f"federation/demo: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
