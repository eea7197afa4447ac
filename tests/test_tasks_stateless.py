"""Tasks of the 2026-07-28 tasks extension through the relay, to a stateless server that keeps
one store for every caller: a ``subscriptions/listen`` carries only the task notifications of
the tasks its caller named (their ids bound to it), never another agent's task and result,
nor any other message tagged with another agent's task (its id bound to the listener would
read that task);
``tasks/update`` is known, its task id checked and unwrapped like ``tasks/get``'s."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import PeerProcess, free_port, start_process

ALICE = "cgk_tasks-stateless-alice-0123456789"
BOB = "cgk_tasks-stateless-bob-0123456789ab"
VERSION = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
RELATED = "io.modelcontextprotocol/related-task"
LISTEN = "subscriptions/listen"
ACK = "notifications/subscriptions/acknowledged"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    port = free_port()
    log = tmp_path_factory.mktemp("tasks-stateless") / "upstream.log"
    argv = [sys.executable, "-m", "tests.servers.tasks_stateless", "--port", str(port)]
    peer = start_process(
        argv, port=port, url=f"http://127.0.0.1:{port}/mcp", extra_env={"TASKS_LOG": str(log)}
    )
    peer.log = log  # type: ignore[attr-defined]
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def gw(upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {
        "alice": {"key_sha256": hashlib.sha256(ALICE.encode()).hexdigest()},
        "bob": {"key_sha256": hashlib.sha256(BOB.encode()).hexdigest()},
    }
    folder = tmp_path_factory.mktemp("tasks-stateless-gw")
    policy = 'version: "1"\ndefault: deny\ntools:\n  keep: {}\n'
    with run_gateway(folder, policy, {"t": {"url": upstream.url}}, grants=grants) as gateway:
        yield gateway


def post(
    gw: GatewayProcess,
    key: str,
    method: str,
    params: dict[str, Any],
    url: str | None = None,
    **headers: str,
) -> tuple[httpx.Response, list[dict[str, Any]]]:
    meta = {
        "io.modelcontextprotocol/protocolVersion": VERSION,
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}},
    }
    body = {"jsonrpc": "2.0", "id": 5, "method": method, "params": {**params, "_meta": meta}}
    sent = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": VERSION,
        "authorization": f"Bearer {key}",
        **headers,
    }
    answer = httpx.post(url or gw.url("t"), json=body, headers=sent, timeout=10)
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [ln[5:] for ln in answer.text.splitlines() if ln.startswith("data:")]
        return answer, [json.loads(line) for line in lines if line.strip()]
    return answer, [answer.json()] if answer.text.strip() else []


def new_task(gw: GatewayProcess, key: str, note: str) -> str:
    _, messages = post(gw, key, "tools/call", {"name": "keep", "arguments": {"note": note}})
    task_id = messages[-1]["result"]["taskId"]
    assert isinstance(task_id, str) and "." in task_id  # bound to its caller
    return task_id


def task_notes(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if str(m.get("method", "")).startswith("notifications/tasks")]


def test_a_listen_naming_no_task_is_told_of_none(gw: GatewayProcess) -> None:
    new_task(gw, ALICE, "alice-secret-42")
    answer, messages = post(gw, BOB, "subscriptions/listen", {"notifications": {"tasks": True}})
    assert answer.status_code == 200 and messages[-1].get("result") is not None
    assert task_notes(messages) == []
    assert "alice-secret-42" not in answer.text


def test_a_listen_hears_only_the_tasks_it_named_under_their_bound_ids(
    gw: GatewayProcess,
) -> None:
    mine = new_task(gw, ALICE, "mine")
    new_task(gw, BOB, "bobs")
    _, messages = post(gw, ALICE, "subscriptions/listen", {"notifications": {"taskIds": [mine]}})
    notes = task_notes(messages)
    assert [n["params"]["taskId"] for n in notes] == [mine]
    assert notes[0]["params"]["result"]["content"][0]["text"] == "note: mine"


def related(messages: list[dict[str, Any]]) -> list[str]:
    """The task ids the messages' ``related-task`` tags name."""
    tags = [m.get("params", {}).get("_meta", {}).get(RELATED) for m in messages]
    return [tag["taskId"] for tag in tags if isinstance(tag, dict)]


def test_no_message_about_another_agents_task_reaches_a_listen(gw: GatewayProcess) -> None:
    """The server tags a log line with each task (``related-task``), another agent's too: had
    it passed, its id bound to bob would have read alice's task with ``tasks/get``."""
    new_task(gw, ALICE, "alice-secret-7")
    mine = new_task(gw, BOB, "bobs-own")
    _, heard = post(gw, BOB, "subscriptions/listen", {"notifications": {}})
    assert related(heard) == [] and "alice-secret-7" not in json.dumps(heard)
    _, own = post(gw, BOB, "subscriptions/listen", {"notifications": {"taskIds": [mine]}})
    assert related(own) == [mine]  # its own task's line, under its bound id


