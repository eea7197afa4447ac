"""The stdio bridge is no side door: it serves the gateway alone.

A stdio server's bridge listens on a loopback port inside the gateway process. Any local
process can reach that port, so it must refuse everyone but the gateway (a secret only the
gateway knows, and its own ``Host`` against DNS rebinding), before a child process is touched.
The bridge port is found the way an attacker would: among the gateway's listening sockets.

Also here: on the shared 2026-07-28 process a caller cannot cancel another caller's call, and
a call the child never answers gets an error after ``servers.X.timeout``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.gateway_proc import GatewayProcess, calls_in, client, run_gateway, text_of
from tests.servers.test_servers_smoke import eventually
from tests.test_stdio_bridge import POLICY, children, stdio_server

MODERN = "2026-07-28"
TIMEOUT = 3.0  # servers.st.timeout of the impatient gateway: TestDeadline waits this long
SIDEDOOR_POLICY = POLICY + "  hang: {action: allow}\n  slow_progress: {action: allow}\n"
MARKER = "through the side door"


def listening_ports(pid: int) -> set[int]:
    """The TCP ports ``pid`` listens on: its socket inodes matched in /proc/<pid>/net/tcp."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture(scope="module")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sidedoor-calls") / "calls.jsonl"


@pytest.fixture(scope="module")
def gateway(call_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("sidedoor-gw")
    with run_gateway(directory, SIDEDOOR_POLICY, {"st": stdio_server(call_log)}) as gw:
        yield gw


@pytest.fixture(scope="module")
def bridge_port(gateway: GatewayProcess) -> int:
    ports = listening_ports(gateway.peer.pid) - {gateway.port}
    logged = {
        int(r["url"].rsplit(":", 1)[1].split("/")[0]) for r in gateway.records("stdio.bridge")
    }
    assert ports == logged and len(ports) == 1, (ports, logged)
    return ports.pop()


def _rpc(method: str, msg_id: int | None, params: dict[str, Any]) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if msg_id is not None:
        message["id"] = msg_id
    return json.dumps(message).encode()


INITIALIZE = _rpc(
    "initialize",
    1,
    {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "intruder", "version": "0"},
    },
)
CALL = _rpc("tools/call", 2, {"name": "echo", "arguments": {"text": MARKER}})
MODERN_CALL = _rpc(
    "tools/call",
    3,
    {
        "name": "echo",
        "arguments": {"text": MARKER},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN},
    },
)
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


