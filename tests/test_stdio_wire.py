"""The Streamable HTTP wire of a handshake-era stdio session, as the bridge serves it by hand.

In process, against the test upstream over stdio, through the bridge's own pool (what the
relay calls): an answer that comes alone is JSON; anything the child sends for a request first
(or a slow answer) opens an SSE stream with a priming event; a cut stream resumes from its
Last-Event-ID; GET opens the stream for the rest, once; DELETE, idleness or a request with no
session leave no process behind; a client cancels its own request.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from gateway.config import ServerConfig
from gateway.upstream import stdio_wire
from gateway.upstream.inproc import AsgiResponse
from gateway.upstream.stdio import StdioUpstream
from tests.peers import REPO_ROOT, stdio_upstream_command
from tests.servers.test_servers_smoke import eventually

HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {}},
        "clientInfo": {"name": "wire-test", "version": "1"},
    },
}


@contextlib.asynccontextmanager
async def bridge(script: str | None = None, **config: Any) -> AsyncIterator[StdioUpstream]:
    """The bridge to the test upstream, or with ``script`` to a child running that Python."""
    if script is None:
        command, args = stdio_upstream_command()
        env = {"PYTHONPATH": str(REPO_ROOT)}
        server = ServerConfig(name="st", command=command, args=tuple(args), env=env, **config)
    else:
        server = ServerConfig(name="inline", command=sys.executable, args=("-c", script))
    upstream = StdioUpstream(server)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(upstream.run)
            yield upstream
            tg.cancel_scope.cancel()


def call(msg_id: int, tool: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


async def post(
    upstream: StdioUpstream, message: dict[str, Any], sid: str | None = None
) -> AsgiResponse:
    headers = dict(HEADERS)
    if sid is not None:
        headers |= {"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    return await upstream.pool.request("POST", headers, json.dumps(message).encode())


async def opened(upstream: StdioUpstream) -> str:
    answer = await post(upstream, INIT)
    await answer.read()
    sid = answer.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await post(upstream, note, sid)).status == 202
    return sid


async def events(answer: AsgiResponse, until: int) -> list[tuple[str | None, str]]:
    """(id, data) of each SSE event, until the answer with JSON-RPC id ``until`` is read."""
    out: list[tuple[str | None, str]] = []
    text = ""
    async with contextlib.aclosing(answer.iter_chunks()) as chunks:
        async for chunk in chunks:
            text += chunk.decode()
            while "\n\n" in text:
                block, text = text.split("\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                out.append((fields.get("id"), fields.get("data", "")))
                if out[-1][1] and json.loads(out[-1][1]).get("id") == until:
                    return out
    return out


class TestAnswers:
    async def test_an_answer_that_comes_alone_is_json(self) -> None:
        async with bridge() as upstream:
            sid = await opened(upstream)
            answer = await post(upstream, call(1, "echo", {"text": "plain"}), sid)
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers["mcp-session-id"] == sid
            body = json.loads(await answer.read())
            assert body["id"] == 1 and body["result"]["content"][0]["text"] == "plain"

    async def test_progress_first_opens_a_stream_with_a_priming_event(self) -> None:
        async with bridge() as upstream:
            sid = await opened(upstream)
            message = call(2, "test_tool_with_progress", {}, progressToken="p")
            answer = await post(upstream, message, sid)
            assert answer.headers["content-type"] == "text/event-stream"
            got = await events(answer, until=2)
            assert got[0][0] is not None and got[0][1] == ""  # priming: an id, no data
            sent = [json.loads(data) for _, data in got[1:]]
            assert [m["params"]["progressToken"] for m in sent[:-1]] == ["p", "p", "p"]
            assert sent[-1]["id"] == 2 and "result" in sent[-1]
            assert all(event_id is not None for event_id, _ in got)

    async def test_a_slow_answer_opens_the_stream_first(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(stdio_wire, "HEAD_AFTER", 0.0)
        async with bridge() as upstream:
            sid = await opened(upstream)
            answer = await post(upstream, call(3, "echo", {"text": "late"}), sid)
            assert answer.headers["content-type"] == "text/event-stream"
            got = await events(answer, until=3)
            assert json.loads(got[-1][1])["result"]["content"][0]["text"] == "late"

    async def test_a_cut_stream_resumes_from_its_last_event_id(self) -> None:
        async with bridge() as upstream:
            sid = await opened(upstream)
            message = call(4, "test_tool_with_progress", {}, progressToken="r")
            answer = await post(upstream, message, sid)
            async with contextlib.aclosing(answer.iter_chunks()) as chunks:
                first = await anext(chunks)  # the priming event, then the caller is gone
            answer.close()
            last = first.decode().split("id: ", 1)[1].split("\n", 1)[0]
            headers = {"accept": "text/event-stream", "mcp-session-id": sid, "last-event-id": last}
            resumed = await upstream.pool.request("GET", headers)
            sent = [json.loads(data) for _, data in await events(resumed, until=4) if data]
            assert sent[-1]["id"] == 4 and "result" in sent[-1]

    async def test_an_answer_that_came_while_its_client_was_away_is_replayed(self) -> None:
        """The client's connection dropped after a progress event; the answer came before it
        resumed, into an inbox no one read: the resumed stream was told "nothing more will
        come", of a call that had run (red-team wave 59). The answer is kept for the
        replay. The child answers ``slow`` only once ``go`` comes, and ``go`` after it."""
        script = (
            "import json, sys\n"
            "held = None\n"
            "def out(m): print(json.dumps({'jsonrpc': '2.0', **m}), flush=True)\n"
            "for line in sys.stdin:\n"
            "    m = json.loads(line)\n"
            "    if 'id' not in m: continue\n"
            "    if m['method'] == 'initialize':\n"
            "        info = {'name': 'x', 'version': '1'}\n"
            "        out({'id': m['id'], 'result': {'protocolVersion': '2025-11-25',\n"
            "             'capabilities': {'tools': {}}, 'serverInfo': info}})\n"
            "    elif m['params'].get('name') == 'slow':\n"
            "        held = m['id']\n"
            "        token = m['params']['_meta']['progressToken']\n"
            "        out({'method': 'notifications/progress',\n"
            "             'params': {'progressToken': token, 'progress': 1}})\n"
            "    else:\n"
            "        out({'id': held, 'result': {'content': [{'type': 'text', 'text': 'done'}]}})\n"
            "        out({'id': m['id'], 'result': {'content': []}})\n"
        )
        async with bridge(script) as upstream:
            sid = await opened(upstream)
            answer = await post(upstream, call(4, "slow", {}, progressToken="p"), sid)
            async with contextlib.aclosing(answer.iter_chunks()) as chunks:
                text = ""
                while "progress" not in text:  # the priming event, then the progress
                    text += (await anext(chunks)).decode()
            answer.close()  # the connection drops
            last = text.rsplit("id: ", 1)[1].split("\n", 1)[0]
            go = await post(upstream, call(5, "go", {}), sid)
            assert json.loads(await go.read())["id"] == 5  # the held answer was read first
            headers = {"accept": "text/event-stream", "mcp-session-id": sid, "last-event-id": last}
            resumed = await upstream.pool.request("GET", headers)
            assert resumed.status == 200
            sent = [json.loads(data) for _, data in await events(resumed, until=4) if data]
            assert sent[-1]["id"] == 4 and sent[-1]["result"]["content"][0]["text"] == "done"

    async def test_a_finished_stream_resumed_is_refused_at_once(self) -> None:
        """The TypeScript client resumes a stream that ended with an error (not a result),
        and the stream of every call it gave up on: held open (as the SDK's own server
        does), each held a place of its agent's, and when it ended the client tried a plain
        GET (409: its own was open) and reported the connection lost. With nothing left to
        replay it is 405 at once, which that client takes without trying again, as the
        relay answers for a request that is over (red-team wave 38)."""
        async with bridge() as upstream:
            sid = await opened(upstream)
            message = call(5, "test_tool_with_progress", {}, progressToken="f")
            got = await events(await post(upstream, message, sid), until=5)
            last = got[-1][0]
            assert last is not None and json.loads(got[-1][1])["id"] == 5  # ended
            headers = {"accept": "text/event-stream", "mcp-session-id": sid, "last-event-id": last}
            resumed = await upstream.pool.request("GET", headers)
            assert resumed.status == 405
            assert "cancelled or ended" in json.loads(await resumed.read())["error"]["message"]
            answer = await post(upstream, call(6, "echo", {"text": "meanwhile"}), sid)
            assert json.loads(await answer.read())["id"] == 6  # the session goes on

    async def test_an_event_id_not_ours_replays_nothing(self) -> None:
        async with bridge() as upstream:
            sid = await opened(upstream)
            headers = {"accept": "text/event-stream", "mcp-session-id": sid, "last-event-id": "9"}
            resumed = await upstream.pool.request("GET", headers)
            assert resumed.status == 200
            assert [c async for c in resumed.iter_chunks()] == []


class TestSessions:
    async def test_one_get_stream_then_delete_ends_the_process(self) -> None:
        async with bridge() as upstream:
            sid = await opened(upstream)
            headers = {"accept": "text/event-stream", "mcp-session-id": sid}
            stream = await upstream.pool.request("GET", headers)
            assert stream.status == 200
            assert (await upstream.pool.request("GET", headers)).status == 409
            child = upstream.bridge.sessions[sid].child
            assert (await upstream.pool.request("DELETE", {"mcp-session-id": sid})).status == 200
            assert [c async for c in stream.iter_chunks()] == []  # the GET stream ended
            assert (await post(upstream, call(5, "echo", {"text": "x"}), sid)).status == 404
            await eventually(lambda: child.proc is not None and child.proc.returncode is not None)

    async def test_a_request_without_a_session_starts_no_process(self) -> None:
        async with bridge() as upstream:
            answer = await post(upstream, call(6, "echo", {"text": "x"}))
            assert answer.status == 400
            assert not upstream.bridge.sessions

    async def test_an_idle_session_ends_with_its_process(self) -> None:
        async with bridge(idle_timeout=0.3) as upstream:
            sid = await opened(upstream)
            child = upstream.bridge.sessions[sid].child
            await eventually(lambda: not upstream.bridge.sessions, 10)
            await eventually(lambda: child.proc is not None and child.proc.returncode is not None)

    async def test_the_client_cancels_its_own_request(self) -> None:
        """A question to the client opens the call's stream; the client's cancellation of its
        own request ends that stream, with no answer."""
        async with bridge() as upstream:
            sid = await opened(upstream)
            message = call(7, "test_elicitation", {"message": "name?"})
            answer = await post(upstream, message, sid)
            cancel = {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 7, "reason": "changed my mind"},
            }
            async with contextlib.aclosing(answer.iter_chunks()) as chunks:
                text = ""
                while "elicitation/create" not in text:
                    text += (await anext(chunks)).decode()
                assert (await post(upstream, cancel, sid)).status == 202
                rest = b"".join([c async for c in chunks])
            assert b'"id":7' not in rest and b'"id": 7' not in rest
            assert not upstream.bridge.sessions[sid].in_flight


def test_a_client_naming_sse_first_gets_a_stream() -> None:
    """Accept order is the client's preference: ``text/event-stream`` first asks for a stream
    even for an answer that comes alone (the conformance suite asks so); JSON otherwise."""
    from gateway.wire.asgi import Incoming, prefers_sse

    def incoming(accept: str) -> Incoming:
        headers = [(b"accept", accept.encode())]
        scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
        return Incoming(scope, None)  # type: ignore[arg-type]

    assert prefers_sse(incoming("text/event-stream, application/json"))
    assert not prefers_sse(incoming("application/json, text/event-stream"))
    assert not prefers_sse(incoming(""))


MODERN = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "wire-test", "version": "1"},
}


async def post_modern(upstream: StdioUpstream, message: dict[str, Any]) -> AsgiResponse:
    message["params"] = {**message.get("params", {}), "_meta": MODERN_META}
    headers = {**MODERN, "mcp-method": message["method"]}
    if message["method"] == "tools/call":
        headers["mcp-name"] = message["params"]["name"]
    return await upstream.pool.request("POST", headers, json.dumps(message).encode())


class TestSharedProcessListens:
    """``subscriptions/listen`` on the one 2026-07-28 process: its frames are routed by their
    subscription id (whoever else has a call running), under the caller's own id, and the
    request timeout does not end it."""

    async def test_a_listen_is_acknowledged_under_its_own_id_while_another_call_runs(
        self,
    ) -> None:
        async with bridge(timeout=0.5) as upstream, anyio.create_task_group() as tg:
            shared = upstream.bridge.shared

            async def hang() -> None:
                await post_modern(upstream, call(1, "hang", {}))

            tg.start_soon(hang)
            await eventually(lambda: len(shared.waiting) == 1)
            listen = {
                "jsonrpc": "2.0",
                "id": "alice-sub",
                "method": "subscriptions/listen",
                "params": {"notifications": {"toolsListChanged": True}},
            }
            answer = await post_modern(upstream, listen)
            assert answer.headers["content-type"] == "text/event-stream"
            async with contextlib.aclosing(answer.iter_chunks()) as chunks:
                text = ""
                while "acknowledged" not in text:
                    text += (await anext(chunks)).decode()
            ack = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
            assert ack["method"] == "notifications/subscriptions/acknowledged"
            assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "alice-sub"
            inner = next(i for i in shared.listens)
            assert inner in shared.waiting  # open, with no deadline to end it
            answer.close()
            tg.cancel_scope.cancel()


async def test_a_child_that_stops_reading_holds_bounded_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child that reads nothing (as a single-threaded server does in a slow tool) takes at
    most ``MAX_UNWRITTEN`` bytes of input; past that a message is refused, not queued, and
    no write waits longer than ``SEND_SECONDS``."""

    from gateway.upstream import stdio_child

    monkeypatch.setattr(stdio_child, "SEND_SECONDS", 0.05)  # each write's wait, bounded
    script = (  # answers the gateway's first message, then never reads again
        "import json, sys, threading\n"
        "first = json.loads(sys.stdin.readline())\n"
        "answer = {'jsonrpc': '2.0', 'id': first['id'], 'result': {}}\n"
        "print(json.dumps(answer), flush=True)\n"
        "threading.Event().wait()\n"
    )
    async with bridge(script) as upstream:
        child = upstream.bridge.shared.child
        await eventually(lambda: child.proc is not None)
        line = b'"' + b"x" * (1024 * 1024) + b'"'
        taken = 0
        while await child.send_line(line):
            taken += 1
            assert taken <= stdio_child.MAX_UNWRITTEN // len(line) + 1
        assert child.proc is not None
        pending = child.proc.stdin.transport.get_write_buffer_size()  # type: ignore[union-attr]
        assert pending <= stdio_child.MAX_UNWRITTEN


