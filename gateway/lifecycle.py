"""Background work of a running gateway: the tool catalogue refreshed from the upstreams, and
policy hot reload."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from gateway.audit import log
from gateway.discovery import list_all
from gateway.reload import reloading
from gateway.runtime import Gateway

CATALOG_SECONDS = 300.0
HEALTH_SECONDS = 15.0


async def refresh_catalog(gateway: Gateway) -> int:
    """Ask every upstream for its tools; returns how many were seen."""
    urls = {name: up.url for name, up in gateway.upstreams.items()}
    found = await list_all(gateway.config.servers, urls)
    seen = 0
    for server, tools in found.items():
        if tools is None:
            continue
        pins = Counter(gateway.observe(server, tool)[1] for tool in tools)
        seen += len(tools)
        log.info(
            "catalog.refreshed",
            server=server,
            tools=len(tools),
            newly_pinned=pins["new"],
            changed=pins["changed"],
        )
    return seen


async def check_upstreams(gateway: Gateway) -> dict[str, bool]:
    """Probe every upstream; the result feeds ``celgate_upstream_up`` and ``/readyz``."""
    names = list(gateway.upstreams)
    results = await asyncio.gather(*(gateway.upstreams[n].probe() for n in names))
    health = dict(zip(names, results, strict=True))
    if gateway.metrics is not None:
        for name, up in health.items():
            gateway.metrics.upstream_up.labels(name).set(1 if up else 0)
    return health


async def _health_forever(gateway: Gateway) -> None:
    while True:
        await check_upstreams(gateway)
        await anyio.sleep(HEALTH_SECONDS)


async def _refresh_forever(gateway: Gateway) -> None:
    while True:
        await refresh_catalog(gateway)
        await anyio.sleep(CATALOG_SECONDS)


@asynccontextmanager
async def background(gateway: Gateway) -> AsyncIterator[None]:
    # Before serving: which upstreams issue sessions (see HttpUpstream.learn_sessions).
    await asyncio.gather(*(up.learn_sessions() for up in gateway.upstreams.values()))
    async with reloading(gateway), anyio.create_task_group() as tg:
        tg.start_soon(_refresh_forever, gateway)
        tg.start_soon(_health_forever, gateway)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
