"""In the 2026-07-28 era a server asks its client through ``input_required`` results, never
through a request on the wire, so a client's JSON-RPC answer outside a session answers
nothing. The relay passed one to its server as it came, unchecked by any rule (red-team wave
51); it is refused, as the legacy era refuses one without a session. An answer to a
request of a session the agent holds still goes to that session's server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from gateway.auth.guard import SessionSigner
from gateway.edge.clientview import ClientView
from gateway.policy import Identity
from gateway.wire.sse import DROP, filtered
from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import raw_upstream

HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    folder = tmp_path_factory.mktemp("modern-answers")
    log = folder / "up.jsonl"
    with (
        raw_upstream("sessions", log) as up,
        run_gateway(folder, 'version: "1"\ndefault: allow\n', {"up": {"url": up.url}}) as gw,
    ):
        yield gw, log


def _answers_seen(log: Path) -> list[dict[str, object]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [r for r in map(json.loads, lines) if r.get("rpc") is None and r.get("id") == 7]


@pytest.mark.parametrize("answer", [{"result": {"x": 1}}, {"error": {"code": 1, "message": "m"}}])
def test_an_answer_outside_a_session_is_refused(
    served: tuple[GatewayProcess, Path], answer: dict[str, object]
) -> None:
    gw, log = served
    headers = {**HEADERS, "mcp-protocol-version": "2026-07-28"}
    body = {"jsonrpc": "2.0", "id": 7, **answer}
    refused = httpx.post(gw.url("up"), json=body, headers=headers, timeout=10)
    assert refused.status_code == 400
    assert "session" in refused.json()["error"]["message"]
    # the server heard nothing of it (a call made after it is logged: it was read in order)
    call = {"jsonrpc": "2.0", "id": 8, "method": "tools/call"}
    call["params"] = {
        "name": "echo",
        "arguments": {"text": "after"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"},
    }
    after = httpx.post(
        gw.url("up"),
        json=call,
        headers={**headers, "mcp-method": "tools/call", "mcp-name": "echo"},
        timeout=10,
    )
    assert after.status_code == 200
    assert _answers_seen(log) == []


def test_an_answer_in_a_session_still_reaches_its_server(
    served: tuple[GatewayProcess, Path],
) -> None:
    gw, log = served
    headers = {**HEADERS, "mcp-protocol-version": "2025-11-25"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize"}
    init["params"] = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    opened = httpx.post(gw.url("up"), json=init, headers=headers, timeout=10)
    assert opened.status_code == 200
    sid = opened.headers["mcp-session-id"]
    body = {"jsonrpc": "2.0", "id": 7, "result": {"x": 1}}
    sent = httpx.post(
        gw.url("up"), json=body, headers={**headers, "mcp-session-id": sid}, timeout=10
    )
    assert sent.status_code == 202
    assert len(_answers_seen(log)) == 1


@pytest.mark.parametrize("modern", [True, False])
def test_a_server_request_on_a_2026_stream_is_dropped(modern: bool) -> None:
    """The same era from the other side: a server's request on a 2026-07-28 call's stream
    went to a client with no session to answer it in (red-team wave 56). Dropped there; a
    handshake-era session's client still gets it, under the server's id."""
    relay = SimpleNamespace(extra_server_methods=frozenset())
    gw: Any = SimpleNamespace(signer=SessionSigner("k" * 64), config=SimpleNamespace(relay=relay))
    view = ClientView(gw, "up", Identity(grant="a", agent="a"), None)
    view.modern = modern
    view.for_request(1, {}, "tools/call")
    ask = {"jsonrpc": "2.0", "id": 77, "method": "sampling/createMessage", "params": {}}
    data = json.dumps(ask).encode()
    assert view.wants(data) or not modern
    shown = filtered(data, view)
    if modern:
        assert shown is DROP
    else:
        assert shown is None or (shown is not DROP and json.loads(shown)["id"] == 77)
