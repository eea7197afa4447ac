"""Console sessions: the admin token is posted once, and the browser holds only a random id.

A session is a random id (the cookie, ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over
HTTPS), kept here by its SHA-256 with the operator's name, a CSRF token and two deadlines: idle
(``IDLE_SECONDS`` without a request) and absolute (``MAX_SECONDS`` after sign-in). At most
``MAX_SESSIONS`` live at once in one process; past that the least recently used one is ended.
With a Valkey backend (``limits.backend``) the sessions live there instead
(``<key_prefix>cs:<sha256>``, each gone from Valkey when its deadline passes), so a browser
signed in on one replica is signed in on every replica behind the same load balancer, and
signing out anywhere ends it everywhere. A console request that cannot reach Valkey is refused
with 503 (``SessionStoreDown``): never taken as signed in.

A session is also bound to the admin token it was opened with (``credential_tag``, a digest of
``admin.token_sha256``, never the digest itself): once the token is changed or removed, every
session opened with the old one is refused. Kept in Valkey, they outlived the restart that
rotated a leaked token, for up to ``MAX_SECONDS`` (red-team wave 53).

A state-changing request made with the cookie must also carry the session's CSRF token in
``X-CSRF-Token`` and an ``Origin`` of the page's own origin (``csrf_problem``): ``SameSite``
keeps other sites' requests from carrying the cookie, and the header and Origin are checked in
case a browser or a proxy does not honour it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Protocol
from urllib.parse import urlsplit

import structlog
from valkey.asyncio import Valkey

from gateway.ratelimit.client import BACKEND_ERRORS

log = structlog.get_logger(__name__)

COOKIE = "celgate_console"
CSRF_HEADER = "x-csrf-token"
IDLE_SECONDS = 1800.0
MAX_SECONDS = 12 * 3600.0
MAX_SESSIONS = 32
OPERATOR_CHARS = 80
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class ConsoleSession:
    operator: str
    csrf: str
    created: float
    seen: float
    ends: float  # the absolute deadline
    credential: str  # credential_tag of the admin token it was opened with

    def expires(self) -> float:
        return min(self.ends, self.seen + IDLE_SECONDS)

    def view(self) -> dict[str, object]:
        return {
            "signed_in": True,
            "operator": self.operator,
            "csrf": self.csrf,
            "expires": self.expires(),
        }


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


#: The longest cookie value looked up: ours are 43 characters.
MAX_ID_CHARS = 128


def credential_tag(token_sha256: str | None) -> str | None:
    """What a session keeps of the admin token it was opened with; None (no token: no
    session is good) without one."""
    if token_sha256 is None:
        return None
    return hashlib.sha256(b"celgate console session\0" + token_sha256.encode()).hexdigest()


def _new(operator: str, now: float, credential: str) -> tuple[str, ConsoleSession]:
    session_id = secrets.token_urlsafe(32)
    name = " ".join(operator.split())[:OPERATOR_CHARS] or "console"
    csrf = secrets.token_urlsafe(32)
    return session_id, ConsoleSession(name, csrf, now, now, now + MAX_SECONDS, credential)


def _good(session: ConsoleSession | None, now: float, credential: str | None) -> bool:
    """Whether a stored session may still be used: before its deadlines, and opened with
    the admin token in force now."""
    return (
        session is not None
        and session.expires() > now
        and credential is not None
        and hmac.compare_digest(session.credential, credential)
    )


class SessionStoreDown(Exception):
    """The shared session store did not answer: the request is refused (503), never taken
    as signed in or out."""


class SessionStore(Protocol):
    async def open(self, operator: str, credential: str) -> tuple[str, ConsoleSession]: ...

    async def get(self, session_id: str | None, credential: str | None) -> ConsoleSession | None:
        """The live session of a cookie value opened with ``credential``, or None. Its idle
        deadline is not pushed back: only a request that passes the CSRF checks is the
        session's use (``renew``). A refused one pushed it back, and the cookie alone (any
        port of the host has it) kept an abandoned session alive for its 12 hours
        (red-team wave 67)."""

    async def renew(self, session_id: str | None, session: ConsoleSession) -> bool:
        """The session was used: its idle deadline pushed back. False when it is gone."""

    async def close(self, session_id: str | None) -> None: ...


class ConsoleSessions:
    """Live console sessions of this process by the hash of their id, least recently used
    first."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.live: OrderedDict[str, ConsoleSession] = OrderedDict()

    async def open(self, operator: str, credential: str) -> tuple[str, ConsoleSession]:
        """A new session: its id (for the cookie only) and its state."""
        now = self.clock()
        self._sweep(now)
        while len(self.live) >= MAX_SESSIONS:
            self.live.popitem(last=False)
        session_id, session = _new(operator, now, credential)
        self.live[_key(session_id)] = session
        return session_id, session

    async def get(self, session_id: str | None, credential: str | None) -> ConsoleSession | None:
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return None
        key = _key(session_id)
        session = self.live.get(key)
        now = self.clock()
        if session is None or not _good(session, now, credential):
            self.live.pop(key, None)
            return None
        return session

    async def renew(self, session_id: str | None, session: ConsoleSession) -> bool:
        key = _key(session_id or "")
        if self.live.get(key) is not session:
            return False
        session.seen = self.clock()
        self.live.move_to_end(key)
        return True

    async def close(self, session_id: str | None) -> None:
        if session_id:
            self.live.pop(_key(session_id), None)

    def _sweep(self, now: float) -> None:
        for key in [k for k, s in self.live.items() if s.expires() <= now]:
            del self.live[key]


