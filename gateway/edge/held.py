"""A call held for human approval in ``wait`` mode, answered as an SSE stream.

The stream opens as soon as the call is held; while the approval is pending, progress
notifications (when the client sent a progress token) or SSE comments keep it alive and name
the approval id. Once decided, the stream carries either the denial or the upstream's own
answer. Deciding, limits and the record are ``gateway.pipeline.admission.admit``'s; this is
the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any

from gateway.approvals.service import CLIENT, match_key
from gateway.edge.forward import (
    UPSTREAM_ERRORS,
    Forward,
    answer_media,
    asked,
    end_upstream_call,
    ended_unanswered,
    left_unanswered,
    no_answer,
    read_bounded,
    relayed_events,
    sse_error,
    sse_failure,
    too_large_words,
    unreadable,
    unreadable_answer,
    watching_disconnect,
)
from gateway.edge.replies import denial, is_task_call
from gateway.errors import ApprovalError, BackendUnavailable
from gateway.pipeline.admission import Admission, Hold, Wait, timed_upstream
from gateway.pipeline.gateway import Gateway
from gateway.policy.model import Call, Decision, Identity
from gateway.telemetry.audit import log
from gateway.upstream.h1 import H1Response
from gateway.wire.asgi import Incoming, Send
from gateway.wire.jsonrpc import MODERN_VERSIONS, Message
from gateway.wire.sse import DROP, SseRewriter, StreamTooLarge, filtered, spliced_by
from gateway.wire.sse import message_event as event

KEEPALIVE_SECONDS = 5.0


def accepts_sse(incoming: Incoming) -> bool:
    return "text/event-stream" in (incoming.header("accept") or "")


class _Keepalive:
    def __init__(self, send: Send, message: Message, approval_hint: str) -> None:
        self.send = send
        meta = message.params.get("_meta")
        self.token = meta.get("progressToken") if isinstance(meta, dict) else None
        self.hint = approval_hint
        self.last = 0.0
        self.told = 0.0  # the last progress value sent under the client's token

    async def __call__(self, elapsed: float) -> None:
        if elapsed - self.last < KEEPALIVE_SECONDS:
            return
        self.last = elapsed
        if self.token is None:
            chunk = f": {self.hint} ({elapsed:.0f} s)\n\n".encode()
        else:
            note: dict[str, Any] = {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {
                    "progressToken": self.token,
                    "progress": round(elapsed, 1),
                    "message": f"{self.hint} ({elapsed:.0f} s)",
                },
            }
            self.told = round(elapsed, 1)
            chunk = event(json.dumps(note).encode())
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})


class _ProgressAfterWait:
    """The view of an approved call's answer when the wait told its client progress: the
    upstream's own progress under that token starts again from nothing, and a value that
    goes down breaks the protocol's rule (progress increases) and a host's progress bar. Its
    values (and total) come after the wait's: ``offset`` more."""

    __slots__ = ("inner", "offset", "token")

    def __init__(self, inner: Any, token: Any, offset: float) -> None:
        self.inner = inner
        self.token = token
        self.offset = offset

    def wants(self, data: bytes) -> bool:
        return b"progress" in data or (self.inner is not None and self.inner.wants(data))

    def splice(self, data: bytes) -> bytes | None:
        return None if b"progress" in data else spliced_by(self.inner, data)

    def wrap_event_id(self, event_id: bytes) -> bytes:
        return self.inner.wrap_event_id(event_id) if self.inner is not None else event_id

    def filter(self, message: Any) -> Any | None:
        shown = self.inner.filter(message) if self.inner is not None else None
        if shown is DROP:
            return DROP
        current = shown if shown is not None else message
        if not isinstance(current, dict) or current.get("method") != "notifications/progress":
            return shown
        params = current.get("params")
        if not isinstance(params, dict) or params.get("progressToken") != self.token:
            return shown
        moved = dict(params)
        for field in ("progress", "total"):
            value = params.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                moved[field] = value + self.offset
        return {**current, "params": moved}


HeldKey = tuple[str, str, str, str]


