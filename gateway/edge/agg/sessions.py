"""Handshake-era sessions on ``/mcp``: what the gateway holds for one client session.

A session is created by the client's ``initialize`` and bound to its grant from that answer
on. It holds, per server, the upstream session it opened on first use (``Link``); the client's
requests in flight (a cancellation goes to the server that has the request); and the
server-to-client requests waiting for the client's answer, under ids of the gateway's making
(two servers both asking "id 0" must not meet at the client). Sessions are capped per grant
and in total, and ended by DELETE or after ``aggregate.idle_timeout`` without use; all they
hold is a few small tables, bounded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.wire import jsonrpc as rpc
from gateway.wire.jsonrpc import BadMessage

#: Server-to-client requests one session keeps waiting for answers (the oldest is forgotten).
MAX_UPCALLS = 256
MAX_SUBSCRIBED = 1000
#: Client requests one session tracks for cancellation.
MAX_INFLIGHT = 1024
UPCALL_PREFIX = "agg-"


@dataclass(slots=True)
class Link:
    """This client session's session with one upstream."""

    server: str
    sid: str | None  # None: the upstream holds no sessions
    version: str  # the protocol version the upstream agreed to


@dataclass(slots=True)
class AggSession:
    sid: str
    grant: str
    client: dict[str, Any]  # the client's initialize params: capabilities, clientInfo
    version: str
    last_used: float
    links: dict[str, Link] = field(default_factory=dict)
    opening: dict[str, asyncio.Future[Link | None]] = field(default_factory=dict)
    # servers that refused a link for now (a quota): the status and message, for the caller
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    inflight: dict[str, str] = field(default_factory=dict)  # request id (as text) -> server
    upcalls: dict[str, tuple[str, Any]] = field(default_factory=dict)  # ours -> (server, id)
    upcall_ids: dict[tuple[str, str], str] = field(default_factory=dict)  # reverse
    #: A progress token (JSON) of servers' requests -> our id for each request -> its server
    #: (two servers' requests may name one token: whose progress it is is then unknown).
    upcall_tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    #: What the client set up on each server's session, told again on a new link (a
    #: relink, after the server restarted): a relink hid the restart, and the client's
    #: subscriptions and log level were gone without a word (red-team wave 64). The URIs
    #: it subscribed to, ``MAX_SUBSCRIBED`` a server at most (the oldest forgotten first).
    subscribed: dict[str, dict[str, None]] = field(default_factory=dict)
    log_level: Any = None  # the last logging/setLevel's level
    counter: int = 0
    owner: str = ""  # the grant and agent it counts against (Identity.owner)
    streaming: bool = False  # a GET stream is open
    #: Requests and streams of the client's in progress on it, of any kind: its idle time
    #: counts from when the last one ended. From when it began, a session whose call waited
    #: minutes for approval was closed, or gave way, right after its answer (red-team wave 40).
    busy: int = 0
    on_link: Callable[[Link], None] | None = None  # a GET stream's hook for new links
    stop: Callable[[], None] | None = None  # ends the GET stream (the session is closing)

    def outward_upcall(self, server: str, upstream_id: Any, token: Any = None) -> str:
        """The id the client sees for a server's request (the same id again for a repeat);
        ``token``, the request's progress token, if it has one: the client's progress on it
        goes to that server alone."""
        key = (server, json.dumps(upstream_id))
        known = self.upcall_ids.get(key)
        if known is not None:
            return known
        self.counter += 1
        ours = f"{UPCALL_PREFIX}{self.counter}"
        if len(self.upcalls) >= MAX_UPCALLS:
            self.answered(next(iter(self.upcalls)))
        self.upcalls[ours] = (server, upstream_id)
        self.upcall_ids[key] = ours
        if isinstance(token, str | int) and not isinstance(token, bool):
            self.upcall_tokens.setdefault(json.dumps(token), {})[ours] = server
        return ours

    def progress_of(self, token: Any) -> str | None:
        """The server whose request the client's progress on ``token`` is of, if one alone's."""
        if not isinstance(token, str | int) or isinstance(token, bool):
            return None
        servers = set(self.upcall_tokens.get(json.dumps(token), {}).values())
        return servers.pop() if len(servers) == 1 else None

    def subscription(self, server: str, method: str, uri: Any) -> None:
        """A ``resources/subscribe`` (or ``unsubscribe``) of ``uri`` routed to ``server``."""
        if not isinstance(uri, str):
            return
        mine = self.subscribed.setdefault(server, {})
        mine.pop(uri, None)
        if method == "resources/subscribe":
            mine[uri] = None
            while len(mine) > MAX_SUBSCRIBED:
                del mine[next(iter(mine))]

    def forget_upcalls(self, server: str) -> None:
        """``server``'s link is gone (it restarted): its requests died with it. A new link's
        first request has the ids the old one's had, and took their ids here: the client's
        answer to the old question (a consent) went to the new one (red-team wave 67)."""
        for ours in [o for o, (named, _) in self.upcalls.items() if named == server]:
            self.answered(ours)

    def known_upcall(self, server: str, upstream_id: Any) -> str | None:
        return self.upcall_ids.get((server, json.dumps(upstream_id)))

    def answered(self, ours: Any) -> tuple[str, Any] | None:
        """The (server, its id) a client's answer belongs to, forgotten once taken."""
        if not isinstance(ours, str):
            return None
        found = self.upcalls.pop(ours, None)
        if found is not None:
            self.upcall_ids.pop((found[0], json.dumps(found[1])), None)
            for token in [t for t, each in self.upcall_tokens.items() if ours in each]:
                del self.upcall_tokens[token][ours]
                if not self.upcall_tokens[token]:
                    del self.upcall_tokens[token]
        return found

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        """A request or stream of the client's in progress on this session."""
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            self.last_used = time.monotonic()

    def track(self, msg_id: Any, server: str) -> Callable[[], None]:
        """Note a request routed to ``server`` (a client's cancel of it goes there) until the
        returned callable is called."""
        key = str(msg_id)  # (the id's text: how servers key their streams)
        if key in self.inflight:
            # Two requests of the session under one id (1 and "1" alike: a server's streams
            # are by the id's text): the server's answer to the first went to the second.
            msg = "a request with this id is in progress in this session"
            raise BadMessage(rpc.INVALID_REQUEST, msg, msg_id=msg_id)
        if len(self.inflight) >= MAX_INFLIGHT:
            return _nothing  # not noted: a cancel of it reaches no server
        self.inflight[key] = server

        def done() -> None:
            self.inflight.pop(key, None)

        return done


