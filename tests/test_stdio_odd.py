"""A stdio server's odd message (an id or a progress token that is a list or an object, a
lone surrogate in an answer) costs at most the call it belongs to: every stdio server, that
one included, goes on serving. A real gateway process; ``tests.servers.odd_stdio``."""

from __future__ import annotations

import contextlib
import inspect
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway.cli.run import run_command
from gateway.telemetry.childlog import STDERR_LINES_PER_SECOND
from tests.gateway_proc import GatewayProcess, client, initialize_body, run_gateway, text_of
from tests.peers import REPO_ROOT

POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {}\n'
ODD = {
    "command": sys.executable,
    "args": ["-m", "tests.servers.odd_stdio"],
    "env": {"PYTHONPATH": str(REPO_ROOT)},
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("stdio-odd")
    with run_gateway(tmp, POLICY, {"x": ODD, "y": ODD}) as gw:
        yield gw


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("trigger", ["oddid", "oddreq", "oddtok", "sur"])
async def test_an_odd_message_does_not_stop_the_stdio_servers(
    gw: GatewayProcess, trigger: str, mode: str
) -> None:
    async with client(gw.url("x"), mode=mode) as c:
        try:
            odd = await c.call_tool("echo", {"text": trigger})
        except Exception:
            odd = None
        if trigger != "sur":  # the odd message is dropped, the real answer comes
            assert odd is not None and text_of(odd) == f"echo: {trigger}"
        after = await c.call_tool("echo", {"text": "plain"})
        assert text_of(after) == "echo: plain"
    async with client(gw.url("y"), mode=mode) as c:
        assert text_of(await c.call_tool("echo", {"text": "plain"})) == "echo: plain"
    with urllib.request.urlopen(f"{gw.base}/readyz", timeout=5) as ready:
        assert ready.status == 200


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_junk_on_stdout_is_logged_a_few_lines_a_second(gw: GatewayProcess, mode: str) -> None:
    """500 lines that are no message, at once: at most 50 become log lines (as stderr's)."""
    before = len(gw.records("stdio.not_json"))
    async with client(gw.url("x"), mode=mode) as c:
        assert text_of(await c.call_tool("echo", {"text": "junk"})) == "echo: junk"
    logged = len(gw.records("stdio.not_json")) - before
    assert 1 <= logged <= STDERR_LINES_PER_SECOND * 2  # a second's window may end mid-burst


def _post(gw: GatewayProcess, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    base = {"accept": "application/json, text/event-stream", **headers}
    return httpx.post(gw.base + path, json=body, headers=base, timeout=10)


@pytest.mark.parametrize("path", ["/mcp/x", "/mcp"])
@pytest.mark.parametrize(
    ("meta", "params", "method"),
    [
        ({"io.modelcontextprotocol/protocolVersion": {}}, {}, "tools/list"),
        ({"io.modelcontextprotocol/protocolVersion": [1]}, {}, "tools/list"),
        ({"progressToken": [1]}, {"name": "echo", "arguments": {}}, "tools/call"),
        ({"progressToken": {"a": 1}}, {"name": "echo", "arguments": {}}, "tools/call"),
        ({"progressToken": True}, {"name": "echo", "arguments": {}}, "tools/call"),
        ({}, {"requestId": {"a": 1}}, "notifications/cancelled"),
    ],
)
def test_a_client_token_that_is_no_key_is_refused(
    gw: GatewayProcess, path: str, meta: dict[str, Any], params: dict[str, Any], method: str
) -> None:
    """A token or version that is a list or an object is invalid params (400), never a 500
    or a stale entry in the gateway's tables."""
    opened = _post(gw, path, initialize_body("odd"))
    session = {"mcp-session-id": opened.headers["mcp-session-id"]}
    session["mcp-protocol-version"] = "2025-11-25"
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": {**params, "_meta": meta}}
    if not method.startswith("notifications/"):
        body["id"] = 3
    if "protocolVersion" in str(meta):
        session = {}  # the version is read from _meta alone
    refused = _post(gw, path, body, **session)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == -32602


def test_the_gateway_is_not_dumpable() -> None:
    """``celgate run`` makes its /proc files root's and refuses ptrace: a stdio server of the
    same user cannot read its environment (the admin token) or its memory."""
    code = (
        "import ctypes; from gateway.cli.run import not_dumpable; libc = ctypes.CDLL(None); "
        "before = libc.prctl(3, 0, 0, 0, 0); not_dumpable(); "
        "print(before, libc.prctl(3, 0, 0, 0, 0))"  # PR_GET_DUMPABLE
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "0"]
    assert "not_dumpable()" in inspect.getsource(run_command)


LARGE_BLOCKS = """
import sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // (1024 * 1024)
if sys.argv[1] == "returned":
    from gateway.cli.run import large_blocks_returned
    assert large_blocks_returned()
big = b"x" * (16 * 1024 * 1024)  # glibc raised its threshold past this once it was freed
del big
blocks = [b"x" * (1024 * 1024) for _ in range(64)]
pin = b"x" * (200 * 1024)  # above them in the heap: they cannot be trimmed from its top
held = rss()
del blocks
print(held - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_go_back_to_the_system_when_freed() -> None:
    """After a burst of large bodies and answers, glibc kept what they had used (its mapping
    threshold rises to 32 MiB as large blocks are freed): 745 MiB after 100 echoes of
    3.9 MiB. ``celgate run`` has every block of 128 KiB or more mapped on its own."""

    def freed(mode: str) -> int:
        argv = [sys.executable, "-c", LARGE_BLOCKS, mode]
        return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)

    assert freed("returned") >= 60  # of the 64 MiB: given back at once
    assert freed("kept") < 32  # what glibc does on its own
    assert "large_blocks_returned()" in inspect.getsource(run_command)


async def test_a_message_larger_than_the_pipe_bound_reaches_an_idle_server(
    tmp_path: Path,
) -> None:
    """The bound on a stdio server's unread input refuses messages past it while it is busy;
    one message bigger than the bound (the body limit allows it) still goes to an idle one."""
    big = "x" * (10 * 1024 * 1024)
    security = {"max_body_bytes": 32 * 1024 * 1024}
    with run_gateway(tmp_path, POLICY, {"x": ODD}, security=security) as gw:
        # An answer later than a second goes as a stream (its event id resumable), and the
        # SDK's client refuses an event past 1 MiB unless told otherwise (docs/clients.md):
        # on a busy machine, this echo of 10 MiB took that long.
        transport = streamable_http_client(gw.url("x"), max_sse_event_size=None)
        async with Client(transport, mode="legacy", cache=None) as c:
            answer = await c.call_tool("echo", {"text": big})
    assert text_of(answer) == f"echo: {big}"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie, unreaped
    except FileNotFoundError:
        return True


async def test_a_server_that_exits_is_restarted_though_its_helper_holds_stdout(
    tmp_path: Path,
) -> None:
    """A stdio server that started a helper (sharing its stdout) and exited is seen to exit:
    its group, the helper with it, is killed, and the server is started again."""
    pid_file = tmp_path / "helper.pid"
    odd = {**ODD, "env": {**ODD["env"], "ODD_HELPER_PID": str(pid_file)}}  # type: ignore[dict-item]
    with run_gateway(tmp_path, POLICY, {"x": odd}) as gw:
        async with client(gw.url("x"), mode="auto") as c:
            with pytest.raises(Exception):  # noqa: B017  the server died mid-call
                await c.call_tool("echo", {"text": "helper"})
        helper = int(pid_file.read_text())
        with anyio.fail_after(20):
            while True:  # until the server is back (a restart after its backoff)
                with contextlib.suppress(MCPError):
                    async with client(gw.url("x"), mode="auto") as c:
                        answer = await c.call_tool("echo", {"text": "plain"})
                    if not answer.is_error:
                        break
                await anyio.sleep(0.1)
        assert text_of(answer) == "echo: plain"
        assert _gone(helper)


def test_a_server_that_outlives_sigterm_is_killed_when_its_session_ends(tmp_path: Path) -> None:
    """A session ended (DELETE, give-way, idle) sent SIGTERM and waited for its process to
    exit; one that ignored it lived on outside every cap, and an agent repeating initialize
    and DELETE started processes without bound (red-team wave 42). Killed after the grace."""
    pid_file = tmp_path / "stubborn.pid"
    odd = {**ODD, "env": {**ODD["env"], "ODD_PID_FILE": str(pid_file)}}  # type: ignore[dict-item]
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with run_gateway(tmp_path, POLICY, {"x": odd}) as gw:
        opened = httpx.post(gw.url("x"), json=initialize_body("raw"), headers=headers, timeout=20)
        assert opened.status_code == 200, opened.text
        session = {**headers, "mcp-session-id": opened.headers["mcp-session-id"]}
        pid = int(pid_file.read_text())
        assert httpx.delete(gw.url("x"), headers=session, timeout=20).status_code == 200
        deadline = time.monotonic() + 20  # KILL_GRACE (2 s) after the DELETE, it is gone
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(pid)


async def test_a_helper_that_outlives_sigterm_goes_with_the_gateway(tmp_path: Path) -> None:
    """The shared process's leader exited on SIGTERM at shutdown, and its group was killed
    only if the leader had not: a helper in it that ignored SIGTERM outlived the gateway
    (red-team wave 43)."""
    pids = tmp_path / "helpers.pids"
    odd = {**ODD, "env": {**ODD["env"], "ODD_STUBBORN_HELPERS": str(pids)}}  # type: ignore[dict-item]
    with run_gateway(tmp_path, POLICY, {"x": odd}) as gw:
        async with client(gw.url("x"), mode="auto") as c:  # the shared process, started
            assert text_of(await c.call_tool("echo", {"text": "hi"})) == "echo: hi"
    helpers = [int(line) for line in pids.read_text().split()]
    assert helpers
    deadline = time.monotonic() + 20
    while not all(_gone(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in helpers if not _gone(pid)] == []
