"""``/mcp`` in the 2026-07-28 era: every request stands alone, so it is routed with no state
held for the caller. Lists and ``server/discover`` are merged from every server (each tools
list through the caller's view, as on the relay; one page from each server per page of ours);
a call, a prompt, a resource read, a completion is routed to its server by name or URI and
forwarded as the relay forwards (the body rewritten only when a name changes; the answer
streamed back through the caller's view). A ``tools/call`` is admitted by the one pipeline
first, recorded with the server and the tool's real name.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Mapping
from typing import Any

from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
)

from gateway.edge.agg.gate import Gate
from gateway.edge.agg.links import FAILING_FIRST, FAILING_MOST
from gateway.edge.agg.listen import listen
from gateway.edge.agg.merge import (
    LISTS,
    Catalogue,
    decode_cursor,
    merge_discover,
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
from gateway.edge.agg.upcall import UpcallDown, UpcallFailed, UpcallRefused, told_error, upcall
from gateway.edge.agg.view import RoutedView
from gateway.edge.calls import call_through, tool_call
from gateway.edge.forward import forward
from gateway.edge.replies import denial, is_task_call
from gateway.edge.routing import check_routing_headers
from gateway.pipeline.gateway import Gateway
from gateway.policy import Identity
from gateway.telemetry.audit import log
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Send, reply
from gateway.wire.jsonrpc import BadMessage, Message

#: Handshake-era methods the 2026-07-28 revision removed (``subscriptions/listen`` took over).
REMOVED = frozenset({"resources/subscribe", "resources/unsubscribe"})
# (``ping``, ``initialize`` and ``logging/setLevel`` are gone too: answered 404 below.)


#: A server whose ``tools/list`` in this era failed (it speaks the handshake era only) is
#: left out of routed requests this long before it is asked again.
UNSPOKEN_SECONDS = 60.0
#: The envelope the gateway asks that with: no client's.
PROBE_META = {
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "celgate", "version": "probe"},
}


class Stateless:
    """The 2026-07-28 face of ``/mcp``."""

    def __init__(self, gw: Gateway, names: Names, catalogue: Catalogue) -> None:
        self.gw = gw
        #: Each server's last ``tools/list`` in this era: whether it gave a result, when.
        self.speaks: dict[str, tuple[bool, float]] = {}
        #: Servers met down (unreachable, or no answer in their timeout): left out of merged
        #: answers until a reading in the background gets one, as the handshake era's links
        #: do (``Links.failing``). A hung server made every 2026-07-28 list and discover, of
        #: every agent, wait its whole timeout (red-team wave 60).
        self.failing: dict[str, Gate] = {}
        self.names = names
        self.catalogue = catalogue

    async def post(
        self, incoming: Incoming, send: Send, identity: Identity, body: bytes, value: Any
    ) -> None:
        try:
            message = rpc.classify(value, self.gw.config.relay.extra_methods)
        except BadMessage as exc:
            if exc.code == rpc.METHOD_NOT_FOUND:
                exc.status = 404
            raise
        incoming.msg_id = rpc.echo_id(message.msg_id) if message.is_request else None
        if message.kind != "request":
            await reply(send, 202, b"")  # cancellation is closing the stream in this era
            return
        check_routing_headers(incoming, message)  # names as on /mcp
        if incoming.header("mcp-method") is None:  # what the relay leaves to the server
            msg = "Mcp-Method header is required"
            raise BadMessage(rpc.HEADER_MISMATCH, msg, status=400, msg_id=message.msg_id)
        # What the relay leaves to the server, checked here as the SDK's transport does (the
        # envelope, the routing headers, the version): /mcp answers much of this era itself.
        verdict = classify_inbound_request(dict(message.raw), headers=incoming.headers)
        if isinstance(verdict, InboundLadderRejection):
            error = {"code": verdict.code, "message": verdict.message}
            if verdict.data is not None:
                error["data"] = verdict.data
            body = json.dumps({"jsonrpc": "2.0", "id": message.msg_id, "error": error}).encode()
            await reply(send, ERROR_CODE_HTTP_STATUS.get(verdict.code, 400), body)
            return
        version = _version(incoming, message)
        method = message.method
        assert method is not None
        if method == "server/discover":
            await self._discover(send, message, version)
        elif method in LISTS:
            await self._list(send, message, version, identity)
        elif method == "subscriptions/listen":
            skipped = {n for n in self.gw.upstreams if self._skipped(n, version)}
            await listen(
                self.gw, self.catalogue, incoming, send, message, identity, skipped, self._down
            )
        elif method in ROUTED and method not in REMOVED:
            await self._routed(incoming, send, message, identity, version, body)
        else:
            msg = f"{method} is not served on /mcp; use /mcp/<server>"
            raise BadMessage(rpc.METHOD_NOT_FOUND, msg, status=404, msg_id=message.msg_id)

    # ------------------------------------------------------------------ merged answers

    async def _each(
        self, method: str, each: dict[str, dict[str, Any]], version: str, meta: Any
    ) -> dict[str, dict[str, Any]]:
        """Each named server's answer to ``method`` with its params (servers that fail are
        left out, logged)."""
        names = [n for n in each if not self._skipped(n, version)]
        upstreams = self.gw.upstreams
        jobs = [upcall(upstreams[n], method, each[n], version, meta) for n in names]
        out: dict[str, dict[str, Any]] = {}
        for name, answer in zip(
            names, await asyncio.gather(*jobs, return_exceptions=True), strict=True
        ):
            if isinstance(answer, UpcallDown):
                self._down(name)
            if isinstance(answer, UpcallFailed):
                log.warning("aggregate.upstream_failed", server=name, method=method)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                out[name] = answer
        return out

    def _skipped(self, server: str, version: str) -> bool:
        """Whether ``server`` is left out for now (met down); a reading in the background
        asks it again when due."""
        gate = self.failing.get(server)
        if gate is None:
            return False
        gate.start(lambda: self._answers(server, version))
        return True

    def _down(self, server: str) -> None:
        if server not in self.failing:
            gate = self.failing[server] = Gate(FAILING_FIRST, FAILING_MOST)
            gate.last = gate.clock()  # the first reading in FAILING_FIRST seconds

    async def _answers(self, server: str, version: str) -> bool:
        """Whether ``server`` answers now (with the gateway's own envelope); then it is no
        longer left out."""
        try:
            await upcall(self.gw.upstreams[server], "tools/list", {}, version, PROBE_META)
        except UpcallDown:
            return False
        except UpcallFailed:
            pass  # it answered, if not with a list: it is up
        self.failing.pop(server, None)
        return True

    async def _discover(self, send: Send, message: Message, version: str) -> None:
        every: dict[str, dict[str, Any]] = {n: {} for n in self.gw.upstreams}
        answers = await self._each("server/discover", every, version, message.params.get("_meta"))
        results = {n: a["result"] for n, a in answers.items() if isinstance(a.get("result"), dict)}
        if not results:
            await self._no_answer(send, message, answers)
            return
        body = rpc.result_body(message.msg_id, merge_discover(results))
        await reply(send, 200, body)

    def _heard(self, server: str, answer: Mapping[str, Any]) -> None:
        """A caller's merged list proves a server speaks this era when it gives a result;
        its failure proves nothing: the caller's own ``_meta`` (capabilities that are no
        object, say) made every server refuse, and one agent's bad envelope left every
        server unrouted for every agent (red-team wave 53)."""
        if isinstance(answer.get("result"), dict):
            self.speaks[server] = (True, time.monotonic())

    async def _speaks_era(self, server: str, version: str) -> bool:
        """Whether ``server`` speaks this era as the merged lists find it: its ``tools/list``
        gives a result (asked once, and again ``UNSPOKEN_SECONDS`` after a failure). One that
        speaks 2025-11-25 only was left out of the lists but still called: a call decided
        and logged as allowed, or held for an approval, that its server could only refuse
        (red-team wave 52)."""
        known = self.speaks.get(server)
        if known is not None and (known[0] or time.monotonic() - known[1] < UNSPOKEN_SECONDS):
            return known[0]
        # Asked with the gateway's own envelope, never the caller's: what is remembered for
        # every agent must not be what one caller's parameters made the server answer.
        try:
            answer = await upcall(self.gw.upstreams[server], "tools/list", {}, version, PROBE_META)
        except (UpcallDown, UpcallRefused):
            return True  # down or full for now: the request goes on, and is told so itself
        except UpcallFailed:
            answer = {}  # no answer it could give in this era
        speaks = isinstance(answer.get("result"), dict)
        self.speaks[server] = (speaks, time.monotonic())
        return speaks

    async def _no_answer(
        self, send: Send, message: Message, answers: dict[str, dict[str, Any]]
    ) -> None:
        """No server answered with a result: the first one's error (an unsupported version
        names the versions there are), or 502 when none answered at all."""
        for answer in answers.values():
            if isinstance(answer.get("error"), dict):
                error = told_error(answer["error"], "the server refused the request")
                payload = {"jsonrpc": "2.0", "id": message.msg_id, "error": error}
                status = 400 if error["code"] == rpc.INVALID_PARAMS else 200
                await reply(send, status, json.dumps(payload).encode())
                return
        await none_answered(send, message)

    async def _list(self, send: Send, message: Message, version: str, identity: Identity) -> None:
        method = message.method
        assert method is not None
        gw = self.gw
        cursor = message.params.get("cursor")
        positions = decode_cursor(
            cursor, gw.upstreams, message.msg_id, gw.signer, method, identity.owner
        )
        each = {s: ({"cursor": c} if c else {}) for s, c in positions.items()}
        answers = await self._each(method, each, version, message.params.get("_meta"))
        if method == "tools/list":
            for name, answer in answers.items():
                self._heard(name, answer)
        results = {n: a["result"] for n, a in answers.items() if isinstance(a.get("result"), dict)}
        if method == "tools/list" and each and not results:
            await none_answered(send, message)
            return
        page = self.catalogue.page(method, identity, results)
        result = {**page, "resultType": "complete", "cacheScope": "private", "ttlMs": 0}
        await reply(send, 200, rpc.result_body(message.msg_id, result))

    # ------------------------------------------------------------------ routed requests

    async def _routed(
        self,
        incoming: Incoming,
        send: Send,
        message: Message,
        identity: Identity,
        version: str,
        body: bytes,
    ) -> None:
        msg_id = message.msg_id
        servers = len(self.gw.upstreams)
        server, changed = target(self.names, self.catalogue, servers, message)
        uri = named_uri(message) if server is None and by_uri(message) else None
        if uri is not None:
            meta = message.params.get("_meta")
            learn = functools.partial(self._learn_resources, identity, version, meta)
            await self.catalogue.relearn(uri, learn)
            server, changed = target(self.names, self.catalogue, servers, message)
        if (
            server is not None
            and server in self.gw.upstreams
            and not await self._speaks_era(server, version)
        ):
            log.warning("aggregate.upstream_failed", server=server, method=message.method)
            server = None  # left out of this era's lists: no name of it routes either
        if server is None or server not in self.gw.upstreams:
            if message.method == "tools/call":  # as the handshake era: a tool error to read
                nowhere = unrouted(self.gw, incoming, message, identity, None)
                task = is_task_call(message.params)  # as a routed one: -32003
                body = denial(msg_id, nowhere.decision, nowhere.decision_id, version, task)
                await reply(send, 200, body)  # a tool error, its decision in _meta
                return
            raise unknown(message)
        view = RoutedView(self.gw, server, identity, self.catalogue)
        view.creates = message.method == "tools/call"  # its answer may make a task
        view.modern = version in rpc.MODERN_VERSIONS
        view.cacheable = message.method in rpc.CACHEABLE_METHODS
        view.for_request(message.msg_id, message.params, message.method)
        fwd = routed(self.gw, incoming, server, message, changed, body, view)
        if message.method != "tools/call":
            await forward(incoming, send, fwd)
            return
        call = tool_call(self.gw, incoming, message, server, changed["name"], identity)
        await call_through(
            self.gw, incoming, send, message, call, fwd, identity, version, where="/mcp"
        )

    async def _learn_resources(self, identity: Identity, version: str, meta: Any) -> None:
        for method in ("resources/list", "resources/templates/list"):
            answers = await self._each(method, {s: {} for s in self.gw.upstreams}, version, meta)
            results = {
                n: a["result"] for n, a in answers.items() if isinstance(a.get("result"), dict)
            }
            self.catalogue.page(method, identity, results)


def _version(incoming: Incoming, message: Message) -> str:
    meta = message.params.get("_meta")
    stated = meta.get(rpc.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    if isinstance(stated, str):
        return stated
    return incoming.header("mcp-protocol-version") or "2026-07-28"
