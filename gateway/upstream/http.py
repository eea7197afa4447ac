"""One pooled HTTP client per Streamable HTTP upstream (``gateway.upstream.h1``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Protocol

import httpx2
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.config import ServerConfig
from gateway.upstream.h1 import H1Pool, H1Response, UpstreamIOError


class Pool(Protocol):
    """How an upstream is asked: ``H1Pool`` over HTTP, ``AsgiPool`` for a stdio bridge."""

    async def request(
        self, method: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> H1Response: ...

    def close(self) -> None: ...


class HttpUpstream:
    """A Streamable HTTP upstream: its URL, its fixed headers and its connection pool."""

    def __init__(self, config: ServerConfig) -> None:
        assert config.url is not None
        self.name = config.name
        self.url = config.url
        self.headers = dict(config.headers)
        self.connect_timeout = min(config.timeout, 10.0)
        self.stateful: bool | None = None  # learned from initialize: does it issue sessions?
        # servers.X.timeout bounds every request's wait for its answer's head (relay, probe,
        # learn_sessions); a stream may then idle.
        self.pool: Pool = H1Pool(
            self.url, self.connect_timeout, ca_file=config.ca_file, head_timeout=config.timeout
        )

    def sdk_client(self) -> httpx2.AsyncClient:
        """An httpx2 client for the SDK's ``streamable_http_client(self.url, ...)``."""
        return create_mcp_http_client(headers=dict(self.headers))

    async def probe(self, wait: float = 2.0) -> bool:
        """Reachable when it answers HTTP at all (a 4xx to a bare GET still means it is up)."""
        headers = {"accept": "text/event-stream", **self.headers}
        try:
            async with asyncio.timeout(wait):
                response = await self.pool.request("GET", headers)
        except (UpstreamIOError, TimeoutError, OSError):
            return False
        response.close()  # an SSE stream it may have opened is dropped with the connection
        return True

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
                    ended = await self.pool.request(
                        "DELETE", {**self.headers, "mcp-session-id": sid}
                    )
                    ended.close()
        except (UpstreamIOError, TimeoutError, OSError):
            return None
        return self.stateful

    async def close(self) -> None:
        self.pool.close()
