"""stdio upstreams end to end: celgate runs the test upstream over stdio behind its bridge.

The SDK's client talks to celgate over real HTTP; the stdio servers are real child processes
of the gateway. Children are found through ``/proc`` (no psutil needed).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest

from tests.gateway_proc import (
    GatewayProcess,
    calls_in,
    client,
    hidden_refusal,
    initialize_body,
    run_gateway,
    text_of,
)
from tests.peers import REPO_ROOT, stdio_upstream_command
from tests.servers.test_servers_smoke import elicitation_answering, eventually, leaves

MODES = ["legacy", "auto"]
POLICY = r"""
version: "1"
default: deny
tools:
  echo: {action: allow}
  ask_user: {action: allow}
  crash: {action: allow}
  calls_seen: {action: allow}
  delete_item:
    action: deny
    reason: deleting items is not allowed here
"""


def stdio_server(call_log: Path | None = None, **extra: Any) -> dict[str, Any]:
    command, args = stdio_upstream_command()
    env = {"PYTHONPATH": str(REPO_ROOT)}
    if call_log is not None:
        env["UPSTREAM_CALL_LOG"] = str(call_log)
    return {"command": command, "args": args, "env": env, **extra}


def children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc; zombies excluded)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stdio-calls") / "calls.jsonl"


@pytest.fixture(scope="module")
def gateway(call_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("stdio-gw")
    with run_gateway(directory, POLICY, {"st": stdio_server(call_log)}) as gw:
        yield gw


@pytest.mark.parametrize("mode", MODES)
class TestStdioThroughTheRelay:
    async def test_list_is_filtered(self, gateway: GatewayProcess, mode: str) -> None:
        async with client(gateway.url("st"), mode=mode) as c:
            names = {t.name for t in (await c.list_tools()).tools}
        assert {"echo", "ask_user"} <= names
        assert "delete_item" not in names
        assert "write_file" not in names

    async def test_allowed_call_reaches_the_process(
        self, gateway: GatewayProcess, mode: str, call_log: Path
    ) -> None:
        async with client(gateway.url("st"), mode=mode) as c:
            result = await c.call_tool("echo", {"text": f"stdio {mode}"})
        assert not result.is_error
        assert text_of(result) == f"stdio {mode}"
        assert any(r.get("arguments") == {"text": f"stdio {mode}"} for r in calls_in(call_log))

    async def test_denied_call_never_reaches_the_process(
        self, gateway: GatewayProcess, mode: str, call_log: Path
    ) -> None:
        async with client(gateway.url("st"), mode=mode) as c:
            result = await c.call_tool("delete_item", {"id": f"stdio-{mode}"})
        record = hidden_refusal(gateway, result)  # hidden from its list: told as not there
        assert record["reason"] == "deleting items is not allowed here"
        assert not any(r.get("tool") == "delete_item" for r in calls_in(call_log))


class TestElicitationRouting:
    @pytest.mark.parametrize("mode", MODES)
    async def test_each_client_gets_its_own_question(
        self, gateway: GatewayProcess, mode: str
    ) -> None:
        """Two clients connected at once each answer only the question their call caused."""
        asked_a: list[Any] = []
        asked_b: list[Any] = []
        answer_a = elicitation_answering("from-a", asked_a)
        answer_b = elicitation_answering("from-b", asked_b)
        url = gateway.url("st")
        async with (
            client(url, mode=mode, elicitation_callback=answer_a) as a,
            client(url, mode=mode, elicitation_callback=answer_b) as b,
        ):
            results: dict[str, types.CallToolResult] = {}

            async def ask(name: str, c: Any) -> None:
                results[name] = await c.call_tool("ask_user", {"question": f"to {name}?"})

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, "a", a)
                tg.start_soon(ask, "b", b)
        assert text_of(results["a"]) == "from-a"
        assert text_of(results["b"]) == "from-b"
        assert [p.message for p in asked_a] == ["to a?"]
        assert [p.message for p in asked_b] == ["to b?"]


class TestSupervision:
    async def test_crash_gives_a_clear_error_and_the_session_goes_on(
        self, gateway: GatewayProcess
    ) -> None:
        async with client(gateway.url("st"), mode="legacy") as c:
            with anyio.fail_after(20):
                crashed = await _call_or_error(c, "crash", {})
            assert "exited before answering" in crashed
            with anyio.fail_after(20):
                again = await _until_ok(c)
            assert again == "back"
        log = [r for r in gateway.records("stdio.exited")]
        assert log and log[-1]["code"] == 17

    async def test_killed_process_is_restarted(self, gateway: GatewayProcess) -> None:
        async with client(gateway.url("st"), mode="legacy") as c:
            await c.call_tool("echo", {"text": "before"})
            before = children(gateway.peer.pid)
            victim = newest(before)  # this session's
            os.kill(victim, signal.SIGKILL)
            with anyio.fail_after(20):
                assert await _until_ok(c) == "back"
            after = children(gateway.peer.pid)
        assert victim not in after
        assert after - before  # a new process took its place
        assert gateway.records("stdio.restarting")


def _discovered(gw: GatewayProcess) -> bool:
    """The start-up sessions (the session probe, then tool discovery) have come and gone."""
    return bool(gw.records("catalog.refreshed")) and not children_busy(gw)


def newest(pids: set[int]) -> int:
    """The process started last (by its start time: pids wrap around, and the highest was
    once the oldest)."""

    def started(pid: int) -> int:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime

    return max(pids, key=started)


def children_busy(gw: GatewayProcess) -> bool:
    return len(children(gw.peer.pid)) > 1


async def _call_or_error(c: Any, tool: str, args: dict[str, Any]) -> str:
    try:
        result = await c.call_tool(tool, args)
    except Exception as exc:  # the SDK raises an MCPError for a JSON-RPC error
        return str(exc)
    return text_of(result)


async def _until_ok(c: Any) -> str:
    while True:
        try:
            result = await c.call_tool("echo", {"text": "back"})
            if not result.is_error:
                return text_of(result)
        except Exception:  # still restarting
            pass
        await anyio.sleep(0.2)


class TestProcesses:
    async def test_session_cap(self, tmp_path: Path) -> None:
        """At ``max_processes`` an idle session gives way; busy ones (a request in progress,
        a GET stream open) are never evicted."""
        servers = {"st": stdio_server(max_processes=1)}
        policy = POLICY + "  hang: {action: allow}\n"
        accept = {"accept": "application/json, text/event-stream"}
        with run_gateway(tmp_path, policy, servers) as gw:
            # The gateway's own start-up sessions hold the one slot for a moment (seconds on a
            # loaded machine: a child's start is 2 s of imports alone).
            await eventually(lambda: _discovered(gw), 60)
            async with httpx.AsyncClient(headers=accept, timeout=20) as http:
                opened = await http.post(gw.url("st"), json=initialize_body("first"))
                first = {"mcp-session-id": opened.headers["mcp-session-id"]}
                echo = {"jsonrpc": "2.0", "id": 2, "method": "tools/call"}
                echo["params"] = {"name": "echo", "arguments": {"text": "one"}}
                assert (await http.post(gw.url("st"), json=echo, headers=first)).is_success
                async with client(gw.url("st"), mode="legacy") as second:
                    assert text_of(await second.call_tool("echo", {"text": "two"})) == "two"
                    gone = await http.post(gw.url("st"), json=echo, headers=first)
                    assert gone.status_code == 404 and "Session not found" in gone.text
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(second.call_tool, "hang", {})
                        await anyio.sleep(0.5)
                        with pytest.raises(Exception) as refused:
                            async with client(gw.url("st"), mode="legacy") as third:
                                await third.call_tool("echo", {"text": "three"})
                        tg.cancel_scope.cancel()
            assert any("max_processes=1" in str(e) for e in leaves(refused.value))
            assert gw.records("stdio.session_evicted")

    async def test_closed_session_ends_its_process(self, gateway: GatewayProcess) -> None:
        async with client(gateway.url("st"), mode="legacy") as c:
            await c.call_tool("echo", {"text": "x"})
            during = children(gateway.peer.pid)
        await eventually(lambda: bool(during - children(gateway.peer.pid)), 10)

    def test_an_ended_session_answers_the_request_by_its_id(self, gateway: GatewayProcess) -> None:
        """404 "Session not found" with ``id: null`` (a replica that never had the session
        answers so too): a client could not tie the error to its request."""
        info = {"name": "raw", "version": "1"}
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
        accept = {"accept": "application/json, text/event-stream"}
        with httpx.Client(headers=accept, timeout=10) as http:
            session = http.post(gateway.url("st"), json=init).headers["mcp-session-id"]
            headers = {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
            assert http.delete(gateway.url("st"), headers=headers).status_code < 300
            listed = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}
            gone = http.post(gateway.url("st"), json=listed, headers=headers)
        assert gone.status_code == 404
        assert gone.json()["id"] == 7 and gone.json()["error"]["code"] == -32002

    async def test_sigterm_leaves_no_orphans(self, tmp_path: Path) -> None:
        with run_gateway(tmp_path, POLICY, {"st": stdio_server()}) as gw:
            async with client(gw.url("st"), mode="legacy") as a, client(gw.url("st")) as b:
                await a.call_tool("echo", {"text": "a"})
                await b.call_tool("echo", {"text": "b"})
                pids = children(gw.peer.pid)
                assert len(pids) >= 2  # a session process and the shared one
                gw.peer.proc.send_signal(signal.SIGTERM)
                await eventually(lambda: not gw.peer.alive(), 15)
        await eventually(lambda: not any(alive(p) for p in pids), 5)
        assert gw.peer.proc.returncode is not None


def redshift_command() -> str | None:
    """The Redshift MCP server, if installed (it pins its own deps: use a separate venv and
    point ``CELGATE_REDSHIFT_MCP`` at its ``awslabs.redshift-mcp-server``)."""
    found = os.environ.get("CELGATE_REDSHIFT_MCP") or shutil.which("awslabs.redshift-mcp-server")
    return found if found and Path(found).exists() else None


REDSHIFT_POLICY = r"""
version: "1"
default: deny
tools:
  redshift/list_clusters: {action: allow}
  redshift/execute_query:
    rules:
      - id: no-drop
        when: 'args.sql.matches("(?i)^\\s*drop\\b")'
        action: deny
        reason: DROP is never allowed through celgate
      - action: allow
