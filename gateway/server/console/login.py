"""Signing in to the console, out of it, and the live decision stream (which needs a session).

``POST /console/login`` takes the admin token once (JSON, from the page's own origin) and sets
the session cookie; the token is never stored, nor put in the cookie. ``GET /console/session``
gives the page its CSRF token and operator name back after a reload; ``POST /console/logout``
ends the session. ``GET /console/events`` streams decision records as server-sent events,
filtered by grant, tool and effect.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from litestar import Request, Response, get, post
from litestar.response import ServerSentEvent, ServerSentEventMessage

from gateway.auth.identity import token_matches
from gateway.pipeline.gateway import Gateway
from gateway.server.console.feed import (
    FEED_PLACE,
    DecisionFeed,
    install_feed,
    masked,
    matches,
)
from gateway.server.console.origin import admin_throttle, refusal
from gateway.server.console.sessions import (
    COOKIE,
    MAX_SECONDS,
    ConsoleSession,
    ConsoleSessions,
    SessionStore,
    SessionStoreDown,
    cookie_header,
    credential_tag,
    csrf_problem,
)

log = structlog.get_logger(__name__)
KEEPALIVE_SECONDS = 15.0
BACKLOG = 100  # recent matching records sent when a stream opens
FILTERS = ("grant", "tool", "effect")
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class LoginBody:
    token: str = ""
    operator: str = ""


def sessions_of(gateway: Gateway) -> SessionStore:
    """The gateway's console sessions (``build_gateway`` picks shared or local), else local."""
    found: SessionStore | None = gateway.extras.get("console_sessions")
    if found is None:
        found = gateway.extras["console_sessions"] = ConsoleSessions()
    return found


def credential_of(gateway: Gateway) -> str | None:
    """The tag a console session must carry: the admin token in force now."""
    return credential_tag(gateway.config.admin.token_sha256)


async def session_of(gateway: Gateway, request: Request[Any, Any, Any]) -> ConsoleSession | None:
    return await session_by_cookie(gateway, request.cookies.get(COOKIE))


async def session_by_cookie(gateway: Gateway, cookie: str | None) -> ConsoleSession | None:
    """The live session of a cookie value, opened with the admin token in force, or None
    (not renewed: ``renewed``, once the request passed the CSRF checks)."""
    return await sessions_of(gateway).get(cookie, credential_of(gateway))


async def renewed(gateway: Gateway, cookie: str | None, session: ConsoleSession) -> bool:
    """The session's use, by a request that passed the CSRF checks: its idle deadline
    pushed back. False when it is gone meanwhile (signed out on another replica)."""
    return await sessions_of(gateway).renew(cookie, session)


def _store_down(exc: SessionStoreDown) -> Response[Any]:
    return _json({"detail": str(exc)}, 503)


def _json(body: Any, status: int = 200, cookie: str | None = None) -> Response[Any]:
    headers = {**_NO_STORE, **({"Set-Cookie": cookie} if cookie is not None else {})}
    return Response(body, status_code=status, headers=headers)


def _refused(
    gateway: Gateway, request: Request[Any, Any, Any], unsafe: bool
) -> Response[Any] | None:
    """Host and Origin checks; a state-changing request must name its Origin too."""
    origin = request.headers.get("origin")
    refused = refusal(gateway, request.headers.get("host"), origin)
    if refused is not None:
        return _json({"detail": refused[1]}, refused[0])
    if unsafe and (origin is None or request.headers.get("sec-fetch-site") == "cross-site"):
        return _json({"detail": "a console action needs the Origin of the console's page"}, 403)
    return None


