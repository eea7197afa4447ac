"""``subscriptions/listen`` on ``/mcp`` (2026-07-28): one stream of every server's events.

The client's request goes to every server (a resource subscription only to the server that
has the resource), each with the client's own id, so every server tags its events with the
subscription id the client chose. The client's stream opens with one acknowledgement: what
the servers together honour. Each server's events follow through that server's view for the
caller, until the client goes away or every server's stream has ended. A server that refuses
to listen is left out; when all refuse, the client gets the first refusal as it came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.edge.agg.merge import Catalogue
from gateway.edge.agg.streams import ChunkQueue
from gateway.edge.agg.upcall import told_error
from gateway.edge.clientview import ClientView
from gateway.edge.forward import (
    UPSTREAM_ERRORS,
    Forward,
    answer_media,
    read_bounded,
    request_headers,
    watching_disconnect,
)
from gateway.pipeline.gateway import Gateway
from gateway.policy import Identity
from gateway.turns import Turns
from gateway.upstream.h1 import H1Response
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Send, reply
from gateway.wire.jsonrpc import BadMessage, Message, json_bytes
from gateway.wire.jsonrpc import loads as json_loads
from gateway.wire.sse import SseRewriter, StreamTooLarge, event_data, rewrite_event
from gateway.wire.sse import message_event as event

ACK = "notifications/subscriptions/acknowledged"
SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"
ACK_SECONDS = 10.0  # how long the servers' acknowledgements are waited for
QUEUE_EVENTS = 64
#: Resources one listen may name: each is looked up for each server (every template head),
#: on the event loop every caller shares.
MAX_SUBSCRIPTIONS = 1000
MAX_PENDING_BYTES = 1024 * 1024  # an event not ended within this is a broken stream
#: The kinds of news a listen on ``/mcp`` may ask for (``SubscriptionFilter``): the list
#: changes, each a flag, and resources by URI. Any other key (an extension's, ``taskIds`` of
#: the tasks extension) is not passed to the servers: ``/mcp`` routes no task, and a key it
#: has not classified asks a server for news it cannot check.
FLAGS = ("toolsListChanged", "promptsListChanged", "resourcesListChanged")
RESOURCES = "resourceSubscriptions"


@dataclass
class _Server:
    name: str
    resp: H1Response | None = None
    honoured: dict[str, Any] | None = None
    asked: dict[str, Any] = field(default_factory=dict)  # the filter this server was sent
    refusal: tuple[int, bytes] | None = None
    acked: asyncio.Event = field(default_factory=asyncio.Event)


async def listen(
    gw: Gateway,
    catalogue: Catalogue,
    incoming: Incoming,
    send: Send,
    message: Message,
    identity: Identity,
    skipped: Collection[str] = (),
    silent: Callable[[str], None] | None = None,
) -> None:
    """``skipped``: servers met down, left out; ``silent`` is told each server that did not
    acknowledge within ``ACK_SECONDS`` (a hung one made every listen wait them: wave 60)."""
    wanted = message.params.get("notifications")
    if isinstance(wanted, dict) and wanted.get("taskIds") is not None:
        # Sent on, the other agents' task ids reached the servers unchecked, and a server's
        # acknowledgement told whether each existed (red-team wave 41).
        msg = "tasks are not followed on /mcp: listen on /mcp/<server> with the task's id"
        raise BadMessage(rpc.INVALID_PARAMS, msg, status=200, msg_id=message.msg_id)
    uris = wanted.get(RESOURCES) if isinstance(wanted, dict) else None
    if isinstance(uris, list) and len(uris) > MAX_SUBSCRIPTIONS:
        msg = f"a listen names at most {MAX_SUBSCRIPTIONS} resources"
        raise BadMessage(rpc.INVALID_PARAMS, msg, msg_id=message.msg_id)
    servers = [_Server(name) for name in gw.upstreams if name not in skipped]
    queue = ChunkQueue(QUEUE_EVENTS)
    pumps = [
        asyncio.ensure_future(_pump(gw, incoming, message, catalogue, s, identity, queue))
        for s in servers
    ]
    try:
        await _acknowledged(servers)
        for server in servers:
            if silent is not None and not server.acked.is_set():
                silent(server.name)
        honoured = [s.honoured for s in servers if s.honoured is not None]
        if not honoured:
            refusals = [s.refusal for s in servers if s.refusal is not None]
            failed = rpc.upstream_failure_status(message.msg_id, 502)
            status, body = refusals[0] if refusals else (failed, _unavailable(message))
            await reply(send, status, body)
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": _ack(message, honoured), "more_body": True}
        )

        async def relay() -> None:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        ender = asyncio.ensure_future(_end_when_all_done(pumps, queue))
        try:
            await watching_disconnect(incoming.receive, relay())
        finally:
            ender.cancel()
        await send({"type": "http.response.body", "body": b""})
    finally:
        for pump in pumps:
            pump.cancel()
        for server in servers:
            if server.resp is not None:
                server.resp.close()


async def _acknowledged(servers: list[_Server]) -> None:
    waits = [asyncio.ensure_future(s.acked.wait()) for s in servers]
    try:
        await asyncio.wait(waits, timeout=ACK_SECONDS)
    finally:
        for wait in waits:
            wait.cancel()


async def _end_when_all_done(
    pumps: Sequence[asyncio.Future[None]], queue: asyncio.Queue[bytes | None]
) -> None:
    await asyncio.gather(*pumps, return_exceptions=True)
    await queue.put(None)


def _for_server(catalogue: Catalogue, server: str, wanted: dict[str, Any]) -> dict[str, Any]:
    """The filter one server is asked for: the list-change flags asked (true or false, as
    given), and only the resources it alone owns; nothing else. A URI that no server or two
    servers claim is asked of none: sent to all, every server would learn what the caller
    watches, and any could answer for it."""
    out = {k: wanted[k] for k in FLAGS if isinstance(wanted.get(k), bool)}
    uris = wanted.get(RESOURCES)
    if isinstance(uris, list):
        mine = [u for u in uris if isinstance(u, str) and catalogue.owner(u) == server]
        if mine:
            out[RESOURCES] = mine
    return out


async def _pump(
    gw: Gateway,
    incoming: Incoming,
    message: Message,
    catalogue: Catalogue,
    server: _Server,
    identity: Identity,
    queue: asyncio.Queue[bytes | None],
) -> None:
    asked = message.params.get("notifications")
    wanted = _for_server(catalogue, server.name, asked if isinstance(asked, dict) else {})
    server.asked = wanted
    upstream = gw.upstreams[server.name]
    # What the listen asked of this server, and the request's own _meta (its era): nothing
    # else the caller sent (taskIds and any other key went to every server, wave 44).
    params: dict[str, Any] = {"notifications": wanted}
    if "_meta" in message.params:
        params["_meta"] = message.params["_meta"]
    body = json_bytes({**message.raw, "params": params})
    fwd = Forward(upstream, None, body, message.msg_id)
    view = ClientView(gw, server.name, identity)
    view.modern = True  # a listen is of this era only: a server's request on it is dropped
    try:
        resp = await upstream.pool.request("POST", request_headers(incoming, fwd), body)
    except (*UPSTREAM_ERRORS, TimeoutError):
        server.acked.set()
        return
    server.resp = resp
    try:
        if answer_media(resp) != "text/event-stream":
            data = await read_bounded(resp, upstream.silence)
            server.refusal = _refusal(resp.status, data, message)
            return
        events = SseRewriter(view)  # its split only: each event is filtered in _one_event
        turns = Turns()  # a server flooding its listen held every other caller's calls
        async for chunk in resp.iter_chunks():
            for raw in events.split(chunk):
                await _one_event(raw, server, view, queue, catalogue)
            if events.pending_bytes > MAX_PENDING_BYTES:
                raise StreamTooLarge("an SSE event too large")
            await turns.after_chunk()
    except (*UPSTREAM_ERRORS, StreamTooLarge, TimeoutError):
        pass
    finally:
        server.acked.set()


def _refusal(status: int, data: bytes | None, message: Message) -> tuple[int, bytes] | None:
    """An upstream's refusal of the listen, as the caller gets it: only a JSON-RPC error's
    code and message under the caller's id (nothing else of the upstream's body, which no
    view has read), with the upstream's 4xx status; an upstream's 401 (it refused the
    gateway's credentials) or anything else is the server being unavailable."""
    try:
        error = json_loads(data).get("error") if data is not None else None
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict) or not 400 <= status < 500 or status == 401:
        return None
    told = told_error(error, "the upstream refused to listen")
    return status, rpc.error_body(message.msg_id, told["code"], told["message"])