"""


@pytest.mark.skipif(redshift_command() is None, reason="awslabs-redshift-mcp-server not installed")
class TestRedshift:
    """The real Redshift MCP server runs behind celgate unchanged. Offline, with no AWS
    credentials, every call that reaches it answers "Unable to locate credentials"."""

    @pytest.fixture(scope="class")
    def redshift(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
        env = {
            "ACCESS_MODE": "read-write",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no metadata-service probe: offline at once
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
        }
        server = {"command": redshift_command(), "env": env}
        directory = tmp_path_factory.mktemp("redshift")
        with run_gateway(directory, REDSHIFT_POLICY, {"redshift": server}) as gw:
            yield gw

    async def test_list_and_call_reach_the_server(self, redshift: GatewayProcess) -> None:
        async with client(redshift.url("redshift"), mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            result = await c.call_tool("list_clusters", {})
        assert names == {"list_clusters", "execute_query"}
        assert "Unable to locate credentials" in text_of(result)

    async def test_write_is_confirmed_through_elicitation(self, redshift: GatewayProcess) -> None:
        asked: list[Any] = []

        async def confirm(context: Any, params: Any) -> types.ElicitResult:
            asked.append(params)
            return types.ElicitResult(action="accept", content={"confirmed": True})

        args = {
            "cluster_identifier": "c1",
            "cluster_type": "provisioned",
            "database_name": "dev",
            "sql": "INSERT INTO t VALUES (1)",
        }
        async with client(
            redshift.url("redshift"), mode="legacy", elicitation_callback=confirm
        ) as c:
            result = await c.call_tool("execute_query", args)
            refused = await c.call_tool("execute_query", {**args, "sql": "DROP TABLE t"})
        assert len(asked) == 1 and "INSERT INTO t" in asked[0].message
        assert "Unable to locate credentials" in text_of(result)
        assert refused.is_error and "DROP is never allowed" in text_of(refused)
