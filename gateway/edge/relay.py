"""The MCP relay at ``/mcp/{server}``: one choke point where policy applies.

Order of checks for every request (each failure answered before anything else is looked at):
Host/Origin, authentication, method and content type, body size, JSON and envelope, routing
headers against the body, session. Only then is a ``tools/call`` decided, so a caller without
a key or a session learns nothing of the policy. Everything but ``tools/call`` and
``tools/list`` is forwarded untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import structlog
from mcp.shared.inbound import encode_header_value

from gateway.edge.boundary import ALLOWED, caller, check_guard, json_body, place_for, serve
from gateway.edge.calls import call_through, tool_call
from gateway.edge.clientview import ClientView, both, unsealed_cursor
from gateway.edge.elicit import deliver, remember_client
from gateway.edge.forward import (
    Forward,
    ended_here,
    forward,
    refuse_over,
    refuse_reused,
    request_over,
)
from gateway.edge.held import cancels_held
from gateway.edge.inband import is_gateway_id
from gateway.edge.routing import check_routing_headers, stateless_era
from gateway.edge.tasks import names_tasks, upstream_request
from gateway.pipeline.gateway import Gateway
from gateway.policy import Call, Identity
from gateway.upstream.http import HttpUpstream
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Receive, Scope, Send, reply
from gateway.wire.jsonrpc import BadMessage, Message

log = structlog.get_logger("celgate.relay")


class Relay:
    """Raw ASGI app for ``/mcp/{server}``."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve(self._handle, scope, receive, send, "relay.internal_error")

    async def _handle(self, incoming: Incoming, send: Send) -> None:
        check_guard(self.gw, incoming)
        name = incoming.path.strip("/")  # mounted at /mcp: the path is what follows
        identity = await caller(self.gw, incoming, send, "/mcp/" + name)
        if identity is None:  # refused alike whether or not the server exists
            return
        upstream = self._upstream(name)
        if incoming.method == "POST":
            await self._post(incoming, send, upstream, identity)
        elif incoming.method in ("GET", "DELETE"):
            await self._stream(incoming, send, upstream, identity)
        else:
            raise BadMessage(rpc.INVALID_REQUEST, "method not allowed", 405, allow=ALLOWED)

    def _upstream(self, name: str) -> HttpUpstream:
        upstream = self.gw.upstreams.get(name)
        if upstream is None:
            raise BadMessage(rpc.INVALID_REQUEST, f"no MCP server named {name!r}", status=404)
        return upstream

    def _session(
        self,
        incoming: Incoming,
        upstream: HttpUpstream,
        identity: Identity,
        *,
        required: bool,
        msg_id: Any = None,
    ) -> str | None:
        """The upstream's session id behind the one presented; checked before any policy."""
        if incoming.count("mcp-session-id") > 1:
            raise BadMessage(rpc.INVALID_REQUEST, "Mcp-Session-Id given twice", msg_id=msg_id)
        presented = incoming.header("mcp-session-id")
        if presented is None:
            if required and upstream.stateful:
                msg = "Bad Request: Mcp-Session-Id is required"
                raise BadMessage(rpc.INVALID_REQUEST, msg, msg_id=msg_id)
            return None
        sid = self.gw.signer.unwrap(upstream.name, identity.owner, presented)
        if sid is None:
            raise BadMessage(rpc.SESSION_NOT_FOUND, "Session not found", status=404, msg_id=msg_id)
        return sid

    async def _stream(
        self, incoming: Incoming, send: Send, upstream: HttpUpstream, identity: Identity
    ) -> None:
        """GET (the server's stream, or a resumed one) and DELETE: no body, the same view."""
        session = self._session(incoming, upstream, identity, required=True)
        view = ClientView(self.gw, upstream.name, identity, session)
        view.modern = incoming.header("mcp-protocol-version") in rpc.MODERN_VERSIONS
        if incoming.count("last-event-id") > 1:
            raise BadMessage(rpc.INVALID_REQUEST, "Last-Event-ID given twice")
        presented = incoming.header("last-event-id")
        # A stream speaks of no task but one the resumed request of this caller made. Without
        # a session (an upstream that keeps none) the stream is every caller's; with one, the
        # upstream may still tell any task on it (one store for every client, or one session
        # id handed to all): a listener heard others' task ids bound to itself, and read
        # their results (red-team waves 28 and 35). Its client polls its own (tasks/get).
        view.creates = presented is not None
        fwd = Forward(upstream, session, None, view=view, grant=identity.owner)
        if presented is not None:
            # The rest of the stream that event was on: its request's answer (unless the
            # gateway ended that request, and told its client so) and progress, or nothing.
            event_id = view.unwrap_event_id(presented)
            if event_id is None:  # not an event this caller was given: nothing to replay
                raise BadMessage(rpc.INVALID_REQUEST, "Last-Event-ID not recognised", status=400)
            refuse_over(upstream.name, identity.owner, session, view)
            fwd.last_event_id = event_id
            view.answers = both(view.answers, ended_here(upstream.name, identity.owner, session))
        with _in_use(upstream, identity, session):
            resp = await forward(incoming, send, fwd)
        if incoming.method == "DELETE" and resp is not None:
            _ended(upstream, identity, session, resp.status)

    async def _post(
        self, incoming: Incoming, send: Send, upstream: HttpUpstream, identity: Identity
    ) -> None:
        body = await json_body(self.gw, incoming, send, identity)
        if body is None:
            return
        value = rpc.parse_body(body)
        if not await place_for(self.gw, incoming, send, identity, value):
            return
        modern = stateless_era(incoming, value)
        try:
            message = rpc.classify(value, self.gw.config.relay.extra_methods)
        except BadMessage as exc:
            if exc.code == rpc.METHOD_NOT_FOUND and modern:
                exc.status = 404  # 2026-07-28 answers an unknown method with 404 over HTTP
            raise
        # The id an error answers with: a request's (a client's answer to a server's request
        # is no request: its failure is an HTTP status, never a JSON-RPC error read as sent).
        incoming.msg_id = rpc.echo_id(message.msg_id) if message.is_request else None
        check_routing_headers(incoming, message)
        initializing = message.method == "initialize"
        needs_session = not modern and not initializing
        session = self._session(
            incoming, upstream, identity, required=needs_session, msg_id=message.msg_id
        )
        if message.is_request and session is not None:
            refuse_reused(upstream.name, identity.owner, session, message.msg_id)
        if message.kind == "response" and is_gateway_id(message.msg_id):
            await deliver(self.gw, send, upstream.name, identity, session, message)
            return  # an answer to the gateway's own request (elicit.py), never the upstream's
        if message.kind == "response" and session is None:
            # 2026-07-28 servers ask through input_required results, never a request on the
            # wire: an answer with no session answers nothing, and went to the server as it
            # came, unchecked (red-team wave 51)
            msg = "no request of the server's awaits an answer outside a session"
            raise BadMessage(rpc.INVALID_REQUEST, msg, status=400)
        if message.method == "notifications/cancelled" and not message.is_request:
            # its stream, resumed, is refused at once (forward.refuse_over)
            cancelled = message.params.get("requestId")
            if cancelled is not None:
                request_over(upstream.name, identity.owner, session, cancelled)
        if cancels_held(self.gw, incoming, identity, message):
            await reply(send, 202, b"")  # a call held here: the upstream never saw it
            return
        view = ClientView(self.gw, upstream.name, identity, session)
        view.modern = modern and _version(message, incoming) in rpc.MODERN_VERSIONS
        view.cacheable = message.method in rpc.CACHEABLE_METHODS and message.is_request
        if message.is_request:
            view.for_request(message.msg_id, message.params, message.method)
        msg_id = message.msg_id if message.is_request else None
        fwd = Forward(upstream, session, body, msg_id, view, grant=identity.owner)
        fwd.wrap_session = lambda sid: self.gw.signer.wrap(upstream.name, identity.owner, sid)
        with (
            _in_use(upstream, identity, session),
            _making(upstream, identity, message),
            _one_of_its_id(upstream, identity, session, message),
        ):
            await self._forward(incoming, send, upstream, identity, message, view, fwd)

    async def _forward(
        self,
        incoming: Incoming,
        send: Send,
        upstream: HttpUpstream,
        identity: Identity,
        message: Message,
        view: ClientView,
        fwd: Forward,
    ) -> None:
        session, initializing = fwd.session_id, message.method == "initialize"
        if message.method == "tools/call" and message.is_request:
            view.creates = True
            await self._call(incoming, send, fwd, message, identity)
            return
        if names_tasks(message):  # only this caller's tasks, by the upstream's own ids
            sent, named, view.tasks = upstream_request(self.gw, upstream.name, identity, message)
            fwd.body = sent if sent is not None else fwd.body
            if named is not None and incoming.header("mcp-name") is not None:
                fwd.params = {"mcp-name": encode_header_value(named)}
        if message.method == "tools/list" and message.params.get("cursor") is not None:
            fwd.body = _upstream_cursor(self.gw, upstream, identity, message)
        resp = await forward(incoming, send, fwd)
        if resp is None:
            return
        if initializing and resp.status < 400:
            upstream.stateful = "mcp-session-id" in resp.headers
            remember_client(self.gw, upstream.name, identity, view.session, message)
            made = resp.headers.get("mcp-session-id")
            if upstream.sessions is not None and made is not None and fwd.failure is None:
                upstream.sessions.opened(identity.owner, made.strip())
        elif resp.status == 404:
            _ended(upstream, identity, session, resp.status)

    async def _call(
        self,
        incoming: Incoming,
        send: Send,
        fwd: Forward,
        message: Message,
        identity: Identity,
    ) -> None:
        call = _call_of(message, fwd, identity, incoming, self.gw)
        version = _version(message, incoming)
        await call_through(self.gw, incoming, send, message, call, fwd, identity, version)


