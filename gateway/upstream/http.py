"""One pooled HTTP client per Streamable HTTP upstream (aiohttp: a third of httpx's CPU per
call on the relay, measured in EDGE.md)."""

from __future__ import annotations

import time

import aiohttp

from gateway.config import ServerConfig

# SSE streams hold a connection each for as long as they are open: size the pool for them.
POOL_SIZE = 512


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
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=POOL_SIZE, limit_per_host=POOL_SIZE)
            # No read timeout: an SSE stream may be quiet for minutes and is still healthy.
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.connect_timeout, sock_connect=self.connect_timeout
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def probe(self, wait: float = 2.0) -> bool:
        """Reachable when it answers HTTP at all (a 4xx to a bare GET still means it is up)."""
        try:
            client_timeout = aiohttp.ClientTimeout(total=wait)
            headers = {"Accept": "text/event-stream", **self.headers}
            async with self.session.get(self.url, headers=headers, timeout=client_timeout) as r:
                r.close()
            self.last_ok = time.time()
            self.last_error = None
            return True
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.last_error = type(exc).__name__
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