def login_handlers(gateway: Gateway) -> list[Any]:
    sessions = sessions_of(gateway)
    feed = install_feed(gateway)
    throttle = admin_throttle(gateway)

    @post("/console/login", include_in_schema=False, status_code=200)
    async def login(request: Request[Any, Any, Any], data: LoginBody) -> Response[Any]:
        refused = _refused(gateway, request, unsafe=True)
        if refused is not None:
            return refused
        client = request.client.host if request.client else None
        wait = throttle.wait_for(client, data.token or None)
        if wait is not None:  # too many wrong tokens from here: not even checked
            log.warning("console.login_throttled", client=client)
            headers = {"Retry-After": str(int(wait) + 1)}
            return Response(
                {"detail": "too many wrong tokens: try later"}, status_code=429, headers=headers
            )
        credential = credential_of(gateway)
        if credential is None or not token_matches(
            data.token or None, gateway.config.admin.token_sha256
        ):
            throttle.failed(client)
            log.warning("console.login_refused", client=client)
            return _json({"detail": "invalid admin token"}, 401)
        try:
            session_id, session = await sessions.open(data.operator, credential)
        except SessionStoreDown as exc:
            return _store_down(exc)
        secure = request.url.scheme == "https" or (
            request.headers.get("origin", "").startswith("https://")
        )
        log.info("console.login", operator=session.operator)
        cookie = cookie_header(session_id, secure, int(MAX_SECONDS))
        return _json(session.view(), cookie=cookie)

    @get("/console/session", include_in_schema=False)
    async def current(request: Request[Any, Any, Any]) -> Response[Any]:
        refused = _refused(gateway, request, unsafe=False)
        if refused is not None:
            return refused
        try:
            session = await session_of(gateway, request)
        except SessionStoreDown as exc:
            return _store_down(exc)
        # 200 either way: the page asks on every load, and a 401 would read as an error. A
        # session's token is never told to the cookie alone (any port of the host has it):
        # the page presents the token it was given at sign-in, or signs in again.
        if session is None or csrf_problem(session, "GET", request.headers, None) is not None:
            return _json({"signed_in": False})
        try:
            if not await renewed(gateway, request.cookies.get(COOKIE), session):
                return _json({"signed_in": False})
        except SessionStoreDown as exc:
            return _store_down(exc)
        return _json(session.view())

    @post("/console/logout", include_in_schema=False, status_code=200)
    async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
        refused = _refused(gateway, request, unsafe=True)
        if refused is not None:
            return refused
        try:
            session = await session_of(gateway, request)
            if session is not None:
                host = request.headers.get("host")
                problem = csrf_problem(session, "POST", request.headers, host)
                if problem is not None:
                    return _json({"detail": problem}, 403)
                await sessions.close(request.cookies.get(COOKIE))
        except SessionStoreDown as exc:
            return _store_down(exc)
        if session is not None:
            log.info("console.logout", operator=session.operator)
        return _json({"signed_out": True}, cookie=cookie_header("", False, 0))

    @get("/console/events", include_in_schema=False)
    async def events(request: Request[Any, Any, Any]) -> Response[Any] | ServerSentEvent:
        refused = _refused(gateway, request, unsafe=False)
        if refused is not None:
            return refused
        try:
            session = await session_of(gateway, request)
        except SessionStoreDown as exc:
            return _store_down(exc)
        if session is None:
            return _json({"detail": "sign in to the console first"}, 401)
        # (an EventSource sends no header of the page's: the token comes in the query)
        token = request.query_params.get("csrf") or ""
        problem = csrf_problem(session, "GET", request.headers, None, token=token)
        if problem is not None:
            return _json({"detail": problem}, 403)
        try:
            if not await renewed(gateway, request.cookies.get(COOKIE), session):
                return _json({"detail": "sign in to the console first"}, 401)
        except SessionStoreDown as exc:
            return _store_down(exc)
        filters = {k: v for k in FILTERS if (v := request.query_params.get(k))}
        backlog = [r for r in list(feed) if matches(r, filters)][-BACKLOG:]
        subscriber = feed.subscribe()  # (with the backlog just taken: no await between)
        if subscriber is None:
            return _json({"detail": "too many live streams open"}, 503)
        subscriber.backlog = backlog
        cookie = request.cookies.get(COOKIE)
        # The edge app gives the place back when the response ends, however it ends (a
        # stream cut mid-write leaves its generator unclosed): app._live_stream.
        request.scope[FEED_PLACE] = (feed, subscriber)  # type: ignore[literal-required]
        stream = _stream(gateway, feed, subscriber, filters, cookie)
        return ServerSentEvent(stream, headers=_NO_STORE)

    return [login, current, logout, events]


async def _stream(
    gateway: Gateway,
    feed: DecisionFeed,
    subscriber: Any,
    filters: dict[str, str],
    cookie: str | None,
) -> AsyncIterator[ServerSentEventMessage]:
    """The backlog (``subscriber.backlog``, taken as it subscribed: taken later, a record
    made in between came twice, red-team wave 70), then each new record; ends when the
    session does (``signed-out``), or, unsaid, when the session store does not answer (the
    page reconnects, and is asked to sign in only if the session is really gone: a moment's
    stall of Valkey signed every console out, red-team wave 70)."""
    try:
        for record in subscriber.backlog:
            yield _message(gateway, record)
        subscriber.backlog = []
        while (live := await _still_signed_in(gateway, cookie)) is True:
            records, dropped = await subscriber.take(KEEPALIVE_SECONDS)
            subscriber.came(feed.clock())
            if subscriber.gone:  # its place went to a newer stream: it was stuck too long
                return
            if records or dropped:
                live = await _still_signed_in(gateway, cookie)
                if live is not True:
                    break  # signed out while it waited: what came meanwhile is not this page's
            if dropped:
                yield ServerSentEventMessage(data=json.dumps({"dropped": dropped}), event="gap")
            for record in records:
                if matches(record, filters):
                    yield _message(gateway, record)
            if not records and not dropped:
                yield ServerSentEventMessage(comment="keep-alive")
        if live is False:
            yield ServerSentEventMessage(data="{}", event="signed-out")
    finally:
        feed.unsubscribe(subscriber)


async def _still_signed_in(gateway: Gateway, cookie: str | None) -> bool | None:
    """Whether the stream's session lives on; None when the store does not answer."""
    try:
        session = await session_by_cookie(gateway, cookie)
        # (its requests passed the checks when the stream opened: reading it is its use)
        return session is not None and await renewed(gateway, cookie, session)
    except SessionStoreDown:
        return None


def _message(gateway: Gateway, record: dict[str, Any]) -> ServerSentEventMessage:
    data = json.dumps(masked(gateway, record), default=str)
    return ServerSentEventMessage(data=data, event="decision")
