"""The upstream sessions of handshake-era ``/mcp`` sessions: opened per server on first use
with the client's own capabilities and client info, ended with the client's session or after
it idled. What ``initialize`` tells every client a server offers (capabilities, instructions)
is what it told a session of the gateway's own (``learn``), never another client's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from mcp_types.version import LATEST_HANDSHAKE_VERSION

from gateway.edge.agg.gate import Gate
from gateway.edge.agg.merge import MAX_INSTRUCTIONS, bounded_capabilities, cut_instructions
from gateway.edge.agg.sessions import AggSession, Link, Sessions
from gateway.edge.agg.upcall import (
    UpcallDown,
    UpcallFailed,
    UpcallRefused,
    body_of,
    exchange,
    post_once,
    upcall,
)
from gateway.edge.forward import usable_session_id
from gateway.edge.inband import in_band, takes_forms
from gateway.pipeline.gateway import Gateway
from gateway.telemetry.audit import log
from gateway.wire import jsonrpc as rpc

REAP_SECONDS = 30.0
RESTORE_AT_ONCE = 8  # requests telling a new link what the client set up, at once


#: How often a server whose link failed is read again in the background (a throwaway
#: ``initialize``): soon after, then doubling to at most this while it stays down.
FAILING_FIRST = 2.0
FAILING_MOST = 30.0


class Links:
    """Every session's links to the upstreams, and what each server said it offers."""

    def __init__(self, gw: Gateway, sessions: Sessions) -> None:
        self.gw = gw
        self.sessions = sessions
        self.known: dict[str, dict[str, Any]] = {}  # each server's initialize result
        self.gate = Gate()  # when servers not learned yet are asked again
        #: Servers whose last link could not be opened (down, or hung): no caller waits for
        #: one again until it answers a reading in the background, through its own gate (a
        #: hung stdio server made every /mcp session's first list wait its whole timeout).
        self.failing: dict[str, Gate] = {}
        self._closing: set[asyncio.Future[None]] = set()  # sessions given way, ending

    def relearn(self) -> None:
        """Servers not learned yet (down, or hung, at start) asked again, in the background,
        through the gate: every client's ``initialize`` waited for them (a hung server's
        whole timeout each time), and each asked again, however many came."""
        if all(name in self.known for name in self.gw.upstreams):
            return

        async def read() -> bool:
            before = len(self.known)
            await self.learn()
            return len(self.known) > before

        self.gate.start(read)

    async def link(self, session: AggSession, server: str) -> Link | None:
        """This session's upstream session with ``server``, opened once on first use
        (concurrent first uses wait for the one opening); None while it cannot be opened."""
        found = session.links.get(server)
        if found is not None:
            return found
        pending = session.opening.get(server)
        if pending is None and self.skipped(server):
            return None
        if pending is None:
            pending = asyncio.ensure_future(self._open(session, server))
            session.opening[server] = pending
        return await asyncio.shield(pending)

    async def _open(self, session: AggSession, server: str) -> Link | None:
        upstream = self.gw.upstreams[server]
        params = {"protocolVersion": session.version, **session.client}
        try:
            answer, headers = await exchange(
                upstream, "initialize", params, session.version, grant=session.owner
            )
            result = answer.get("result")
            if not isinstance(result, dict):
                raise UpcallFailed(f"upstream {server!r} refused initialize")
            agreed = result.get("protocolVersion")
            version = session.version
            if isinstance(agreed, str) and agreed in rpc.HANDSHAKE_VERSIONS:  # else: ours
                version = agreed
            sid = headers.get("mcp-session-id")
            if sid is not None and not usable_session_id(sid.strip()):
                raise UpcallFailed(f"upstream {server!r} gave an unusable session id")
            link = Link(server, sid.strip() if sid else None, version)
            # (Not kept as what the server offers every client: this answer is to one
            # client's session, its clientInfo, its user; learn() asks with the gateway's own.)
            done = body_of("notifications/initialized", {}, version, None, None)
            status = await post_once(upstream, "notifications/initialized", done, version, link.sid)
            if status == 0:  # down, or silent past its timeout: this session's first list
                # waited for it, and every new session's again (red-team wave 61)
                self._end_soon(link)
                raise UpcallDown(f"upstream {server!r} did not take notifications/initialized")
        except UpcallRefused as exc:
            log.warning("aggregate.upstream_full", server=server, error=str(exc))
            session.refused[server] = (exc.status, str(exc))
            return None
        except UpcallFailed as exc:
            log.warning("aggregate.upstream_down", server=server, error=str(exc))
            if isinstance(exc, UpcallDown):  # not one a caller's own parameters made fail
                self._failed(server)
            return None
        finally:
            session.opening.pop(server, None)
        self.failing.pop(server, None)
        if session.sid not in self.sessions.table:  # closed while this was opening
            await self._end_link(link)
            return None
        session.links[server] = link
        if link.sid is not None:  # in-band approvals ask a client that takes elicitation
            elicits = takes_forms(session.client.get("capabilities"))
            in_band(self.gw.extras).clients.remember(server, session.owner, link.sid, elicits)
        if session.on_link is not None:
            session.on_link(link)
        return link

    async def relink(self, session: AggSession, lost: Link) -> str | None:
        """A new upstream session in place of ``lost``, which its server no longer knows (it
        restarted): the upstream's 404 would have told the client that its ``/mcp`` session
        was gone, and kept every later call to that server failing. Its session id, or None
        when none could be opened."""
        if session.links.get(lost.server) is lost:
            del session.links[lost.server]
            session.forget_upcalls(lost.server)  # a late answer to one is refused (400)
            log.warning("aggregate.link_lost", server=lost.server)
        # Its 404 says it is up again: were it skipped as failing (a session met it down
        # while it restarted), the call failed "lost its session" until a reading in the
        # background answered (red-team wave 37).
        self.failing.pop(lost.server, None)
        link = await self.link(session, lost.server)
        if link is None:
            return None
        await self._restore(session, link)
        return link.sid

    async def _restore(self, session: AggSession, link: Link) -> None:
        """Tell a new link what the client set up on the lost one: its log level, and the
        resources it subscribed to (a server that does not take one is not asked again)."""
        upstream = self.gw.upstreams[link.server]
        asks: list[tuple[str, dict[str, Any]]] = []
        if session.log_level is not None:
            asks.append(("logging/setLevel", {"level": session.log_level}))
        for uri in list(session.subscribed.get(link.server, {})):
            asks.append(("resources/subscribe", {"uri": uri}))

        few = asyncio.Semaphore(RESTORE_AT_ONCE)

        async def one(method: str, params: dict[str, Any]) -> None:
            async with few:
                try:
                    await upcall(upstream, method, params, link.version, session=link.sid)
                except UpcallFailed:
                    log.warning("aggregate.restore_failed", server=link.server, method=method)

        await asyncio.gather(*(one(method, params) for method, params in asks))

    def skipped(self, server: str) -> bool:
        """Whether ``server`` is left out for now (met down); a reading in the background
        (when due) asks it again, a list in a session of its own."""
        failing = self.failing.get(server)
        if failing is None:
            return False
        failing.start(lambda: self._learn_one(server, probe=True))
        return True

    def met_down(self, server: str) -> None:
        """A session's link to ``server`` gave no answer in time (or could not be reached):
        the merged lists of every session skip it until a reading in the background gets
        one. Only a link that could not be opened was so marked: a server that opened links
        and then hung made every list, of every session, wait its whole timeout, every time
        (red-team wave 61)."""
        self._failed(server)

    def _failed(self, server: str) -> None:
        """A link to ``server`` could not be opened: callers skip it until a reading in the
        background gets an answer (the first due at once, then ``FAILING_FIRST`` doubling to
        ``FAILING_MOST``: a server back after a long outage was skipped for up to 320 s)."""
        if server not in self.failing:
            gate = self.failing[server] = Gate(FAILING_FIRST, FAILING_MOST)
            gate.last = gate.clock() - gate.every  # the first reading is due now

    async def learn(self) -> None:
        """At start: what each server offers, from a session opened for that alone and ended
        at once, so that the first client's ``initialize`` need not wait for every server
        (a server down now is asked again later, see ``relearn``)."""
        await asyncio.gather(
            *(self._learn_one(s) for s in self.gw.upstreams if s not in self.known)
        )

    async def _learn_one(self, server: str, probe: bool = False) -> bool:
        """Ask ``server`` what it offers (kept if not known yet); whether it answered (and,
        with ``probe``, answered a ``tools/list`` too: a server whose lists hang answers
        ``initialize`` all the same)."""
        upstream = self.gw.upstreams[server]
        version = LATEST_HANDSHAKE_VERSION
        params: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "celgate", "version": "1"},
        }
        try:
            answer, headers = await exchange(upstream, "initialize", params, version)
        except UpcallFailed:
            return False
        result = answer.get("result")
        sid = headers.get("mcp-session-id")
        sid = sid.strip() if sid else None
        answered = isinstance(result, dict)
        if answered and probe:
            answered = await self._lists(server, version, sid)
        if isinstance(result, dict):
            self.known.setdefault(server, _kept(server, result))
        if answered:
            self.failing.pop(server, None)
        if sid:
            await post_once(upstream, None, b"", version, sid, verb="DELETE")
        return answered

    async def _lists(self, server: str, version: str, sid: str | None) -> bool:
        """Whether ``server`` answers a ``tools/list`` (any answer: it is up) in the session
        ``sid`` just opened."""
        upstream = self.gw.upstreams[server]
        done = body_of("notifications/initialized", {}, version, None, None)
        if await post_once(upstream, "notifications/initialized", done, version, sid) == 0:
            return False
        try:
            await upcall(upstream, "tools/list", {}, version, session=sid)
        except UpcallDown:
            return False
        except UpcallFailed:
            pass  # it answered, if not with a list
        return True

    async def close(self, session: AggSession) -> None:
        """End the session and every upstream session it opened."""
        self.sessions.drop(session.sid)
        if session.stop is not None:
            session.stop()
        links = list(session.links.values())
        session.links.clear()
        await asyncio.gather(*(self._end_link(link) for link in links))

    def close_soon(self, session: AggSession) -> None:
        """End ``session`` now (its place is free at once) and its upstream sessions in the
        background: a caller's new session does not wait on the servers' DELETEs."""
        self._background(self.close(session))

    def _end_soon(self, link: Link) -> None:
        """End ``link`` in the background (its server may be slow to take the DELETE too)."""
        self._background(self._end_link(link))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _end_link(self, link: Link) -> None:
        if link.sid is not None:
            upstream = self.gw.upstreams.get(link.server)
            if upstream is not None:
                await post_once(upstream, None, b"", link.version, link.sid, verb="DELETE")

    async def reap(self) -> None:
        """Close sessions a client abandoned (no DELETE, nothing in flight, no stream)."""
        while True:
            await asyncio.sleep(REAP_SECONDS)
            for session in self.sessions.idle(time.monotonic()):
                await self.close(session)


def _kept(server: str, result: dict[str, Any]) -> dict[str, Any]:
    """What ``/mcp`` keeps of a server's ``initialize`` result for every client's: its
    capabilities (each bounded) and instructions (cut): what a server answered once was
    rewritten into every client's answer, however large (red-team wave 39)."""
    kept: dict[str, Any] = {}
    instructions = result.get("instructions")
    if isinstance(instructions, str):
        if len(instructions) > MAX_INSTRUCTIONS:
            log.warning("aggregate.instructions_cut", server=server, size=len(instructions))
        kept["instructions"] = cut_instructions(instructions)
    caps = result.get("capabilities")
    if isinstance(caps, dict):
        kept["capabilities"] = bounded_capabilities(server, caps)
    return kept
