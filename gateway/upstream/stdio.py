"""stdio upstreams: each stdio MCP server served as a Streamable HTTP endpoint in process.

A ``StdioBridge`` is a raw ASGI app inside the gateway process, bound to no socket: the relay
and the aggregate reach it through an ``AsgiPool`` (``gateway.upstream.inproc``, the ``H1Pool``
interface), so it fronts a stdio server as an ordinary Streamable HTTP upstream and policy
stays at one choke point. The bridge does not
terminate MCP: JSON-RPC messages pass between HTTP and the child's stdin/stdout unchanged, and
the bridge frames the HTTP side itself (``stdio_wire``: an answer that comes alone as JSON,
else an SSE stream; session ids, priming events, resumption), with no HTTP server stack.

How client sessions map onto processes (docs/stdio-and-aggregate.md):

* handshake era (``initialize``, ``Mcp-Session-Id``): one process per client session, at most
  ``max_processes`` per server, ended by DELETE or after ``idle_timeout`` without traffic.
  Server-to-client requests (elicitation, sampling, roots) can only belong to that session.
* 2026-07-28 era (stateless, each request carries its own envelope, and servers never send
  requests mid-call): one shared process per server; request ids and progress tokens are
  remapped so answers go back to the HTTP request that asked.

The parts, by what they do: ``stdio_child`` supervises one process (restart with backoff,
process groups, no orphans), ``stdio_session`` links a handshake-era session to its own
process, ``stdio_shared`` serves the 2026-07-28 era on the shared one, ``stdio_wire`` frames
their HTTP answers, ``stdio_messages`` holds the messages and deadline both links make,
``stdio_events`` the events a session may replay; this module is the bridge app that routes
requests between them, and ``StdioUpstream``, the relay's view of it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import anyio
from anyio.abc import TaskStatus
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway.children import KILL_GRACE, kill_group
from gateway.config import ServerConfig
from gateway.upstream.http import GRANT_HEADER, HttpUpstream
from gateway.upstream.inproc import AsgiPool
from gateway.upstream.stdio_child import LINE_LIMIT, log
from gateway.upstream.stdio_events import MemoryEvents
from gateway.upstream.stdio_session import SessionLink
from gateway.upstream.stdio_shared import SharedLink
from gateway.upstream.stdio_wire import read_post, session_not_found
from gateway.wire.asgi import Incoming, Receive, Scope, Send, reply
from gateway.wire.jsonrpc import INVALID_REQUEST, UPSTREAM_UNAVAILABLE
from gateway.wire.jsonrpc import error_body as rpc_error
from gateway.wire.jsonrpc import loads as json_loads

__all__ = [
    "BRIDGE_AUTHORITY",
    "BRIDGE_URL",
    "MemoryEvents",
    "StdioBridge",
    "StdioUpstream",
    "running_bridges",
]

# What the bridge is called in URLs and Host headers: a reserved name (RFC 2606) that no
# resolver answers, so nothing can reach a stdio server by it over a network.
BRIDGE_AUTHORITY = "stdio.invalid"
BRIDGE_URL = f"http://{BRIDGE_AUTHORITY}/mcp"


class StdioBridge:
    """The Streamable HTTP endpoint of one stdio server: a raw ASGI app on no socket.

    Only code in the gateway process holding the bridge can call it (the relay and the
    aggregate, through ``StdioUpstream.pool``): no other local process, and no web page
    through DNS rebinding, has a port to reach. So it checks no secret and no ``Host``.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: dict[str, SessionLink] = {}
        #: Sessions whose process may still live, ended ones among them until it is reaped:
        #: what the caps count. Counted as sessions, the processes of ended ones (given 2 s
        #: to exit) were no one's, and one agent opening and ending sessions in a loop ran 77
        #: processes under max_processes 4 (red-team wave 70).
        self.running: dict[str, SessionLink] = {}
        self.shared = SharedLink(config)
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the sessions' task group until cancelled; then end every child."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self.shared.child.run)
                log.info("stdio.bridge", server=self.config.name, listening=False)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._stop()

    async def _stop(self) -> None:
        children = [link.child for link in list(self.sessions.values())] + [self.shared.child]
        for child in children:
            child.stop()
        with anyio.move_on_after(KILL_GRACE):
            for child in children:
                if child.proc is not None:
                    await child.proc.wait()
        for child in children:  # the group too: a helper that ignored SIGTERM outlived its
            if child.proc is not None:  # leader, and the gateway (red-team wave 43)
                kill_group(child.proc)
        log.info("stdio.stopped", server=self.config.name, processes=len(children))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        incoming = Incoming(scope, receive)
        sid = incoming.header("mcp-session-id")
        if sid is not None:
            link = self.sessions.get(sid)
            if link is None:
                await session_not_found(incoming, send)
                return
            await link.handle(incoming, send)
            return
        version = incoming.header("mcp-protocol-version")
        if (
            incoming.method == "POST"
            and version is not None
            and version not in HANDSHAKE_PROTOCOL_VERSIONS
        ):
            await self._modern(incoming, send)
            return
        if incoming.method != "POST":
            msg = "Bad Request: Mcp-Session-Id is required"
            await reply(send, 400, rpc_error(None, INVALID_REQUEST, msg))
            return
        await self._open_session(incoming, send)

    async def _modern(self, incoming: Incoming, send: Send) -> None:
        body = await incoming.body(LINE_LIMIT)
        try:
            message = json_loads(body or b"")
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await reply(
                send, 400, rpc_error(None, INVALID_REQUEST, "one JSON-RPC message per request")
            )
            return
        if "id" in message and "method" in message:
            # What the SDK's HTTP transport checks before a request reaches a server, which a
            # stdio child cannot: the envelope, the routing headers, the version.
            verdict = classify_inbound_request(message, headers=incoming.headers)
            if isinstance(verdict, InboundLadderRejection):
                error = rpc_error(message["id"], verdict.code, verdict.message, verdict.data)
                await reply(send, ERROR_CODE_HTTP_STATUS.get(verdict.code, 400), error)
                return
        await self.shared.handle(incoming, send, message)

    @contextmanager
    def in_use(self, grant: str, sid: str) -> Iterator[None]:
        """A request of ``grant``'s on session ``sid`` in progress at the gateway (decided,
        held for approval, its stream open), whether or not it has reached the process yet:
        the session is not idle meanwhile."""
        link = self.sessions.get(sid)
        if link is None or link.grant != grant:
            yield
            return
        link.serving += 1
        try:
            yield
        finally:
            link.serving -= 1
            link.last_used = time.monotonic()

    def _evict_idle(self, grant: str) -> SessionLink | None:
        """At a cap, the caller's own least recently used session with nothing in progress
        gives way (never another's: ``grant`` is the caller's grant and agent,
        Identity.owner). Nothing in progress: no request being answered or held at the
        gateway, no stream open. A session whose client kept its GET stream open, or whose
        call waited for approval, was ended (that call's approval then ran nothing): neither
        SDK opens another session (red-team wave 39)."""
        idle = [
            link
            for link in self.sessions.values()
            if link.grant == grant and not link.in_flight and not link.serving
        ]
        if not idle:
            return None
        victim = min(idle, key=lambda link: link.last_used)
        self.sessions.pop(victim.session_id, None)
        log.info("stdio.session_evicted", server=self.config.name, session=victim.session_id)
        victim.end()
        return victim

    def _live(self) -> dict[str, SessionLink]:
        """The sessions whose process may live: open ones, and ended ones not yet reaped."""
        return {**self.running, **self.sessions}

    def _held_by(self, grant: str) -> int:
        return sum(1 for link in self._live().values() if link.grant == grant)

    async def _refusal(self, grant: str) -> tuple[int, str] | None:
        """Room for one more process of ``grant``, making it from the grant's own idle
        sessions if need be (waiting, ``KILL_GRACE`` and a second at most, for the process
        given way to exit); else why not."""
        config = self.config
        full = len(self._live()) >= config.max_processes
        if full or self._held_by(grant) >= config.max_processes_per_grant:
            victim = self._evict_idle(grant)  # (its own: one frees a place under both caps)
            if victim is not None:
                with anyio.move_on_after(KILL_GRACE + 1.0):
                    await victim.reaped.wait()
        if self._held_by(grant) >= config.max_processes_per_grant:
            return 429, (
                f"this agent holds {config.max_processes_per_grant} processes of stdio "
                f"server {config.name!r}, all busy or still exiting (max_processes_per_grant): "
                "end a session first"
            )
        if len(self._live()) >= config.max_processes:
            return 503, f"stdio server {config.name!r} is at max_processes={config.max_processes}"
        return None

    async def _open_session(self, incoming: Incoming, send: Send) -> None:
        """A request without a session: only ``initialize`` opens one (and a process)."""
        read = await read_post(incoming, send)
        if read is None:
            return
        message, body = read
        if message.get("method") != "initialize" or "id" not in message:
            msg = "Bad Request: Missing session ID"
            await reply(send, 400, rpc_error(None, INVALID_REQUEST, msg))
            return
        grant = incoming.header(GRANT_HEADER) or ""
        refused = await self._refusal(grant)
        if refused is not None:
            status, msg = refused
            log.warning("stdio.at_capacity", server=self.config.name, owner=grant, detail=msg)
            await reply(send, status, rpc_error(message.get("id"), UPSTREAM_UNAVAILABLE, msg))
            return
        if self._tg is None:  # not running (yet, or any more)
            msg = f"stdio server {self.config.name!r} is not running"
            await reply(send, 503, rpc_error(None, UPSTREAM_UNAVAILABLE, msg))
            return
        link = SessionLink(self, uuid.uuid4().hex, grant)
        self.sessions[link.session_id] = link
        await self._tg.start(link.run)
        await link.handle(incoming, send, message, body)


