"""The admin API under ``/admin``: its own bearer token (stored hashed), never an agent key.

Policy revision and sources, approvals (list with the held call's arguments, approve, deny:
each decision logged as ``approval.decided`` and counted), recent decisions, tools with their
risk, and rate-limit buckets (shown, or refilled by an operator). Litestar generates its
OpenAPI schema (``/openapi``). The console (``gateway.server.console``) is a page over this API.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Parameter

from gateway.approvals.service import ApprovalRequest
from gateway.auth.identity import ADMIN_CHALLENGE, bearer, token_matches
from gateway.errors import ApprovalError, ApprovalNotFound, BackendUnavailable
from gateway.pipeline.gateway import Gateway
from gateway.policy.model import LimitSpec, bucket_grant
from gateway.policy.risk import classify, override_for
from gateway.ratelimit.base import Bucket
from gateway.server.console.feed import masked
from gateway.server.console.login import renewed, session_by_cookie
from gateway.server.console.origin import CLOSE, admin_throttle, refusal
from gateway.server.console.sessions import COOKIE, SessionStoreDown, csrf_problem
from gateway.server.lifecycle import readiness

_CHALLENGE = {"WWW-Authenticate": ADMIN_CHALLENGE}
log = structlog.get_logger(__name__)


@dataclass
class LimitsResetBody:
    grant: str | None = None
    counter: str | None = None
    all: bool = False


@dataclass
class ApprovalDecisionBody:
    """Who decided, and an optional note shown to the agent on a refusal."""

    by: str = "admin"
    note: str | None = None


def _guard(gateway: Gateway) -> Any:
    """The admin token as a bearer header (the CLI), or a console session's cookie (with its
    CSRF token and Origin on anything that changes state)."""

    throttle = admin_throttle(gateway)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        headers = connection.headers
        refused = refusal(gateway, headers.get("host"), headers.get("origin"))
        if refused is not None:  # DNS rebinding, or a page of another site
            raise HTTPException(refused[1], status_code=refused[0], headers=CLOSE)
        token = bearer(connection.headers.get("authorization"))
        client = connection.client.host if connection.client else None
        if token is not None:
            wait = throttle.wait_for(client, token)
            if wait is not None:  # too many wrong tokens from here: not even checked
                retry = {"Retry-After": str(int(wait) + 1), **CLOSE}
                raise HTTPException(
                    "too many wrong tokens: try later", status_code=429, headers=retry
                )
        if token_matches(token, gateway.config.admin.token_sha256):
            return
        if token is None and await _console_session(gateway, connection):
            return
        if token is not None:  # an agent's key is a wrong admin token too: counted
            throttle.failed(client)
            if gateway.auth.authenticate(f"Bearer {token}") is not None:
                msg = "agent keys cannot use the admin API"
                raise PermissionDeniedException(msg, headers=CLOSE)
            raise NotAuthorizedException("invalid admin token", headers={**_CHALLENGE, **CLOSE})
        raise NotAuthorizedException("admin token required", headers={**_CHALLENGE, **CLOSE})

    return guard


async def _console_session(
    gateway: Gateway, connection: ASGIConnection[Any, Any, Any, Any]
) -> bool:
    """True for a live console session's request (its operator noted on the connection);
    a session's request that fails the CSRF checks is refused here, and one that cannot be
    looked up (the shared store down) with 503."""
    try:
        session = await session_by_cookie(gateway, connection.cookies.get(COOKIE))
    except SessionStoreDown as exc:
        raise HTTPException(str(exc), status_code=503) from exc
    if session is None:
        return False
    method = str(connection.scope.get("method", "GET"))
    problem = csrf_problem(session, method, connection.headers, connection.headers.get("host"))
    if problem is not None:
        log.warning("console.csrf_refused", operator=session.operator, reason=problem)
        raise PermissionDeniedException(problem)
    try:
        if not await renewed(gateway, connection.cookies.get(COOKIE), session):
            return False  # signed out meanwhile (on another replica)
    except SessionStoreDown as exc:
        raise HTTPException(str(exc), status_code=503) from exc
    connection.state["console_operator"] = session.operator
    return True


def _policy_view(gateway: Gateway) -> dict[str, Any]:
    policy = gateway.policy
    entries = [
        {
            "key": e.key,
            "where": str(e.where),
            "action": e.action,
            "rules": [{"id": r.id, "where": str(r.where), "action": r.action} for r in e.rules],
            "limits": [
                {"counter": lim.counter, "max": lim.max, "window": lim.window, "scope": lim.scope}
                for lim in e.limits
            ],
            "mode": e.mode,
            "secret_args": list(e.secret_args),
        }
        for e in policy.entries
    ]
    reloader = gateway.extras.get("reloader")
    return {
        "revision": policy.revision,
        "sources": list(policy.sources),
        "default": policy.default,
        "entries": entries,
        "last_reload": getattr(reloader, "last", None),
        # what the policy in force loaded with but is said (an entry naming a server this
        # gateway does not serve: it matches nothing), since start or its reload
        "warnings": list(gateway.extras.get("policy_warnings", [])),
    }


def admin_router(gateway: Gateway) -> Router:
    @get("/health", summary="Readiness and what is behind it (as /readyz tells operators)")
    async def health() -> dict[str, Any]:
        _ready, body = await readiness(gateway)
        return body

    @get("/policy", summary="The loaded policy: revision, sources and entries")
    async def policy_info() -> dict[str, Any]:
        return _policy_view(gateway)

    @get(
        "/approvals",
        summary="Approval requests, newest first, with the held call's arguments (long values "
        "cut, marked '[celgate: cut]'; args_digest binds the exact call) and args_text, the "
        "same as JSON text (integers past 2**53 exact, whatever reads it). status: pending, "
        "approved, denied, expired, or decided (all but pending); order: newest (default), "
        "oldest or expiring (the soonest to expire) first; limit: the first so many "
        "(x-total-count tells how many there are); args: both (default), text (args_text "
        "and arg_names, no args), object (args alone) or none",
    )
    async def approvals(
        status: str | None = None,
        limit: int | None = Parameter(default=None, ge=1, le=MAX_LISTED_APPROVALS),
        args: Literal["both", "text", "object", "none"] = "both",
        order: Literal["newest", "oldest", "expiring"] = "newest",
    ) -> Response[bytes]:
        service = _service(gateway)
        items = [r for r in await _backend(service.list()) if _of_status(r, status)]
        if order == "oldest":
            items.reverse()
        elif order == "expiring":  # the soonest first: rules give different timeouts
            items.sort(key=lambda r: r.expires)
        shown = items[:limit] if limit is not None else items
        # Each view is JSON text of a held call's arguments (16 KiB each at most): a desk of
        # 1,000 was 34 MB made on the event loop every caller shares, 0.4 s a listing, every
        # 3 s from each console (red-team wave 49). Made beside it.
        body = await asyncio.to_thread(_approvals_body, shown, args)
        headers = {"x-total-count": str(len(items))}
        return Response(body, media_type="application/json", headers=headers)

    @post(
        "/approvals/{approval_id:str}/approve",
        summary="Approve a pending request (from the console, `by` is the signed-in operator)",
    )
    async def approve(
        approval_id: str, data: ApprovalDecisionBody, request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        return await _decide(gateway, approval_id, True, _by(request, data), data.note)

    @post("/approvals/{approval_id:str}/deny", summary="Refuse a pending request")
    async def deny(
        approval_id: str, data: ApprovalDecisionBody, request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        return await _decide(gateway, approval_id, False, _by(request, data), data.note)

    @get("/decisions", summary="The most recent decision records of this replica")
    async def decisions(limit: int = 50) -> list[dict[str, Any]]:
        recent = list(gateway.decisions.recent)[-max(1, min(limit, 500)) :]
        return [masked(gateway, r) for r in recent]

    @get("/tools", summary="Tools seen on upstreams, with kind, risk and pin")
    async def tools() -> list[dict[str, Any]]:
        return [_tool_row(gateway, server, name) for server, name in sorted(gateway.catalog)]

    @get("/counters", summary="Rate-limit counters as configured, with their buckets now")
    async def counters() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await _backend(_counters(gateway))
        return rows

    @get("/limits", summary="Rate-limit buckets that are not full, and their tokens")
    async def limits(request: Request[Any, Any, Any], grant: str | None = None) -> list[Any]:
        _check_grant(gateway, grant)
        rows = _of_grant(gateway, await _backend(gateway.limiter.scan("")), grant)
        return [{"key": key, "remaining": round(tokens, 3)} for key, tokens in rows]

    @post(
        "/limits/reset",
        summary="Refill buckets at once: a grant's, a counter's, or (all: true) every one",
        status_code=200,
    )
    async def limits_reset(data: LimitsResetBody) -> dict[str, Any]:
        if data.grant == "" or data.counter == "":  # an empty name read as "every one"
            raise HTTPException("a grant or a counter named by nothing", status_code=400)
        if data.grant is None and data.counter is None and not data.all:
            raise HTTPException("name a grant or a counter, or say all: true", status_code=400)
        counters = {lim.counter for entry in gateway.policy.entries for lim in entry.limits}
        if data.counter is not None and data.counter not in counters:  # a typo refilled nothing
            known = ", ".join(sorted(counters)) or "none"
            msg = f"no counter {data.counter!r} in the policy (counters: {known})"
            raise HTTPException(msg, status_code=404)
        _check_grant(gateway, data.grant)
        rows = await _backend(gateway.limiter.scan(f"{data.counter}|" if data.counter else ""))
        if data.counter:
            rows = _of_counter(rows, data.counter)
        keys = [key for key, _ in _of_grant(gateway, rows, data.grant)]
        refilled = await _backend(gateway.limiter.reset(keys))
        log.warning("admin.limits_reset", grant=data.grant, counter=data.counter, refilled=refilled)
        return {"refilled": refilled, "keys": keys}

    @post("/reload", summary="Reload the rule files now (as SIGHUP does)")
    async def reload() -> Response[dict[str, Any]]:
        """201 when the rules were loaded; 409 with each problem (``file:line``) when they
        were refused and the old ones keep serving (a 201 saying ``reloaded: false`` read
        as success to scripts that check the status)."""
        reloader = gateway.extras.get("reloader")
        if reloader is None:
            raise NotFoundException("reload is not running")
        ok = await reloader.reload("admin API")
        body: dict[str, Any] = {"reloaded": ok, "revision": gateway.policy.revision}
        if not ok:
            body["problems"] = list((reloader.last or {}).get("problems") or [])
        return Response(body, status_code=201 if ok else 409)

    handlers = [
        health,
        policy_info,
        approvals,
        approve,
        deny,
        decisions,
        tools,
        counters,
        limits,
        limits_reset,
        reload,
    ]
    # Held calls' arguments, policy and limits are operator data: no cache keeps a copy.
    return Router(
        path="/admin",
        route_handlers=handlers,
        guards=[_guard(gateway)],
        tags=["admin"],
        cache_control=CacheControlHeader(no_store=True),
    )


#: Approval requests one listing shows at most when it names a ``limit``.
MAX_LISTED_APPROVALS = 1000


def _of_status(request: ApprovalRequest, status: str | None) -> bool:
    if status == "decided":
        return request.status != "pending"
    return status is None or request.status == status


def _approvals_body(items: list[ApprovalRequest], args: str) -> bytes:
    return json.dumps([_approval_view(r, args) for r in items]).encode()


def _approval_view(request: ApprovalRequest, args: str = "both") -> dict[str, Any]:
    """A request as the API shows it, with its arguments as JSON text too (``args``: both,
    ``text``, ``object`` or ``none``): a page that parses ``args`` reads 9007199254740993 as
    ...992, and two different calls would look the same; ``text`` names the top-level
    arguments (``arg_names``) in their place."""
    view = request.to_dict()
    if args in ("both", "text"):
        view["args_text"] = json.dumps(request.args, indent=2, ensure_ascii=False, default=str)
    if args == "text" and isinstance(request.args, dict):
        view["arg_names"] = list(request.args)
    if args in ("text", "none"):
        view.pop("args", None)
    return view


def _service(gateway: Gateway) -> Any:
    if gateway.approvals is None:
        raise NotFoundException("approvals are not enabled")
    return gateway.approvals


def _check_grant(gateway: Gateway, grant: str | None) -> None:
    """404 for a grant the config has not (a typo refilled nothing and said so: "refilled 0"
    while the agent stayed limited); with OAuth, grants come from tokens and any name goes."""
    config = gateway.config
    if grant is None or config.oauth is not None:
        return
    known = {g.id for g in config.grants.values()} | ({"anonymous"} if config.anonymous else set())
    if grant not in known:
        names = ", ".join(sorted(known))
        raise HTTPException(f"no grant {grant!r} in the config (grants: {names})", status_code=404)


def _of_counter(rows: list[tuple[str, float]], counter: str) -> list[tuple[str, float]]:
    """The buckets of ``counter`` alone: scanned by the prefix ``counter|``, those of a
    counter named ``counter|more`` came too (its values are escaped, so the last ``|`` of a
    key ends its counter's name), and a reset of ``a`` refilled ``a|b``'s (wave 42)."""
    return [r for r in rows if r[0].rpartition("|")[0] == counter]


def _of_grant(
    gateway: Gateway, rows: list[tuple[str, float]], grant: str | None
) -> list[tuple[str, float]]:
    """The buckets of ``grant`` (all of them for None): its own, its agents' (``scope:
    agent``, an OAuth grant's users too) and its sessions'."""
    if grant is None:
        return rows
    return [r for r in rows if bucket_grant(r[0]) == grant]


async def _backend(coro: Any) -> Any:
    try:
        return await coro
    except BackendUnavailable as exc:
        raise HTTPException("state backend unavailable", status_code=503) from exc


def _by(request: Request[Any, Any, Any], data: ApprovalDecisionBody) -> str:
    """Who decides: the console session's operator (named at sign-in, kept server side), else
    the name the caller gives."""
    operator = request.state.get("console_operator")
    return str(operator) if operator else data.by


def _tool_row(gateway: Gateway, server: str, name: str) -> dict[str, Any]:
    info = gateway.tool_info(server, name)  # classified under the policy in force
    why = classify(name, info.annotations, override_for(gateway.policy, server, name)).why
    pinned = gateway.pins.pinned.get((server, name))
    change = gateway.pins.changed.get((server, name))
    pin = "changed" if change is not None else ("pinned" if pinned else "none")
    return {
        "server": server,
        "tool": name,
        "kind": info.kind,
        "risk": info.risk,
        "why": why,
        "pin": pin,
        "pinned_digest": pinned,
        "seen_digest": change.seen if change is not None else pinned,
    }


async def _counters(gateway: Gateway) -> list[dict[str, Any]]:
    """Each counter once (a counter is defined the same everywhere), the entries using it,
    and its buckets: a global one peeked (full or not), the others as scanned (only those
    that are not full are stored)."""
    specs: dict[str, tuple[LimitSpec, list[str]]] = {}
    for entry in gateway.policy.entries:
        for spec in entry.limits:
            specs.setdefault(spec.counter, (spec, []))[1].append(entry.key)
    rows = []
    for counter, (spec, entries) in sorted(specs.items()):
        if spec.scope == "global":
            key = f"{counter}|global=*"
            (state,) = await gateway.limiter.peek([Bucket(counter, key, spec.max, spec.window)])
            buckets = [(key, state.remaining)]
        else:
            buckets = _of_counter(await gateway.limiter.scan(f"{counter}|"), counter)
        rows.append(
            {
                "counter": counter,
                "max": spec.max,
                "window": spec.window,
                "scope": spec.scope,
                "failure_mode": spec.failure_mode,
                "entries": entries,
                "where": str(spec.where),
                "buckets": [{"key": k, "remaining": round(v, 3)} for k, v in buckets],
            }
        )
    return rows


async def _decide(
    gateway: Gateway, approval_id: str, approve: bool, by: str, note: str | None
) -> dict[str, Any]:
    service = _service(gateway)
    try:
        request = await _backend(service.decide(approval_id, approve, by, note))
    except ApprovalError as exc:
        status = 404 if isinstance(exc, ApprovalNotFound) else 409
        raise HTTPException(str(exc), status_code=status) from exc
    log.info(
        "approval.decided",
        approval_id=request.id,
        decision=request.status,
        by=request.decided_by,
        note=request.note,
        server=request.server,
        tool=request.tool,
        grant=request.grant,
        agent=request.agent,
        args_digest=request.args_digest,
    )
    result: dict[str, Any] = request.to_dict()
    return result
