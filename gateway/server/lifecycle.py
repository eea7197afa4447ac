"""Background work of a running gateway: the tool catalogue refreshed from the upstreams, the
upstream health probe and the policy file watcher.

Each runs under ``supervise``: an exception is logged (``background.failed``, with the
exception) and the step is retried with backoff, and it never cancels the task group the
components share, so a failing watcher cannot take the relay down. Each component's state is
kept in a ``Components`` registry on ``gateway.extras["components"]``; ``/readyz`` answers 503
naming any component that has stopped for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from gateway.edge.clientview import MAX_LISTED_TOOLS
from gateway.inventory.discovery import CutList, list_all
from gateway.inventory.pins import too_deep, unreadable_definition
from gateway.pipeline.gateway import Gateway
from gateway.ratelimit.client import check_access, check_clock, check_eviction
from gateway.server.reload import exception_fields, reloading
from gateway.telemetry.audit import log

CATALOG_SECONDS = 300.0
HEALTH_SECONDS = 15.0
#: Retry delays after a failure: doubling from the first, capped.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0


@dataclass
class ComponentState:
    """``running`` (last step fine), ``retrying`` (last step failed) or ``stopped``."""

    state: str = "running"
    failures: int = 0  # consecutive
    last_error: str | None = None

    def view(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures, "last_error": self.last_error}


class Components:
    """Health of the background components, by name, for ``/readyz``."""

    def __init__(self) -> None:
        self.states: dict[str, ComponentState] = {}

    def add(self, name: str) -> ComponentState:
        state = self.states[name] = ComponentState()
        return state

    def stopped(self) -> list[str]:
        return sorted(name for name, s in self.states.items() if s.state == "stopped")

    def report(self) -> dict[str, dict[str, Any]]:
        return {name: s.view() for name, s in sorted(self.states.items())}


def components(gateway: Gateway) -> Components:
    found = gateway.extras.get("components")
    if not isinstance(found, Components):
        found = gateway.extras["components"] = Components()
    return found


def backoff(failures: int) -> float:
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 16)))


async def supervise(
    gateway: Gateway, name: str, step: Callable[[], Awaitable[Any]], every: float
) -> None:
    """Run ``step`` then wait ``every`` seconds, forever; failures are logged and retried."""
    state = components(gateway).add(name)
    try:
        while True:
            try:
                await step()
            except Exception as exc:
                state.state, state.failures = "retrying", state.failures + 1
                state.last_error = type(exc).__name__
                fields = exception_fields(exc)
                log.error("background.failed", component=name, failures=state.failures, **fields)
                await anyio.sleep(backoff(state.failures))
                continue
            state.state, state.failures = "running", 0
            await anyio.sleep(every)
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:
        # Not an Exception and not a cancellation: the component is gone for good. The
        # others keep running; /readyz says which one stopped.
        state.state, state.last_error = "stopped", type(exc).__name__
        log.critical("background.stopped", component=name, **exception_fields(exc))
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise


async def refresh_catalog(gateway: Gateway, only: str | None = None) -> int:
    """Ask every upstream (or ``only`` that one) for its tools; returns how many were seen."""
    names = [only] if only is not None else list(gateway.upstreams)
    urls = {name: gateway.upstreams[name].url for name in names}
    found = await list_all({n: gateway.config.servers[n] for n in names}, urls)
    seen = 0
    for server, tools in found.items():
        if tools is None:
            continue
        cut = isinstance(tools, CutList)
        if len(tools) > MAX_LISTED_TOOLS:  # each is digested and classified on the loop
            log.warning("tools.too_many", server=server, tools=len(tools))
            tools, cut = tools[:MAX_LISTED_TOOLS], True
        if cut:  # a pinned tool past the cut is unverified: refused until a listing shows it
            gateway.pins.unread(server, {str(tool.get("name", "")) for tool in tools})
        deep = [tool for tool in tools if too_deep(tool)]
        if deep:  # left out, as the lists callers get leave them out; a change to the pins
            log.warning("tools.too_deep", server=server, tools=len(deep))
            for tool in deep:
                gateway.pins.observe(server, unreadable_definition(str(tool.get("name", ""))))
            tools = [tool for tool in tools if not too_deep(tool)]
        pins = Counter(gateway.observe(server, tool, own=True)[1] for tool in tools)
        seen += len(tools)
        log.info(
            "catalog.refreshed",
            server=server,
            tools=len(tools),
            newly_pinned=pins["new"],
            changed=pins["changed"],
        )
    return seen


async def readiness(gateway: Gateway) -> tuple[bool, dict[str, Any]]:
    """Whether the gateway is ready, and what is behind it: each upstream's state, its URL
    (no credentials) or command and the cause when down, the background components. The
    details are operator data (``/readyz`` shows them to operators, ``/admin/health`` always)."""
    health = await recent_health(gateway)
    # Background components (Components): one stopped for good is not ready.
    registry = gateway.extras.get("components")
    stopped = registry.stopped() if isinstance(registry, Components) else []
    ready = all(health.values()) and not stopped
    body: dict[str, Any] = {
        "status": "ready" if ready else "not ready",
        "policy_revision": gateway.policy.revision,
        "upstreams": {n: ("up" if ok else "down") for n, ok in health.items()},
        "upstream_health": {n: gateway.upstreams[n].health_view() for n in health},
        "components": registry.report() if isinstance(registry, Components) else {},
    }
    if stopped:
        body["stopped"] = stopped
    return ready, body


async def check_upstreams(gateway: Gateway) -> dict[str, bool]:
    """Probe every upstream; the result feeds ``celgate_upstream_up`` and ``/readyz``."""
    names = list(gateway.upstreams)
    results = await asyncio.gather(*(gateway.upstreams[n].probe() for n in names))
    health = dict(zip(names, results, strict=True))
    if gateway.metrics is not None:
        for name, up in health.items():
            gateway.metrics.upstream_up.labels(name).set(1 if up else 0)
    return health


#: How long one round of probes answers ``/readyz``: anyone may ask, as often as they like,
#: and each round is a request to every upstream (with the gateway's own credentials).
HEALTH_FRESH_SECONDS = 1.0


class _RecentHealth:
    """The last round of probes and when it ended, and the round under way. A caller is
    answered from the last round at once; when it is older than ``HEALTH_FRESH_SECONDS`` a
    new round starts, which the next callers are answered from (upstreams see at most one
    round a second however many ask). Only the first round is waited for. Every caller used
    to wait for a round under way: with one upstream that never answers (2 s a probe),
    anyone without a key held a thousand connections busy on ``/readyz`` that way, none of
    them idle enough to give way, and honest clients were refused (red-team wave 32)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.at = float("-inf")
        self.health: dict[str, bool] = {}
        self.round: asyncio.Future[dict[str, bool]] | None = None

    async def get(self, gateway: Gateway) -> dict[str, bool]:
        if self.round is None and self.clock() - self.at >= HEALTH_FRESH_SECONDS:
            self.round = asyncio.ensure_future(check_upstreams(gateway))
            self.round.add_done_callback(self._ended)
        if self.at == float("-inf") and self.round is not None:  # none yet: the first
            return await asyncio.shield(self.round)
        return self.health

    def _ended(self, done: asyncio.Future[dict[str, bool]]) -> None:
        self.round = None
        if done.cancelled() or done.exception() is not None:
            return  # (told to the callers of a first round; a later one: the last stands)
        self.health = done.result()
        self.at = self.clock()