class HeldCalls:
    """Calls held for approval in this process, by endpoint, caller (``Identity.owner``),
    session (none for a client without one) and request id: a client's
    ``notifications/cancelled`` naming one ends its wait (a held call never reached its
    upstream, so forwarding the cancel there stopped nothing, and an approval given later
    ran the call the client had cancelled). Two held calls under one key both end."""

    def __init__(self) -> None:
        self.waiting: dict[HeldKey, set[asyncio.Event]] = {}
        #: Cancels that found no held call, and when: the call may not be held or sent yet
        #: (being decided, or waiting for ``/mcp`` to open its server's link, a stdio
        #: server's start): one such was held and approved, or sent, though its client had
        #: cancelled it (red-team wave 69). ``EARLY_SECONDS`` each, ``MAX_EARLY`` at most.
        self.early: OrderedDict[HeldKey, float] = OrderedDict()
        #: How many held calls wait on each approval request (by its match key): identical
        #: calls of one agent in two sessions share one, and one's cancel withdrew it from
        #: under the other (refused, never asked of the operator: red-team wave 64).
        self.sharing: Counter[str] = Counter()

    def join(self, match: str) -> None:
        self.sharing[match] += 1

    def leave(self, match: str) -> None:
        self.sharing[match] -= 1
        if self.sharing[match] <= 0:
            del self.sharing[match]

    def add(self, key: HeldKey, stop: asyncio.Event) -> None:
        self.waiting.setdefault(key, set()).add(stop)

    def remove(self, key: HeldKey, stop: asyncio.Event) -> None:
        found = self.waiting.get(key)
        if found is not None:
            found.discard(stop)
            if not found:
                del self.waiting[key]

    def cancel(self, key: HeldKey) -> bool:
        """End the held calls ``key`` names; False when none waits under it (the cancel is
        kept a while, for a call not held or sent yet: ``cancelled_early``)."""
        found = self.waiting.get(key)
        for stop in found or ():
            stop.set()
        if not found and key[2]:  # (ids are a session's own: without one, no later call's)
            now = time.monotonic()
            self.early.pop(key, None)
            self.early[key] = now
            while self.early and (
                len(self.early) > MAX_EARLY or now - next(iter(self.early.values())) > EARLY_SECONDS
            ):
                self.early.popitem(last=False)
        return bool(found)

    def cancelled_early(self, key: HeldKey) -> bool:
        """Whether the call ``key`` names was cancelled before it was held or sent."""
        at = self.early.get(key)
        return at is not None and time.monotonic() - at <= EARLY_SECONDS


#: How long a cancel that found no held call is kept, and how many such at most.
EARLY_SECONDS = 120.0
MAX_EARLY = 10_000


def held_calls(extras: MutableMapping[str, Any]) -> HeldCalls:
    found = extras.get("held_calls")
    if not isinstance(found, HeldCalls):
        found = extras["held_calls"] = HeldCalls()
    return found


def held_key(incoming: Incoming, identity: Identity, msg_id: Any) -> HeldKey:
    """Who may cancel a held call, and under which id: the same caller, on the same endpoint
    and session, or with no session for a client that has none (ids are the caller's own)."""
    session = incoming.header("mcp-session-id") or ""
    return (incoming.path, identity.owner, session, json.dumps(msg_id))


def cancels_held(gw: Gateway, incoming: Incoming, identity: Identity, message: Message) -> bool:
    """Whether ``message`` is its caller's ``notifications/cancelled`` for one of its own
    calls held here, which it then ends."""
    if message.method != "notifications/cancelled" or message.kind != "notification":
        return False
    key = held_key(incoming, identity, message.params.get("requestId"))
    return held_calls(gw.extras).cancel(key)


