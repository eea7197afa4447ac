"""The Litestar application: the MCP relay mounted at ``/mcp``, health, admin, the console and
metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar, Request, Response, Router, asgi, get
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
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
from gateway.server.console import feed as feed_module
from gateway.server.console.feed import FEED_PATH, FEED_PLACE, StalledWrites
from gateway.server.console.origin import CLOSE, admin_throttle, refusal
from gateway.server.lifecycle import background, readiness
from gateway.server.reload import exception_fields
from gateway.upstream.stdio import running_bridges
from gateway.wire.asgi import reply

log = structlog.get_logger("celgate.console")


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
        # Sign-in bodies being read now, oldest first (each one's signal to give way).
        self._signing_in: dict[asyncio.Event, None] = {}

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
            if _as_routed(path) == FEED_PATH:  # every spelling Litestar routes there
                await _live_stream(self.litestar, scope, receive, send)
                return
            if scope["method"] == "POST" and _as_routed(path) == LOGIN_PATH:
                await self._sign_in(scope, receive, send)
                return
        await self.litestar(scope, receive, send)

    async def _sign_in(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The console's sign-in, the one page that reads a body before any credential: the
        body is read here first, small (``MAX_SIGN_IN_BYTES``), soon (``SIGN_IN_SECONDS``)
        and a few at a time in all (``MAX_SIGN_INS_READING``). Read by Litestar, a body sent
        a byte at a time held a connection each, never evicted, until no agent got in, and
        each could hold 10 MB."""
        if len(self._signing_in) >= MAX_SIGN_INS_READING:
            # The one read longest gives way (at most SIGN_IN_SECONDS old): slow bodies kept
            # renewed cannot shut every operator out, whose body comes whole at once.
            oldest = next(iter(self._signing_in))
            oldest.set()
            self._signing_in.pop(oldest, None)
        displaced = asyncio.Event()
        self._signing_in[displaced] = None
        try:
            body = await _small_body(scope, receive, displaced)
        finally:
            self._signing_in.pop(displaced, None)
        if isinstance(body, tuple):
            await _plain(send, *body)
            return
        given = False

        async def replay() -> Any:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.litestar(scope, replay, send)


#: The console's sign-in: its body (a token and a name) and how it may arrive.
LOGIN_PATH = "/console/login"
MAX_SIGN_IN_BYTES = 4096
SIGN_IN_SECONDS = 5.0
MAX_SIGN_INS_READING = 16


def _as_routed(path: str) -> str:
    """A path as Litestar routes it (repeated and trailing slashes do not count):
    ``/console/login/`` and ``//console//login`` reach the sign-in too."""
    return "/" + "/".join(part for part in path.split("/") if part)


async def _small_body(
    scope: Scope, receive: Receive, displaced: asyncio.Event
) -> bytes | tuple[int, str, bytes | None]:
    """The request's body, or the refusal to answer (status, text, Retry-After);
    ``displaced`` ends the read (a newer sign-in took its place)."""
    reading = asyncio.ensure_future(_read_small(scope, receive))
    giving_way = asyncio.ensure_future(displaced.wait())
    try:
        await asyncio.wait({reading, giving_way}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        giving_way.cancel()
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    if reading.done() and not reading.cancelled():
        return reading.result()
    return 503, "too many sign-ins under way: try again", b"5"


async def _read_small(scope: Scope, receive: Receive) -> bytes | tuple[int, str, bytes | None]:
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > MAX_SIGN_IN_BYTES):
            return 413, "the body is too large", None
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(SIGN_IN_SECONDS):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return 400, "the client went away", None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_SIGN_IN_BYTES:
                    return 413, "the body is too large", None
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)
    except TimeoutError:
        return 408, "the body came too slowly", None


async def _plain(send: Send, status: int, text: str, retry_after: bytes | None) -> None:
    """A refusal as the console's page reads one (``detail``), and the connection closed."""
    extra = [(b"connection", b"close")]
    if retry_after is not None:
        extra.append((b"retry-after", retry_after))
    body = json.dumps({"status_code": status, "detail": text}).encode()
    await reply(send, status, body, extra=extra)  # type: ignore[arg-type]