#: The requests of handshake-era sessions in progress here: (server, owner, session, the id
#: as text). One entry a request, for as long as it is handled.
_LIVE: set[tuple[str, str, str, str]] = set()


@contextlib.contextmanager
def _one_of_its_id(
    upstream: HttpUpstream, identity: Identity, session: str | None, message: Message
) -> Iterator[None]:
    """A request of a session, the only one under its id while it is handled: with two (1
    and "1" alike: a server's streams are by the id's text), the server's answer to the first
    went to the second, a slow tools/list whole as a call's result (red-team wave 68)."""
    if not message.is_request or session is None:
        yield
        return
    live = (upstream.name, identity.owner, session, str(message.msg_id))
    if live in _LIVE:
        msg = "a request with this id is in progress in this session"
        raise BadMessage(rpc.INVALID_REQUEST, msg, msg_id=message.msg_id)
    _LIVE.add(live)
    try:
        yield
    finally:
        _LIVE.discard(live)


@contextlib.contextmanager
def _making(upstream: HttpUpstream, identity: Identity, message: Message) -> Iterator[None]:
    """An ``initialize`` holds a place under the server's caps from before it is sent until
    it is answered (and its session, if made, counted): refused when there is none."""
    table = upstream.sessions
    if message.method != "initialize" or table is None:
        yield
        return
    _room_for(upstream, identity, message)
    table.making(identity.owner)
    try:
        yield
    finally:
        table.made(identity.owner)


