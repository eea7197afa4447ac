"""In-process HTTP to an ASGI app (``gateway.upstream.inproc``): how stdio bridges are reached.

Small raw ASGI apps pin down the contract the relay relies on (head at once, body streamed
and never joined, early close cancels the app, failures never hang); then the real bridge
in front of the real test upstream over stdio, reached by the SDK's own client through the
httpx2 transport, with no socket anywhere between them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
import structlog
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.config import ServerConfig
from gateway.errors import UpstreamIOError, UpstreamTimeout
from gateway.upstream.inproc import _PAUSE_AT, AsgiPool
from gateway.upstream.stdio import BRIDGE_URL, StdioUpstream
from gateway.wire.asgi import Message, Receive, Scope, Send
from tests.gateway_proc import text_of
from tests.inproc_transport import AsgiTransport
from tests.peers import REPO_ROOT, stdio_upstream_command
from tests.servers.test_servers_smoke import elicitation_answering, eventually

SSE = [(b"content-type", b"text/event-stream")]


async def start(send: Send, status: int = 200, headers: Any = SSE) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def body(send: Send, data: bytes, more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def finished(pool: AsgiPool) -> None:
    """Wait for every app task of the pool to end (however it ends)."""
    await asyncio.gather(*pool.tasks, return_exceptions=True)


class Gate:
    """An app that sends a first chunk, then waits for the test before the rest."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.ended: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await start(send)
            await body(send, b"event: message\ndata: 1\n\n", more=True)
            await self.go.wait()
            await body(send, b"event: message\ndata: 2\n\n")
            self.ended.append("whole")
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise


class TestAsgiPool:
    async def test_the_head_and_each_chunk_come_as_sent(self) -> None:
        """The first chunk is read while the app still holds the second: nothing buffers."""
        app = Gate()
        pool = AsgiPool(app, "gate")
        response = await pool.request("POST", {"accept": "text/event-stream"}, b"{}")
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.iter_chunks()
        assert await anext(chunks) == b"event: message\ndata: 1\n\n"
        assert not response.complete
        app.go.set()
        assert [c async for c in chunks] == [b"event: message\ndata: 2\n\n"]
        assert response.complete
        response.close()
        await finished(pool)
        assert app.ended == ["whole"]

    async def test_closing_early_cancels_the_app(self) -> None:
        app = Gate()
        pool = AsgiPool(app, "gate")
        response = await pool.request("GET", {})
        response.close()
        await finished(pool)
        assert app.ended == ["cancelled"]
        assert not pool.tasks

    async def test_closed_whole_the_app_ends_on_its_own_and_hears_disconnect(self) -> None:
        heard: list[Message] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            heard.append(await receive())
            await start(send, headers=[(b"content-type", b"application/json")])
            await body(send, b"{}")
            heard.append(await receive())  # waits until the answer is closed

        pool = AsgiPool(app, "app")
        response = await pool.request("POST", {"content-type": "application/json"}, b"[1]")
        assert await response.read() == b"{}"
        response.close()
        await finished(pool)
        assert heard == [
            {"type": "http.request", "body": b"[1]", "more_body": False},
            {"type": "http.disconnect"},
        ]

    async def test_the_request_the_app_sees(self) -> None:
        seen: list[Scope] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope)
            await start(send, headers=[])
            await body(send, b"")

        pool = AsgiPool(app, "app", authority="stdio.invalid")
        headers = {
            "Host": "attacker.example",
            "Connection": "x-hop",
            "x-hop": "1",
            "transfer-encoding": "chunked",
            "content-length": "999",
            "mcp-session-id": "abc",
        }
        (await pool.request("DELETE", headers, b"ab")).close()
        scope = seen[0]
        assert scope["method"] == "DELETE" and scope["path"] == "/mcp"
        assert scope["headers"] == [
            (b"host", b"stdio.invalid"),
            (b"mcp-session-id", b"abc"),
            (b"content-length", b"2"),
        ]

    async def test_the_app_runs_in_a_context_of_its_own(self) -> None:
        """A decision id the caller bound for its log lines must not follow the sessions
        and processes a request starts."""
        seen: list[dict[str, Any]] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(structlog.contextvars.get_contextvars())
            await start(send, headers=[])
            await body(send, b"")

        with structlog.contextvars.bound_contextvars(decision_id="d-1"):
            (await AsgiPool(app, "app").request("GET", {})).close()
        assert seen == [{}]

    async def test_hop_by_hop_answer_headers_are_dropped(self) -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            headers = [
                (b"Content-Type", b"text/event-stream"),
                (b"Connection", b"keep-alive, x-private"),
                (b"X-Private", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Mcp-Session-Id", b"s1"),
            ]
            await start(send, headers=headers)
            await body(send, b"")

        pool = AsgiPool(app, "app")
        response = await pool.request("GET", {})
        assert response.raw_headers == [
            (b"content-type", b"text/event-stream"),
            (b"mcp-session-id", b"s1"),
        ]
        assert response.headers["mcp-session-id"] == "s1"
        response.close()

    async def test_a_sender_far_ahead_of_its_reader_waits(self) -> None:
        sent: list[int] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send)
            for n in range(1000):
                await body(send, b"%d," % n, more=True)
                sent.append(n)
            await body(send, b"")

        pool = AsgiPool(app, "app")
        response = await pool.request("GET", {})
        for _ in range(500):  # let the app run as far as it can (no time passes)
            await asyncio.sleep(0)
        assert len(sent) < _PAUSE_AT
        data = await response.read()
        assert data == b"".join(b"%d," % n for n in range(1000))
        assert len(sent) == 1000

    async def test_a_late_head_times_out_and_the_app_is_cancelled(self) -> None:
        cancelled = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        pool = AsgiPool(app, "slow", head_timeout=0.05)
        with pytest.raises(UpstreamTimeout, match=r"slow sent no answer within 0\.05 s"):
            await pool.request("POST", {}, b"{}")
        await finished(pool)
        assert cancelled.is_set()

    @pytest.mark.parametrize("where", ["before the head", "mid-body"])
    async def test_an_app_that_raises_fails_the_answer(self, where: str) -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if where == "mid-body":
                await start(send)
                await body(send, b"part", more=True)
            raise RuntimeError("secret internals")

        pool = AsgiPool(app, "broken")
        if where == "before the head":
            with pytest.raises(UpstreamIOError, match="broken failed while answering"):
                await pool.request("POST", {}, b"{}")
            return
        response = await pool.request("POST", {}, b"{}")
        chunks: list[bytes] = []
        with pytest.raises(UpstreamIOError) as failed:
            async for chunk in response.iter_chunks():
                chunks.append(chunk)
        assert chunks == [b"part"]
        assert "secret" not in str(failed.value)
        response.close()

    @pytest.mark.parametrize("sends", [0, 1])
    async def test_an_app_that_returns_without_a_whole_answer(self, sends: int) -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if sends:
                await start(send)
                await body(send, b"part", more=True)

        pool = AsgiPool(app, "quitter")
        with pytest.raises(UpstreamIOError, match="ended without a whole answer"):
            response = await pool.request("GET", {})
            await response.read()

    async def test_close_cancels_every_request_still_running(self) -> None:
        app = Gate()
        pool = AsgiPool(app, "gate")
        responses = [await pool.request("GET", {}) for _ in range(3)]
        pool.close()
        await finished(pool)
        assert app.ended == ["cancelled"] * 3
        for response in responses:
            with pytest.raises(UpstreamIOError):
                await response.read()


