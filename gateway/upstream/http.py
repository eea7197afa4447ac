"""One pooled HTTP client per Streamable HTTP upstream (``gateway.upstream.h1``)."""

from __future__ import annotations

import asyncio
import time

from gateway.config import ServerConfig
from gateway.upstream.h1 import H1Pool, UpstreamIOError


class HttpUpstream:
    """A Streamable HTTP upstream: its URL, its fixed headers and its connection pool."""

    def __init__(self, config: ServerConfig) -> None:
        assert config.url is not None
        self.name = config.name
        self.url = config.url
        self.headers = dict(config.headers)
        self.connect_timeout = min(config.timeout, 10.0)
        self.stateful: bool | None = None  # learned from initialize: does it issue sessions?
        self.last_error: str | None = None
        self.last_ok: float | None = None
        self.pool = H1Pool(self.url, self.connect_timeout)

    async def probe(self, wait: float = 2.0) -> bool:
        """Reachable when it answers HTTP at all (a 4xx to a bare GET still means it is up)."""
        headers = {"accept": "text/event-stream", **self.headers}
        try:
            async with asyncio.timeout(wait):
                response = await self.pool.request("GET", headers)
        except (UpstreamIOError, TimeoutError, OSError) as exc:
            self.last_error = type(exc).__name__
            return False
        response.close()  # an SSE stream it may have opened is dropped with the connection
        self.last_ok = time.time()
        self.last_error = None
        return True

    async def close(self) -> None:
        self.pool.close()