async def _live_stream(app: Litestar, scope: Scope, receive: Receive, send: Send) -> None:
    """The console's live feed, cut when its reader stops reading (its place is freed)."""
    writes = StalledWrites(send, feed_module.WRITE_SECONDS)
    try:
        await app(scope, receive, writes)
    except Exception:
        if not writes.stalled:
            raise
        log.info("console.stream_cut", reason="the reader stopped reading")
    finally:
        place: Any = scope.get(FEED_PLACE)
        if place is not None:  # given back however the stream ended
            feed, subscriber = place
            feed.unsubscribe(subscriber)


Refusal = tuple[int, str, dict[str, str]]
CLOSED = "closed: set admin.token_sha256, or admin.metrics_public on a trusted network"


def operator_refusal(
    gateway: Gateway, request: ASGIConnection[Any, Any, Any, Any]
) -> Refusal | None:
    """Why an operator page (metrics, the admin API's schema, ``/readyz``'s details) is
    refused to this request, or None. The Host and Origin are checked as for the admin API
    (a DNS-rebinding page reads nothing); then the admin token is asked for, unless
    ``admin.metrics_public`` says the network they are served on is trusted, with wrong
    tokens counted and throttled by the one count the admin API and the console's sign-in
    share. With no admin token configured the pages are closed."""
    found = _operator_refusal(gateway, request)
    if found is None:
        return None
    status, text, headers = found
    return status, text, {**headers, **CLOSE}  # a client refused goes: no keep-alive to retry on


def _operator_refusal(
    gateway: Gateway, request: ASGIConnection[Any, Any, Any, Any]
) -> Refusal | None:
    headers = request.headers
    refused = refusal(gateway, headers.get("host"), headers.get("origin"))
    if refused is not None:
        return refused[0], refused[1], {}
    config = gateway.config
    if config.admin.metrics_public:
        return None
    token = bearer(headers.get("authorization"))
    client = request.client.host if request.client else None
    throttle = admin_throttle(gateway)
    if token is not None:
        wait = throttle.wait_for(client, token)
        if wait is not None:  # too many wrong tokens from here: not even checked
            return 429, "too many wrong tokens: try later", {"Retry-After": str(int(wait) + 1)}
    if token_matches(token, config.admin.token_sha256):
        return None
    if token is not None:
        throttle.failed(client)
    if config.admin.token_sha256 is None:
        return (
            403,
            "closed: set admin.token_sha256, or admin.metrics_public on a trusted network",
            {},
        )
    return 401, "admin token required", {"WWW-Authenticate": ADMIN_CHALLENGE}


def _operator_guard(gateway: Gateway) -> Any:
    """The guard of the admin API's schema (``/openapi`` and whatever path Litestar routes
    there)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        refused = operator_refusal(gateway, connection)
        if refused is not None:
            status, detail, headers = refused
            raise HTTPException(detail, status_code=status, headers=headers)

    return guard


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The admin API's and the console's unexpected errors: logged here (Litestar logs
    nothing with its logging off), answered without detail. A body nested past the JSON
    decoder's depth (msgspec's RecursionError) is the caller's error, answered 400."""
    if isinstance(exc, RecursionError):
        content = {"status_code": 400, "detail": "the body is nested too deeply"}
        return Response(content, status_code=400)
    log.error("admin.internal_error", path=request.url.path, **exception_fields(exc))
    return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=500)


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
        refused = operator_refusal(gateway, request)
        if refused is not None:
            status, text, headers = refused
            return Response((text + "\n").encode(), status_code=status, headers=headers)
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
        """The status for anyone, whatever its Host (a probe needs no more); what is behind it
        (server names, URLs, commands, causes, components) for operators only, as metrics
        are."""
        ready, body = await readiness(gateway)
        if operator_refusal(gateway, request) is not None:
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
        render_plugins=[JsonRenderPlugin()],
        openapi_router=Router("/openapi", route_handlers=[], guards=[_operator_guard(gateway)]),
    )
    # logging_config=None: structlog is the one logging setup (gateway.telemetry.audit); Litestar's
    # default adds a queue-listener thread and handlers of its own.
    litestar = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        openapi_config=openapi,
        logging_config=None,
        exception_handlers={500: _internal_error},
        # Operator bodies are small (a note, a name); the sign-in's is bounded before this.
        request_max_body_size=64 * 1024,
    )
    return EdgeApp(litestar, relay, gateway, aggregate)