class Cancellable:
    """A call held for approval (``wait`` mode) that its client may cancel: registered in
    ``HeldCalls`` under its key while it waits; cancelled, the wait ends and its approval
    request is withdrawn (refused on the client's behalf, and forgotten, so that the same
    call asked again is a new request). The ``hold`` of a client that takes no SSE (the
    call waits, then is answered as JSON); ``HeldStream`` runs one inside its stream."""

    __slots__ = ("call", "cancelled", "gw", "key", "registered", "sharing")

    def __init__(
        self, gw: Gateway | None, call: Call | None, key: Callable[[], HeldKey] | None
    ) -> None:
        self.gw = gw
        self.call = call
        self.key = key
        self.cancelled = False
        #: Where its cancel is looked for, once registered: the key and the event it sets.
        self.registered: tuple[HeldKey, asyncio.Event] | None = None
        self.sharing: str | None = None  # the match key it is counted under, while held

    def register(self, decision: Decision) -> asyncio.Event:
        """Registered in ``HeldCalls`` (once): before its client can know the call is held
        (a held stream's head), so that a cancel sent at once finds it. It was registered
        only once the wait began, and a cancel in between was lost. Counted among the held
        calls waiting on its approval request too."""
        if self.registered is not None:
            return self.registered[1]
        stop = asyncio.Event()
        registry = held_calls(self.gw.extras) if self.gw is not None else None
        key = self.key() if self.key is not None and registry is not None else None
        if registry is not None and key is not None:
            registry.add(key, stop)
            self.registered = (key, stop)
            if registry.early and registry.cancelled_early(key):
                stop.set()  # cancelled while it was being decided: its wait ends at once
            if self.call is not None:
                self.sharing = match_key(self.call, decision.revision)
                registry.join(self.sharing)
        return stop

    def unregister(self) -> None:
        if self.registered is not None and self.gw is not None:
            registry = held_calls(self.gw.extras)
            registry.remove(*self.registered)
            self.registered = None
            if self.sharing is not None:
                registry.leave(self.sharing)
                self.sharing = None

    async def hold(self, decision: Decision, wait: Wait) -> Decision:
        final = await self.run(decision, wait, None)
        return decision if final is None else final

    def watched(self, incoming: Incoming, modern: bool = False) -> Hold:
        """``hold`` that also ends when the client goes away (no stream watches it); in the
        2026-07-28 era (``modern``) its going away cancels the call (``client_left``)."""

        async def hold(decision: Decision, wait: Wait) -> Decision:
            final = [decision]
            done = False

            async def work() -> None:
                nonlocal done
                final[0] = await self.hold(decision, wait)
                done = True

            await watching_disconnect(incoming.receive, work())
            if not done and modern:
                await self.client_left(decision)
            return final[0]

        return hold

    async def client_left(self, decision: Decision) -> None:
        """The client went away from a held call in the 2026-07-28 era, which has no
        ``notifications/cancelled``: closing the request is how a client cancels it. Its
        approval request is withdrawn as on a cancel (a handshake-era client that goes away
        may come back for its call, and it stays held)."""
        self.cancelled = True
        await self._withdraw(decision)

    async def run(self, decision: Decision, wait: Wait, tick: Any) -> Decision | None:
        """The decision once waited for; None when the wait was cancelled (by the client,
        or by its going away)."""
        stop = self.register(decision)
        if stop.is_set():  # cancelled before it was held: no request is made for it
            self.cancelled = True
            self.unregister()
            return None
        waiting = asyncio.ensure_future(wait(tick))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            self.unregister()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        if stop.is_set():  # (a wait that finished while it was being ended: the cancel wins)
            self.cancelled = True
            await self._withdraw(decision)
            return None
        if waiting.done() and not waiting.cancelled():
            return waiting.result()
        return None

    async def _withdraw(self, decision: Decision) -> None:
        """The cancelled call's approval request, refused on its client's behalf (and
        forgotten, so that the same call asked again is a new request); kept while another
        held call waits on it (the same call of the same agent, in another session, of this
        process or, by its mark in the store, of another replica): its wait goes on."""
        gw = self.gw
        approvals = gw.approvals if gw is not None else None
        call = self.call
        if gw is None or approvals is None or call is None:
            return
        match = match_key(call, decision.revision)
        if held_calls(gw.extras).sharing.get(match):
            return
        with contextlib.suppress(ApprovalError, BackendUnavailable):
            request = await approvals.store.find(match)
            if request is not None and await approvals.store.waiting(request.id, approvals.clock()):
                return  # another replica's held call waits on it: its wait goes on
            if request is not None and request.status == "pending":
                note = "cancelled by its client"
                await approvals.store.transition(request.id, "pending", "denied", CLIENT, note)
            if request is not None:
                await approvals.store.forget_match(match, request.id)


