"""On ``/mcp`` (handshake era), a call the policy refuses outright is answered before the
session's link to its server is opened: it starts no upstream session and no stdio process.
A call that is allowed opens the link, as before; each call has one decision record."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, initialize_body, run_gateway
from tests.test_stdio_bridge import stdio_server

POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(tmp_path_factory.mktemp("prelink"), POLICY, {"st": stdio_server()}) as gw:
        yield gw


def session_children(gw: GatewayProcess) -> int:
    """stdio processes started for client sessions (not the shared one, not the catalogue's)."""
    return sum(1 for r in gw.records("stdio.started") if r["server"] != "st[shared]")


def post(http: httpx.Client, body: dict[str, Any], sid: str | None = None) -> httpx.Response:
    headers = dict(HEADERS)
    if sid is not None:
        headers |= {"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    return http.post("/mcp", json=body, headers=headers)


def call(msg_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    params = {"name": name, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


def opened(http: httpx.Client) -> str:
    sid = post(http, initialize_body("prelink")).headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert post(http, note, sid).status_code == 202
    return sid


def test_a_denied_first_call_opens_no_upstream_session(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.base, timeout=20) as http:
        # Another session lists first: every server is learned, and its link to st open,
        # before this one starts (a reading in the background started a child later, under
        # load, and was counted as the denied call's).
        first = opened(http)
        listed = post(http, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, first).json()
        assert "st__echo" in [tool["name"] for tool in listed["result"]["tools"]]
        sid = opened(http)
        before = session_children(gateway)

        denied = post(http, call(2, "st__delete_item", {"id": "x"}), sid).json()
        assert denied["id"] == 2 and denied["result"]["isError"] is True
        assert "celgate refused this call" in denied["result"]["content"][0]["text"]
        records = gateway.wait_records(1, where=lambda r: r.get("tool") == "delete_item")
        assert [(r["effect"], r["server"]) for r in records] == [("deny", "st")]
        assert session_children(gateway) == before

        allowed = post(http, call(3, "st__echo", {"text": "opens the link"}), sid).json()
        assert allowed["result"]["content"][0]["text"] == "opens the link"
        assert session_children(gateway) == before + 1
        echoed = gateway.wait_records(1, where=lambda r: r.get("tool") == "echo")
        assert [r["effect"] for r in echoed] == ["allow"]

        again = post(http, call(4, "st__delete_item", {"id": "y"}), sid).json()
        assert again["result"]["isError"] is True  # refused on an open link too
        refused = gateway.wait_records(2, where=lambda r: r.get("tool") == "delete_item")
        assert [r["effect"] for r in refused] == ["deny", "deny"]


# starts, then reads what it is sent and never answers (until its stdin is closed)
MUTE = "import sys; print('starting', flush=True); sys.stdin.read()"


def test_a_mute_stdio_server_is_skipped_after_one_session_met_it(tmp_path: Any) -> None:
    """A stdio server that starts and never answers: its bridge answers -32001 after the
    server's timeout, which ``/mcp`` read as a refusal of the request, not as the server
    being down, so every new session waited that timeout again (red-team wave 39). The
    first session to meet it marks it failing; later ones skip it until a reading in the
    background gets an answer."""
    import sys

    servers = {
        "st": stdio_server(),
        "mute": {"command": sys.executable, "args": ["-c", MUTE], "timeout": 1},
    }
    with (
        run_gateway(tmp_path, POLICY, servers) as gw,
        httpx.Client(base_url=gw.base, timeout=30) as http,
    ):
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        for _ in range(3):
            listed = post(http, listing, opened(http)).json()
            assert "st__echo" in [tool["name"] for tool in listed["result"]["tools"]]
        down = [r for r in gw.records("aggregate.upstream_down") if r["server"] == "mute"]
        assert len(down) == 1, down


async def test_a_call_cancelled_while_its_link_opens_is_never_sent(
    gateway: GatewayProcess,
) -> None:
    """A cancel that came while ``/mcp`` opened the session's link to its server (a stdio
    child starting) found no server and no held call, and the call was sent once the link
    was open, and ran (red-team wave 69). It is answered as cancelled, and never sent."""
    async with httpx.AsyncClient(base_url=gateway.base, timeout=20) as http:
        made = await http.post("/mcp", json=initialize_body("cancel-early"), headers=HEADERS)
        sid = made.headers["mcp-session-id"]
        headers = {**HEADERS, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post("/mcp", json=note, headers=headers)).status_code == 202
        before = len(gateway.records("policy.decision"))
        sent = asyncio.ensure_future(
            http.post("/mcp", json=call(7, "st__echo", {"text": "cancelled"}), headers=headers)
        )
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
        cancel["params"] = {"requestId": 7, "reason": "the user changed their mind"}
        assert (await http.post("/mcp", json=cancel, headers=headers)).status_code == 202
        answer = (await sent).json()
    assert "cancelled by its client before it was sent" in answer["error"]["message"]
    (record,) = gateway.wait_records(before + 1)[before:]  # decided (allowed), not sent
    assert record["tool"] == "echo" and record["effect"] == "allow"


def test_a_hidden_tools_call_is_refused_as_a_missing_ones_whatever_its_id(
    gateway: GatewayProcess,
) -> None:
    """Once the link was open, a hidden tool's call under an id of the session's that is in
    progress or cancelled was refused for its id, a missing tool's as no tool: an agent told
    which hidden names exist (red-team wave 71). The policy answers first."""
    with httpx.Client(base_url=gateway.base, timeout=20) as http:
        sid = opened(http)
        assert "link" in post(http, call(1, "st__echo", {"text": "link"}), sid).text
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
        cancel["params"] = {"requestId": 9}
        assert post(http, cancel, sid).status_code == 202  # id 9: over on every link
        hidden = post(http, call(9, "st__delete_item", {"id": "x"}), sid).json()
        missing = post(http, call(9, "st__no_such_tool", {}), sid).json()
    for answer in (hidden, missing):
        assert answer["result"]["isError"] is True
        assert answer["result"]["_meta"]["io.celgate/decision"]["rule"] == "route"