async def _one_event(
    raw: bytes,
    server: _Server,
    view: ClientView,
    queue: asyncio.Queue[bytes | None],
    catalogue: Catalogue,
) -> None:
    data = event_data(raw)
    try:
        value = json_loads(data) if data else None
    except (ValueError, RecursionError):  # (nested past what Python reads: no message)
        value = None
    if data and not isinstance(value, dict):
        # A batch (not of this era), or a message Python does not read (an integer of 5,000
        # digits, which a JavaScript client reads): it passed none of the checks here, and
        # a forged acknowledgement or news of another server's resource reached the
        # TypeScript SDK as written (red-team wave 64). Dropped.
        return
    if isinstance(value, dict) and value.get("method") == ACK:
        if server.acked.is_set():  # told again: the client was told once, of what it asked
            return  # (a second one went to it as the server wrote it, red-team wave 42)
        params = value.get("params")
        notes = params.get("notifications") if isinstance(params, dict) else None
        server.honoured = _honoured(server.asked, notes if isinstance(notes, dict) else {})
        server.acked.set()
        return
    if isinstance(value, dict) and ("result" in value or "error" in value):
        return  # the end of this server's stream; the client's ends when all have
    news = isinstance(value, dict) and value.get("method") == "notifications/resources/updated"
    if news and not catalogue.owns_news(server.name, value):
        return  # news of a resource this server does not own, alone: not its to give
    out = rewrite_event(raw, view)
    if out:
        await queue.put(out)


