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

import anyio

from gateway.edge.agg.handshake import Handshake
from gateway.edge.agg.merge import Catalogue
from gateway.edge.agg.names import Names
from gateway.edge.agg.stateless import Stateless
from gateway.edge.boundary import ALLOWED, caller, check_guard, json_body, place_for, serve
from gateway.edge.routing import stateless_era
from gateway.pipeline.gateway import Gateway
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Receive, Scope, Send
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
        await serve(self._handle, scope, receive, send, "aggregate.internal_error")

    async def _handle(self, incoming: Incoming, send: Send) -> None:
        check_guard(self.gw, incoming)
        if incoming.path.strip("/"):
            raise BadMessage(rpc.INVALID_REQUEST, "not found", status=404)
        identity = await caller(self.gw, incoming, send, "/mcp")
        if identity is None:
            return
        if incoming.method in ("GET", "DELETE"):
            version = incoming.header("mcp-protocol-version")
            if version is not None and version not in HANDSHAKE_VERSIONS:  # no streams there
                raise BadMessage(rpc.INVALID_REQUEST, "method not allowed", 405, allow="POST")
            await self.handshake.stream(incoming, send, identity)
            return
        if incoming.method != "POST":
            raise BadMessage(rpc.INVALID_REQUEST, "method not allowed", 405, allow=ALLOWED)
        read = await json_body(self.gw, incoming, send, identity)
        if read is None:
            return
        value = rpc.parse_body(read)
        if not await place_for(self.gw, incoming, send, identity, value):
            return
        if stateless_era(incoming, value):
            await self.stateless.post(incoming, send, identity, read, value)
        else:
            await self.handshake.post(incoming, send, identity, read, value)
