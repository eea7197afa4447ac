"""A call the gateway ends itself is ended upstream too.

When an upstream sends nothing for ``servers.X.timeout`` (no head, a stalled body, a silent
stream), the gateway answers its client that the call ended. The tool went on running
upstream: its side effects happened anyway, and its late answer reached the client on a
resumed stream (one that called again ran the tool twice). Now a handshake-era upstream is
sent ``notifications/cancelled`` for it, and a resumed stream drops that request's answer.

The upstreams are ``tests.servers.raw_upstream`` processes (``hang``: no head ever;
``sse-silent``: a priming event, then nothing), behind a real gateway process with a short
``servers.X.timeout``; what they were sent is read from their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.auth.identity import hash_key
from gateway.edge.forward import Forward, end_upstream_call, ended_here
from tests.gateway_proc import GatewayProcess, initialize_body, run_gateway
from tests.peers import raw_upstream

KEY = "cgk_ended-calls-agent-0123456789"
POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'
UPSTREAMS = {
    "hanging": "hang",
    "silent": "sse-silent",
    "blank": "sse-blank",
    "drip": "sse-drip",
    "mute": "sse-silent,resume-silent",
    "deleting": "delete-stream",
    "streaming": "sse",
}
HEADERS = {
    "authorization": f"Bearer {KEY}",
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("ended-upstreams")
    return {name: directory / f"{name}.jsonl" for name in UPSTREAMS}


@pytest.fixture(scope="module")
def gateway(
    logs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with contextlib.ExitStack() as stack:
        servers = {
            name: {"url": stack.enter_context(raw_upstream(how, logs[name])).url, "timeout": 0.5}
            for name, how in UPSTREAMS.items()
        }
        grants = {"agent": {"key_sha256": hash_key(KEY)}}
        directory = tmp_path_factory.mktemp("gw-ended")
        yield stack.enter_context(run_gateway(directory, POLICY, servers, grants=grants))


def call(msg_id: Any) -> dict[str, Any]:
    params = {"name": "echo", "arguments": {"text": "hi"}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


def _seen(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def cancelled(log: Path, msg_id: Any) -> dict[str, Any]:
    """The ``notifications/cancelled`` the upstream was sent for ``msg_id`` (waited for)."""
    async with asyncio.timeout(20):
        while True:
            for record in _seen(log):
                params = record.get("params") or {}
                if record["rpc"] == "notifications/cancelled" and params["requestId"] == msg_id:
                    return record
            await asyncio.sleep(0.05)  # polling for the upstream's log line, not for time


async def test_no_head_in_time_is_cancelled_upstream(
    gateway: GatewayProcess, logs: dict[str, Path]
) -> None:
    async with httpx.AsyncClient(timeout=20) as http:
        resp = await http.post(f"{gateway.base}/mcp/hanging", json=call("h-1"), headers=HEADERS)
    assert resp.json()["error"]["message"] == "upstream 'hanging' did not answer in time"
    record = await cancelled(logs["hanging"], "h-1")
    assert record["params"]["reason"].startswith("celgate: ")
    # the call's record says "allow"; one line tied to it says what became of it
    (decision,) = gateway.wait_records(1, where=lambda r: r["server"] == "hanging")
    assert decision["effect"] == "allow"
    (failed,) = gateway.wait_records(1, "call.upstream_failed")
    assert failed["decision_id"] == decision["decision_id"]
    assert (failed["server"], failed["tool"], failed["grant"]) == ("hanging", "echo", "agent")
    assert failed["reason"] == "upstream 'hanging' did not answer in time"


async def test_library_lines_are_json(gateway: GatewayProcess) -> None:
    """uvicorn wrote "Invalid HTTP request received." as plain text into the JSON log, once
    for every connection any client opened with a bad head; now a JSON line, at most ten a
    second for one message, the rest counted."""
    for _ in range(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-bad: a\x01b\r\n\r\n")
        await reader.read()  # the gateway's 400, then its close
        writer.close()
    lines = await asyncio.to_thread(_settled_lines, gateway)
    # (the start-up banner is on stdout, which this file holds too; the log is stderr's)
    assert not [line for line in lines if "Invalid HTTP" in line and not line.startswith("{")]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    invalid = [r for r in records if r.get("logger") == "uvicorn.error"]
    assert invalid and len(invalid) <= 20  # ten a second: the test may straddle a second
    assert invalid[0]["event"] == "Invalid HTTP request received."


def _settled_lines(gateway: GatewayProcess) -> list[str]:
    text = gateway.log_path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


async def test_a_silent_stream_is_cancelled_upstream(
    gateway: GatewayProcess, logs: dict[str, Path]
) -> None:
    async with httpx.AsyncClient(timeout=20) as http:
        resp = await http.post(f"{gateway.base}/mcp/silent", json=call(41), headers=HEADERS)
    assert "the call is ended here" in resp.text
    await cancelled(logs["silent"], 41)


async def test_a_stream_of_blank_lines_is_silence(
    gateway: GatewayProcess, logs: dict[str, Path]
) -> None:
    """Blank lines dispatch nothing: the call is ended after the server's timeout as for a
    silent stream. They were always there already, so the read never waited and its timeout
    never fired: the call was open for good, the loop busy splitting 131,072 empty events a
    chunk (red-team wave 44)."""
    async with httpx.AsyncClient(timeout=20) as http:
        resp = await http.post(f"{gateway.base}/mcp/blank", json=call(42), headers=HEADERS)
    assert "the call is ended here" in resp.text
    await cancelled(logs["blank"], 42)


async def test_a_large_answer_still_arriving_is_no_silence(gateway: GatewayProcess) -> None:
    """Bytes of an event not yet whole are the server talking: a 400 KB answer sent 8 KiB at
    a time over more than the server's timeout was ended as silent (red-team wave 45)."""
    async with httpx.AsyncClient(timeout=20) as http:
        resp = await http.post(f"{gateway.base}/mcp/drip", json=call(43), headers=HEADERS)
    assert "the call is ended here" not in resp.text
    assert '"id": 43' in resp.text and "x" * 1000 in resp.text


