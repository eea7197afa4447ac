"""The 2026-07-28 era on stdio: one shared process per server (``SharedLink``).

Requests are stateless and servers never send requests mid-call, so one process serves every
caller; request ids, progress tokens and subscription ids are remapped so answers go back to
the HTTP request that asked, and a caller cancels only its own requests.

A ``subscriptions/listen`` is a request whose answer is a stream: every frame of it (the
acknowledgement first) names the listen's id in ``_meta["io.modelcontextprotocol/
subscriptionId"]``, which routes it, whoever else has a call running; it has no deadline (it
ends when its caller goes away). A message that names no caller's request (no progress token,
no subscription id) is dropped: nobody can tell whose call it is about.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS

from gateway.config import ServerConfig
from gateway.upstream.stdio_child import Child, log
from gateway.upstream.stdio_messages import (
    Deadline,
    cancelled,
    progress_token,
    too_slow,
    unavailable,
)
from gateway.upstream.stdio_wire import Inbox, answer_text, encode, respond
from gateway.wire.asgi import Incoming, Send, reply
from gateway.wire.jsonrpc import (
    FAST_LOADS_BYTES,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PROTOCOL_VERSION_META_KEY,
    UPSTREAM_UNAVAILABLE,
    upstream_failure_status,
)
from gateway.wire.jsonrpc import error_body as rpc_error


class SharedLink:
    """The 2026-07-28 era: one process for every stateless request, ids remapped."""

    def __init__(self, config: ServerConfig) -> None:
        self.child = Child(config, f"{config.name}[shared]", self._from_child, self._awaits)
        self.child.on_exit = self._child_exited
        self.child.on_start = self._discover
        self.ids = itertools.count(1)
        self.waiting: dict[str, tuple[Any, Any, Inbox]] = {}
        self.tokens: dict[str, str] = {}
        self.heard: dict[str, float] = {}
        self.listens: set[str] = set()  # inner ids of subscriptions/listen requests
        self.name = config.name
        self.timeout = config.timeout

    async def handle(self, incoming: Incoming, send: Send, message: dict[str, Any]) -> None:
        if not self.child.ready.is_set() and not await self.child.wait_ready(10.0):
            msg_id = message.get("id")
            status = upstream_failure_status(msg_id, 502)
            await reply(
                send, status, rpc_error(msg_id, UPSTREAM_UNAVAILABLE, "stdio server is not running")
            )
            return
        if message.get("method") in _HANDSHAKE_ONLY:
            # The shared child serves the stateless era: a handshake would switch its one
            # connection to the other era for every caller. The era has no such method.
            if "id" in message:
                error = rpc_error(message["id"], METHOD_NOT_FOUND, "Method not found")
                await reply(send, 404, error)
            else:
                await reply(send, 202, b"")
            return
        if "method" not in message:
            # An answer: the shared child sends no requests to answer (see _from_child), and
            # one caller's answer must not reach a request made for another's call.
            msg = "the 2026-07-28 era has no server requests to answer"
            await reply(send, 400, rpc_error(None, INVALID_REQUEST, msg))
            return
        if "id" not in message:
            await self._notify(message)
            await reply(send, 202, b"")
            return
        await self._call(incoming, send, message)

    async def _call(self, incoming: Incoming, send: Send, message: dict[str, Any]) -> None:
        """A request under an id of ours (its progress token too), answered to its caller."""
        inner = f"c{next(self.ids)}"
        original_id = message["id"]
        outgoing = {**message, "id": inner}
        token = progress_token(message)
        if token is not None:
            params = dict(message["params"])
            params["_meta"] = {**params["_meta"], "progressToken": inner}
            outgoing["params"] = params
            self.tokens[inner] = inner
        inbox = Inbox()
        self.waiting[inner] = (original_id, token, inbox)
        self.heard[inner] = time.monotonic()
        listen = message.get("method") == LISTEN
        if listen:
            self.listens.add(inner)
        clock = None
        if not listen:  # a listen's answer is a stream that lasts as long as its caller
            clock = Deadline(self.timeout, self._last_sign(inner), self._expire(inner))
        answered = False
        try:
            if not await self.child.send(outgoing):
                self._route(inner, unavailable(inner, f"stdio server {self.name!r} is not running"))
            sse = "text/event-stream" in (incoming.header("accept") or "")
            answered = await respond(send, inbox, sse=sse, headers=[], status=_answer_status)
        finally:
            if clock is not None:
                clock.cancel()
            self.listens.discard(inner)
            self.waiting.pop(inner, None)
            self.tokens.pop(inner, None)
            self.heard.pop(inner, None)
            if not answered:
                with anyio.CancelScope(shield=True):
                    await self.child.send(cancelled(inner, "the client went away"))

    async def _discover(self) -> None:
        """A server on stdio takes its connection's era from the first message it reads: a
        caller's malformed first request must not set it for every caller after. So each
        (re)started child first hears a well-formed ``server/discover``; its answer, with an
        id no caller has, is dropped."""
        await self.child.send(
            {
                "jsonrpc": "2.0",
                "id": "celgate-discover",
                "method": "server/discover",
                "params": {
                    "_meta": {
                        PROTOCOL_VERSION_META_KEY: "2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities": {},
                        "io.modelcontextprotocol/clientInfo": {
                            "name": "celgate",
                            "version": "stdio-shared",
                        },
                    }
                },
            }
        )

    async def _notify(self, message: dict[str, Any]) -> None:
        """A client notification (client answers never come here: no requests mid-call).

        ``notifications/cancelled`` names a request id of the sender's own; the ids the child
        knows are ours, and a notification's exchange has no request of its own to map one to.
        So it is dropped: a caller cancels by closing its request's stream (as the 2026 wire
        says), which cancels that request's own inner id (``_call``), never another's. Any
        other notice is dropped too (below).
        """
        method = message.get("method")
        if method == "notifications/cancelled":
            log.debug("stdio.cancel_dropped", server=self.name)
            return
        # One process serves every caller: a caller's notice (roots changed, a progress
        # token of the gateway's own ids) would speak to it for all of them. The 2026-07-28
        # wire gives a client no notice a server needs here; none reaches the child.
        log.debug("stdio.notice_dropped", server=self.name, method=str(method)[:100])

    def _last_sign(self, inner: str) -> Callable[[], float | None]:
        def last_sign() -> float | None:
            heard = self.heard.get(inner)
            return None if heard is None else max(heard, self.child.warm_at)

        return last_sign

    def _expire(self, inner: str) -> Callable[[], Awaitable[None]]:
        async def expire() -> None:
            if inner in self.waiting:
                await self.child.send(cancelled(inner, f"no answer within {self.timeout:g} s"))
            self.heard.pop(inner, None)
            self._route(inner, too_slow(self.name, self.timeout, inner))

        return expire

    def _awaits(self, msg_id: Any) -> bool:
        """Whether an answer with this id is awaited by a caller (as ``_from_child`` keys it)."""
        return msg_id is not None and str(msg_id) in self.waiting

    async def _from_child(self, message: dict[str, Any], line: bytes) -> None:
        if "method" in message and "id" in message:
            # A request to the client: the 2026-07-28 era asks through input_required results,
            # never mid-call, and on a shared process nobody could tell whose call it is for.
            refusal = {"jsonrpc": "2.0", "id": message["id"], "error": _NO_REQUESTS}
            await self.child.send(refusal)
            return
        if "method" not in message:
            key = message.get("id")
        else:
            key = progress_token(message)
            key = key if key is not None else subscription_id(message)
        inner = str(key) if key is not None and str(key) in self.waiting else None
        if inner is None:
            # Untagged (a log line with no progress token, logging being deprecated in this
            # era): on a process every caller shares, nothing says whose call it is about,
            # and a line about one caller's call must never reach another's. Dropped.
            return
        if inner in self.heard:
            self.heard[inner] = time.monotonic()
        self._route(inner, message, line)

    def _route(self, inner: str, message: dict[str, Any], line: bytes = b"") -> None:
        """To the caller of ``inner``, under the caller's own id and progress token; an
        answer's result or error as the child wrote it (``line``), never encoded again."""
        entry = self.waiting.get(inner)
        if entry is None:
            return
        original_id, token, inbox = entry
        final = "method" not in message
        if final:
            message = {**message, "id": original_id}
            # (a long one only: a short one is encoded again, mended as every answer is)
            text = answer_text(line, original_id) if len(line) > FAST_LOADS_BYTES else None
            if text is not None:
                inbox.put((message, text), final)
                return
        elif token is not None and progress_token(message) is not None:
            message = _with_token(message, token)
        elif subscription_id(message) == inner:
            meta = {**message["params"]["_meta"], SUBSCRIPTION_ID_META_KEY: original_id}
            message = {**message, "params": {**message["params"], "_meta": meta}}
        inbox.put(encode(message), final)

    async def _child_exited(self) -> None:
        why = f"stdio server {self.name!r} exited before answering; it is being restarted"
        for inner in list(self.waiting):
            self._route(inner, unavailable(inner, why))


LISTEN = "subscriptions/listen"
_NO_REQUESTS = {
    "code": METHOD_NOT_FOUND,
    "message": "no requests to the client on a shared process",
}
SUBSCRIPTION_ID_META_KEY = "io.modelcontextprotocol/subscriptionId"


def subscription_id(message: dict[str, Any]) -> Any:
    """The listen a server's message belongs to, by its ``_meta``, or None."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get(SUBSCRIPTION_ID_META_KEY) if isinstance(meta, dict) else None


#: Methods of the handshake era only; never sent to the shared (stateless-era) child.
_HANDSHAKE_ONLY = frozenset({"initialize", "notifications/initialized"})


def _answer_status(message: dict[str, Any]) -> int:
    error = message.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return ERROR_CODE_HTTP_STATUS.get(code, 200) if isinstance(code, int) else 200


def _with_token(message: dict[str, Any], token: Any) -> dict[str, Any]:
    params = dict(message["params"])
    if message.get("method") == "notifications/progress":
        params["progressToken"] = token
    else:
        params["_meta"] = {**params["_meta"], "progressToken": token}
    return {**message, "params": params}
