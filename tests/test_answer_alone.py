"""A streamed answer that comes alone goes to the client as JSON.

An upstream may answer a request with an SSE stream that holds nothing but a priming event and
the answer. When the client accepts JSON and does not name ``text/event-stream`` first, the
relay sends that answer as one JSON body (through the caller's view), and the upstream
connection still goes back to the pool once the upstream ends its stream. Anything else in the
stream (progress, a server's request, a notification) makes it a stream, with every event held
so far, in order. Checked on the event classifier, on the pool, and through a real gateway in
front of the SDK's own server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.wire.sse import answer_alone, has_data
from tests.gateway_proc import initialize_body, run_gateway
from tests.peers import http_upstream, raw_upstream
from tests.servers.raw_upstream import chunk
from tests.test_h1 import Serve, read_request, until
from tests.test_h1 import serve as serve
from tests.test_upstream_hostile import seen

ANSWER = b'{"jsonrpc":"2.0","id":7,"result":{"content":[]}}'


class TestClassifier:
    def test_an_answer_to_the_request_is_alone(self) -> None:
        assert answer_alone(b"id: 3\nevent: message\ndata: " + ANSWER + b"\n\n", 7) == ANSWER
        assert answer_alone(b"data: " + ANSWER + b"\r\n\r\n", 7) == ANSWER
        error = b'{"jsonrpc":"2.0","id":"a","error":{"code":-1,"message":"no"}}'
        assert answer_alone(b"data: " + error + b"\n\n", "a") == error

    @pytest.mark.parametrize(
        "event",
        [
            b'data: {"jsonrpc":"2.0","id":8,"result":{}}\n\n',  # another request's
            b'data: {"jsonrpc":"2.0","id":"7","result":{}}\n\n',  # "7" is not 7
            b'data: {"jsonrpc":"2.0","id":true,"result":{}}\n\n',  # true is not 1
            b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n',
            b'data: {"jsonrpc":"2.0","id":7,"method":"elicitation/create","params":{}}\n\n',
            b'data: {"jsonrpc":"2.0","id":7,"result":{},"error":{}}\n\n',  # both
            b'data: {"jsonrpc":"2.0","id":7}\n\n',  # neither
            b"event: other\ndata: " + ANSWER + b"\n\n",  # not a message event
            b"data: [" + ANSWER + b"]\n\n",  # a batch
            b"data: {not json\n\n",
            b"id: 1\ndata: \n\n",  # a priming event
        ],
    )
    def test_anything_else_is_not(self, event: bytes) -> None:
        want = 1 if b"true" in event else 7
        assert answer_alone(event, want) is None

    def test_a_priming_event_carries_no_message(self) -> None:
        assert not has_data(b"id: 1\ndata: \nretry: 1000\n\n")
        assert not has_data(b"id: 1\n\n")
        assert not has_data(b": keep-alive\n\n")
        assert has_data(b"data: x\n\n")
        assert has_data(b"data:\ndata:\n\n")  # two empty lines dispatch "\n"


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


class TestPoolAfterAnAnswerAlone:
    async def test_the_connection_returns_once_the_stream_ends(self, serve: Serve) -> None:
        end = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_request(reader)
                writer.write(SSE_HEAD + chunk(b"data: " + ANSWER + b"\n\n"))
                await end.wait()  # the stream ends only when the test says
                writer.write(b"0\r\n\r\n")
                end.clear()

        state, pool = await serve(handler)
        resp = await pool.request("POST", {}, b"{}")
        async for _ in resp.iter_chunks():
            break  # the answer is here; the end is not
        resp.release_when_done(within=60)
        resp.close()  # the relay's own close: nothing while the end is awaited
        assert pool.idle == [] and not resp.conn.closed
        end.set()
        await until(lambda: pool.idle == [resp.conn])
        again = await pool.request("POST", {}, b"{}")  # the same connection, reused
        again.release_when_done(within=60)
        end.set()
        await until(lambda: len(pool.idle) == 1)
        assert state.connections == 1

    async def test_a_stream_that_does_not_end_is_dropped(self, serve: Serve) -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(SSE_HEAD + chunk(b"data: " + ANSWER + b"\n\n"))
            await reader.read()  # never ends its stream

        _, pool = await serve(handler)
        resp = await pool.request("POST", {}, b"{}")
        resp.release_when_done(within=0)  # the time allowed has passed at once
        await until(lambda: resp.conn.closed)
        assert pool.idle == []


HEADERS = {"content-type": "application/json", "mcp-protocol-version": "2025-11-25"}
JSON_FIRST = "application/json, text/event-stream"
SSE_FIRST = "text/event-stream, application/json"


def open_session(client: httpx.Client, url: str, accept: str) -> dict[str, str]:
    init = initialize_body("answer-alone")
    resp = client.post(url, json=init, headers={**HEADERS, "accept": accept})
    assert resp.status_code == 200
    headers = {**HEADERS, "accept": accept, "mcp-session-id": resp.headers["mcp-session-id"]}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert client.post(url, json=note, headers=headers).status_code == 202
    return headers


def call(tool: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}


def messages_of(stream: str) -> list[dict[str, Any]]:
    out = []
    for line in stream.splitlines():
        if line.startswith("data:") and line[5:].strip():
            out.append(json.loads(line[5:]))
    return out


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Any:
    policy = 'version: "1"\ndefault: allow\n'
    directory = tmp_path_factory.mktemp("alone")
    with http_upstream() as up, run_gateway(directory, policy, {"web": {"url": up.url}}) as gw:
        yield gw


class TestThroughTheRelay:
    """The SDK's server (stateful, with an event store: a priming event, then the answer)."""

    def test_an_answer_alone_comes_as_json(self, gateway: Any) -> None:
        with httpx.Client() as client:
            url = gateway.url("web")
            headers = open_session(client, url, JSON_FIRST)
            resp = client.post(url, json=call("echo", {"text": "hi"}), headers=headers)
            assert resp.headers["content-type"] == "application/json"
            assert int(resp.headers["content-length"]) == len(resp.content)
            answer = resp.json()
            assert answer["id"] == 2 and answer["result"]["content"][0]["text"] == "hi"
            # The next call on the same client connection works: nothing was left unread.
            again = client.post(url, json=call("echo", {"text": "again"}), headers=headers)
            assert again.json()["result"]["content"][0]["text"] == "again"

    def test_a_client_naming_sse_first_gets_the_stream(self, gateway: Any) -> None:
        with httpx.Client() as client:
            url = gateway.url("web")
            headers = open_session(client, url, SSE_FIRST)
            resp = client.post(url, json=call("echo", {"text": "hi"}), headers=headers)
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert "id: " in resp.text  # the priming event's id, bound to this caller
            (answer,) = messages_of(resp.text)
            assert answer["result"]["content"][0]["text"] == "hi"

    def test_progress_first_makes_it_a_stream_with_every_event(self, gateway: Any) -> None:
        with httpx.Client() as client:
            url = gateway.url("web")
            headers = open_session(client, url, JSON_FIRST)
            body = call("slow_progress", {"steps": 2, "delay_ms": 1}, progressToken="p")
            resp = client.post(url, json=body, headers=headers)
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.text.startswith("id: ")  # the priming event held, then sent first
            kinds = [m.get("method", "answer") for m in messages_of(resp.text)]
            assert kinds == ["notifications/progress"] * 2 + ["answer"]

    def test_the_answer_passes_the_callers_view(self, tmp_path: Path) -> None:
        """A tools/list answer that came alone is filtered like a streamed one."""
        policy = 'version: "1"\ndefault: deny\ntools:\n  echo:\n    action: allow\n'
        with http_upstream() as up:
            servers = {"web": {"url": up.url}}
            with run_gateway(tmp_path, policy, servers) as gw, httpx.Client() as client:
                headers = open_session(client, gw.url("web"), JSON_FIRST)
                body = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
                resp = client.post(gw.url("web"), json=body, headers=headers)
                assert resp.headers["content-type"] == "application/json"
                names = [tool["name"] for tool in resp.json()["result"]["tools"]]
                assert names == ["echo"]


