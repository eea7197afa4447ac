"""The ``GET`` stream of a handshake-era ``/mcp`` session: every server's own stream (for
messages not tied to a request: list changes, resource updates, requests of its own) merged
into one, each event through that server's view for this caller; or, with ``Last-Event-ID``,
the one server stream that event came from, resumed.

Event ids are bound to (server, grant, session) as on the relay, so the id alone says which
server to resume from; an id bound to anything else is refused. Each server's stream is read
by a task of its own into one bounded queue: a slow client holds the servers back rather than
the gateway's memory growing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway.edge.agg.sessions import AggSession, Link
from gateway.edge.agg.upcall import UpcallFailed, UpcallGone, upcall
from gateway.edge.clientview import both
from gateway.edge.forward import (
    UPSTREAM_ERRORS,
    Forward,
    answer_media,
    ended_here,
    forward,
    refuse_over,
    watching_disconnect,
)
from gateway.policy import Identity
from gateway.telemetry.audit import log
from gateway.turns import Turns
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Send
from gateway.wire.jsonrpc import BadMessage
from gateway.wire.sse import SseRewriter, StreamTooLarge, event_id

if TYPE_CHECKING:
    from gateway.edge.agg.handshake import Handshake
    from gateway.upstream.http import HttpUpstream

QUEUE_EVENTS = 64
#: What one client's merged stream holds waiting to be sent, at most (and one chunk more):
#: a client that read nothing held 64 chunks of up to 32 MiB each, outside every budget.
QUEUE_BYTES = 4 * 1024 * 1024


class ChunkQueue(asyncio.Queue[bytes | None]):
    """The chunks waiting for one client, bounded in chunks and in bytes: the servers' pumps
    wait while it is full (a client slow to read holds the servers back, not the gateway's
    memory)."""

    def __init__(self, maxsize: int = QUEUE_EVENTS, max_bytes: int = QUEUE_BYTES) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0

    def _put(self, item: bytes | None) -> None:
        super()._put(item)
        self.bytes += len(item or b"")

    def _get(self) -> bytes | None:
        item: bytes | None = super()._get()
        self.bytes -= len(item or b"")
        return item

    def full(self) -> bool:
        return self.bytes >= self.max_bytes or super().full()


async def resumed_stream(
    face: Handshake,
    incoming: Incoming,
    send: Send,
    session: AggSession,
    identity: Identity,
    presented: str,
) -> None:
    for server, link in session.links.items():
        view = face.view(session, server, identity)
        event_id = view.inner.unwrap_event_id(presented)
        if event_id is not None:  # the rest of that event's stream (unwrap_event_id), but
            # not an answer to a request the gateway ended (and told its client so)
            refuse_over(server, session.owner, link.sid, view.inner)
            ended = ended_here(server, session.owner, link.sid)
            view.inner.answers = both(view.inner.answers, ended)
            incoming.headers["mcp-protocol-version"] = link.version
            upstream = face.gw.upstreams[server]
            fwd = Forward(
                upstream, link.sid, None, view=view, last_event_id=event_id, grant=session.owner
            )
            await forward(incoming, send, fwd)
            return
    raise BadMessage(rpc.INVALID_REQUEST, "Last-Event-ID not recognised", status=400)


async def merged_stream(
    face: Handshake, incoming: Incoming, send: Send, session: AggSession, identity: Identity
) -> None:
    queue = ChunkQueue()
    pumps: list[asyncio.Task[None]] = []

    def attach(link: Link) -> None:
        if link.sid is not None:  # a server without sessions has no stream of its own
            pumps.append(asyncio.ensure_future(_pump(face, session, identity, link, queue)))

    session.streaming = True
    session.on_link = attach
    session.stop = lambda: queue.put_nowait(None) if not queue.full() else None
    for link in list(session.links.values()):
        attach(link)
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def relay() -> None:
        while session.sid in face.sessions.table:
            chunk = await queue.get()
            if chunk is None:
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    try:
        await watching_disconnect(incoming.receive, relay())
        await send({"type": "http.response.body", "body": b""})
    finally:
        session.streaming = False
        session.on_link = session.stop = None
        for pump in pumps:
            pump.cancel()


#: A server's own stream that ended is opened again (resumed from its last event) after
#: this long, doubling while it fails or ends at once, to ``REOPEN_MOST``.
REOPEN_FIRST, REOPEN_MOST = 0.5, 30.0


async def _pump(
    face: Handshake,
    session: AggSession,
    identity: Identity,
    link: Link,
    queue: asyncio.Queue[bytes | None],
) -> None:
    """The server's own stream, into the merged one, for as long as the session holds this
    link: opened again when it ends (resumed from its last event, after the server's retry
    time or a backoff). Once ended it was never read again, and every later message of the
    server's to the client (list changes, resource news, its own requests) was lost for
    the rest of the session (red-team wave 64). A 404 (the session is gone) opens a new
    link, whose own stream is read; another refusal ends it for good."""
    last: list[bytes | None] = [None]
    wait = REOPEN_FIRST
    while session.sid in face.sessions.table and session.links.get(link.server) is link:
        heard, again = await _read_stream(face, session, identity, link, queue, last)
        if not again:
            return
        wait = REOPEN_FIRST if heard else min(wait * 2, REOPEN_MOST)
        await asyncio.sleep(wait)
        log.info("aggregate.stream_reopened", server=link.server)


async def _read_stream(
    face: Handshake,
    session: AggSession,
    identity: Identity,
    link: Link,
    queue: asyncio.Queue[bytes | None],
    last: list[bytes | None],
) -> tuple[bool, bool]:
    """One GET of the server's stream: (whether an event came, whether to open it again)."""
    upstream = face.gw.upstreams[link.server]
    headers = {
        "accept": "text/event-stream",
        "accept-encoding": "identity",
        "mcp-protocol-version": link.version,
        **upstream.headers,
    }
    if link.sid is not None:
        headers["mcp-session-id"] = link.sid
    if last[0] is not None:
        headers["last-event-id"] = last[0].decode("latin-1")
    try:
        resp = await upstream.pool.request("GET", headers, None)
    except (*UPSTREAM_ERRORS, TimeoutError):
        return False, True  # down for now: tried again later
    heard = False
    try:
        if resp.status == 404 and link.sid is not None:
            resp.close()
            if session.links.get(link.server) is link and await _session_gone(upstream, link):
                # The server no longer knows the session (it restarted): a link is opened in
                # its place, told what the client set up, and its stream read (``on_link``).
                # A client that only listened lost the server without a word (red-team wave 67).
                # After a pause: a server that forgets every session at once is not asked
                # for new ones as fast as it can answer.
                await asyncio.sleep(REOPEN_FIRST)
                if session.links.get(link.server) is link:
                    await face.links.relink(session, link)
            else:  # a server whose GET is 404 alone serves no stream: as a 405
                log.info("aggregate.no_stream", server=link.server, status=404)
            return False, False
        if resp.status != 200 or answer_media(resp) != "text/event-stream":
            return False, resp.status >= 500
        rewriter = SseRewriter(face.view(session, link.server, identity))  # no answers
        turns = Turns()  # a server flooding its stream held every other caller's calls
        async for chunk in resp.iter_chunks():
            events = rewriter.split(chunk)
            for event in events:
                found = event_id(event)
                if found:
                    last[0] = found
            heard = heard or bool(events)
            data = rewriter.rewrite(events)
            if data:
                await queue.put(data)
            await turns.after_chunk()
    except (*UPSTREAM_ERRORS, StreamTooLarge):
        log.warning("aggregate.stream_ended", server=link.server)
    finally:
        resp.close()
    return heard, True


async def _session_gone(upstream: HttpUpstream, link: Link) -> bool:
    """Whether a server whose GET in the link's session was 404 no longer knows the session
    (a ``ping`` in it is 404 too). A server that serves no GET at all (404 for every one: an
    Express app with only a POST route) is no restarted one: each relink opened a session,
    whose GET was 404 again, in a loop with no pause (15,000 sessions in 5 s, red-team wave
    68)."""
    try:
        await upcall(upstream, "ping", {}, link.version, session=link.sid)
    except UpcallGone:
        return True
    except UpcallFailed:
        return False
    return False