async def _post(url: str, body: bytes, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(url, content=body, headers={**JSON_HEADERS, **headers})


class TestTheGatewaysOwnTraffic:
    """The gateway's own requests (session probe, health probes, relay) carry the secret."""

    async def test_start_up_was_never_refused(self, gateway: GatewayProcess) -> None:
        await eventually(lambda: bool(gateway.records("catalog.refreshed")), 20)
        assert not gateway.records("stdio.bridge_refused")
        refreshed = [r for r in gateway.records("catalog.refreshed") if r["server"] == "st"]
        assert refreshed and refreshed[-1]["tools"] > 0

    @pytest.mark.parametrize("mode", ["legacy", "auto"])
    async def test_calls_through_the_gateway_work(
        self, gateway: GatewayProcess, mode: str, call_log: Path
    ) -> None:
        async with client(gateway.url("st"), mode=mode) as c:
            result = await c.call_tool("echo", {"text": f"front door {mode}"})
        assert text_of(result) == f"front door {mode}"
        assert any(r.get("arguments") == {"text": f"front door {mode}"} for r in calls_in(call_log))

    async def test_the_aggregate_works(self, gateway: GatewayProcess) -> None:
        async with client(f"{gateway.base}/mcp", mode="legacy") as c:
            result = await c.call_tool("st__echo", {"text": "aggregate"})
        assert text_of(result) == "aggregate"


class TestTheSideDoor:
    """Requests straight to the bridge port are refused before any child is touched."""

    @pytest.mark.parametrize(
        ("body", "headers"),
        [
            (INITIALIZE, {}),
            (CALL, {"mcp-session-id": "guessed"}),
            (MODERN_CALL, {"mcp-protocol-version": MODERN}),
        ],
        ids=["initialize", "call-in-session", "stateless-call"],
    )
    async def test_without_the_secret(
        self,
        gateway: GatewayProcess,
        bridge_port: int,
        call_log: Path,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        before = children(gateway.peer.pid)
        url = f"http://127.0.0.1:{bridge_port}/mcp"
        for auth in (None, "Bearer guessed", "Bearer " + "A" * 43, "Basic Y2VsZ2F0ZQ=="):
            extra = {**headers, **({"authorization": auth} if auth else {})}
            response = await _post(url, body, **extra)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["message"]
        assert not any(r.get("arguments") == {"text": MARKER} for r in calls_in(call_log))
        assert children(gateway.peer.pid) <= before  # no process was started for it

    async def test_a_foreign_host(self, gateway: GatewayProcess, bridge_port: int) -> None:
        """A DNS-rebinding page names its own host: refused, whatever else it sends."""
        url = f"http://127.0.0.1:{bridge_port}/mcp"
        for host in ("attacker.example", f"attacker.example:{bridge_port}", "localhost"):
            response = await _post(url, INITIALIZE, host=host)
            assert response.status_code == 403, (host, response.text)
        refused = gateway.records("stdio.bridge_refused")
        assert {r["status"] for r in refused} >= {403}

    async def test_other_methods_too(self, bridge_port: int) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            url = f"http://127.0.0.1:{bridge_port}/mcp"
            for method in ("GET", "DELETE", "OPTIONS", "PUT"):
                response = await http.request(method, url, headers={"mcp-session-id": "x"})
                assert response.status_code == 401, method


async def _modern_cancel(gateway: GatewayProcess, request_id: str) -> int:
    params = {"requestId": request_id, "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}
    body = _rpc("notifications/cancelled", None, params)
    response = await _post(gateway.url("st"), body, **{"mcp-protocol-version": MODERN})
    return response.status_code


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway of its own: few requests have reached its shared process (ids are easy to
    guess), and ``timeout`` is short."""
    directory = tmp_path_factory.mktemp("impatient-gw")
    servers = {"st": stdio_server(directory / "calls.jsonl", timeout=TIMEOUT)}
    with run_gateway(directory, SIDEDOOR_POLICY, servers) as gw:
        yield gw


class TestCancellation:
    async def test_a_caller_cannot_cancel_another_callers_call(
        self, impatient: GatewayProcess
    ) -> None:
        """B cancels every id the shared process has used; A's call still finishes.

        Before the fix, B's ``notifications/cancelled`` reached the child as they were, the
        child cancelled A's call under its remapped id and never answered: A hung."""
        started = anyio.Event()
        statuses: list[int] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            started.set()

        async def caller_b() -> None:
            await started.wait()
            for n in range(1, 40):
                statuses.append(await _modern_cancel(impatient, f"c{n}"))

        async with client(impatient.url("st"), mode="auto") as a:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(caller_b)
                    args = {"steps": 3, "delay_ms": 500}
                    result = await a.call_tool("slow_progress", args, progress_callback=progress)
        assert text_of(result) == "done after 3 steps"
        assert set(statuses) <= {202}


class TestDeadline:
    @pytest.mark.parametrize("mode", ["legacy", "auto"])
    async def test_a_call_never_answered_gets_an_error(
        self, impatient: GatewayProcess, mode: str
    ) -> None:
        """The child is told to stop, the caller gets an error, and the session goes on."""
        call_log = impatient.log_path.parent / "calls.jsonl"
        cancelled_before = _hang_cancels(call_log)
        async with client(impatient.url("st"), mode=mode) as c:
            await c.call_tool("echo", {"text": "before"})  # the process is up
            with anyio.fail_after(TIMEOUT + 10):
                with pytest.raises(Exception) as failed:
                    await c.call_tool("hang", {})
            assert f"did not answer within {TIMEOUT:g} s" in str(failed.value)
            await eventually(lambda: _hang_cancels(call_log) > cancelled_before, 10)
            assert text_of(await c.call_tool("echo", {"text": "after"})) == "after"


def _hang_cancels(log: Path) -> int:
    return sum(1 for r in calls_in(log) if r.get("event") == "cancelled")
