"""The stdio bridge is no side door: nothing listens but the gateway's own port.

A stdio server's bridge is an ASGI app the gateway calls in process
(``gateway.upstream.inproc``), bound to no socket: no local process, and no web page through
DNS rebinding, can reach a stdio server except through the gateway and its policy. Looked for
the way an attacker would: every listening socket (TCP, TCP6, Unix) of the gateway process and
of each of its children, while sessions, the shared process and the aggregate are in use.

Also here: on the shared 2026-07-28 process a caller cannot cancel another caller's call, and
a call the child never answers gets an error after ``servers.X.timeout``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
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
SO_ACCEPTCON = 0x10000  # /proc/net/unix Flags: a listening socket


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes  # the process is gone
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _rows(pid: int, table: str) -> list[list[str]]:
    try:
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return []
    return [line.split() for line in lines]


def listening(pid: int) -> tuple[set[int], set[str]]:
    """The TCP ports and Unix sockets ``pid`` listens on: its socket inodes (from
    /proc/<pid>/fd) matched in /proc/<pid>/net/{tcp,tcp6,unix}."""
    inodes = _socket_inodes(pid)
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        for fields in _rows(pid, table):
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    unix: set[str] = set()
    for fields in _rows(pid, "unix"):
        flags, inode = int(fields[3], 16), fields[6]
        if flags & SO_ACCEPTCON and inode in inodes:
            unix.add(fields[7] if len(fields) > 7 else f"(unnamed, inode {inode})")
    return ports, unix


@pytest.fixture(scope="module")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sidedoor-calls") / "calls.jsonl"


@pytest.fixture(scope="module")
def gateway(call_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("sidedoor-gw")
    with run_gateway(directory, SIDEDOOR_POLICY, {"st": stdio_server(call_log)}) as gw:
        yield gw


def _rpc(method: str, msg_id: int | None, params: dict[str, Any]) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if msg_id is not None:
        message["id"] = msg_id
    return json.dumps(message).encode()


JSON_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


async def _post(url: str, body: bytes, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(url, content=body, headers={**JSON_HEADERS, **headers})


class TestTheGatewaysOwnTraffic:
    """The gateway's own requests to the bridge (start-up probes, relay, aggregate) work."""

    async def test_start_up_reached_the_server(self, gateway: GatewayProcess) -> None:
        await eventually(lambda: bool(gateway.records("catalog.refreshed")), 20)
        refreshed = [r for r in gateway.records("catalog.refreshed") if r["server"] == "st"]
        assert refreshed and refreshed[-1]["tools"] > 0
        assert not gateway.records("inproc.app_failed")

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


class TestNothingListens:
    def test_the_detector_sees_a_listening_unix_socket(self, tmp_path: Path) -> None:
        """The check below would notice a bridge moved to a Unix socket."""
        path = tmp_path / "s.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))
            assert str(path) not in listening(os.getpid())[1]
            sock.listen()
            assert str(path) in listening(os.getpid())[1]

    async def test_only_the_gateways_port(self, gateway: GatewayProcess) -> None:
        """With a session's process, the shared process and an aggregate session's process
        all running, the one listening socket among them is the gateway's configured port."""
        async with (
            client(gateway.url("st"), mode="legacy") as legacy,
            client(gateway.url("st"), mode="auto") as modern,
            client(f"{gateway.base}/mcp", mode="legacy") as aggregate,
        ):
            await legacy.call_tool("echo", {"text": "session"})
            await modern.call_tool("echo", {"text": "shared"})
            await aggregate.call_tool("st__echo", {"text": "aggregate"})
            pids = {gateway.peer.pid} | children(gateway.peer.pid)
            found = {pid: listening(pid) for pid in pids}
        assert len(pids) >= 4, pids  # the gateway and three stdio processes
        ports = {port for tcp, _ in found.values() for port in tcp}
        unix = {path for _, paths in found.values() for path in paths}
        assert ports == {gateway.port}, found
        assert listening(gateway.peer.pid)[0] == {gateway.port}
        assert not unix, found

    async def test_no_childs_stdio_can_be_opened_again_through_proc(
        self, gateway: GatewayProcess
    ) -> None:
        """A stdio server runs as the gateway's user: with its siblings' stdin and stdout
        pipes, it could open ``/proc/<pid>/fd/0`` of another and write calls no policy saw,
        or read another agent's answers. The children's stdio are sockets (uvloop's
        socketpairs), which Linux does not open again through ``/proc`` (red-team wave 71
        found it held by that alone: this keeps it so)."""
        async with client(gateway.url("st"), mode="legacy") as legacy:
            await legacy.call_tool("echo", {"text": "a child"})
            kids = children(gateway.peer.pid)
            assert kids
            for pid in kids:
                for fd in (0, 1):
                    with contextlib.suppress(FileNotFoundError):  # (a child just gone)
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        assert not target.startswith("pipe:"), (pid, fd, target)


