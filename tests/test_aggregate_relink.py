"""``/mcp`` keeps a server usable after that server restarts.

``/mcp`` owns its client's session and one upstream session per server (its links). An HTTP
upstream that restarted no longer knows the link's session and answers 404. That 404 was
passed to the client as is: it told the client its whole ``/mcp`` session was gone (every
server's), and as the SDKs do not start a new one on their own, every later call to that
server failed for the life of the session. Now the gateway opens a new link, once, and sends
the request again on it; a server that still cannot be reached is the call's -32001 error.

A real SDK server (``tests.servers.upstream``) stopped and started again on the same port; a
real gateway process; the SDK's client, in the handshake era (the one with sessions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from gateway.auth.identity import hash_key
from tests.gateway_proc import GatewayProcess, calls_in, client, run_gateway, text_of
from tests.peers import PeerProcess, free_port, start_http_upstream
from tests.servers.test_servers_smoke import eventually

KEY = "cgk_aggregate-relink-agent-0123456789"
POLICY = 'version: "1"\ndefault: allow\n'


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def upstream(port: int) -> Iterator[list[PeerProcess]]:
    running = [start_http_upstream(port)]
    try:
        yield running
    finally:
        for peer in running:
            peer.stop()


@pytest.fixture
def gateway(upstream: list[PeerProcess], tmp_path: Path) -> Iterator[GatewayProcess]:
    servers = {"up": {"url": upstream[0].url}}
    grants = {"agent": {"key_sha256": hash_key(KEY)}}
    with run_gateway(tmp_path, POLICY, servers, grants=grants) as gw:
        yield gw


async def test_a_restarted_server_gets_a_new_link(
    gateway: GatewayProcess, upstream: list[PeerProcess], port: int
) -> None:
    async with client(f"{gateway.base}/mcp", KEY, mode="legacy") as sdk:
        assert text_of(await sdk.call_tool("up__echo", {"text": "before"})) == "before"
        upstream[0].stop()
        upstream[0] = start_http_upstream(port)  # the same server, its sessions forgotten
        assert text_of(await sdk.call_tool("up__echo", {"text": "after"})) == "after"
        assert text_of(await sdk.call_tool("up__echo", {"text": "again"})) == "again"
        tools = await sdk.list_tools()
        assert "up__echo" in [t.name for t in tools.tools]
        # a server gone for good: the call's error, never a 404 for the /mcp session
        upstream[0].stop()
        with pytest.raises(MCPError) as caught:
            await sdk.call_tool("up__echo", {"text": "gone"})
        assert caught.value.error.code == -32001


async def test_a_server_met_down_while_it_restarted_is_linked_again_at_once(
    gateway: GatewayProcess, upstream: list[PeerProcess], port: int
) -> None:
    """A session that met the server down (another's link failed meanwhile) marked it
    failing: after it was back, the first session's call failed "lost its session", and
    new sessions skipped it, until a reading in the background answered (red-team wave
    37). Its 404 says it is up: the link is opened again at once."""
    async with client(f"{gateway.base}/mcp", KEY, mode="legacy") as sdk:
        assert text_of(await sdk.call_tool("up__echo", {"text": "before"})) == "before"
        upstream[0].stop()
        async with client(f"{gateway.base}/mcp", KEY, mode="legacy") as other:
            with pytest.raises(MCPError):  # its link cannot be opened: marked failing
                await other.call_tool("up__echo", {"text": "down"})
        upstream[0] = start_http_upstream(port)
        assert text_of(await sdk.call_tool("up__echo", {"text": "after"})) == "after"


async def test_a_list_after_the_restart_gets_a_new_link(
    gateway: GatewayProcess, upstream: list[PeerProcess], port: int
) -> None:
    """Only a call opened a new link: after the restart, every list of the session left
    the server out (one server behind ``/mcp``: every ``tools/list`` failed), and its tools,
    no longer listed, were not called (red-team wave 59). A list links again too."""
    async with client(f"{gateway.base}/mcp", KEY, mode="legacy") as sdk:
        before = [t.name for t in (await sdk.list_tools()).tools]
        assert "up__echo" in before
        upstream[0].stop()
        upstream[0] = start_http_upstream(port)  # the same server, its sessions forgotten
        assert [t.name for t in (await sdk.list_tools()).tools] == before
        assert [t.name for t in (await sdk.list_tools()).tools] == before
        assert text_of(await sdk.call_tool("up__echo", {"text": "after"})) == "after"


def _restart_logging(upstream: list[PeerProcess], port: int, log: Path) -> None:
    """The server stopped and started again on ``port``, its calls logged to ``log``."""
    upstream[0].stop()
    upstream[0] = start_http_upstream(
        port, log_path=None, extra_env={"UPSTREAM_CALL_LOG": str(log)}
    )


@contextlib.contextmanager
def _logged_gateway(
    upstream: list[PeerProcess], port: int, tmp_path: Path
) -> Iterator[tuple[GatewayProcess, Path]]:
    """A gateway in front of the server, restarted to log its calls."""
    log = tmp_path / "calls.jsonl"
    _restart_logging(upstream, port, log)
    servers = {"up": {"url": upstream[0].url}}
    grants = {"agent": {"key_sha256": hash_key(KEY)}}
    (tmp_path / "gw").mkdir()
    with run_gateway(tmp_path / "gw", POLICY, servers, grants=grants) as gateway:
        yield gateway, log


@pytest.mark.filterwarnings("ignore:.*2026-07-28")  # handshake-era calls, on purpose
async def test_a_new_link_is_told_what_the_client_set_up(
    upstream: list[PeerProcess], port: int, tmp_path: Path
) -> None:
    """A relink hid the server's restart from the client, and what it had set up there (its
    subscriptions, its log level) was gone without a word (red-team wave 64): the new link
    is told again."""
    with _logged_gateway(upstream, port, tmp_path) as (gateway, log):
        async with client(f"{gateway.base}/mcp", KEY, mode="legacy") as sdk:
            await sdk.subscribe_resource("test://static/doc")
            await sdk.set_logging_level("warning")
            pid = upstream[0].pid
            _restart_logging(upstream, port, log)
            assert text_of(await sdk.call_tool("up__echo", {"text": "after"})) == "after"
    again = [
        (r["event"], r.get("uri") or r.get("level"))
        for r in calls_in(log)
        if "event" in r and r["pid"] != pid  # told the restarted server
    ]
    assert ("subscribed", "test://static/doc") in again and ("set_level", "warning") in again


@pytest.mark.filterwarnings("ignore:.*2026-07-28")  # handshake-era calls, on purpose
async def test_a_client_that_only_listens_gets_a_new_link(
    upstream: list[PeerProcess], port: int, tmp_path: Path
) -> None:
    """The merged GET stream met the restarted server's 404 and gave it up: a client that
    only listened (list changes, log messages, resource news) lost that server without a
    word, and the server never heard the client's log level again (red-team wave 67). The
    stream's 404 opens a new link, told what the client set up, and reads its stream."""
    with _logged_gateway(upstream, port, tmp_path) as (gateway, log):
        async with client(f"{gateway.base}/mcp", KEY, mode="legacy") as sdk:
            await sdk.set_logging_level("warning")  # (its GET stream is open meanwhile)
            pid = upstream[0].pid
            _restart_logging(upstream, port, log)

            def told_again() -> bool:
                levels = [r.get("level") for r in calls_in(log) if r["pid"] != pid]
                return "warning" in levels

            await eventually(told_again, within=20)  # with no request of the client's
