"""``/mcp`` in the handshake era (2025-11-25 and before): a multiplexing relay.

The client's ``initialize`` is answered here with the merged capabilities and instructions of
the servers behind ``/mcp`` (learned from the first upstream session opened to each), and
opens a gateway session bound to the caller's grant. Upstream sessions are opened per server
on first use, with the client's own capabilities and client info. Each message is parsed once:

- a request for one server (``tools/call``, ``prompts/get``, ``resources/*``,
  ``completion/complete``) is forwarded on that server's session, renamed only when a name
  changes, and its answer streamed back through the caller's view (``AggView``: tools
  filtered, the server's own requests under ids of ours);
- lists are merged from every server, one page from each per page of ours;
- the client's answers to a server's request go back to that server under its own id; a
  cancellation goes to the server that has the request; other notifications to every server;
- ``GET`` merges the servers' own streams into one; ``DELETE`` ends every upstream session.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

from mcp_types.version import LATEST_HANDSHAKE_VERSION

from gateway import __version__
from gateway.edge.agg.links import Links
from gateway.edge.agg.merge import (
    LISTS,
    SERVED_CAPABILITIES,
    Catalogue,
    decode_cursor,
    joined_instructions,
    merge_capabilities,
    none_answered,
)
from gateway.edge.agg.names import Names
from gateway.edge.agg.route import (
    ROUTED,
    by_uri,
    named_uri,
    routed,
    target,
    unknown,
    unrouted,
)
from gateway.edge.agg.sessions import AggSession, Sessions
from gateway.edge.agg.streams import merged_stream, resumed_stream
from gateway.edge.agg.upcall import UpcallDown, UpcallFailed, UpcallGone, post_once, upcall
from gateway.edge.agg.view import AggView
from gateway.edge.calls import call_through, told, tool_call
from gateway.edge.clientview import ClientView
from gateway.edge.elicit import deliver
from gateway.edge.forward import Forward, forward, refuse_reused, request_over, was_over
from gateway.edge.held import accepts_sse, cancels_held
from gateway.edge.inband import check_id, is_gateway_id
from gateway.edge.replies import denial, is_task_call
from gateway.edge.routing import check_routing_headers
from gateway.edge.tasks import is_task_notification
from gateway.pipeline.admission import Admission, admit, schema_read, verdict
from gateway.pipeline.gateway import Gateway
from gateway.policy import Identity
from gateway.telemetry.audit import log
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Send, reply
from gateway.wire.jsonrpc import BadMessage, Message, json_bytes
from gateway.wire.sse import message_event as event

#: What a session keeps of the client's initialize (replayed to each upstream it opens).
MAX_CLIENT_BYTES = 64 * 1024
AGGREGATE_KEY = "/mcp"  # the "server" session ids are signed for (no server name has "/")


class Handshake:
    """The handshake-era face of ``/mcp``."""

    def __init__(self, gw: Gateway, names: Names, catalogue: Catalogue) -> None:
        self.gw = gw
        self.names = names
        self.catalogue = catalogue
        config = gw.config
        self.sessions = Sessions(
            config.aggregate.max_sessions,
            config.aggregate.max_sessions_per_grant,
            config.aggregate.idle_timeout,
            config.aggregate.give_way,
        )
        self.links = Links(gw, self.sessions)

    # ------------------------------------------------------------------ entry points

    async def post(
        self, incoming: Incoming, send: Send, identity: Identity, body: bytes, value: Any
    ) -> None:
        message = rpc.classify(value, self.gw.config.relay.extra_methods)
        incoming.msg_id = rpc.echo_id(message.msg_id) if message.is_request else None
        check_routing_headers(incoming, message)
        if message.method == "initialize" and message.is_request:
            if incoming.header("mcp-session-id") is not None:
                msg = "initialize opens a session: send it without Mcp-Session-Id"
                raise BadMessage(rpc.INVALID_REQUEST, msg, msg_id=message.msg_id)
            await self._initialize(send, message, identity)
            return
        session = self._session(incoming, identity, message.msg_id)
        with session.using():
            if message.kind == "response":
                await self._answer(send, session, identity, message)
            elif cancels_held(self.gw, incoming, identity, message):
                await reply(send, 202, b"")  # a call held here: no server saw it
            elif message.kind == "notification":
                await self._notify(send, session, message, body)
            else:
                await self._request(incoming, send, session, identity, message, body)

    async def stream(self, incoming: Incoming, send: Send, identity: Identity) -> None:
        """GET (the servers' own streams, merged, or one of them resumed) and DELETE."""
        session = self._session(incoming, identity, None)
        if incoming.method == "DELETE":
            await self.links.close(session)
            await reply(send, 200, b"")
            return
        if not accepts_sse(incoming):
            msg = "Not Acceptable: Client must accept text/event-stream"
            raise BadMessage(rpc.INVALID_REQUEST, msg, status=406)
        if incoming.count("last-event-id") > 1:
            raise BadMessage(rpc.INVALID_REQUEST, "Last-Event-ID given twice")
        presented = incoming.header("last-event-id")
        with session.using():
            if presented is not None:
                await resumed_stream(self, incoming, send, session, identity, presented)
                return
            if session.streaming:
                msg = "Conflict: only one stream per session"
                raise BadMessage(rpc.INVALID_REQUEST, msg, status=409)
            await merged_stream(self, incoming, send, session, identity)

    def view(self, session: AggSession, server: str, identity: Identity) -> AggView:
        inner = ClientView(self.gw, server, identity, session.sid)
        link = session.links.get(server)
        inner.upstream_session = link.sid if link is not None else None
        return AggView(inner, self.names, session, self.catalogue)

    def _session(self, incoming: Incoming, identity: Identity, msg_id: Any) -> AggSession:
        if incoming.count("mcp-session-id") > 1:
            raise BadMessage(rpc.INVALID_REQUEST, "Mcp-Session-Id given twice", msg_id=msg_id)
        presented = incoming.header("mcp-session-id")
        if presented is None:
            msg = "Bad Request: Mcp-Session-Id is required"
            raise BadMessage(rpc.INVALID_REQUEST, msg, msg_id=msg_id)
        sid = self.gw.signer.unwrap(AGGREGATE_KEY, identity.owner, presented)
        session = self.sessions.get(sid, identity.grant) if sid is not None else None
        if session is None:
            raise BadMessage(rpc.SESSION_NOT_FOUND, "Session not found", status=404, msg_id=msg_id)
        return session

    # ------------------------------------------------------------------ sessions and links

    async def _initialize(self, send: Send, message: Message, identity: Identity) -> None:
        params = message.params
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            msg = "initialize needs a protocolVersion"
            raise BadMessage(rpc.INVALID_PARAMS, msg, status=200, msg_id=message.msg_id)
        version = requested if requested in rpc.HANDSHAKE_VERSIONS else LATEST_HANDSHAKE_VERSION
        client = {
            "capabilities": params.get("capabilities") or {},
            "clientInfo": params.get("clientInfo") or {"name": "unknown", "version": "0"},
        }
        if len(json.dumps(client)) > MAX_CLIENT_BYTES:  # held for the session's whole life
            msg = f"capabilities and clientInfo together over {MAX_CLIENT_BYTES} bytes"
            raise BadMessage(rpc.INVALID_PARAMS, msg, status=200, msg_id=message.msg_id)
        stale = self.sessions.stale_of(identity.owner, time.monotonic())
        if stale is not None:
            log.info("aggregate.session_given_way", owner=identity.owner)
            self.sessions.drop(stale.sid)  # its place now; its links end in the background
            self.links.close_soon(stale)
        session = self.sessions.create(identity.grant, client, version, identity.owner)
        # What each server offers is what it told the gateway's own neutral session (learned
        # at start, and asked again in the background for a server that was down then):
        # never what it told another client's session, whose clientInfo (and user) it may
        # have answered. This client is told what is known now.
        self.links.relearn()
        known = {n: r for n, r in self.links.known.items() if n in self.gw.upstreams}
        caps = [r.get("capabilities") for r in known.values()]
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": merge_capabilities(caps, SERVED_CAPABILITIES),
            "serverInfo": {"name": "celgate", "version": __version__},
        }
        instructions = joined_instructions(known)
        if instructions is not None:
            result["instructions"] = instructions
        wrapped = self.gw.signer.wrap(AGGREGATE_KEY, identity.owner, session.sid)
        body = rpc.result_body(message.msg_id, result)
        await reply(send, 200, body, extra=[(b"mcp-session-id", wrapped.encode())])

    # ------------------------------------------------------------------ client messages

    async def _answer(
        self, send: Send, session: AggSession, identity: Identity, message: Message
    ) -> None:
        """The client's answer to a server's request: to that server, under its own id; or
        to the gateway's own question (an in-band approval), never to a server."""
        if is_gateway_id(message.msg_id):
            key, owner = self.gw.signer.key, identity.owner
            for server, open_link in session.links.items():
                sid = open_link.sid
                if sid is not None and check_id(key, message.msg_id, server, owner, sid):
                    await deliver(self.gw, send, server, identity, sid, message)
                    return
        found = session.answered(message.msg_id)
        link = session.links.get(found[0]) if found is not None else None
        if found is None or link is None:
            msg = "no request of this id is waiting for an answer"
            raise BadMessage(rpc.INVALID_REQUEST, msg, status=400)
        body = json_bytes({**message.raw, "id": found[1]})
        upstream = self.gw.upstreams[link.server]
        status = await post_once(upstream, None, body, link.version, link.sid)
        await reply(send, 202 if 200 <= status < 300 else 502, b"")

    async def _notify(self, send: Send, session: AggSession, message: Message, body: bytes) -> None:
        """A client's notice, to the servers it is of: a cancel of one of its requests, or
        progress on a server's request, to that server alone (progress on one server's
        request went to every server, red-team wave 62)."""
        method = message.method
        assert method is not None
        links = list(session.links.values())
        if method == "notifications/initialized" or is_task_notification(method):
            links = []  # each upstream session had its own; tasks are not served on /mcp
        elif method == "notifications/cancelled":
            rid = message.params.get("requestId")
            owner = session.inflight.get(str(rid))
            links = [session.links[owner]] if owner in session.links else []
            # Its stream, resumed, is refused at once (refuse_over), as on the relay: on the
            # link it went to, or on every link when no request of the session is under that
            # id now (answered just before the cancel came: whether the resume was refused
            # hung on which came first).
            for link in links or (list(session.links.values()) if rid is not None else []):
                request_over(link.server, session.owner, link.sid, rid)
            # (A cancel names a request its sender made: one naming a server's request, sent
            # on with the server's id, would name a request of the server's own namespace,
            # the client's call that has that id. It goes to none: the client answers it.)
        elif method == "notifications/progress":
            server = session.progress_of(message.params.get("progressToken"))
            links = [session.links[server]] if server in session.links else []
        await asyncio.gather(
            *(
                post_once(self.gw.upstreams[link.server], method, body, link.version, link.sid)
                for link in links
            )
        )
        await reply(send, 202, b"")

    async def _request(
        self,
        incoming: Incoming,
        send: Send,
        session: AggSession,
        identity: Identity,
        message: Message,
        body: bytes,
    ) -> None:
        method = message.method
        if method == "ping":
            await reply(send, 200, rpc.result_body(message.msg_id, {}))
        elif method in LISTS:
            await self._list(incoming, send, session, identity, message)
        elif method == "logging/setLevel":
            await self._everywhere(send, session, message)
        else:
            if method not in ROUTED:
                msg = f"{method} is not served on /mcp; use /mcp/<server>"
                raise BadMessage(rpc.METHOD_NOT_FOUND, msg, status=200, msg_id=message.msg_id)
            servers = len(self.gw.upstreams)
            server, changed = target(self.names, self.catalogue, servers, message)
            uri = named_uri(message) if server is None and by_uri(message) else None
            if uri is not None:
                meta = message.params.get("_meta")
                learn = functools.partial(self._learn_resources, session, identity, meta)
                await self.catalogue.relearn(uri, learn)
                server, changed = target(self.names, self.catalogue, servers, message)
            if server is not None and method in ("resources/subscribe", "resources/unsubscribe"):
                session.subscription(server, method, message.params.get("uri"))
            await self._routed(incoming, send, session, identity, message, body, server, changed)

    async def _routed(
        self,
        incoming: Incoming,
        send: Send,
        session: AggSession,
        identity: Identity,
        message: Message,
        body: bytes,
        server: str | None,
        changed: dict[str, Any],
    ) -> None:
        msg_id = message.msg_id
        if server is None or server not in self.gw.upstreams:
            if message.method == "tools/call":  # a tool error the model reads
                nowhere = unrouted(self.gw, incoming, message, identity, session.sid)
                version = incoming.header("mcp-protocol-version")
                task = is_task_call(message.params)  # as a routed one: -32003
                body = denial(msg_id, nowhere.decision, nowhere.decision_id, version, task)
                await reply(send, 200, body)  # a tool error, its decision in _meta
                return
            raise unknown(message)
        admission = None
        if message.method == "tools/call" and (
            server not in session.links or _id_taken(session, server, msg_id)
        ):
            # Refused outright: decided and answered before this session's link to the
            # server is opened (a denied call starts no upstream session, no stdio process),
            # and before its id is refused (a hidden tool's call under an id in progress or
            # cancelled was refused for its id, a missing one's as no tool: red-team wave 71).
            call = tool_call(
                self.gw, incoming, message, server, changed["name"], identity, session.sid
            )
            gw = self.gw
            call = await schema_read(gw, call)  # decided on what admit would see
            if verdict(gw, call).effect == "deny":
                admission = await admit(self.gw, call)
                if not admission.allowed:
                    decision = told(gw, call, admission.decision, message, "/mcp")
                    version = incoming.header("mcp-protocol-version")
                    task = is_task_call(message.params)
                    body = denial(msg_id, decision, admission.decision_id, version, task)
                    await reply(send, 200, body)
                    return
        link = await self.links.link(session, server)
        if link is None:
            refused = session.refused.pop(server, None)  # full (429, 503): its own status
            if refused is None:
                refused = (
                    rpc.upstream_failure_status(msg_id, 502),
                    f"upstream {server!r} is unavailable",
                )
            status, msg = refused
            await reply(send, status, rpc.error_body(msg_id, rpc.UPSTREAM_UNAVAILABLE, msg))
            return
        if link.sid is not None:  # (without a session on the link, ids are no session's)
            refuse_reused(server, session.owner, link.sid, msg_id)
        incoming.headers["mcp-protocol-version"] = link.version
        view = self.view(session, server, identity)
        view.inner.creates = message.method == "tools/call"  # its answer may make a task
        view.inner.for_request(message.msg_id, message.params, message.method)
        fwd = routed(
            self.gw, incoming, server, message, changed, body, view, link.sid, identity.owner
        )

        async def relink() -> str | None:
            assert link is not None
            return await self.links.relink(session, link)

        fwd.relink = relink
        if message.method == "tools/call":
            tool = changed["name"]
            await self._call(incoming, send, session, identity, message, fwd, tool, admission)
            return
        await self._forward(incoming, send, session, message, fwd)

    async def _call(
        self,
        incoming: Incoming,
        send: Send,
        session: AggSession,
        identity: Identity,
        message: Message,
        fwd: Forward,
        tool: str,
        admission: Admission | None,
    ) -> None:
        gw = self.gw
        server = fwd.upstream.name
        call = tool_call(gw, incoming, message, server, tool, identity, session.sid)
        version = incoming.header("mcp-protocol-version")
        done = session.track(message.msg_id, server)
        try:
            await call_through(
                gw, incoming, send, message, call, fwd, identity, version, admission, "/mcp"
            )
        finally:
            done()

    async def _forward(
        self, incoming: Incoming, send: Send, session: AggSession, message: Message, fwd: Forward
    ) -> None:
        done = session.track(message.msg_id, fwd.upstream.name)
        try:
            await forward(incoming, send, fwd)
        finally:
            done()

    # ------------------------------------------------------------------ every server

    async def _answers(
        self, session: AggSession, method: str, each: dict[str, dict[str, Any]], meta: Any
    ) -> dict[str, dict[str, Any]]:
        """Each named server's result for ``method`` with its params (those that fail are
        left out, logged)."""

        async def one(server: str, params: dict[str, Any]) -> dict[str, Any] | None:
            upstream = self.gw.upstreams[server]
            if self.links.skipped(server):  # met down: asked again in the background
                return None
            for relinked in (False, True):
                link = await self.links.link(session, server)
                if link is None:
                    return None
                try:
                    answer = await upcall(
                        upstream, method, params, link.version, meta, session=link.sid
                    )
                except UpcallGone:
                    # It restarted: a link is opened again at once, as a call's is. Lists
                    # left the server out for the rest of the session, and only a call to
                    # one of its tools (no longer listed) relinked (red-team wave 59).
                    if relinked or await self.links.relink(session, link) is None:
                        break
                    continue
                except UpcallDown:
                    self.links.met_down(server)
                    break
                except UpcallFailed:
                    break
                result = answer.get("result")
                return result if isinstance(result, dict) else None
            log.warning("aggregate.upstream_failed", server=server, method=method)
            return None

        names = list(each)
        results = await asyncio.gather(*(one(n, each[n]) for n in names))
        return {n: r for n, r in zip(names, results, strict=True) if r is not None}

    async def _list(
        self,
        incoming: Incoming,
        send: Send,
        session: AggSession,
        identity: Identity,
        message: Message,
    ) -> None:
        method = message.method
        assert method is not None
        gw = self.gw
        cursor = message.params.get("cursor")
        positions = decode_cursor(
            cursor, gw.upstreams, message.msg_id, gw.signer, method, identity.owner
        )
        each = {s: ({"cursor": c} if c else {}) for s, c in positions.items()}
        results = await self._answers(session, method, each, message.params.get("_meta"))
        if method == "tools/list" and each and not results:
            await none_answered(send, message)
            return
        page = self.catalogue.page(method, identity, results, session.sid)
        await answer(incoming, send, rpc.result_body(message.msg_id, page))

    async def _learn_resources(self, session: AggSession, identity: Identity, meta: Any) -> None:
        for method in ("resources/list", "resources/templates/list"):
            each: dict[str, dict[str, Any]] = {s: {} for s in self.gw.upstreams}
            results = await self._answers(session, method, each, meta)
            self.catalogue.page(method, identity, results, session.sid)

    async def _everywhere(self, send: Send, session: AggSession, message: Message) -> None:
        """``logging/setLevel``: every server is told; answered once any one took it."""
        method = message.method
        assert method is not None
        params = {k: v for k, v in message.params.items() if k != "_meta"}
        session.log_level = params.get("level")  # told again to a server's new link
        each = dict.fromkeys(self.gw.upstreams, params)
        results = await self._answers(session, method, each, message.params.get("_meta"))
        if not results:
            msg = "no server behind /mcp took this request"
            raise BadMessage(rpc.INTERNAL_ERROR, msg, status=200, msg_id=message.msg_id)
        await reply(send, 200, rpc.result_body(message.msg_id, {}))


async def answer(incoming: Incoming, send: Send, body: bytes) -> None:
    """An answer made here, as the client prefers it: an SSE stream of one event when its
    ``Accept`` names ``text/event-stream`` first, else JSON (either is the client's to read)."""
    accept = incoming.header("accept") or ""
    if accept.split(",")[0].split(";")[0].strip().lower() != "text/event-stream":
        await reply(send, 200, body)
        return
    await reply(send, 200, event(body), content_type=b"text/event-stream")


def _id_taken(session: AggSession, server: str, msg_id: Any) -> bool:
    """Whether a request's id would be refused: one in progress in the session, or over on
    the server's link (``refuse_reused``)."""
    if str(msg_id) in session.inflight:
        return True
    link = session.links.get(server)
    return (
        link is not None
        and link.sid is not None
        and was_over(server, session.owner, link.sid, msg_id)
    )