def _upstream_cursor(
    gw: Gateway, upstream: HttpUpstream, identity: Identity, message: Message
) -> bytes:
    """A ``tools/list`` request as its upstream is to see it: with the server's own cursor
    in place of the sealed one its caller was given (``clientview.seal_cursor``); a cursor
    not given to this caller for this server is refused, never passed on."""
    cursor = unsealed_cursor(gw, upstream.name, identity.owner, message.params.get("cursor"))
    if cursor is None:
        raise BadMessage(rpc.INVALID_PARAMS, "invalid cursor", status=200, msg_id=message.msg_id)
    return rpc.json_bytes({**message.raw, "params": {**message.params, "cursor": cursor}})


def _room_for(upstream: HttpUpstream, identity: Identity, message: Message) -> None:
    """Refuse a new session past the server's caps (idle ones ended first)."""
    table = upstream.sessions
    if table is None:
        return
    ending = [sid for _, sid in table.idle_ones()]
    given = table.give_way(identity.owner)
    if given is not None:
        log.info("relay.session_given_way", server=upstream.name, owner=identity.owner)
        ending.append(given)
    upstream.end_sessions(ending)
    refused = table.refusal(identity.owner)
    if refused is None:
        return
    status, setting = refused
    log.warning("relay.at_capacity", server=upstream.name, owner=identity.owner, cap=setting)
    if setting == "max_sessions":
        msg = f"upstream {upstream.name!r} holds its most sessions (servers.X.{setting})"
    else:
        msg = (
            f"this agent holds its most sessions of upstream {upstream.name!r} "
            f"(servers.X.{setting}), all in use or used in the last {table.give_way_after:g} s: "
            "end one (DELETE), or try again once one has been idle that long"
        )
    status = rpc.upstream_failure_status(message.msg_id, status)
    raise BadMessage(rpc.UPSTREAM_UNAVAILABLE, msg, status=status, msg_id=message.msg_id)


@contextlib.contextmanager
def _in_use(upstream: HttpUpstream, identity: Identity, session: str | None) -> Iterator[None]:
    """A request (or stream) in progress on ``session``: it is not idle meanwhile."""
    table = upstream.sessions
    if session is None:
        yield
        return
    if table is None:  # a stdio server's: its bridge keeps the session's process meanwhile
        with upstream.in_use(identity.owner, session):
            yield
        return
    table.began(identity.owner, session)
    try:
        yield
    finally:
        table.done(identity.owner, session)


def _ended(upstream: HttpUpstream, identity: Identity, session: str | None, status: int) -> None:
    """A session its client ended (DELETE), or one the upstream no longer knows (404), is
    no longer counted against its caller (``servers.X.max_sessions_per_grant``)."""
    if upstream.sessions is not None and session is not None and (status < 300 or status == 404):
        upstream.sessions.ended(identity.owner, session)


def _version(message: Message, incoming: Incoming) -> str | None:
    return message.protocol_version or incoming.header("mcp-protocol-version")


def _call_of(
    message: Message, fwd: Forward, identity: Identity, incoming: Incoming, gw: Gateway
) -> Call:
    tool = message.params.get("name")
    return tool_call(gw, incoming, message, fwd.upstream.name, tool, identity, fwd.session_id)