async def _ended_then_resumed(
    http: httpx.AsyncClient, path: str, server: str, msg_id: int
) -> tuple[httpx.Response, dict[str, str]]:
    """A call to ``server``'s echo at ``path`` that the gateway ends (its upstream is silent),
    then its stream resumed from the event id it gave: (the resumed answer, the headers)."""
    headers = dict(HEADERS)
    name = "echo" if path == f"/mcp/{server}" else f"{server}__echo"
    if path == "/mcp":
        opened = await http.post(path, json=initialize_body("resumes"), headers=headers)
        headers["mcp-session-id"] = opened.headers["mcp-session-id"]
    message = {**call(msg_id), "params": {"name": name, "arguments": {"text": "hi"}}}
    ended = await http.post(path, json=message, headers=headers)
    assert "the call is ended here" in ended.text
    event_id = next(line[3:].strip() for line in ended.text.splitlines() if line.startswith("id:"))
    resumed = await http.get(
        path, headers={**headers, "accept": "text/event-stream", "last-event-id": event_id}
    )
    return resumed, headers


def _gets(log: Path) -> int:
    return sum(1 for record in _seen(log) if record["method"] == "GET")


@pytest.mark.parametrize("path", ["/mcp/silent", "/mcp"])
async def test_a_resumed_stream_of_an_ended_call_is_refused(
    gateway: GatewayProcess, logs: dict[str, Path], path: str
) -> None:
    """The TypeScript SDK resumes a stream that ended without a result (the gateway's error
    is none): the upstream's late answer was passed on /mcp (wave 30), and each resumed
    stream then held a place of its agent's until it had been silent for servers.X.timeout,
    resumed again each time it ended, for good (red-team wave 37). Resuming the stream of a
    call the gateway ended is refused at once (405, which that client takes without trying
    again), and never reaches the upstream."""
    async with httpx.AsyncClient(base_url=gateway.base, timeout=20) as http:
        before = _gets(logs["silent"])
        resumed, _ = await _ended_then_resumed(http, path, "silent", 71)
    assert resumed.status_code == 405
    assert "cancelled or ended" in resumed.json()["error"]["message"]
    assert _gets(logs["silent"]) == before


