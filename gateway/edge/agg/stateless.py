"""``/mcp`` in the 2026-07-28 era: every request stands alone, so it is routed with no state
held for the caller. Lists and ``server/discover`` are merged from every server (each tools
list through the caller's view, as on the relay); a call, a prompt, a resource read is routed
to its server by prefix or URI and forwarded as the relay forwards (the body rewritten only
when a name changes; the answer streamed back through the caller's view). A ``tools/call`` is
admitted by the one pipeline first, recorded with the server and the tool's real name.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mcp.shared.inbound import encode_header_value

from gateway.edge.agg.names import Collision, Names
from gateway.edge.agg.upcall import UpcallFailed, upcall
from gateway.edge.clientview import ClientView
from gateway.edge.forward import Forward, forward
from gateway.edge.replies import denial
from gateway.edge.routing import check_routing_headers
from gateway.pipeline.admission import admit, timed_upstream
from gateway.pipeline.gateway import Gateway
from gateway.policy import Call, Identity
from gateway.telemetry.audit import log
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Send, reply
from gateway.wire.jsonrpc import BadMessage, Message

#: What each merged list holds, by method.
LISTS = {
    "tools/list": ("tools", "tool"),
    "prompts/list": ("prompts", "prompt"),
    "resources/list": ("resources", None),
    "resources/templates/list": ("resourceTemplates", None),
}
MAX_PAGES = 100  # per server and list: a server that never ends its pages is cut here
MAX_OWNED = 100_000  # resource URIs remembered for routing


class Stateless:
    """The 2026-07-28 face of ``/mcp``."""

    def __init__(self, gw: Gateway, names: Names) -> None:
        self.gw = gw
        self.names = names
        self.resource_owner: dict[str, str] = {}

    async def post(
        self, incoming: Incoming, send: Send, identity: Identity, body: bytes, value: Any
    ) -> None:
        try:
            message = rpc.classify(value, self.gw.config.relay_extra_methods)
        except BadMessage as exc:
            if exc.code == rpc.METHOD_NOT_FOUND:
                exc.status = 404
            raise
        if message.kind != "request":
            await reply(send, 202, b"")  # cancellation is closing the stream in this era
            return
        check_routing_headers(incoming, message)  # names as on /mcp
        version = _version(incoming, message)
        method = message.method
        assert method is not None
        if method == "server/discover":
            await self._discover(send, message, version)
        elif method == "ping":
            await reply(send, 200, rpc.result_body(message.msg_id, {"resultType": "complete"}))
        elif method in LISTS:
            await self._list(send, message, version, identity)
        elif method in ("tools/call", "prompts/get"):
            await self._named(incoming, send, message, identity, version, body)
        elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            await self._by_uri(incoming, send, message, identity, version, body)
        else:
            msg = f"{method} is not served on /mcp; use /mcp/<server>"
            raise BadMessage(rpc.METHOD_NOT_FOUND, msg, status=404, msg_id=message.msg_id)

    # ------------------------------------------------------------------ merged answers

    async def _each(
        self, method: str, params: dict[str, Any], version: str, meta: Any
    ) -> dict[str, dict[str, Any]]:
        """Every server's answer to one request (servers that fail are left out, logged)."""
        names = list(self.gw.upstreams)
        jobs = [upcall(self.gw.upstreams[n], method, params, version, meta) for n in names]
        out: dict[str, dict[str, Any]] = {}
        for name, answer in zip(
            names, await asyncio.gather(*jobs, return_exceptions=True), strict=True
        ):
            if isinstance(answer, UpcallFailed):
                log.warning("aggregate.upstream_failed", server=name, method=method)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                out[name] = answer
        return out

    async def _discover(self, send: Send, message: Message, version: str) -> None:
        answers = await self._each("server/discover", {}, version, message.params.get("_meta"))
        results = {n: a["result"] for n, a in answers.items() if isinstance(a.get("result"), dict)}
        if not results:
            await self._no_answer(send, message, answers)
            return
        body = rpc.result_body(message.msg_id, merge_discover(results))
        await reply(send, 200, body)

    async def _no_answer(
        self, send: Send, message: Message, answers: dict[str, dict[str, Any]]
    ) -> None:
        """No server answered with a result: the first one's error (an unsupported version
        names the versions there are), or 502 when none answered at all."""
        for answer in answers.values():
            if isinstance(answer.get("error"), dict):
                error = answer["error"]
                payload = {"jsonrpc": "2.0", "id": message.msg_id, "error": error}
                status = 400 if error.get("code") == rpc.INVALID_PARAMS else 200
                await reply(send, status, json.dumps(payload).encode())
                return
        msg = "no server behind /mcp answered"
        await reply(send, 502, rpc.error_body(message.msg_id, rpc.UPSTREAM_UNAVAILABLE, msg))

    async def _list(self, send: Send, message: Message, version: str, identity: Identity) -> None:
        method = message.method
        assert method is not None
        key, kind = LISTS[method]
        pages = await asyncio.gather(
            *(
                self._pages(name, method, key, version, message.params.get("_meta"))
                for name in self.gw.upstreams
            )
        )
        items: list[dict[str, Any]] = []
        pairs: list[tuple[str, str]] = []
        for name, listed in zip(self.gw.upstreams, pages, strict=True):
            if kind == "tool":
                shown = ClientView(self.gw, name, identity).filter({"result": {"tools": listed}})
                listed = shown["result"]["tools"] if shown is not None else listed
            for item in listed:
                items.append(self._renamed(name, item, kind, pairs))
        if kind is not None:
            try:
                self.names.learn(kind, pairs)
            except Collision as exc:
                log.error("aggregate.name_collision", detail=str(exc))
                await reply(send, 200, rpc.error_body(message.msg_id, rpc.INTERNAL_ERROR, str(exc)))
                return
        result = {key: items, "resultType": "complete", "cacheScope": "private", "ttlMs": 0}
        await reply(send, 200, rpc.result_body(message.msg_id, result))

    def _renamed(
        self, server: str, item: dict[str, Any], kind: str | None, pairs: list[tuple[str, str]]
    ) -> dict[str, Any]:
        if kind is None:
            uri = item.get("uri")
            if isinstance(uri, str) and len(self.resource_owner) < MAX_OWNED:
                self.resource_owner.setdefault(uri, server)
            return item
        outward = self.names.outward(server, str(item.get("name", "")))
        pairs.append((server, outward))
        return {**item, "name": outward}

    async def _pages(
        self, server: str, method: str, key: str, version: str, meta: Any
    ) -> list[Any]:
        """Every page of one server's list (the merged list is one page)."""
        items: list[Any] = []
        params: dict[str, Any] = {}
        for _ in range(MAX_PAGES):
            try:
                answer = await upcall(self.gw.upstreams[server], method, params, version, meta)
            except UpcallFailed:
                log.warning("aggregate.upstream_failed", server=server, method=method)
                break
            result = answer.get("result")
            if not isinstance(result, dict) or not isinstance(result.get(key), list):
                break
            items.extend(i for i in result[key] if isinstance(i, dict))
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
            params = {"cursor": cursor}
        return items

    # ------------------------------------------------------------------ routed requests

    async def _named(
        self,
        incoming: Incoming,
        send: Send,
        message: Message,
        identity: Identity,
        version: str,
        body: bytes,
    ) -> None:
        name = message.params.get("name")
        kind = "tool" if message.method == "tools/call" else "prompt"
        parts = self.names.inward(kind, name) if isinstance(name, str) else None
        if parts is None or parts[0] not in self.gw.upstreams:
            if kind == "tool":  # as the handshake era answers it: a tool error the model reads
                text = f"no tool named {name!r} on /mcp"
                result = {"content": [{"type": "text", "text": text}], "isError": True}
                result["resultType"] = "complete"
                await reply(send, 200, rpc.result_body(message.msg_id, result))
                return
            raise BadMessage(rpc.INVALID_PARAMS, f"unknown prompt {name!r}", 200, message.msg_id)
        server, real = parts
        fwd = self._forward_to(incoming, server, message, identity, {"name": real}, body)
        if kind == "prompt":
            await forward(incoming, send, fwd)
            return
        call = _call(message, server, real, identity, incoming, self.gw)
        admission = await admit(self.gw, call)
        if not admission.allowed:
            body = denial(message.msg_id, admission.decision, admission.decision_id, version)
            await reply(send, 200, body)
            return
        async with timed_upstream(self.gw, call):
            await forward(incoming, send, fwd)

    async def _by_uri(
        self,
        incoming: Incoming,
        send: Send,
        message: Message,
        identity: Identity,
        version: str,
        body: bytes,
    ) -> None:
        uri = message.params.get("uri")
        if not isinstance(uri, str):
            raise BadMessage(rpc.INVALID_PARAMS, "a resource needs a uri", 200, message.msg_id)
        server = self.resource_owner.get(uri)
        if server is None:
            await self._pages_everywhere("resources/list", version, message.params.get("_meta"))
            server = self.resource_owner.get(uri) or next(iter(self.gw.upstreams))
        await forward(
            incoming, send, self._forward_to(incoming, server, message, identity, {}, body)
        )

    async def _pages_everywhere(self, method: str, version: str, meta: Any) -> None:
        key, _ = LISTS[method]
        lists = await asyncio.gather(
            *(self._pages(n, method, key, version, meta) for n in self.gw.upstreams)
        )
        for name, listed in zip(self.gw.upstreams, lists, strict=True):
            for item in listed:
                self._renamed(name, item, None, [])

    def _forward_to(
        self,
        incoming: Incoming,
        server: str,
        message: Message,
        identity: Identity,
        changed: dict[str, Any],
        original: bytes,
    ) -> Forward:
        """The request as ``server`` is to see it: renamed (body and ``Mcp-Name``) if needed."""
        upstream = self.gw.upstreams[server]
        if any(message.params.get(k) != v for k, v in changed.items()):
            value = {**message.raw, "params": {**message.params, **changed}}
            body = json.dumps(value, ensure_ascii=False).encode()
            if "mcp-name" in incoming.headers and "name" in changed:
                incoming.headers["mcp-name"] = encode_header_value(changed["name"])
        else:
            body = original  # untouched: forwarded byte for byte
        view = ClientView(self.gw, server, identity)
        return Forward(upstream, None, body, message.msg_id, view)


