"""Console sessions: the admin token is posted once, and the browser holds only a random id.

A session is a random id (the cookie, ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over
HTTPS), kept here by its SHA-256 with the operator's name, a CSRF token and two deadlines: idle
(``IDLE_SECONDS`` without a request) and absolute (``MAX_SECONDS`` after sign-in). At most
``MAX_SESSIONS`` live at once; past that the least recently used one is ended. Sessions live
in this process: with several replicas, a browser must stay on one (sticky routing), or sign in
again where it lands.

A state-changing request made with the cookie must also carry the session's CSRF token in
``X-CSRF-Token`` and an ``Origin`` of the page's own origin (``csrf_problem``): ``SameSite``
keeps other sites' requests from carrying the cookie, and the header and Origin are checked in
case a browser or a proxy does not honour it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

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


class ConsoleSessions:
    """Live console sessions by the hash of their id, least recently used first."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.live: OrderedDict[str, ConsoleSession] = OrderedDict()

    def open(self, operator: str) -> tuple[str, ConsoleSession]:
        """A new session: its id (for the cookie only) and its state."""
        now = self.clock()
        self._sweep(now)
        while len(self.live) >= MAX_SESSIONS:
            self.live.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        name = " ".join(operator.split())[:OPERATOR_CHARS] or "console"
        session = ConsoleSession(name, secrets.token_urlsafe(32), now, now, now + MAX_SECONDS)
        self.live[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> ConsoleSession | None:
        """The live session of a cookie value (its idle deadline pushed back), or None."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self.live.get(key)
        now = self.clock()
        if session is None or session.expires() <= now:
            self.live.pop(key, None)
            return None
        session.seen = now
        self.live.move_to_end(key)
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self.live.pop(_key(session_id), None)

    def _sweep(self, now: float) -> None:
        for key in [k for k, s in self.live.items() if s.expires() <= now]:
            del self.live[key]


def csrf_problem(
    session: ConsoleSession, method: str, headers: Mapping[str, str], host: str | None
) -> str | None:
    """Why a cookie-authenticated request must be refused as cross-site, or None."""
    if method.upper() in SAFE_METHODS:
        return None
    if headers.get("sec-fetch-site") not in (None, "same-origin"):
        return "a console action must come from the console's own page"
    if not _same_origin(headers.get("origin"), host):
        return "a console action needs the Origin of the console's own page"
    token = headers.get(CSRF_HEADER) or ""
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        return "missing or wrong CSRF token"
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
