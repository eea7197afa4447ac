"""A real authorization server on loopback for the OAuth tests: oauth2-mock-server (npm), run
by tests/peers_ts/authserver.mjs with Node 22 from .cache/ (scripts/install_node.sh installs
both; the fixture runs it on first use, and skips only when npm is absent).

    with auth_server({"reader": {"roles": ["reader"]}}) as auth:
        token = auth.token("reader", resource=gw.url("up"))
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.gateway_proc import GatewayProcess, wait_healthy, write_config
from tests.peers import CACHE, NODE, REPO_ROOT, TS_DIR, PeerProcess, free_port, start_process

PREFIX = CACHE / "oauth2-mock-server"
MARKER = PREFIX / "node_modules" / "oauth2-mock-server" / "package.json"


def auth_server_ready() -> str | None:
    """None when Node 22 and oauth2-mock-server are installed (installing them if npm is
    there), else why they cannot be."""
    if NODE.exists() and MARKER.exists():
        return None
    if shutil.which("npm") is None:
        return "npm is not installed: the authorization server cannot be set up"
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "install_node.sh")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not MARKER.exists():
        return f"scripts/install_node.sh failed: {done.stderr[-500:]}"
    return None


@dataclass
class AuthServer:
    peer: PeerProcess
    url: str  # the issuer

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        data = json.dumps(dict(body)).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out

    def token(self, client: str, resource: str, **extra: Any) -> str:
        """A JWT the server signs for ``client`` (``ttl``, ``iss``, ``scope`` may override)."""
        return str(
            self._post("/_token", {"client": client, "resource": resource, **extra})["access_token"]
        )

    def opaque(self, client: str, resource: str, ttl: int = 3600) -> str:
        """An opaque token only introspection can tell about."""
        body = {"client": client, "resource": resource, "ttl": ttl}
        return str(self._post("/_opaque", body)["access_token"])

    def rotate(self) -> str:
        """Replace the signing key; the new kid."""
        return str(self._post("/_rotate", {})["kid"])

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + "/_stats", timeout=10) as resp:
            out: dict[str, int] = json.loads(resp.read())
            return out

    def jwks(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/jwks", timeout=10) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out


@contextlib.contextmanager
def auth_server(clients: Mapping[str, Any]) -> Iterator[AuthServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(NODE), str(TS_DIR / "authserver.mjs"), str(PREFIX), str(port), json.dumps(clients)]
    peer = start_process(argv, port=port, url=url)
    try:
        yield AuthServer(peer, url)
    finally:
        peer.stop()


class _Sink(BaseHTTPRequestHandler):
    """A stateless JSON MCP upstream with one tool, ``echo``, recording every request's
    headers: what a gateway forwarded is there to be read."""

    seen: list[dict[str, str]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any = None) -> None:
        body = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(405, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no"}})

    def do_POST(self) -> None:
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        message = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        method, msg_id = message.get("method"), message.get("id")
        if "id" not in message:
            self._send(202)
            return
        result: dict[str, Any]
        if method == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "sink", "version": "1"},
            }
        elif method == "tools/list":
            schema = {"type": "object", "properties": {"text": {"type": "string"}}}
            result = {"tools": [{"name": "echo", "inputSchema": schema}]}
        elif method == "tools/call":
            text = str(message["params"].get("arguments", {}).get("text", ""))
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        else:
            result = {}
        self._send(200, {"jsonrpc": "2.0", "id": msg_id, "result": result})


@contextlib.contextmanager
def header_sink() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """(its MCP URL, the headers of every POST it received)."""
    seen: list[dict[str, str]] = []
    handler = type("Sink", (_Sink,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mcp", seen
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def oauth_gateway(
    directory: Path, policy: str, servers: Mapping[str, Any], oauth: Mapping[str, Any], **extra: Any
) -> Iterator[GatewayProcess]:
    """The gateway as a process with an ``oauth`` section whose resource is its own URL."""
    port = free_port()
    full = {"resource": f"http://127.0.0.1:{port}", **oauth}
    extra.setdefault("grants", {})
    config = write_config(directory, policy, servers, port, oauth=full, **extra)
    log_path = directory / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--json-logs"]
    peer = start_process(cmd, port=None, url="", log_path=log_path)
    try:
        wait_healthy(port, peer)
        yield GatewayProcess(peer, port, log_path)
    finally:
        peer.stop()