STREAMING = ("sse", "sse-cut", "sse-linger", "sse-after", "sse-keepalive")


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One gateway in front of raw upstreams that answer ``tools/call`` with streams, each in
    its own way (``tests/servers/raw_upstream.py``); (gateway, the upstreams' request logs)."""
    directory = tmp_path_factory.mktemp("streaming")
    logs = {how: directory / f"{how}.jsonl" for how in STREAMING}
    with contextlib.ExitStack() as stack:
        servers = {}
        for how in STREAMING:
            peer = stack.enter_context(raw_upstream(how, logs[how]))
            servers[how] = {"url": peer.url}
        policy = 'version: "1"\ndefault: allow\n'
        yield stack.enter_context(run_gateway(directory, policy, servers)), logs


def echo(client: httpx.Client, url: str, msg_id: int) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}},
    }
    headers = {**HEADERS, "accept": JSON_FIRST}
    return client.post(url, json=body, headers=headers, timeout=10)


class TestStreamsFromHandWrittenUpstreams:
    """Upstreams written by hand, answering each call with a stream (stateless, no session)."""

    def test_the_upstream_connection_is_reused(self, streaming: Any) -> None:
        gateway, logs = streaming
        with httpx.Client() as client:
            for msg_id in (11, 12, 13):
                resp = echo(client, gateway.url("sse"), msg_id)
                assert resp.headers["content-type"] == "application/json"
                assert resp.json()["result"]["content"][0]["text"] == f"{msg_id} hi"
        calls = [r for r in seen(logs["sse"]) if r["rpc"] == "tools/call"]
        assert len(calls) == 3 and len({r["conn"] for r in calls}) == 1

    def test_a_stream_cut_before_the_answer_tells_the_caller_once(self, streaming: Any) -> None:
        """The priming event held for a JSON answer is sent once, then the error event."""
        gateway, _ = streaming
        with httpx.Client() as client:
            resp = echo(client, gateway.url("sse-cut"), 21)
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.text.count("id: ") == 1
        (error,) = messages_of(resp.text)
        assert error["id"] == 21 and "error" in error

    def test_an_answer_comes_at_once_though_the_stream_stays_open(self, streaming: Any) -> None:
        gateway, logs = streaming
        with httpx.Client() as client:
            for msg_id in (31, 32):
                resp = echo(client, gateway.url("sse-linger"), msg_id)
                assert resp.json()["result"]["content"][0]["text"] == f"{msg_id} hi"
        calls = [r for r in seen(logs["sse-linger"]) if r["rpc"] == "tools/call"]
        assert len({r["conn"] for r in calls}) == 2  # the open one was not reused

    def test_a_message_after_the_answer_does_not_reach_the_next_call(self, streaming: Any) -> None:
        """The rest of a stream whose answer went as JSON is read and dropped: never taken
        for the next caller's answer on the reused connection."""
        gateway, logs = streaming
        with httpx.Client() as client:
            for msg_id in (41, 42, 43):
                resp = echo(client, gateway.url("sse-after"), msg_id)
                assert resp.json()["id"] == msg_id
                assert resp.json()["result"]["content"][0]["text"] == f"{msg_id} hi"
        calls = [r for r in seen(logs["sse-after"]) if r["rpc"] == "tools/call"]
        assert len({r["conn"] for r in calls}) == 1

    def test_a_keep_alive_before_the_answer_makes_it_a_stream(self, streaming: Any) -> None:
        """More than the priming event without a message: the client gets the stream (and so
        the keep-alives as they come), not a head held back until the answer."""
        gateway, _ = streaming
        with httpx.Client() as client:
            resp = echo(client, gateway.url("sse-keepalive"), 51)
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.text.startswith("id: ") and ": keep-alive" in resp.text
        (answer,) = messages_of(resp.text)
        assert answer["result"]["content"][0]["text"] == "51 hi"


class TestTheHeadWaitsAWhileOnly:
    async def test_past_the_wait_the_stream_starts(
        self, serve: Serve, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An upstream that sends its priming event and then works on: once ``HOLD_SECONDS``
        have passed (none, here) the head goes, with the priming event, so the client holds
        an event id to resume from."""
        from gateway.edge import forward
        from gateway.wire.sse import SseRewriter

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(SSE_HEAD + chunk(b"id: 1\ndata: \n\n"))
            await reader.read()  # the call runs on

        monkeypatch.setattr(forward, "HOLD_SECONDS", 0.0)
        _, pool = await serve(handler)
        resp = await pool.request("POST", {}, b"{}")
        held: list[bytes] = []
        try:
            rewriter = SseRewriter(None)  # type: ignore[arg-type]  # split() reads no view
            assert await forward._hold(resp, rewriter, held) == (False, True)
        finally:
            resp.close()
        assert forward._alone(held, 7, quiet=True) is None