@pytest.mark.parametrize("path", ["/mcp/streaming", "/mcp"])
async def test_a_resumed_stream_of_a_cancelled_call_is_refused(
    gateway: GatewayProcess, logs: dict[str, Path], path: str
) -> None:
    """A call its client cancelled (``notifications/cancelled``): resuming its stream brings
    nothing more, and is refused at once; a call not cancelled resumes as before."""
    headers = {**HEADERS, "accept": "text/event-stream, application/json"}  # a stream, please
    name = "echo" if path != "/mcp" else "streaming__echo"
    async with httpx.AsyncClient(base_url=gateway.base, timeout=20) as http:
        if path == "/mcp":
            opened = await http.post(path, json=initialize_body("cancels"), headers=headers)
            headers["mcp-session-id"] = opened.headers["mcp-session-id"]
        events = []
        for msg_id in (81, 82):
            message = {**call(msg_id), "params": {"name": name, "arguments": {"text": "hi"}}}
            answered = await http.post(path, json=message, headers=headers)
            lines = answered.text.splitlines()
            events.append(next(line[3:].strip() for line in lines if line.startswith("id:")))
        cancel = {"method": "notifications/cancelled", "params": {"requestId": 82}}
        sent = await http.post(path, json={"jsonrpc": "2.0", **cancel}, headers=headers)
        assert sent.status_code == 202
        resumed = []
        for event_id in events:
            before = _gets(logs["streaming"])
            asked = {**headers, "accept": "text/event-stream", "last-event-id": event_id}
            resp = await http.get(path, headers=asked)
            resumed.append((resp.status_code, _gets(logs["streaming"]) - before))
    # 81: passed upstream (whose GET is 405, as this test server answers every GET); 82: not
    assert resumed == [(405, 1), (405, 0)]


async def test_a_delete_answered_with_an_endless_stream_ends(gateway: GatewayProcess) -> None:
    """An upstream answered DELETE with a stream of keep-alives that never ended: each held
    a connection and a place among its caller's notices (where its cancels go) for good
    (red-team wave 36). It ends after ``servers.X.timeout`` with no message."""
    async with httpx.AsyncClient(base_url=gateway.base, timeout=20) as http:
        with anyio.fail_after(15):
            ended = await http.delete("/mcp/deleting", headers=HEADERS)
    assert ended.status_code == 200 and "data:" not in ended.text


def test_a_resumed_stream_brings_no_answer_to_an_ended_call() -> None:
    """In process: the check a resumed stream's view uses (``relay._stream``)."""
    upstream: Any = type("U", (), {"name": "up"})()
    fwd = Forward(upstream, "sid-1", b"{}", 9, grant="g/a")
    fwd.sent_headers = {"mcp-protocol-version": "2026-07-28"}  # no notice sent: none needed
    carries = ended_here("up", "g/a", "sid-1")
    assert carries(9)
    end_upstream_call(fwd, "test")
    assert not carries(9)
    assert carries("9") and carries(10)  # only that request's (by id and its JSON type)
    assert ended_here("up", "g/b", "sid-1")(9)  # and only in its own session


def test_one_callers_cancels_never_push_out_anothers() -> None:
    """One list for every caller let one agent's 4,200 made-up cancels push another's out,
    and its resumed streams were forwarded and held again (red-team wave 38)."""
    from gateway.edge.clientview import id_digest
    from gateway.edge.forward import MAX_OVER, over, request_over

    request_over("up", "g/victim", "s-v", 7)
    for n in range(MAX_OVER * 3):
        request_over("up", "g/flood", "s-f", f"made-up-{n}")
    assert over("up", "g/victim", "s-v", id_digest(7))
    assert not over("up", "g/other", "s-v", id_digest(7))
    assert not over("up", "g/victim", "s-v", id_digest(8))