class HeldStream:
    """The relay's ``hold`` for a client that takes SSE (see ``gateway.pipeline.admission.admit``).

    ``hold`` opens the stream and keeps it alive while the approval waits; after ``admit``,
    ``answer`` writes the denial or the upstream's answer into it and closes it. A client
    that goes away ends the wait; the call is then recorded as still held (in the 2026-07-28
    era, where closing the request is how a client cancels, it is withdrawn). A client that
    cancels it (``notifications/cancelled``) ends the wait too, and its approval request is
    withdrawn: approving it later runs nothing.
    """

    __slots__ = (
        "call",
        "cancelled",
        "gone",
        "gw",
        "incoming",
        "key",
        "message",
        "opened",
        "send",
        "tick",
    )

    def __init__(
        self,
        incoming: Incoming,
        send: Send,
        message: Message,
        gw: Gateway | None = None,
        call: Call | None = None,
        key: Callable[[], HeldKey] | None = None,
    ) -> None:
        self.incoming = incoming
        self.send = send
        self.message = message
        self.opened = False
        self.gone = False
        self.gw = gw
        self.call = call
        self.key = key
        self.cancelled = False
        self.tick: _Keepalive | None = None  # the wait's keep-alive, once it held

    async def open(self) -> None:
        """Start the SSE answer (once)."""
        if self.opened:
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.opened = True

    async def write(self, chunk: bytes) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def watching(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` unless the client goes away first (then ``gone`` is set)."""
        done = False

        async def run() -> None:
            nonlocal done
            await work
            done = True

        await watching_disconnect(self.incoming.receive, run())
        self.gone = not done

    async def hold(self, decision: Decision, wait: Wait) -> Decision:
        final: Decision | None = None
        waiting = Cancellable(self.gw, self.call, self.key)
        waiting.register(decision)  # before the head: the client may cancel once it has it
        try:
            await self.open()
            tick = self.tick = _Keepalive(
                self.send, self.message, "waiting for a human to approve this call"
            )

            async def work() -> None:
                nonlocal final
                final = await waiting.run(decision, wait, tick)

            await self.watching(work())
        finally:
            waiting.unregister()
        version = self.message.protocol_version or self.incoming.header("mcp-protocol-version")
        if self.gone and not waiting.cancelled and version in MODERN_VERSIONS:
            await waiting.client_left(decision)
        if waiting.cancelled:  # by its client: no answer is due
            self.cancelled = self.gone = True
        return decision if final is None else final

    async def answer(self, gw: Gateway, call: Call, fwd: Forward, admission: Admission) -> None:
        if not self.gone:
            answering = self._answer(gw, call, fwd, admission)
            if await watching_disconnect(self.incoming.receive, answering):
                left_unanswered(fwd)  # (when it had gone upstream)
        await self.send({"type": "http.response.body", "body": b""})

    async def _answer(self, gw: Gateway, call: Call, fwd: Forward, admission: Admission) -> None:
        if not admission.allowed:
            message = self.message
            version = message.protocol_version or self.incoming.header("mcp-protocol-version")
            decision, decision_id = admission.decision, admission.decision_id
            task = is_task_call(message.params)
            body = denial(message.msg_id, decision, decision_id, version, task)
            await self.send({"type": "http.response.body", "body": event(body), "more_body": True})
            return
        tick = self.tick
        if tick is not None and tick.told:  # the wait told progress: the upstream's follows it
            fwd.view = _ProgressAfterWait(fwd.view, tick.token, math.floor(tick.told) + 1)
        async with timed_upstream(gw, call):
            await _forward_into_stream(self.incoming, self.send, fwd)


async def _forward_into_stream(incoming: Incoming, send: Send, fwd: Forward) -> None:
    """The approved call, asked as the relay asks (a session the server lost is opened again
    on ``/mcp``, a status no client reads is an error), its answer into the held stream."""
    resp, failure = await asked(incoming, fwd, watch=False)  # (the held stream watches)
    if resp is None:
        if failure is not None:
            body = sse_failure(fwd, failure[1])
            await send({"type": "http.response.body", "body": body, "more_body": True})
        return
    try:
        await _pipe(send, resp, fwd)
    finally:
        resp.close()


async def _pipe(send: Send, resp: H1Response, fwd: Forward) -> None:
    """The upstream's answer into the held stream, through the caller's view either way, and
    an error when it holds no answer the client can read (a held stream that ended with
    none left the TypeScript SDK waiting its whole timeout)."""
    assert fwd.view is not None
    media = answer_media(resp)
    is_sse = media == "text/event-stream"
    silence = fwd.upstream.silence
    try:
        if is_sse:
            # As the relay's streams: servers.X.timeout with no message ends the call, and a
            # flood gives the other callers their turns.
            rewriter = fwd.answering = SseRewriter(fwd.view, fwd.msg_id)
            events = relayed_events(resp, rewriter, silence)
            async with contextlib.aclosing(events):
                async for data in events:
                    if rewriter.lost_answer:
                        data += unreadable_answer(fwd)
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    if rewriter.lost_answer:
                        return
            if ended_unanswered(fwd, rewriter):
                tail = no_answer(fwd)
                await send({"type": "http.response.body", "body": tail, "more_body": True})
            return
        # As the relay's answers read whole: bounded, and whole within servers.X.timeout.
        fwd.answering = True
        why: list[str] = []
        body = await read_bounded(resp, silence, why)
        if body is None:
            await _send_error(send, fwd, too_large_words(why))
            return
        changed = filtered(body, fwd.view, answer=True)
        if changed is DROP or unreadable(body, media):
            await _send_error(send, fwd)
        elif body.strip():
            out = event(changed if changed is not None else body)
            await send({"type": "http.response.body", "body": out, "more_body": True})
        else:
            log.warning("upstream.no_answer", server=fwd.upstream.name, status=resp.status)
            await _send_error(send, fwd, "answered the request with no message")
    except TimeoutError:
        log.warning("upstream.silent", server=fwd.upstream.name, seconds=silence)
        end_upstream_call(fwd, "no answer in time")
        body = sse_error(fwd, "did not answer in time")
        await send({"type": "http.response.body", "body": body, "more_body": True})
    except (*UPSTREAM_ERRORS, StreamTooLarge):
        await _send_error(send, fwd)


async def _send_error(send: Send, fwd: Forward, what: str = "is unavailable") -> None:
    body = sse_error(fwd, what)
    await send({"type": "http.response.body", "body": body, "more_body": True})
