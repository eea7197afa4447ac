"""One pooled HTTP client per Streamable HTTP upstream (``gateway.upstream.h1``), and its
health as last probed (``UpstreamHealth``: up or down, and why, for ``/readyz`` and the
console; a change of state is logged once, naming the URL)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import structlog

from gateway.config import ServerConfig
from gateway.errors import UpstreamIOError
from gateway.upstream.h1 import H1Pool, H1Response
from gateway.upstream.sessions import SessionTable


class Pool(Protocol):
    """How an upstream is asked: ``H1Pool`` over HTTP, ``AsgiPool`` for a stdio bridge."""

    async def request(
        self, method: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> H1Response: ...

    def close(self) -> None: ...


log = structlog.get_logger("celgate.upstream")


@dataclass
class UpstreamHealth:
    """The last probe's answer: ``up`` (None before the first probe), the cause when down,
    and since when it has been so."""

    up: bool | None = None
    error: str | None = None
    since: float | None = None


def shown_url(url: str) -> str:
    """A URL as shown to operators and in logs: no user info, no query (either may hold a
    credential)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def probe_error(exc: BaseException) -> str:
    """Why a probe failed, in one line."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time"
    text = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: Sessions being ended upstream at once (``HttpUpstream.end_sessions``).
MAX_ENDING = 64


#: The caller's grant, on requests to an upstream in this process (never a client's header:
#: the relay forwards only an allow-list of those).
GRANT_HEADER = "x-celgate-grant"


class HttpUpstream:
    """A Streamable HTTP upstream: its URL, its fixed headers and its connection pool."""

    def __init__(self, config: ServerConfig) -> None:
        assert config.url is not None
        self.name = config.name
        self.url = config.url
        self.headers = dict(config.headers)
        self.connect_timeout = min(config.timeout, 10.0)
        self.timeout = config.timeout
        #: How long a request's stream may go without a message before the relay ends it
        #: (None: the upstream keeps that deadline itself).
        self.silence: float | None = config.timeout
        self.stateful: bool | None = None  # learned from initialize: does it issue sessions?
        # Whether requests carry the caller's grant (GRANT_HEADER): only an upstream in this
        # process (a stdio bridge, which counts processes per grant), never one on a network.
        self.takes_grant = False
        self.health = UpstreamHealth()
        #: Handshake-era sessions callers hold here through the relay (None: not counted,
        #: as for a stdio bridge, which counts its processes).
        self.sessions: SessionTable | None = SessionTable(
            config.max_sessions,
            config.max_sessions_per_grant,
            config.session_idle,
            give_way=config.session_give_way,
        )
        self._ending: set[asyncio.Task[None]] = set()
        # servers.X.timeout bounds every request's wait for its answer's head (relay, probe,
        # learn_sessions); a stream may then idle.
        self.pool: Pool = H1Pool(
            self.url, self.connect_timeout, ca_file=config.ca_file, head_timeout=config.timeout
        )

    async def probe(self, wait: float = 2.0) -> bool:
        """Reachable when it answers HTTP at all (a 4xx to a bare GET still means it is up)."""
        headers = {"accept": "text/event-stream", **self.headers}
        try:
            async with asyncio.timeout(wait):
                response = await self.pool.request("GET", headers)
        except (UpstreamIOError, TimeoutError, OSError) as exc:
            return self.report(False, probe_error(exc))
        response.close()  # an SSE stream it may have opened is dropped with the connection
        return self.report(True, None)

    def target(self) -> dict[str, str]:
        """What this upstream is, for operators: its transport and URL."""
        return {"transport": "http", "url": shown_url(self.url)}

    def report(self, up: bool, error: str | None, quiet: bool = False) -> bool:
        """Keep a probe's result; a change of state or cause is logged once (unless
        ``quiet``: the stdio supervisor logs its own)."""
        health = self.health
        if (up, error) != (health.up, health.error):
            health.since = time.time()
            if not quiet and up and health.up is not None:
                log.info("upstream.up", server=self.name, **self.target())
            elif not quiet and not up:
                log.error("upstream.down", server=self.name, error=error, **self.target())
        health.up, health.error = up, error
        return up

    def health_view(self) -> dict[str, Any]:
        """For ``/readyz`` and the console."""
        state = {True: "up", False: "down", None: "unknown"}[self.health.up]
        view: dict[str, Any] = {"state": state, **self.target(), "since": self.health.since}
        if self.health.error is not None:
            view["error"] = self.health.error
        return view

    async def learn_sessions(self, wait: float = 5.0) -> bool | None:
        """Ask the upstream, with a throwaway initialize, whether it issues session ids.

        Every replica learns it at start, so a legacy-era call without a session is refused
        before any policy answer even on a replica that has not relayed an initialize yet.
        """
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": "celgate-probe",
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "celgate", "version": "probe"},
                },
            }
        ).encode()
        headers = {
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            **self.headers,
        }
        try:
            async with asyncio.timeout(wait):
                response = await self.pool.request("POST", headers, body)
                sid = response.headers.get("mcp-session-id")
                response.close()
                if response.status < 400 and self.stateful is None:
                    self.stateful = sid is not None
                if sid is not None:
                    await self._delete(sid)
        except (UpstreamIOError, TimeoutError, OSError):
            return None
        return self.stateful

    async def _delete(self, sid: str) -> None:
        ended = await self.pool.request("DELETE", {**self.headers, "mcp-session-id": sid})
        ended.close()

    def in_use(self, owner: str, sid: str) -> AbstractContextManager[None]:
        """A request of ``owner``'s in progress on session ``sid``, as the upstream should know
        (a stdio server's bridge; an HTTP upstream's sessions are counted in ``sessions``)."""
        return nullcontext()

    def end_sessions(self, sids: list[str]) -> None:
        """Tell the upstream these sessions are over: a DELETE each, in the background, at
        most ``MAX_ENDING`` at once (past that a session is only forgotten here, and the
        upstream keeps it until it ends it itself)."""
        for sid in sids:
            if len(self._ending) >= MAX_ENDING:
                log.warning("upstream.session_not_ended", server=self.name)
                continue
            task = asyncio.ensure_future(self._end(sid))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def _end(self, sid: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._delete(sid)
        except (UpstreamIOError, TimeoutError, OSError) as exc:
            log.info("upstream.session_not_ended", server=self.name, error=probe_error(exc))

    async def close(self) -> None:
        self.pool.close()