#: How much later than the bridge's own deadline the in-process head deadline fires.
BRIDGE_DEADLINE_SLACK = 2.0


class StdioUpstream(HttpUpstream):
    """The relay's view of a stdio server: an HTTP upstream whose pool is its bridge, called
    in process (``BRIDGE_URL`` names it, but no socket serves it)."""

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(replace(config, url=BRIDGE_URL, headers={}))
        self.bridge = StdioBridge(config)
        self.takes_grant = True
        self.sessions = None  # the bridge counts its processes (max_processes*)
        # The bridge keeps each request's silence deadline, from the child's first output
        # after a (re)start: a cold start longer than the timeout is not silence.
        self.silence = None
        pool = AsgiPool(
            self.bridge,
            f"stdio server {config.name!r}",
            authority=BRIDGE_AUTHORITY,
            # The bridge keeps each request's deadline itself (and says which request and how
            # long); the head deadline is the backstop behind it, so it comes a little later.
            head_timeout=config.timeout + BRIDGE_DEADLINE_SLACK,
        )
        self.pool = pool

    def in_use(self, owner: str, sid: str) -> AbstractContextManager[None]:
        return self.bridge.in_use(owner, sid)

    async def probe(self, wait: float = 2.0) -> bool:
        """Up while its shared process runs: a command that cannot start, or one that keeps
        exiting, is down with the cause (the child logs it; the probe does not again)."""
        up, error = self.bridge.shared.child.health()
        return self.report(up, error, quiet=True)

    def target(self) -> dict[str, str]:
        return {"transport": "stdio", "command": self.bridge.config.command or ""}

    def health_view(self) -> dict[str, Any]:
        child = self.bridge.shared.child
        return {**super().health_view(), "failures": child.failures, "restarts": child.restarts}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the bridge until cancelled (a task of the gateway-wide task group); then
        cancel the requests still running on it."""
        try:
            await self.bridge.run(task_status=task_status)
        finally:
            self.pool.close()


@asynccontextmanager
async def running_bridges(upstreams: Mapping[str, HttpUpstream]) -> AsyncIterator[None]:
    """Serve every stdio upstream's bridge for the life of the block (one task group)."""
    async with anyio.create_task_group() as tg:
        for upstream in upstreams.values():
            if isinstance(upstream, StdioUpstream):
                await tg.start(upstream.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