async def _opened(url: str) -> dict[str, str]:
    """A handshake-era session's headers, its handshake done."""
    opened = await _post(url, _rpc("initialize", 1, INITIALIZE))
    session = {
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    await _post(url, _rpc("notifications/initialized", None, {}), **session)
    return session


class TestOneMessageOneLine:
    async def test_a_carriage_return_smuggles_no_call_into_the_child(
        self, gateway: GatewayProcess, call_log: Path
    ) -> None:
        """A raw CR is whitespace between JSON tokens to the gateway, and a line break to the
        SDK's stdio reader: the client's bytes went to the child as "one line" (no LF in
        them), and a denied ``tools/call`` between two CRs in a notification ran, with no
        decision. What reaches a child is written anew."""
        url = gateway.url("st")
        session = await _opened(url)
        smuggled = _rpc("tools/call", 7777, {"name": "delete_item", "arguments": {"id": "cr"}})
        note = b'{"jsonrpc":"2.0","method":"notifications/roots/list_changed","params":{"p":\r'
        body = note + smuggled + b"\r}}"
        assert (await _post(url, body, **session)).status_code == 202
        echo = _rpc("tools/call", 2, {"name": "echo", "arguments": {"text": "after the CR"}})
        answer = await _post(url, echo, **session)
        assert "after the CR" in answer.text  # the child read on, in order, past the notice
        ran = [r.get("arguments") for r in calls_in(call_log)]
        assert {"text": "after the CR"} in ran and {"id": "cr"} not in ran


class TestOneAnswerOneRequest:
    async def test_an_id_in_progress_is_not_taken_again(
        self, gateway: GatewayProcess, call_log: Path
    ) -> None:
        """A second request under the id of one in progress took the child's answer to the
        first: the gateway's own merged ``tools/list`` answered a call that took its id, with
        every tool the policy hides (red-team wave 63). The second is refused."""
        url = gateway.url("st")
        session = await _opened(url)
        hangs = sum(1 for c in calls_in(call_log) if c.get("tool") == "hang")
        async with anyio.create_task_group() as tg:
            first = _rpc("tools/call", 5, {"name": "hang", "arguments": {}})
            tg.start_soon(lambda: _post(url, first, **session))  # answered when cancelled
            await eventually(
                lambda: sum(1 for c in calls_in(call_log) if c.get("tool") == "hang") > hangs, 10
            )
            again = _rpc("tools/call", 5, {"name": "echo", "arguments": {"text": "twice"}})
            refused = await _post(url, again, **session)
            assert refused.status_code == 400, refused.text
            assert "in progress" in refused.json()["error"]["message"]
            cancel = _rpc("notifications/cancelled", None, {"requestId": 5})
            await _post(url, cancel, **session)
            tg.cancel_scope.cancel()
        # Cancelled, its answer may come yet: a request under its id would take it (a late
        # tools/list, whole, as a call's result: red-team wave 64). MCP forbids the reuse.
        refused = await _post(url, again, **session)
        assert refused.status_code == 400 and "cancelled" in refused.text, refused.text
        ran = [c.get("arguments") for c in calls_in(call_log)]
        assert {"text": "twice"} not in ran


INITIALIZE = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "cr", "version": "1"},
}


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