class ValkeyConsoleSessions:
    """Console sessions shared by every replica through Valkey: one JSON value per session,
    rewritten with a fresh expiry on each use (never recreated: a signed-out session stays
    out), so Valkey drops it at its idle or absolute deadline. The deadlines are also checked
    here against ``clock``."""

    def __init__(
        self, client: Valkey, prefix: str = "celgate:cs:", clock: Callable[[], float] = time.time
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock

    async def open(self, operator: str, credential: str) -> tuple[str, ConsoleSession]:
        session_id, session = _new(operator, self.clock(), credential)
        await self._put(self.prefix + _key(session_id), session)
        return session_id, session

    async def get(self, session_id: str | None, credential: str | None) -> ConsoleSession | None:
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return None
        key = self.prefix + _key(session_id)
        raw = await self._do(self.client.get(key))
        session = _decode(raw)
        now = self.clock()
        if session is None or not _good(session, now, credential):
            if raw is not None and (session is None or session.expires() <= now):
                await self._do(self.client.delete(key))  # (a replica of another token's
            return None  # refusal leaves it to the replicas of its own)
        return session

    async def renew(self, session_id: str | None, session: ConsoleSession) -> bool:
        if not session_id or len(session_id) > MAX_ID_CHARS:
            return False
        session.seen = self.clock()
        # Rewritten only if still there (XX): a sign-out on another replica between the
        # read and this write must not bring the session back.
        return await self._put(self.prefix + _key(session_id), session, existing=True)

    async def close(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= MAX_ID_CHARS:
            await self._do(self.client.delete(self.prefix + _key(session_id)))

    async def _put(self, key: str, session: ConsoleSession, existing: bool = False) -> bool:
        """Store ``session`` with its expiry; with ``existing``, only over a stored one
        (False when it is gone)."""
        ttl = max(1, math.ceil(session.expires() - self.clock()))
        value = json.dumps(asdict(session))
        return bool(await self._do(self.client.set(key, value, ex=ttl, xx=existing)))

    async def _do(self, pending: object) -> object:
        try:
            return await pending  # type: ignore[misc]
        except BACKEND_ERRORS as exc:
            log.warning("console.session_store_down", error=type(exc).__name__)
            raise SessionStoreDown("console sessions are unavailable: try again") from exc


def _decode(raw: object) -> ConsoleSession | None:
    """A stored session, or None for nothing or anything that is not one."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        fields = json.loads(raw)
        return ConsoleSession(
            operator=str(fields["operator"]),
            csrf=str(fields["csrf"]),
            created=float(fields["created"]),
            seen=float(fields["seen"]),
            ends=float(fields["ends"]),
            credential=str(fields["credential"]),  # one stored before it had none: refused
        )
    except (ValueError, KeyError, TypeError):
        return None


def make_sessions(
    client: Valkey | None, key_prefix: str = "celgate:", clock: Callable[[], float] = time.time
) -> SessionStore:
    """Shared sessions when the gateway has a Valkey client, this process's otherwise."""
    if client is None:
        return ConsoleSessions(clock)
    return ValkeyConsoleSessions(client, prefix=key_prefix + "cs:", clock=clock)


def csrf_problem(
    session: ConsoleSession,
    method: str,
    headers: Mapping[str, str],
    host: str | None,
    token: str | None = None,
) -> str | None:
    """Why a cookie-authenticated request must be refused, or None. Every one carries the
    session's CSRF token (``token``, else the header), reads included: browsers send a
    cookie to every port of its host, so a page on another port of 127.0.0.1 had the cookie,
    read the token from ``/console/session`` and approved held calls with it (red-team wave
    58). The token is given once, at sign-in, to the console's own page, which keeps it in
    its origin's storage. An action must also come from that page (Origin, Sec-Fetch-Site)."""
    presented = token if token is not None else headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        return "missing or wrong CSRF token (sign in to the console again)"
    if method.upper() in SAFE_METHODS:
        return None
    if headers.get("sec-fetch-site") not in (None, "same-origin"):
        return "a console action must come from the console's own page"
    if not _same_origin(headers.get("origin"), host):
        return "a console action needs the Origin of the console's own page"
    return None


def _same_origin(origin: str | None, host: str | None) -> bool:
    if not origin or not host:
        return False
    parts = urlsplit(origin.strip().lower())
    return parts.scheme in ("http", "https") and parts.netloc == host.strip().lower()


def cookie_header(session_id: str, secure: bool, max_age: int) -> str:
    """The Set-Cookie value; an empty id with max_age 0 clears it."""
    parts = [f"{COOKIE}={session_id}", "Path=/", "HttpOnly", "SameSite=Strict"]
    parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