async def recent_health(gateway: Gateway) -> dict[str, bool]:
    """Each upstream's health from the last round of probes (see ``_RecentHealth``)."""
    found = gateway.extras.get("recent_health")
    if not isinstance(found, _RecentHealth):
        found = gateway.extras["recent_health"] = _RecentHealth(time.monotonic)
    return await found.get(gateway)


#: A call to a tool the catalogue lacks reads its server's tools again, at most this often,
#: and half as often each time a reading found no tool it did not know, down to once in
#: ``RELIST_MAX_SECONDS`` (a made-up name started a stdio server anew every 10 s).
RELIST_SECONDS = 10.0
RELIST_MAX_SECONDS = 320.0


def relister(
    gateway: Gateway, clock: Callable[[], float] = time.monotonic
) -> Callable[[str], Awaitable[None]]:
    """``gateway.relist``: one server's tools read again, one reading at a time per server
    (callers meanwhile wait for it), and not again within ``RELIST_SECONDS`` (names come from
    callers: made-up ones must not make the gateway list an upstream on every call)."""
    last: dict[str, float] = {}
    every: dict[str, float] = {}  # each server's interval now
    running: dict[str, asyncio.Future[int]] = {}

    def names(server: str) -> set[str]:
        return {name for (where, name) in getattr(gateway, "catalog", {}) if where == server}

    async def relist(server: str) -> None:
        if server not in gateway.upstreams:
            return
        pending = running.get(server)
        if pending is None:
            if clock() - last.get(server, float("-inf")) < every.get(server, RELIST_SECONDS):
                return
            last[server] = clock()
            known = names(server)
            pending = running[server] = asyncio.ensure_future(refresh_catalog(gateway, server))

            def done(_: object) -> None:
                running.pop(server, None)
                found_new = bool(names(server) - known) or server not in every
                interval = every.get(server, RELIST_SECONDS) * 2
                every[server] = RELIST_SECONDS if found_new else min(interval, RELIST_MAX_SECONDS)

            pending.add_done_callback(done)
        with contextlib.suppress(Exception):  # a failed reading is logged by list_all
            await asyncio.shield(pending)

    return relist


@asynccontextmanager
async def background(gateway: Gateway) -> AsyncIterator[None]:
    # Before serving: which upstreams issue sessions (see HttpUpstream.learn_sessions).
    await asyncio.gather(*(up.learn_sessions() for up in gateway.upstreams.values()))
    valkey = gateway.extras.get("valkey")
    if valkey is not None and await check_access(valkey):
        await check_eviction(valkey)
        await check_clock(valkey)
    gateway.relist = relister(gateway)
    async with reloading(gateway) as reloader, anyio.create_task_group() as tg:
        tg.start_soon(
            supervise, gateway, "catalog_refresh", _bound(refresh_catalog, gateway), CATALOG_SECONDS
        )
        tg.start_soon(
            supervise, gateway, "upstream_health", _bound(check_upstreams, gateway), HEALTH_SECONDS
        )
        tg.start_soon(supervise, gateway, "policy_watcher", reloader.watch_once, 0.0)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


def _bound(
    fn: Callable[[Gateway], Awaitable[Any]], gateway: Gateway
) -> Callable[[], Awaitable[Any]]:
    async def step() -> Any:
        return await fn(gateway)

    return step