def listens_sent(upstream: PeerProcess, whole: bool = False) -> list[dict[str, Any]]:
    """The filters of the listens the server was sent so far (``whole``: their params)."""
    lines = upstream.log.read_text().splitlines()  # type: ignore[attr-defined]
    sent = [m["params"] for m in map(json.loads, lines) if m["method"] == "subscriptions/listen"]
    return sent if whole else [params["notifications"] for params in sent]


def aggregate(gw: GatewayProcess, key: str, method: str, params: dict[str, Any]) -> Any:
    return post(gw, key, method, params, f"{gw.base}/mcp", **{"mcp-method": method})


def test_a_listen_on_mcp_names_no_task_and_asks_servers_only_what_it_knows(
    gw: GatewayProcess, upstream: PeerProcess
) -> None:
    """``/mcp`` routes no task: a listen's ``taskIds`` went to every server as given (the
    relay checks each is the caller's own), and the server's acknowledgement told bob
    whether alice's task existed (red-team wave 41). Other keys it does not know are not
    sent on, and only what was asked comes back acknowledged."""
    alice_task = new_task(gw, ALICE, "alice-secret-41")
    raw = alice_task.rpartition(".")[0]
    before = len(listens_sent(upstream))
    for named in ([raw], ["task-999"], [alice_task]):
        answer, messages = aggregate(gw, BOB, LISTEN, {"notifications": {"taskIds": named}})
        assert messages[-1]["error"]["code"] == -32602, answer.text
        assert "tasks are not followed on /mcp" in messages[-1]["error"]["message"]
    assert len(listens_sent(upstream)) == before  # none of them reached the server
    asked = {"toolsListChanged": True, "tasks": True, "x-watch": {"all": True}}
    extra = {"taskIds": ["task-of-another-agent"], "x-secret": "agent-private"}  # wave 44
    answer, messages = aggregate(gw, BOB, LISTEN, {"notifications": asked, **extra})
    assert listens_sent(upstream)[-1] == {"toolsListChanged": True}
    assert set(listens_sent(upstream, whole=True)[-1]) == {"notifications", "_meta"}
    acks = [m for m in messages if m.get("method") == ACK]
    assert [a["params"]["notifications"] for a in acks] == [{"toolsListChanged": True}]
    assert "alice-secret-41" not in answer.text