def _version(incoming: Incoming, message: Message) -> str:
    meta = message.params.get("_meta")
    stated = meta.get(rpc.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    if isinstance(stated, str):
        return stated
    return incoming.header("mcp-protocol-version") or "2026-07-28"


def _call(
    message: Message, server: str, tool: str, identity: Identity, incoming: Incoming, gw: Gateway
) -> Call:
    args: Any = message.params.get("arguments", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadMessage(rpc.INVALID_PARAMS, "arguments must be an object", 200, message.msg_id)
    return Call(
        tool=tool,
        args=args,
        server=server,
        identity=identity,
        client_ip=incoming.client_ip,
        info=gw.tool_info(server, tool),
    )


def merge_discover(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One ``server/discover`` result for every server: capabilities joined, instructions
    each under its server's name, the versions every server supports."""
    capabilities: dict[str, Any] = {}
    for result in results.values():
        for key, value in (result.get("capabilities") or {}).items():
            if isinstance(value, dict) and isinstance(capabilities.get(key), dict):
                merged = dict(capabilities[key])
                for k, v in value.items():
                    merged[k] = (merged.get(k) is True or v is True) if isinstance(v, bool) else v
                capabilities[key] = merged
            else:
                capabilities.setdefault(key, value)
    versions: list[str] | None = None
    for result in results.values():
        theirs = [v for v in result.get("supportedVersions") or [] if isinstance(v, str)]
        versions = theirs if versions is None else [v for v in versions if v in theirs]
    notes = [f"{n}: {r['instructions']}" for n, r in results.items() if r.get("instructions")]
    out: dict[str, Any] = {
        "capabilities": capabilities,
        "supportedVersions": versions or [],
        "resultType": "complete",
        "cacheScope": "private",
        "ttlMs": min(int(r.get("ttlMs") or 0) for r in results.values()),
        "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "celgate", "version": "1"}},
    }
    if notes:
        out["instructions"] = "\n\n".join(notes)
    return out