def _honoured(asked: dict[str, Any], told: dict[str, Any]) -> dict[str, Any]:
    """What a server says it honours, of what it was asked: a flag it was asked for, and
    resources it was asked about. Its acknowledgement went to the client as it came, keys
    and URIs of its own choosing included."""
    out: dict[str, Any] = {k: told[k] for k in FLAGS if k in asked and told.get(k) is True}
    uris = told.get(RESOURCES)
    if isinstance(uris, list):
        mine = set(asked.get(RESOURCES, ()))
        kept = [u for u in uris if isinstance(u, str) and u in mine]
        if kept:
            out[RESOURCES] = list(dict.fromkeys(kept))
    return out


def _ack(message: Message, honoured: list[dict[str, Any]]) -> bytes:
    merged: dict[str, Any] = {}
    for notes in honoured:
        for key, value in notes.items():
            if isinstance(value, bool):
                merged[key] = merged.get(key) is True or value
            elif isinstance(value, list):
                merged[key] = [*merged.get(key, []), *value]
    meta = {SUBSCRIPTION_ID_KEY: message.msg_id}
    note = {"jsonrpc": "2.0", "method": ACK, "params": {"notifications": merged, "_meta": meta}}
    return event(json_bytes(note))


def _unavailable(message: Message) -> bytes:
    msg = "no server behind /mcp answered"
    return rpc.error_body(message.msg_id, rpc.UPSTREAM_UNAVAILABLE, msg)