def test_a_servers_odd_acknowledgement_is_not_every_callers_error(
    upstream: PeerProcess, tmp_path: Path
) -> None:
    """A server acknowledging a flag as a list (``toolsListChanged: ["x"]``) beside another's
    ``true`` made every caller's listen on ``/mcp`` an internal error (red-team wave 41):
    what a server says it honours counts only as the flags and resources it was asked. A
    second acknowledgement went to the client as the server wrote it (wave 42): dropped."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.servers.tasks_stateless", "--port", str(port)]
    odd = {"notifications": {"toolsListChanged": ["x"], "resourceSubscriptions": True,
                             "promptsListChanged": True, "taskIds": ["task-1"]}}  # fmt: skip
    again = {"notifications": {"resourceSubscriptions": ["file:///etc/shadow"]}}
    env = {"TASKS_ACK": json.dumps(odd), "TASKS_ACK_AGAIN": json.dumps(again)}
    url = f"http://127.0.0.1:{port}/mcp"
    peer = start_process(argv, port=port, url=url, extra_env=env)
    grants = {"bob": {"key_sha256": hashlib.sha256(BOB.encode()).hexdigest()}}
    policy = 'version: "1"\ndefault: deny\ntools:\n  keep: {}\n'
    servers = {"t": {"url": upstream.url}, "odd": {"url": url}}
    try:
        with run_gateway(tmp_path, policy, servers, grants=grants) as gw:
            asked = {"toolsListChanged": True}
            answer, messages = aggregate(gw, BOB, LISTEN, {"notifications": asked})
            assert answer.status_code == 200, answer.text
            acks = [m["params"]["notifications"] for m in messages if m.get("method") == ACK]
            assert acks == [asked] and not [m for m in messages if "error" in m]
            assert "shadow" not in answer.text
    finally:
        peer.stop()


def test_a_batch_on_a_listen_passes_none_of_its_messages(
    upstream: PeerProcess, tmp_path: Path
) -> None:
    """A second acknowledgement or news of a resource another server owns, each wrapped in a
    batch of one, skipped the listen's checks and reached the client as the server wrote
    them (red-team wave 43)."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.servers.tasks_stateless", "--port", str(port)]
    ack = "notifications/subscriptions/acknowledged"
    again = [
        {"jsonrpc": "2.0", "method": ack,
         "params": {"notifications": {"resourceSubscriptions": ["file:///etc/shadow"]}}},
        {"jsonrpc": "2.0", "method": "notifications/resources/updated",
         "params": {"uri": "secret://not-its-own"}},
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    peer = start_process(argv, port=port, url=url, extra_env={"TASKS_ACK_AGAIN": json.dumps(again)})
    grants = {"bob": {"key_sha256": hashlib.sha256(BOB.encode()).hexdigest()}}
    policy = 'version: "1"\ndefault: deny\ntools:\n  keep: {}\n'
    try:
        with run_gateway(tmp_path, policy, {"odd": {"url": url}}, grants=grants) as gw:
            asked = {"toolsListChanged": True}
            answer, messages = aggregate(gw, BOB, LISTEN, {"notifications": asked})
            assert answer.status_code == 200, answer.text
            assert [m.get("method") for m in messages if "method" in m] == [ACK]
            assert "shadow" not in answer.text and "not-its-own" not in answer.text
    finally:
        peer.stop()


def test_discover_on_mcp_offers_no_tasks(gw: GatewayProcess) -> None:
    """The server offers the tasks extension; ``/mcp`` serves no ``tasks/*`` (404 there), so
    its merged ``server/discover`` does not offer it (red-team wave 41); the relay does."""
    _, merged = aggregate(gw, BOB, "server/discover", {})
    capabilities = merged[-1]["result"]["capabilities"]
    assert "extensions" not in capabilities and capabilities["tools"] == {}
    _, relayed = post(gw, BOB, "server/discover", {})
    assert TASKS in relayed[-1]["result"]["capabilities"]["extensions"]


def test_tasks_update_is_known_and_kept_to_its_callers_task(
    gw: GatewayProcess, upstream: PeerProcess
) -> None:
    task = new_task(gw, ALICE, "asks")
    raw = task.rpartition(".")[0]
    responses = {"confirm": {"action": "accept"}}
    answer, messages = post(
        gw,
        ALICE,
        "tasks/update",
        {"taskId": task, "inputResponses": responses},
        **{"mcp-name": task},
    )
    assert answer.status_code == 200 and "result" in messages[-1]
    for presented in (raw, task):  # the upstream's id, or alice's bound id: not bob's task
        _, refused = post(gw, BOB, "tasks/update", {"taskId": presented, "inputResponses": {}})
        assert refused[-1]["error"]["message"] == "task not found"
    _, mismatch = post(gw, ALICE, "tasks/update", {"taskId": task}, **{"mcp-name": "other"})
    assert mismatch[-1]["error"]["code"] == -32020
    updates = [
        json.loads(line)
        for line in Path(upstream.log).read_text().splitlines()  # type: ignore[attr-defined]
        if '"tasks/update"' in line
    ]
    assert [u["params"]["taskId"] for u in updates] == [raw]  # one, alice's, unwrapped


def test_a_stream_with_no_session_speaks_of_no_callers_task(gw: GatewayProcess) -> None:
    """An upstream that keeps no sessions has one stream for every caller: the relay took a
    GET without a session for a session's own stream, bound every task id it carried to the
    listener, and bob read alice's task result with one of them."""
    alice_task = new_task(gw, ALICE, "alice-secret-99")
    for version in ("2025-11-25", VERSION):
        headers = {
            "accept": "text/event-stream",
            "mcp-protocol-version": version,
            "authorization": f"Bearer {BOB}",
        }
        heard = httpx.get(gw.url("t"), headers=headers, timeout=10)
        assert heard.status_code == 200
        assert "alice-secret-99" not in heard.text and "taskId" not in heard.text
        assert alice_task.split(".")[0] not in heard.text


def test_a_sessions_own_stream_speaks_of_no_task_it_did_not_make(
    tmp_path: Path,
) -> None:
    """A server may tell every task on any session's GET stream (one store for all, or one
    session id for every client): the relay took a session's GET for that caller's alone
    and bound every task id on it to the listener, and bob (another grant, or another user
    of one OAuth client) read alice's task result with one (red-team wave 35)."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.servers.tasks_stateless", "--port", str(port)]
    env = {"TASKS_SESSION_ID": "shared-1"}
    url = f"http://127.0.0.1:{port}/mcp"
    grants = {
        "alice": {"key_sha256": hashlib.sha256(ALICE.encode()).hexdigest()},
        "bob": {"key_sha256": hashlib.sha256(BOB.encode()).hexdigest()},
    }
    policy = 'version: "1"\ndefault: deny\ntools:\n  keep: {}\n'
    peer = start_process(argv, port=port, url=url, extra_env=env)
    try:
        with run_gateway(tmp_path, policy, {"t": {"url": url}}, grants=grants) as gw:
            new_task(gw, ALICE, "alice-secret-77")
            bobs = {
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
                "authorization": f"Bearer {BOB}",
            }
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "bob", "version": "1"}}}  # fmt: skip
            opened = httpx.post(gw.url("t"), json=init, headers=bobs, timeout=10)
            assert opened.status_code == 200, opened.text
            session = {
                "authorization": f"Bearer {BOB}",
                "accept": "text/event-stream",
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            heard = httpx.get(gw.url("t"), headers=session, timeout=10)
            assert heard.status_code == 200
            assert "alice-secret-77" not in heard.text and "taskId" not in heard.text
            assert "working on" not in heard.text  # nor a line tagged with her task
    finally:
        peer.stop()
