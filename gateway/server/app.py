"""The Litestar application: the MCP relay mounted at ``/mcp``, health, admin, the console and
metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, asgi, get
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import Receive, Scope, Send

from gateway import __version__
from gateway.auth.identity import ADMIN_CHALLENGE, bearer, token_matches
from gateway.auth.resource import WELL_KNOWN, document_at
from gateway.edge.aggregate import Aggregate
from gateway.edge.relay import Relay
from gateway.pipeline.gateway import Gateway
from gateway.server.admin import admin_router
from gateway.server.console import console_handlers
from gateway.server.lifecycle import background, readiness
from gateway.upstream.stdio import running_bridges
from gateway.wire.asgi import reply


class EdgeApp:
    """The ASGI app that is served: ``/mcp/{server}`` straight to the relay, ``/mcp`` to the
    aggregate, the rest to Litestar.

    The relay is a raw ASGI app with its own error boundary, and it is the one path on which
    every tool call travels. Litestar's routing and middleware in front of it cost more CPU per
    call than the relay's own checks, so relay paths are dispatched here first, and ``/mcp``
    (the aggregate, a raw ASGI app with its own boundary too); admin, health and metrics stay
    Litestar's.
    """

    def __init__(
        self, litestar: Litestar, relay: Relay, gateway: Gateway, aggregate: Aggregate
    ) -> None:
        self.litestar = litestar
        self.relay = relay
        self.gateway = gateway
        self.aggregate = aggregate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            path: str = scope["path"]
            if path.startswith("/mcp/") and path[5:].strip("/"):
                scope["path"] = path[4:]  # what the relay reads: the part after /mcp
                await self.relay(scope, receive, send)  # type: ignore[arg-type]
                return
            if path == "/mcp" or path == "/mcp/":
                scope["path"] = "/"  # as mounted: nothing follows /mcp
                await self.aggregate(scope, receive, send)  # type: ignore[arg-type]
                return
            if path.startswith("/openapi") and not _operator(self.gateway, scope):
                await _refuse_operator_page(self.gateway, send)
                return
        await self.litestar(scope, receive, send)


def _operator(gateway: Gateway, scope: Scope) -> bool:
    """Operator pages (metrics, the admin API's schema) need the admin token, unless
    ``admin.metrics_public`` says the network they are served on is trusted. With no admin
    token configured they are closed."""
    config = gateway.config
    if config.admin.metrics_public:
        return True
    authorization = None
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            authorization = value.decode("latin-1")
            break
    return token_matches(bearer(authorization), config.admin.token_sha256)


async def _refuse_operator_page(gateway: Gateway, send: Send) -> None:
    status, body, headers = _operator_refusal(gateway)
    extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await reply(send, status, body, b"text/plain", extra)  # type: ignore[arg-type]


def _operator_refusal(gateway: Gateway) -> tuple[int, bytes, dict[str, str]]:
    if gateway.config.admin.token_sha256 is None:
        body = b"closed: set admin.token_sha256, or admin.metrics_public on a trusted network\n"
        return 403, body, {}
    return 401, b"admin token required\n", {"WWW-Authenticate": ADMIN_CHALLENGE}


def build_app(gateway: Gateway, extra_handlers: list[Any] | None = None) -> EdgeApp:
    relay = Relay(gateway)
    aggregate = Aggregate(gateway)

    # /mcp itself: every server behind one endpoint. (/mcp/{server} never gets here: EdgeApp
    # hands those to the relay.)
    @asgi("/mcp", is_mount=True, copy_scope=False, include_in_schema=False)
    async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await aggregate(scope, receive, send)  # type: ignore[arg-type]

    @get("/metrics", sync_to_thread=False, include_in_schema=False)
    def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        """Tool names and call counts are operator data: the admin token is asked for, unless
        ``admin.metrics_public`` says the scrape network is trusted."""
        if not _operator(gateway, request.scope):
            status, text, headers = _operator_refusal(gateway)
            return Response(text, status_code=status, headers=headers)
        body = gateway.metrics.render() if gateway.metrics is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4")

    @get([WELL_KNOWN, WELL_KNOWN + "/{rest:path}"], sync_to_thread=False, include_in_schema=False)
    def protected_resource(rest: str = "") -> Response[Any]:
        """Protected Resource Metadata (RFC 9728) of each MCP endpoint, when tokens are taken.
        Public, as the spec means it to be; any origin may read it (browser-based clients)."""
        oauth = gateway.auth.oauth
        doc = document_at(oauth.config, oauth.endpoints, rest) if oauth is not None else None
        if doc is None:
            return Response({"error": "not found"}, status_code=404)
        return Response(doc, headers={"access-control-allow-origin": "*"})

    @get("/healthz", sync_to_thread=False, include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @get("/readyz", include_in_schema=False)
    async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        """The status for anyone (a probe needs no more); what is behind it (server names,
        URLs, commands, causes, components) for operators only, as metrics are."""
        ready, body = await readiness(gateway)
        if not _operator(gateway, request.scope):
            body = {"status": body["status"]}
        return Response(body, status_code=200 if ready else 503)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        try:
            async with (
                running_bridges(gateway.upstreams),
                aggregate.running(),
                background(gateway),
            ):
                yield
        finally:
            await gateway.close()

    handlers: list[Any] = [mcp_endpoint, healthz, readyz, metrics, admin_router(gateway)]
    handlers.append(protected_resource)
    handlers.extend(console_handlers(gateway))
    handlers.extend(extra_handlers or [])
    openapi = OpenAPIConfig(
        title="celgate admin API",
        version=__version__,
        path="/openapi",
        render_plugins=[JsonRenderPlugin()],
    )
    # logging_config=None: structlog is the one logging setup (gateway.telemetry.audit); Litestar's
    # default adds a queue-listener thread and handlers of its own.
    litestar = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        openapi_config=openapi,
        logging_config=None,
    )
    return EdgeApp(litestar, relay, gateway, aggregate)
