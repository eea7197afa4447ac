"""A server met down is left out of ``/mcp``'s merged answers in the 2026-07-28 era too, until a
reading in the background gets an answer: a hung server made every list and discover, of every
agent, wait its whole timeout (red-team wave 60). In the handshake era a server whose link
could not be opened was skipped, but one that opened links and then hung (its lists, or the
``notifications/initialized`` that opens a link) made every list of every session wait its
timeout, every time (red-team wave 61): it is met down too.

A real gateway process, a real upstream (``tests.servers.literal``), and a server that takes
connections and never answers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway
from tests.peers import literal_upstream
from tests.test_aggregate_odd_server import post

SEEN: list[bytes] = []  # what the hung server was sent (each request's first bytes)


@pytest.fixture
def hung() -> Iterator[str]:
    """A server that accepts connections, reads what comes and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()
    SEEN.clear()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = listener.accept()[0]
            except TimeoutError:
                continue
            held.append(conn)
            conn.settimeout(0.5)
            try:
                SEEN.append(conn.recv(65536))
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@pytest.fixture
def gateway(hung: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    with literal_upstream() as good:
        servers = {"good": {"url": good.url}, "hung": {"url": hung, "timeout": 1}}
        with run_gateway(tmp_path, 'version: "1"\ndefault: allow\n', servers) as gw:
            yield gw


def test_a_hung_server_is_waited_for_once(gateway: GatewayProcess) -> None:
    for method in ("tools/list", "tools/list", "server/discover", "prompts/list"):
        answer = post(gateway, method)
        assert answer.status_code == 200, answer.text
    names = [t["name"] for t in post(gateway, "tools/list").json()["result"]["tools"]]
    assert "good__echo" in names
    failed = [r for r in gateway.records("aggregate.upstream_failed") if r.get("server") == "hung"]
    assert len(failed) == 1, json.dumps(failed)  # the first list met it; the rest left it out


def test_a_listen_leaves_a_server_met_down_out(gateway: GatewayProcess) -> None:
    """A listen waited up to 10 s for every server's acknowledgement, a hung one's too, at
    every listen of every agent (red-team wave 60). One met down is not asked."""
    assert post(gateway, "tools/list").status_code == 200  # meets the hung server
    notifications = {"toolsListChanged": True}
    post(gateway, "subscriptions/listen", {"notifications": notifications})
    assert not any(b"subscriptions/listen" in sent for sent in SEEN), SEEN


@pytest.mark.parametrize(
    ("stall", "event"),
    [
        ({"tools/list": "json"}, "aggregate.upstream_failed"),
        ({"notifications/initialized": "notice"}, "aggregate.upstream_down"),
    ],
)
async def test_the_handshake_era_waits_for_a_server_that_hangs_once(
    tmp_path: Path, stall: dict[str, str], event: str
) -> None:
    """A server that answers ``initialize`` and then hangs (its lists, or the notification
    that opens a link) is waited for by the first list only: later lists, of this session and
    of others, leave it out until a reading in the background gets an answer."""
    script = tmp_path / "stuck.json"
    script.write_text(json.dumps({"stall": stall}))
    with (
        literal_upstream() as good,
        literal_upstream({"LITERAL_SCRIPT": str(script)}) as stuck,
    ):
        servers = {"good": {"url": good.url}, "stuck": {"url": stuck.url, "timeout": 1}}
        with run_gateway(tmp_path, 'version: "1"\ndefault: allow\n', servers) as gw:
            for _ in range(2):
                async with client(gw.base + "/mcp", mode="legacy") as agent:
                    for _ in range(3):
                        names = {t.name for t in (await agent.list_tools()).tools}
                        assert "good__echo" in names and not any(
                            n.startswith("stuck__") for n in names
                        )
            met = [r for r in gw.records(event) if r.get("server") == "stuck"]
    assert len(met) == 1, json.dumps(met)
