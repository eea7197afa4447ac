"""Run celgate as a real process on a free loopback port, with a config written for the test."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.peers import PeerProcess, free_port, start_process


@dataclass
class GatewayProcess:
    peer: PeerProcess
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, server: str) -> str:
        return f"{self.base}/mcp/{server}"

    def records(self, event: str = "policy.decision") -> list[dict[str, Any]]:
        """Structured log lines the gateway wrote so far, of one event."""
        out = []
        text = self.log_path.read_text()
        # The gateway may be writing as we read: a last line without its newline is not whole.
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    out.append(record)
        return out

    def wait_records(
        self,
        count: int,
        event: str = "policy.decision",
        within: float = 10.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """The records (those ``where`` accepts) once at least ``count`` are written: a record
        can reach the log a moment after the answer reached the client."""
        deadline = time.monotonic() + within
        while True:
            found = [r for r in self.records(event) if where is None or where(r)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)


#: ``admin:`` for a gateway whose operator pages (metrics, /readyz's details) a test reads.
OPERATOR = {
    "token_sha256": hashlib.sha256(b"celgate-test-operator").hexdigest(),
    "metrics_public": True,
}


def initialize_body(
    name: str, version: str = "2025-11-25", msg_id: int = 1, **capabilities: Any
) -> dict[str, Any]:
    """A client's ``initialize`` request, for tests that speak the wire themselves."""
    params = {
        "protocolVersion": version,
        "capabilities": capabilities,
        "clientInfo": {"name": name, "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": msg_id, "method": "initialize", "params": params}


def write_config(
    directory: Path,
    policy: Mapping[str, Any] | str,
    servers: Mapping[str, Any],
    port: int,
    **extra: Any,
) -> Path:
    policy_path = directory / "policy.yaml"
    text = policy if isinstance(policy, str) else yaml.safe_dump(dict(policy))
    policy_path.write_text(text)
    listen = {"host": "127.0.0.1", "port": port, **extra.pop("listen", {})}
    config = {"listen": listen, "policy": "policy.yaml", "servers": dict(servers), **extra}
    if "grants" not in extra:
        config.setdefault("anonymous", True)  # local tests without keys opt in, as users must
    path = directory / "celgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_healthy(port: int, proc: PeerProcess, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    url = f"http://127.0.0.1:{port}/healthz"
    while time.monotonic() < end:
        if not proc.alive():
            raise RuntimeError(f"gateway exited:\n{proc.output()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=0.5) as resp:
            if resp.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not become healthy:\n{proc.output()}")


@contextlib.contextmanager
def run_gateway(
    directory: Path,
    policy: Mapping[str, Any] | str,
    servers: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    **extra: Any,
) -> Iterator[GatewayProcess]:
    for attempt in range(PORT_TRIES):
        # (a free port found here may be taken by another process before the gateway binds
        # it: another port, then, rather than a failed test)
        port = free_port()
        config = write_config(directory, policy, servers, port, **dict(extra))
        log_path = directory / f"gateway-{port}.log"
        cmd = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--json-logs"]
        peer = start_process(cmd, port=None, url="", extra_env=env, log_path=log_path)
        try:
            wait_healthy(port, peer)
        except RuntimeError:
            peer.stop()
            if attempt + 1 < PORT_TRIES and _PORT_TAKEN in peer.output():
                continue
            raise
        break
    try:
        yield GatewayProcess(peer, port, log_path)
    finally:
        peer.stop()


PORT_TRIES = 3
_PORT_TAKEN = "the port is already in use"


def text_of(result: types.CallToolResult) -> str:
    """The text parts of a tool result, joined."""
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def decision_of(result: types.CallToolResult) -> dict[str, Any]:
    """The decision the gateway put in a result it wrote itself (``_meta``, never the
    structured content, which clients check against the tool's output schema)."""
    assert result.structured_content is None
    assert result.meta is not None
    part: dict[str, Any] = result.meta["io.celgate/decision"]
    return part


def hidden_refusal(gw: GatewayProcess, result: types.CallToolResult) -> dict[str, Any]:
    """A refusal of a tool hidden from its caller: told as a name no server has (rule
    ``route``, error ``no_tool``); returns its decision record, which keeps what decided."""
    told = decision_of(result)
    assert result.is_error and (told["rule"], told["error"]) == ("route", "no_tool"), told
    (record,) = gw.wait_records(1, where=lambda r: r["decision_id"] == told["decision_id"])
    return record


def calls_in(log: Path) -> list[dict[str, Any]]:
    """The tools/call requests the test upstream wrote to its ``UPSTREAM_CALL_LOG``."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def client(url: str, key: str | None = None, **kwargs: Any) -> Client:
    """The SDK's client over real HTTP, optionally with an agent key; no response cache."""
    kwargs.setdefault("cache", None)
    if key is None:
        return Client(url, **kwargs)
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(url, http_client=http), **kwargs)