class TestSharedProcessIsolation:
    """On the one 2026-07-28 process every caller shares: a line that names no caller's
    request goes to nobody, and no caller can send the child an answer."""

    async def test_untagged_lines_reach_no_caller(self) -> None:
        script = (  # before each answer, a line about something: no progress token, no id
            "import json, sys\n"
            "for line in sys.stdin:\n"
            "    m = json.loads(line)\n"
            "    if 'id' not in m or 'method' not in m: continue\n"
            "    note = {'jsonrpc': '2.0', 'method': 'notifications/message',\n"
            "            'params': {'level': 'info', 'data': 'about some call'}}\n"
            "    print(json.dumps(note), flush=True)\n"
            "    print(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'result': {}}), flush=True)\n"
        )
        async with bridge(script) as upstream:
            answer = await post_modern(upstream, call(1, "anything", {}))
            body = await answer.read()
            assert b"about some call" not in body
            assert json.loads(body.splitlines()[-1].removeprefix(b"data: "))["id"] == 1

    async def test_an_answer_from_a_caller_is_refused(self) -> None:
        async with bridge() as upstream:
            forged = {"jsonrpc": "2.0", "id": "srv-ask-1", "result": {"action": "accept"}}
            headers = {**MODERN, "mcp-method": "tools/call"}
            answer = await upstream.pool.request("POST", headers, json.dumps(forged).encode())
            assert answer.status == 400


