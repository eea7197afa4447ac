"""``/mcp``: one MCP endpoint over every configured server (this path terminates sessions).

The gateway is an MCP server to the client (the SDK's low-level ``Server`` and
``StreamableHTTPSessionManager``) and, per client session, an MCP client to each upstream
(a stdio upstream's bridge therefore gives every aggregate session its own process). Tools and
prompts are named ``server<sep>name``; resources keep their URIs and are routed by the server
that listed them. A server-to-client request (elicitation, sampling, roots) from an upstream
goes to the client session whose link it came on, on the stream of its latest call in flight.

Policy applies here as on the relay: every ``tools/call`` is decided, limited and recorded,
and ``tools/list`` is filtered to what the caller could be allowed. The handshake era only:
a 2026-07-28 ``server/discover`` is refused with an error, so ``mode="auto"`` clients fall
back to ``initialize`` (docs/stdio-and-aggregate.md says why).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import anyio
import mcp_types as types
import structlog
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request

from gateway.auth.identity import refusal_answer
from gateway.auth.tokens import Refusal
from gateway.edge.agg.names import Names
from gateway.edge.agg.stateless import Stateless
from gateway.edge.replies import DECISION_KEY, decision_payload, denial_text, error_reply
from gateway.edge.routing import stateless_era
from gateway.pipeline.admission import admit, timed_upstream
from gateway.pipeline.gateway import Gateway
from gateway.policy import Call, Identity
from gateway.policy.visibility import visible
from gateway.wire import jsonrpc as rpc
from gateway.wire.asgi import Incoming, Receive, Scope, Send, reply
from gateway.wire.jsonrpc import BadMessage

log = structlog.get_logger("celgate.aggregate")

IDENTITY_KEY = "celgate.identity"
AGGREGATE_KEY = "/mcp"  # the "server" aggregate session ids are signed for (no server has "/")
Ctx = ServerRequestContext[Any, Any]
T = TypeVar("T")


def _text_result(text: str, decision: dict[str, Any] | None = None) -> types.CallToolResult:
    """An error result; the decision for programs goes in ``_meta`` (see edge.replies)."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        _meta={DECISION_KEY: decision} if decision is not None else None,
    )


def _http(ctx: Ctx) -> Request:
    """The HTTP request a handler serves (the aggregate is only served over HTTP)."""
    assert isinstance(ctx.request, Request)
    return ctx.request