class TestAsgiTransport:
    """The httpx2 transport: what the SDK's client (the aggregate) reaches a bridge with."""

    @pytest.fixture
    async def gate(self) -> AsyncIterator[tuple[Gate, httpx2.AsyncClient]]:
        app = Gate()
        async with httpx2.AsyncClient(transport=AsgiTransport(AsgiPool(app, "gate"))) as http:
            yield app, http

    async def test_an_sse_body_streams(self, gate: tuple[Gate, httpx2.AsyncClient]) -> None:
        app, http = gate
        async with http.stream("POST", BRIDGE_URL, content=b"{}") as response:
            assert response.status_code == 200
            chunks = response.aiter_bytes()
            assert await anext(chunks) == b"event: message\ndata: 1\n\n"
            app.go.set()
            assert [c async for c in chunks] == [b"event: message\ndata: 2\n\n"]
        assert app.ended == ["whole"]

    async def test_leaving_a_stream_cancels_the_app(
        self, gate: tuple[Gate, httpx2.AsyncClient]
    ) -> None:
        app, http = gate
        async with http.stream("GET", BRIDGE_URL) as response:
            await anext(response.aiter_bytes())
        transport = http._transport
        assert isinstance(transport, AsgiTransport)
        await finished(transport.pool)
        assert app.ended == ["cancelled"]

    async def test_failures_are_httpx2_errors(self) -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["method"] == "GET":
                await asyncio.Event().wait()
            await start(send)
            await body(send, b"part", more=True)
            raise RuntimeError("boom")

        pool = AsgiPool(app, "app", head_timeout=0.05)
        async with httpx2.AsyncClient(transport=AsgiTransport(pool)) as http:
            with pytest.raises(httpx2.ReadTimeout):
                await http.get(BRIDGE_URL)
            with pytest.raises(httpx2.ReadError):
                await http.post(BRIDGE_URL, content=b"{}")


@contextlib.asynccontextmanager
async def stdio_upstream() -> AsyncIterator[StdioUpstream]:
    """The bridge, running for the block (a fixture would end it in another task)."""
    command, args = stdio_upstream_command()
    config = ServerConfig(
        name="st", command=command, args=tuple(args), env={"PYTHONPATH": str(REPO_ROOT)}
    )
    upstream = StdioUpstream(config)
    async with anyio.create_task_group() as tg:
        await tg.start(upstream.run)
        yield upstream
        tg.cancel_scope.cancel()


class TestTheRealBridge:
    """The bridge in front of the test upstream over stdio, in this process."""

    async def test_the_sdk_client_through_the_transport(self) -> None:
        """An elicitation is asked mid-call on the call's own SSE stream: a transport that
        held the stream until its end would deadlock here."""
        asked: list[Any] = []
        answer = elicitation_answering("blue", asked)
        with anyio.fail_after(30):
            async with stdio_upstream() as upstream:
                http = httpx2.AsyncClient(transport=AsgiTransport(upstream.pool))
                link = streamable_http_client(BRIDGE_URL, http_client=http)
                async with Client(link, mode="legacy", elicitation_callback=answer) as c:
                    echoed = await c.call_tool("echo", {"text": "in process"})
                    result = await c.call_tool("ask_user", {"question": "colour?"})
        assert text_of(echoed) == "in process"
        assert text_of(result) == "blue"
        assert [p.message for p in asked] == ["colour?"]

    async def test_probe_and_learn_sessions(self) -> None:
        async with stdio_upstream() as upstream:
            # Up once the shared process runs (it starts beside the bridge, not before it).
            await eventually(lambda: upstream.bridge.shared.child.health()[0], 15)
            assert await upstream.probe()
            assert await upstream.learn_sessions() is True
            # the probe's session was ended (its process goes as the DELETE returns)
            await eventually(lambda: not upstream.bridge.sessions, 10)
