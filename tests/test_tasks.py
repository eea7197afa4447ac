"""Tasks through the relay: each agent reads only its own.

Every agent behind the gateway reaches an upstream as one client, so a server cannot keep their
tasks apart. The upstream here is the TypeScript SDK's own task support, stateless (one task
store for every caller), which is what any server behind a gateway amounts to: before, bob
listed alice's task and read its result (``tasks/result``) by its id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from gateway.auth.guard import SessionSigner
from gateway.edge.agg.merge import Catalogue
from gateway.edge.agg.names import Names
from gateway.edge.agg.sessions import AggSession
from gateway.edge.agg.view import AggView
from gateway.edge.clientview import ClientView
from gateway.edge.tasks import RELATED_TASK, bind_tasks, names_tasks, upstream_request
from gateway.policy import Identity
from gateway.wire.jsonrpc import BadMessage, classify
from gateway.wire.sse import DROP
from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import PeerProcess, start_ts_tasks_upstream, ts_sdk_ready

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdefgh"
POLICY = """
version: "1"
default: deny
tools:
  keep:
    rules:
      - id: nothing-forbidden
        when: 'args.note == "forbidden"'
        action: deny
        reason: that note is not for keeping
    action: allow
"""
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2025-11-25",
}


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def upstream() -> Iterator[PeerProcess]:
    why = ts_sdk_ready()
    if why is not None:
        pytest.skip(why)
    peer = start_ts_tasks_upstream()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def gw(upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {"alice": {"key_sha256": _hash(ALICE)}, "bob": {"key_sha256": _hash(BOB)}}
    servers = {"t": {"url": upstream.url}}
    with run_gateway(tmp_path_factory.mktemp("tasks"), POLICY, servers, grants=grants) as gw:
        yield gw


class Agent:
    """One agent's session on the relay, over raw HTTP (every byte of the answers is seen)."""

    def __init__(self, gw: GatewayProcess, key: str) -> None:
        self.url = gw.url("t")
        self.headers = {**HEADERS, "authorization": f"Bearer {key}"}
        self.ids = iter(range(1, 1000))
        self.init = self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "tasks-test", "version": "1"},
            },
        )
        sid = self.last.headers.get("mcp-session-id")
        if sid is not None:
            self.headers["mcp-session-id"] = sid
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        httpx.post(self.url, headers=self.headers, json=note, timeout=10)

    def request(self, method: str, params: dict[str, Any], **headers: str) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params}
        self.last = httpx.post(self.url, headers={**self.headers, **headers}, json=body, timeout=10)
        text = self.last.text
        if self.last.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(ln[5:] for ln in text.splitlines() if ln.startswith("data:") and ln[5:])
        answer: dict[str, Any] = json.loads(text)
        return answer

    def keep(self, note: str) -> dict[str, Any]:
        params = {"name": "keep", "arguments": {"note": note}, "task": {"ttl": 60000}}
        return self.request("tools/call", params)


def test_an_agent_reads_its_own_task(gw: GatewayProcess) -> None:
    alice = Agent(gw, ALICE)
    created = alice.keep("alice-1")["result"]["task"]
    task_id = created["taskId"]
    assert task_id.count(".") == 1  # bound to alice: <upstream id>.<mac>
    got = alice.request("tasks/get", {"taskId": task_id})["result"]
    assert got["taskId"] == task_id and got["status"] == "completed"
    result = alice.request("tasks/result", {"taskId": task_id})["result"]
    assert result["content"][0]["text"] == "note: alice-1"
    assert result["_meta"][RELATED_TASK]["taskId"] == task_id
    # Mcp-Name (SEP-2663) names the task as the caller knows it; the upstream gets its own id
    again = alice.request("tasks/get", {"taskId": task_id}, **{"mcp-name": task_id})
    assert again["result"]["taskId"] == task_id


def test_another_agent_cannot_list_or_read_it(gw: GatewayProcess) -> None:
    alice, bob = Agent(gw, ALICE), Agent(gw, BOB)
    task_id = alice.keep("alice-secret")["result"]["task"]["taskId"]
    upstream_id = task_id.rpartition(".")[0]
    listed = bob.request("tasks/list", {})
    assert listed["error"]["code"] == -32601
    assert "alice-secret" not in json.dumps(listed)
    for presented in (task_id, upstream_id, upstream_id + ".forged"):
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            answer = bob.request(method, {"taskId": presented})
            assert answer["error"] == {"code": -32602, "message": "task not found"}, method
    # still alice's, and not cancelled by bob
    assert alice.request("tasks/get", {"taskId": task_id})["result"]["status"] == "completed"


def test_the_list_capability_is_not_shown(gw: GatewayProcess) -> None:
    caps = Agent(gw, ALICE).init["result"]["capabilities"]["tasks"]
    assert "list" not in caps
    assert caps["requests"] == {"tools": {"call": {}}}  # the rest of what the server offers


def test_a_mismatched_mcp_name_is_refused(gw: GatewayProcess) -> None:
    alice = Agent(gw, ALICE)
    task_id = alice.keep("alice-2")["result"]["task"]["taskId"]
    answer = alice.request("tasks/get", {"taskId": task_id}, **{"mcp-name": "other"})
    assert answer["error"]["code"] == -32020


def test_a_task_call_is_decided_by_policy(gw: GatewayProcess) -> None:
    """Denied before it reaches the upstream: no task was made. The refusal is a JSON-RPC
    error with the reason (a tool result read as the task asked for: the TypeScript SDK
    threw a schema error and the reason was lost), the decision under ``data``."""
    error = Agent(gw, ALICE).keep("forbidden")["error"]
    assert error["code"] == -32003
    assert "that note is not for keeping" in error["message"]
    assert error["data"]["io.celgate/decision"]["effect"] == "deny"
    decisions = [r for r in gw.records() if r["tool"] == "keep" and r["effect"] == "deny"]
    assert decisions