def test_a_session_that_cancelled_past_what_is_kept_refuses_every_id() -> None:
    """An agent cancelled 1,300 made-up ids in its session to push a real one out, then sent
    a call under it: a cancelled tools/list's late answer came back as the call's result
    (red-team wave 68). Its oldest, forgotten while fresh, make the session one that cannot
    tell its cancelled ids apart: every request of it is refused, and no other session's."""
    from gateway.edge.forward import MAX_OVER, request_over, was_over

    request_over("up", "g/flooder", "s-1", 100)  # the real one
    for n in range(MAX_OVER + 10):
        request_over("up", "g/flooder", "s-1", f"made-up-{n}")
    assert was_over("up", "g/flooder", "s-1", 100)
    assert was_over("up", "g/flooder", "s-1", "never-used")  # none can be told apart
    assert not was_over("up", "g/flooder", "s-2", 100)  # a new session starts clean


async def test_an_id_in_progress_or_left_is_no_new_requests(tmp_path: Path) -> None:
    """A server's streams are by the id's text: a second request of a session under an id
    in progress (1 or "1"), or under the id of one its client went away from, took the first
    one's answer when it came, a slow tools/list whole as a call's result (red-team wave
    68). Both are refused; another session may use the id."""
    log = tmp_path / "up.jsonl"
    with raw_upstream("sessions,sse-silent", log) as up:
        grants = {"agent": {"key_sha256": hash_key(KEY)}}
        servers = {"up": {"url": up.url, "timeout": 30}}
        with run_gateway(tmp_path, POLICY, servers, grants=grants) as gw:
            async with httpx.AsyncClient(base_url=gw.base, timeout=20) as http:
                sessions = []
                for name in ("first", "second"):
                    made = await http.post("/mcp/up", json=initialize_body(name), headers=HEADERS)
                    sessions.append({**HEADERS, "mcp-session-id": made.headers["mcp-session-id"]})
                mine, other = sessions
                first = asyncio.ensure_future(http.post("/mcp/up", json=call(5), headers=mine))
                async with asyncio.timeout(20):  # until the upstream has it
                    while not any(r.get("rpc") == "tools/call" for r in _seen(log)):
                        await asyncio.sleep(0.05)
                for again in (5, "5"):
                    refused = await http.post("/mcp/up", json=call(again), headers=mine)
                    assert refused.status_code == 400
                    assert "in progress" in refused.json()["error"]["message"]
                first.cancel()  # the client goes away, its request still with the server
                with contextlib.suppress(asyncio.CancelledError):
                    await first
                async with asyncio.timeout(20):  # until the gateway has seen it go
                    while True:
                        again = await http.post("/mcp/up", json=call(5), headers=mine)
                        if "cancelled" in again.text:
                            break
                        assert "in progress" in again.text, again.text
                        await asyncio.sleep(0.05)
                assert again.status_code == 400
                listed = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
                theirs = await http.post("/mcp/up", json=listed, headers=other)
                assert theirs.status_code == 200 and "echo" in theirs.text


def test_a_client_that_leaves_after_its_answer_leaves_no_id_over() -> None:
    """Clients drop a stream once they have read its answer: each such call's id counted
    as one left unanswered, and a busy agent's session would fill what is kept and refuse
    every request. Only a request whose answer has not come is over when its client goes."""
    from gateway.edge.forward import left_unanswered, was_over
    from gateway.wire.sse import SseRewriter

    upstream: Any = type("U", (), {"name": "up"})()
    view: Any = type("V", (), {"wants": lambda self, data: False})()
    for n, answering in enumerate([True, "answered", "not yet"]):
        fwd = Forward(upstream, "sid-left", b"{}", n, grant="g/left")
        fwd.sent_headers = {}
        if isinstance(answering, str):
            rewriter = SseRewriter(view, n)
            if answering == "answered":
                rewriter.answered = True
            fwd.answering = rewriter
        else:
            fwd.answering = answering
        left_unanswered(fwd)
    assert [was_over("up", "g/left", "sid-left", n) for n in range(3)] == [False, False, True]