class Link:
    """One client session's connections to every upstream, opened and closed in one task."""

    def __init__(self, agg: Aggregate, key: str, grant: str) -> None:
        self.agg = agg
        self.key = key
        self.grant = grant
        self.clients: dict[str, Client] = {}
        self.calls: dict[Any, Ctx] = {}  # the client's requests in flight, oldest first
        self.closed = anyio.Event()
        self.last_used = time.monotonic()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with AsyncExitStack() as stack:
                for name, upstream in self.agg.gw.upstreams.items():
                    http = upstream.sdk_client()  # a stdio bridge: in process, no socket
                    client = Client(
                        streamable_http_client(upstream.url, http_client=http),
                        mode="legacy",
                        cache=None,
                        elicitation_callback=self._elicit,
                        sampling_callback=self._sample,
                        list_roots_callback=self._roots,
                    )
                    try:
                        self.clients[name] = await stack.enter_async_context(client)
                    except Exception as exc:  # one server down must not take the others
                        log.warning(
                            "aggregate.upstream_down", server=name, error=type(exc).__name__
                        )
                task_status.started()
                await self.closed.wait()
        finally:
            self.agg.links.pop(self.key, None)

    def _current(self) -> Ctx | None:
        return next(reversed(self.calls.values()), None)

    async def _ask(self, request: Any, result_type: Any) -> Any:
        ctx = self._current()
        if ctx is None:
            return types.ErrorData(code=rpc.INVALID_REQUEST, message="no call in flight to ask for")
        meta = ServerMessageMetadata(related_request_id=ctx.request_id)
        try:
            return await ctx.session.send_request(request, result_type, metadata=meta)
        except MCPError as exc:
            return exc.error

    async def _elicit(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        answer: types.ElicitResult | types.ErrorData
        answer = await self._ask(types.ElicitRequest(params=params), types.ElicitResult)
        return answer

    async def _sample(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.ErrorData:
        request = types.CreateMessageRequest(params=params)
        answer: types.CreateMessageResult | types.ErrorData
        answer = await self._ask(request, types.CreateMessageResult)
        return answer

    async def _roots(
        self, context: ClientRequestContext
    ) -> types.ListRootsResult | types.ErrorData:
        answer: types.ListRootsResult | types.ErrorData
        answer = await self._ask(types.ListRootsRequest(), types.ListRootsResult)
        return answer


LINK_IDLE_SECONDS = 600.0  # as the SDK's session idle timeout below
LINK_REAP_SECONDS = 30.0


class Aggregate:
    """The aggregated endpoint: authentication, guard and era check, then the SDK server."""

    def __init__(self, gw: Gateway) -> None:
        # httpx2 logs every upstream request at INFO; the decision record is the log.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        self.gw = gw
        self.sep = gw.config.aggregate_separator
        self.links: dict[str, Link] = {}
        self.resource_owner: dict[str, str] = {}
        prefixes = {n: gw.config.servers[n].name_prefix for n in gw.upstreams}
        self.names = Names(prefixes, self.sep)
        self.stateless = Stateless(gw, self.names)
        self._tg: TaskGroup | None = None
        self.server: Server[Any] = Server(
            "celgate",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_templates,
            on_read_resource=self._read_resource,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
        )
        config = gw.config
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            session_idle_timeout=config.aggregate_idle_timeout,
            max_sessions=config.aggregate_max_sessions,
        )
        self.grant_of: dict[str, str] = {}  # live handshake-era session id -> its grant

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run(), anyio.create_task_group() as tg:
            self._tg = tg
            async with anyio.create_task_group() as reaper:
                reaper.start_soon(self._reap_idle)
                try:
                    yield
                finally:
                    reaper.cancel_scope.cancel()
                    for link in list(self.links.values()):
                        link.closed.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._handle(scope, receive, send)
        except BadMessage as exc:
            await reply(send, *error_reply(exc))

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = Incoming(scope, receive)
        guard = self.gw.guard
        if not guard.host_ok(incoming.header("host")):
            raise BadMessage(rpc.INVALID_REQUEST, "Host not allowed", status=421)
        if not guard.origin_ok(incoming.header("origin")):
            raise BadMessage(rpc.INVALID_REQUEST, "Origin not allowed", status=403)
        identity = await self.gw.auth.resolve(incoming.header("authorization"), "/mcp")
        if isinstance(identity, Refusal):
            status, message, challenge = refusal_answer(identity)
            body = rpc.error_body(None, rpc.INVALID_REQUEST, message)
            await reply(send, status, body, extra=challenge)
            return
        replayed = await self._modern_or_replay(incoming, send, identity)
        if replayed is None:
            return  # a 2026-07-28 request, answered without any session
        # Session ids are bound to the grant that created them, from the answer that creates
        # them on (signed like the relay's): another grant holding an id has nothing.
        presented = incoming.header("mcp-session-id")
        sid = None
        if presented is not None:
            sid = self.gw.signer.unwrap(AGGREGATE_KEY, identity.grant, presented)
            if sid is None or incoming.count("mcp-session-id") > 1:
                raise BadMessage(rpc.SESSION_NOT_FOUND, "Session not found", status=404)
            scope["headers"] = [
                (k, sid.encode() if k.lower() == b"mcp-session-id" else v)
                for k, v in scope["headers"]
            ]
        if sid is None and incoming.method == "POST":
            self._check_caps(identity.grant)
        link = self.links.get(sid) if sid else None
        if link is not None and link.grant != identity.grant:
            raise BadMessage(rpc.SESSION_NOT_FOUND, "Session not found", status=404)
        if sid and incoming.method == "DELETE" and link is not None:
            link.closed.set()
        scope[IDENTITY_KEY] = identity
        scope["path"], scope["raw_path"] = "/", b"/"
        signer, grant = self.gw.signer, identity.grant

        async def signed_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                for k, v in message.get("headers", []):
                    if k.lower() == b"mcp-session-id":
                        self.grant_of.setdefault(v.decode(), grant)
                message["headers"] = [
                    (k, signer.wrap(AGGREGATE_KEY, grant, v.decode()).encode())
                    if k.lower() == b"mcp-session-id"
                    else (k, v)
                    for k, v in message.get("headers", [])
                ]
            await send(message)

        await self.manager.handle_request(scope, replayed, signed_send)

    def _check_caps(self, grant: str) -> None:
        """A new session only within ``aggregate.max_sessions_per_grant`` and ``max_sessions``
        (sessions the SDK has ended, by DELETE or idle timeout, are forgotten here first)."""
        live = self.manager._server_instances  # the SDK's own table of live sessions
        for sid in [s for s in self.grant_of if s not in live]:
            del self.grant_of[sid]
        config = self.gw.config
        if len(self.grant_of) >= config.aggregate_max_sessions:
            cap = config.aggregate_max_sessions
            msg = f"/mcp holds {cap} sessions (aggregate.max_sessions): close one first"
            raise BadMessage(rpc.INVALID_REQUEST, msg, status=429)
        held = sum(1 for g in self.grant_of.values() if g == grant)
        cap = config.aggregate_max_sessions_per_grant
        if held >= cap:
            msg = (
                f"grant {grant!r} holds {cap} sessions on /mcp "
                f"(aggregate.max_sessions_per_grant): close one (DELETE) first"
            )
            raise BadMessage(rpc.INVALID_REQUEST, msg, status=429)

    async def _modern_or_replay(
        self, incoming: Incoming, send: Send, identity: Identity
    ) -> Receive | None:
        """Serve a 2026-07-28 request here (None); or the ``receive`` the SDK's server is to
        read a handshake-era request from (the body, read once, handed back)."""
        version = incoming.header("mcp-protocol-version")
        modern = version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS
        if incoming.method != "POST":
            if modern:
                raise BadMessage(rpc.INVALID_REQUEST, "method not allowed", status=405)
            return incoming.receive
        content_type = (incoming.header("content-type") or "").split(";")[0].strip().lower()
        body = await incoming.body(self.gw.config.security.max_body_bytes)
        if body is None:
            raise BadMessage(rpc.INVALID_REQUEST, "request body too large", status=413)
        if content_type == "application/json":
            value = rpc.parse_body(body)
            if stateless_era(incoming, value):
                await self.stateless.post(incoming, send, identity, body, value)
                return None
        return _replay(body, incoming.receive)

    async def _reap_idle(self) -> None:
        """Close the upstream links of sessions a client abandoned (no DELETE, no calls): each
        holds a session, and a process, on every stdio upstream."""
        while True:
            await anyio.sleep(LINK_REAP_SECONDS)
            horizon = time.monotonic() - LINK_IDLE_SECONDS
            for key, link in list(self.links.items()):
                if link.last_used < horizon and not link.calls:
                    link.closed.set()
                    self.links.pop(key, None)

    # ------------------------------------------------------------------ links and names

    async def _link(self, ctx: Ctx) -> tuple[Link, Identity]:
        request = _http(ctx)
        identity: Identity = request.scope[IDENTITY_KEY]
        key = request.headers.get("mcp-session-id") or ""
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = Link(self, key, identity.grant)
            assert self._tg is not None
            await self._tg.start(link.run)
        link.last_used = time.monotonic()
        return link, identity

    def split(self, name: str, kind: str = "tool") -> tuple[str, str] | None:
        """``<prefix><sep>name`` back into (server, name) (gateway.edge.agg.names)."""
        return self.names.inward(kind, name)

    async def _each(self, link: Link, fetch: Callable[[str, Client], Awaitable[T]]) -> dict[str, T]:
        out: dict[str, T] = {}

        async def one(name: str, client: Client) -> None:
            try:
                out[name] = await fetch(name, client)
            except (MCPError, OSError) as exc:
                log.warning("aggregate.list_failed", server=name, error=type(exc).__name__)

        async with anyio.create_task_group() as tg:
            for name, client in link.clients.items():
                tg.start_soon(one, name, client)
        return {name: out[name] for name in link.clients if name in out}

    # ------------------------------------------------------------------ tools

    async def _list_tools(
        self, ctx: Ctx, _: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        link, identity = await self._link(ctx)
        lists = await self._each(link, lambda _, c: c.list_tools())
        policy, now = self.gw.policy, self.gw.now()
        tools: list[types.Tool] = []
        for server, listed in lists.items():
            for tool in listed.tools:
                raw = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
                info, _pin = self.gw.observe(server, raw)
                call = Call(tool=tool.name, server=server, identity=identity, info=info)
                if visible(policy, call, now):
                    outward = self.names.outward(server, tool.name)
                    tools.append(tool.model_copy(update={"name": outward}))
        return types.ListToolsResult(tools=tools)

    async def _call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> Any:
        link, identity = await self._link(ctx)
        parts = self.split(params.name)
        if parts is None or parts[0] not in link.clients:
            return _text_result(f"no tool named {params.name!r} on the aggregated endpoint")
        server, tool = parts
        request = _http(ctx)
        call = Call(
            tool=tool,
            server=server,
            args=dict(params.arguments or {}),
            identity=identity,
            session=request.headers.get("mcp-session-id"),
            client_ip=request.client.host if request.client else None,
            info=self.gw.tool_info(server, tool),
        )
        # Approvals as on the relay: ``retry`` answers at once; ``wait`` holds the call (the
        # SDK's server keeps the stream open; there is no keep-alive on this path).
        admission = await admit(self.gw, call)
        if not admission.allowed:
            payload = decision_payload(admission.decision, admission.decision_id)
            return _text_result(denial_text(admission.decision), payload)
        async with timed_upstream(self.gw, call):
            return await self._forward_call(ctx, link, server, tool, params.arguments)

    async def _forward_call(
        self, ctx: Ctx, link: Link, server: str, tool: str, arguments: dict[str, Any] | None
    ) -> Any:
        token = ctx.meta.get("progress_token") if ctx.meta else None

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            if token is not None:
                rid = str(ctx.request_id)
                await ctx.session.send_progress_notification(token, progress, total, message, rid)

        link.calls[ctx.request_id] = ctx
        try:
            return await link.clients[server].call_tool(
                tool, arguments, progress_callback=progress if token is not None else None
            )
        except MCPError as exc:
            return _text_result(f"upstream {server!r}: {exc.error.message}")
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return _text_result(f"upstream {server!r} is unavailable")
        finally:
            link.calls.pop(ctx.request_id, None)

    # ------------------------------------------------------------------ resources, prompts

    async def _list_resources(
        self, ctx: Ctx, _: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        link, _identity = await self._link(ctx)
        lists = await self._each(link, lambda _, c: c.list_resources())
        resources = []
        for server, listed in lists.items():
            for resource in listed.resources:
                self.resource_owner.setdefault(str(resource.uri), server)
                resources.append(resource)
        return types.ListResourcesResult(resources=resources)

    async def _list_templates(
        self, ctx: Ctx, _: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        link, _identity = await self._link(ctx)
        lists = await self._each(link, lambda _, c: c.list_resource_templates())
        merged = [t for listed in lists.values() for t in listed.resource_templates]
        return types.ListResourceTemplatesResult(resource_templates=merged)

    async def _read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        link, _identity = await self._link(ctx)
        uri = str(params.uri)
        owner = self.resource_owner.get(uri)
        order = [owner] if owner in link.clients else list(link.clients)
        error: MCPError | None = None
        for server in order:
            try:
                return await link.clients[server].read_resource(uri)
            except MCPError as exc:
                error = exc
        raise error or MCPError(code=rpc.INVALID_PARAMS, message=f"unknown resource {uri}")

    async def _list_prompts(
        self, ctx: Ctx, _: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        link, _identity = await self._link(ctx)
        lists = await self._each(link, lambda _, c: c.list_prompts())
        prompts = [
            p.model_copy(update={"name": self.names.outward(server, p.name)})
            for server, listed in lists.items()
            for p in listed.prompts
        ]
        return types.ListPromptsResult(prompts=prompts)

    async def _get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        link, _identity = await self._link(ctx)
        parts = self.split(params.name, "prompt")
        if parts is None or parts[0] not in link.clients:
            raise MCPError(code=rpc.INVALID_PARAMS, message=f"unknown prompt {params.name!r}")
        server, name = parts
        return await link.clients[server].get_prompt(name, params.arguments)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving ``body`` once, then the connection's own (a disconnect)."""
    sent = False

    async def replayed() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