def _message(body: dict[str, Any]) -> Any:
    return classify({"jsonrpc": "2.0", "id": 1, **body})


def test_listen_names_only_own_tasks_and_every_id_is_bound() -> None:
    """The 2026-07-28 tasks extension follows tasks on ``subscriptions/listen``
    (``notifications.taskIds``) and reports them in ``notifications/tasks/status``."""
    signer = SessionSigner("k" * 32)
    gw: Any = SimpleNamespace(signer=signer)
    alice = Identity(grant="alice", agent="alice")
    bob = Identity(grant="bob", agent="bob")
    mine = signer.wrap_task("t", alice.owner, "u-1")
    listen = _message(
        {"method": "subscriptions/listen", "params": {"notifications": {"taskIds": [mine]}}}
    )
    assert names_tasks(listen)
    body, _, followed = upstream_request(gw, "t", alice, listen)
    assert body is not None
    assert json.loads(body)["params"]["notifications"]["taskIds"] == ["u-1"]
    assert followed == {"u-1"}
    with pytest.raises(BadMessage):
        upstream_request(gw, "t", bob, listen)
    plain = _message({"method": "subscriptions/listen", "params": {"notifications": {}}})
    assert upstream_request(gw, "t", bob, plain) == (None, None, frozenset())  # hears none

    def wrap(task_id: str) -> str:
        return signer.wrap_task("t", alice.owner, task_id)

    status = {
        "jsonrpc": "2.0",
        "method": "notifications/tasks/status",
        "params": {
            "taskId": "u-1",
            "status": "working",
            "_meta": {RELATED_TASK: {"taskId": "u-1"}},
        },
    }
    bound = bind_tasks(status, wrap)
    assert bound is not None
    assert bound["params"]["taskId"] == mine
    assert bound["params"]["_meta"][RELATED_TASK]["taskId"] == mine
    # a tool's own output that happens to hold a "taskId" is left as the tool wrote it
    output = {"jsonrpc": "2.0", "id": 3, "result": {"structuredContent": {"taskId": "x"}}}
    assert bind_tasks(output, wrap) is None


def test_a_stream_speaks_only_of_the_tasks_its_request_named_or_made() -> None:
    """Every message back is read for task ids: only those the request proved its caller's
    (or the one its call made) are bound; a question or notice tagged with another task is
    dropped, and an answer naming one becomes an error (bound, its id would read it)."""
    signer = SessionSigner("k" * 32)
    gw: Any = SimpleNamespace(signer=signer)
    alice = Identity(grant="alice", agent="alice")

    def tagged(task_id: str, **message: Any) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            **message,
            "params": {"_meta": {RELATED_TASK: {"taskId": task_id}}},
        }

    getting = ClientView(gw, "t", alice)
    getting.for_request(5, {})  # the stream of request 5
    getting.tasks = frozenset({"u-1"})
    asked = getting.filter(tagged("u-1", id=7, method="elicitation/create"))
    assert asked["params"]["_meta"][RELATED_TASK]["taskId"] == signer.wrap_task(
        "t", alice.owner, "u-1"
    )
    assert getting.filter(tagged("u-2", id=8, method="elicitation/create")) is DROP
    assert getting.filter(tagged("u-2", method="notifications/message")) is DROP
    other = {"jsonrpc": "2.0", "id": 5, "result": {"taskId": "u-2", "status": "completed"}}
    assert getting.filter(other)["error"]["code"] == -32603

    calling = ClientView(gw, "t", alice)
    calling.for_request(5, {})
    calling.creates = True
    made = {"jsonrpc": "2.0", "id": 5, "result": {"taskId": "u-3", "status": "working",
            "_meta": {RELATED_TASK: {"taskId": "u-3"}}}}  # fmt: skip
    shown = calling.filter(made)
    bound = signer.wrap_task("t", alice.owner, "u-3")
    assert shown["result"]["taskId"] == bound
    assert shown["result"]["_meta"][RELATED_TASK]["taskId"] == bound
    assert calling.filter(tagged("u-1", method="notifications/message")) is DROP
    status = {"jsonrpc": "2.0", "method": "notifications/tasks/status",
              "params": {"taskId": "u-3", "status": "completed"}}  # fmt: skip
    assert calling.filter(status)["params"]["taskId"] == bound  # the task it made


def test_a_message_that_asks_and_answers_at_once_is_dropped_on_every_face() -> None:
    """A server's message with a ``method`` and a ``result`` (a tools list naming a hidden
    tool inside a progress notice, say) is no JSON-RPC shape: on ``/mcp`` it passed as sent,
    past the tool filter, because only answers went through the caller's view."""
    gw: Any = SimpleNamespace(signer=SessionSigner("k" * 32))
    alice = Identity(grant="alice", agent="alice")
    hidden = {"tools": [{"name": "secret", "inputSchema": {"type": "object"}}]}
    session = AggSession("s", "alice", {}, "2025-11-25", 0.0)
    for message in (
        {"jsonrpc": "2.0", "method": "notifications/progress", "result": hidden},
        {"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage", "result": hidden},
        {"jsonrpc": "2.0", "id": 6, "method": "x/y", "error": {"code": 1, "message": "m"}},
    ):
        relay = ClientView(gw, "t", alice)
        assert relay.filter(message) is DROP
        names = Names({"t": "t"}, "__")
        aggregate = AggView(ClientView(gw, "t", alice), names, session, Catalogue(gw, names))
        assert aggregate.filter(message) is DROP