async def _all_chunks(answer: AsgiResponse) -> list[bytes]:
    return [chunk async for chunk in answer.iter_chunks()]


def test_a_long_answer_is_put_under_its_callers_id_as_the_child_wrote_it() -> None:
    """The shared process's answers carry the gateway's own ids; the caller's is put back.
    A long answer's result is not encoded again for it (a 60 MiB answer held the loop every
    caller shares seconds longer): its bytes go on in a new envelope."""
    result = b'{"content":[{"type":"text","text":"hi"}],"data":[1, 2.5, "\\u00e9"]}'
    line = b'{"result":' + result + b',"jsonrpc":"2.0","id":"celgate-7"}'
    text = stdio_wire.answer_text(line, "caller-1")
    assert text is not None and result in text
    assert json.loads(text) == {"jsonrpc": "2.0", "id": "caller-1", "result": json.loads(result)}
    error = b'{"jsonrpc":"2.0","id":"celgate-8","error":{"code":-1,"message":"no"}}'
    assert json.loads(stdio_wire.answer_text(error, 5) or b"") == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": -1, "message": "no"},
    }
    both = b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}'
    odd = b'{"jsonrpc":"2.0","id":1,"result":{"x":NaN}}'  # encoded again, mended, instead
    assert stdio_wire.answer_text(both, 1) is None and stdio_wire.answer_text(odd, 1) is None
    assert stdio_wire.answer_text(b'{"jsonrpc":"2.0","id":1}', 1) is None