def _nothing() -> None:
    return None


#: How long a session must have been idle to give way to its caller's new one at its cap.
GIVE_WAY_SECONDS = 10.0


class Sessions:
    """Every live handshake-era session on ``/mcp``, with the caps."""

    def __init__(
        self,
        max_total: int,
        max_per_grant: int,
        idle_seconds: float,
        give_way: float = GIVE_WAY_SECONDS,
    ) -> None:
        self.give_way = give_way
        self.max_total = max_total
        self.max_per_grant = max_per_grant
        self.idle_seconds = idle_seconds
        self.table: dict[str, AggSession] = {}
        self.per_grant: dict[str, int] = {}

    def create(
        self, grant: str, client: dict[str, Any], version: str, owner: str | None = None
    ) -> AggSession:
        """A new session of ``grant``, counted against ``owner`` (the grant and, within it,
        the agent: one user of an OAuth client cannot take the places its other users
        share)."""
        if len(self.table) >= self.max_total:
            cap = self.max_total
            msg = f"/mcp holds {cap} sessions (aggregate.max_sessions): close one first"
            raise BadMessage(rpc.INVALID_REQUEST, msg, status=429)
        owner = owner or grant
        held = self.per_grant.get(owner, 0)
        if held >= self.max_per_grant:
            msg = (
                f"this agent of grant {grant!r} holds {self.max_per_grant} sessions on /mcp "
                f"(aggregate.max_sessions_per_grant), all in use or used in the last "
                f"{self.give_way:g} s: close one (DELETE), or try again once one has "
                "been idle that long"
            )
            raise BadMessage(rpc.INVALID_REQUEST, msg, status=429)
        sid = secrets.token_urlsafe(18)
        session = AggSession(sid, grant, client, version, time.monotonic(), owner=owner)
        self.table[sid] = session
        self.per_grant[owner] = held + 1
        return session

    def stale_of(self, owner: str, now: float) -> AggSession | None:
        """At ``owner``'s cap, its least recently used session idle ``give_way`` seconds
        (nothing in flight, no stream open), which gives way to its new one: the TypeScript
        SDK and the Inspector never end their sessions (no DELETE), and an agent using them
        was refused every new session once it had opened its cap's worth within
        ``idle_seconds`` (red-team wave 39)."""
        if self.per_grant.get(owner, 0) < self.max_per_grant:
            return None
        horizon = now - self.give_way
        stale = [
            s
            for s in self.table.values()
            if s.owner == owner
            and s.last_used < horizon
            and not (s.inflight or s.streaming or s.busy)
        ]
        return min(stale, key=lambda s: s.last_used) if stale else None

    def get(self, sid: str, grant: str) -> AggSession | None:
        session = self.table.get(sid)
        if session is None or session.grant != grant:
            return None
        session.last_used = time.monotonic()
        return session

    def drop(self, sid: str) -> AggSession | None:
        session = self.table.pop(sid, None)
        if session is not None:
            left = self.per_grant.get(session.owner, 1) - 1
            if left > 0:
                self.per_grant[session.owner] = left
            else:
                self.per_grant.pop(session.owner, None)
        return session

    def idle(self, now: float) -> list[AggSession]:
        """Sessions unused for ``idle_seconds`` with nothing in flight and no stream open."""
        horizon = now - self.idle_seconds
        return [
            s
            for s in self.table.values()
            if s.last_used < horizon and not s.inflight and not s.streaming and not s.busy
        ]
