"""``/mcp``: one MCP endpoint over every configured server, as a multiplexing relay.

Checks come first, in the relay's order: Host and Origin, authentication, method and content
type, body size, JSON. Then the era decides the face: a 2026-07-28 request is routed with no
state held (``agg.stateless``); a handshake-era one belongs to a gateway session of
``agg.handshake``, which opens upstream sessions per server on first use. Both faces share the
names (``agg.names``), what the merged lists taught (``agg.merge.Catalogue``), and the one
admission pipeline. docs/stdio-and-aggregate.md describes the endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from gateway.auth.identity import refusal_answer
from gateway.auth.tokens import Refusal
from gateway.edge.agg.handshake import Handshake
from gateway.edge.agg.merge import Catalogue
from gateway.edge.agg.names import Names
from gateway.edge.agg.stateless import Stateless
from gateway.edge.replies import error_reply
from gateway.edge.routing import stateless_era
from gateway.pipeline.gateway import Gateway
from gateway.telemetry.audit import log
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Receive, Scope, Send, reply
from gateway.wire.jsonrpc import HANDSHAKE_VERSIONS, BadMessage


class Aggregate:
    """Raw ASGI app for ``/mcp``."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        prefixes = {n: gw.config.servers[n].name_prefix for n in gw.upstreams}
        self.names = Names(prefixes, gw.config.aggregate.separator)
        self.catalogue = Catalogue(gw, self.names)
        self.stateless = Stateless(gw, self.names, self.catalogue)
        self.handshake = Handshake(gw, self.names, self.catalogue)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The idle-session reaper runs while the gateway serves; sessions end with it."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.handshake.links.reap)
            tg.start_soon(self.handshake.links.learn)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    for session in list(self.handshake.sessions.table.values()):
                        await self.handshake.links.close(session)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = Incoming(scope, receive)
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._handle(incoming, tracking_send)
        except BadMessage as exc:
            if not started:
                await reply(send, *error_reply(exc))
        except Exception as exc:  # the boundary: logged in full here, never shown to the client
            log.exception("aggregate.internal_error", method=incoming.method)
            if not started:
                await reply(send, *error_reply(exc))

    async def _handle(self, incoming: Incoming, send: Send) -> None:
        guard = self.gw.guard
        if not guard.host_ok(incoming.header("host")):
            raise BadMessage(rpc.INVALID_REQUEST, "Host not allowed", status=421)
        if not guard.origin_ok(incoming.header("origin")):
            raise BadMessage(rpc.INVALID_REQUEST, "Origin not allowed", status=403)
        if incoming.path.strip("/"):
            raise BadMessage(rpc.INVALID_REQUEST, "not found", status=404)
        identity = await self.gw.auth.resolve(incoming.header("authorization"), "/mcp")
        if isinstance(identity, Refusal):
            status, message, challenge = refusal_answer(identity)
            body = rpc.error_body(None, rpc.INVALID_REQUEST, message)
            await reply(send, status, body, extra=challenge)
            return
        if incoming.method in ("GET", "DELETE"):
            version = incoming.header("mcp-protocol-version")
            if version is not None and version not in HANDSHAKE_VERSIONS:
                raise BadMessage(rpc.INVALID_REQUEST, "method not allowed", status=405)
            await self.handshake.stream(incoming, send, identity)
            return
        if incoming.method != "POST":
            raise BadMessage(rpc.INVALID_REQUEST, "method not allowed", status=405)
        content_type = (incoming.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            msg = "Content-Type must be application/json"
            raise BadMessage(rpc.INVALID_REQUEST, msg, status=415)
        read = await incoming.body(self.gw.config.security.max_body_bytes)
        if read is None:
            raise BadMessage(rpc.INVALID_REQUEST, "request body too large", status=413)
        value = rpc.parse_body(read)
        if stateless_era(incoming, value):
            await self.stateless.post(incoming, send, identity, read, value)
        else:
            await self.handshake.post(incoming, send, identity, read, value)
