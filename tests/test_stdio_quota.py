"""Processes of a stdio server are counted per grant (``max_processes_per_grant``) and in
all (``max_processes``); at either cap a grant's own least recently used idle session gives
way, never another grant's, and a grant with nothing of its own to give is refused with a
clear error while everyone else keeps their sessions."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx

from tests.gateway_proc import run_gateway
from tests.servers.test_servers_smoke import eventually
from tests.test_stdio_bridge import POLICY, _discovered, stdio_server

KEYS = {grant: f"cgk_quota-{grant}-key" for grant in ("a", "b", "c")}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "quota", "version": "1"},
    },
}


def _open(http: httpx.Client, grant: str) -> httpx.Response:
    auth = {**HEADERS, "authorization": f"Bearer {KEYS[grant]}"}
    return http.post("/mcp/st", json=INIT, headers=auth)


def _post(http: httpx.Client, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return http.post(path, json=body, headers=headers)


def _alive(http: httpx.Client, grant: str, opened: httpx.Response) -> bool:
    """Whether the session still answers (a ping on it)."""
    headers = {
        **HEADERS,
        "authorization": f"Bearer {KEYS[grant]}",
        "mcp-session-id": opened.headers["mcp-session-id"],
    }
    ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    return http.post("/mcp/st", json=ping, headers=headers).status_code == 200


async def test_quota_per_grant_and_eviction_of_the_grants_own(tmp_path: Path) -> None:
    servers = {"st": stdio_server(max_processes=3, max_processes_per_grant=2)}
    grants = {g: {"key_sha256": hashlib.sha256(k.encode()).hexdigest()} for g, k in KEYS.items()}
    with run_gateway(tmp_path, POLICY, servers, grants=grants) as gw:
        await eventually(lambda: _discovered(gw), 60)
        with httpx.Client(base_url=gw.base, timeout=30) as http:
            a1, a2 = _open(http, "a"), _open(http, "a")
            a3 = _open(http, "a")  # a's quota is 2: a's own oldest idle session gives way
            assert a3.status_code == 200, a3.text
            assert not _alive(http, "a", a1)
            assert _alive(http, "a", a2) and _alive(http, "a", a3)
            b1 = _open(http, "b")  # 3 processes now: the server's cap
            b2 = _open(http, "b")  # at the cap: b's own idle session gives way, not a's
            assert b2.status_code == 200, b2.text
            assert not _alive(http, "b", b1)
            assert _alive(http, "a", a2) and _alive(http, "a", a3) and _alive(http, "b", b2)
            c1 = _open(http, "c")  # at the cap with nothing of its own to give: refused
            assert c1.status_code == 503
            assert "max_processes=3" in c1.json()["error"]["message"]
            assert _alive(http, "a", a2) and _alive(http, "a", a3) and _alive(http, "b", b2)
            # on /mcp too the caller is told which cap it met, not that the server is down
            auth = {**HEADERS, "authorization": f"Bearer {KEYS['c']}"}
            opened = _post(http, "/mcp", INIT, auth)
            assert opened.status_code == 200, opened.text
            auth["mcp-session-id"] = opened.headers["mcp-session-id"]
            echo = {"name": "st__echo", "arguments": {"text": "hi"}}
            body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": echo}
            refused = _post(http, "/mcp", body, auth)
            assert refused.status_code == 503, refused.text
            assert refused.json()["id"] == 5
            assert "max_processes=3" in refused.json()["error"]["message"]
        evicted = gw.records("stdio.session_evicted")
        assert len(evicted) == 2
