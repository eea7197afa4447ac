"""Merged lists on ``/mcp`` across pages: a name two servers with an empty prefix list on
different pages is nobody's (it was routed to the server read last, and a caller could choose
which that was), and a list cursor is the gateway's own, for one list and one caller: a forged
one, another caller's, or one of another list is refused."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of
from tests.peers import literal_upstream

ALICE = "cgk_pages-alice-0123456789abcdef"
BOB = "cgk_pages-bob-0123456789abcdef"
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "pages", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object"}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("agg-pages")
    scripts = {
        "a": {"pages": [[tool("deploy"), tool("a_only")]]},
        "b": {"pages": [[tool("b_only")], [tool("deploy")]]},
    }
    for name, script in scripts.items():
        (folder / f"{name}.json").write_text(json.dumps(script))
    env_a = {"LITERAL_SCRIPT": str(folder / "a.json"), "UPSTREAM_CALL_LOG": str(folder / "a.log")}
    env_b = {"LITERAL_SCRIPT": str(folder / "b.json"), "UPSTREAM_CALL_LOG": str(folder / "b.log")}
    grants = {
        "alice": {"key_sha256": hashlib.sha256(ALICE.encode()).hexdigest()},
        "bob": {"key_sha256": hashlib.sha256(BOB.encode()).hexdigest()},
    }
    with literal_upstream(env_a) as a, literal_upstream(env_b) as b:
        servers = {"a": {"url": a.url, "prefix": ""}, "b": {"url": b.url, "prefix": ""}}
        policy = 'version: "1"\ndefault: allow\n'
        with run_gateway(folder, policy, servers, grants=grants) as gw:
            yield gw


def calls_of(gw: GatewayProcess, server: str) -> list[str]:
    log = Path(gw.log_path).parent / f"{server}.log"
    if not log.exists():
        return []
    return [json.loads(line)["tool"] for line in log.read_text().splitlines()]


def post(gw: GatewayProcess, key: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": META}}
    headers = {**HEADERS, "authorization": f"Bearer {key}", "mcp-method": method}
    answer = httpx.post(gw.base + "/mcp", json=body, headers=headers, timeout=10)
    return dict(answer.json())


async def test_a_name_listed_by_two_servers_on_different_pages_is_nobodys(
    gateway: GatewayProcess,
) -> None:
    async with client(gateway.base + "/mcp", ALICE, mode="legacy") as alice:
        first = await alice.list_tools()
        assert first.next_cursor is not None
        second = await alice.list_tools(cursor=first.next_cursor)
        names = [t.name for t in first.tools + second.tools]
        assert names.count("deploy") <= 1  # never twice, as two tools of one name
        refused = await alice.call_tool("deploy", {})
        assert refused.is_error and "no tool named 'deploy'" in text_of(refused)
        # A list read again (first page only) changes nothing: the name stays nobody's.
        again = await alice.list_tools()
        assert "deploy" not in [t.name for t in again.tools]
        assert (await alice.call_tool("deploy", {})).is_error
        assert text_of(await alice.call_tool("b_only", {})) != ""
    assert "deploy" not in calls_of(gateway, "a") + calls_of(gateway, "b")
    collisions = gateway.records("aggregate.name_collision")
    assert [(r["kind"], r["name"]) for r in collisions] == [("tool", "deploy")]


def test_a_cursor_not_made_for_this_caller_and_list_is_refused(gateway: GatewayProcess) -> None:
    page = post(gateway, ALICE, "tools/list", {})
    cursor = page["result"]["nextCursor"]
    assert "error" not in post(gateway, ALICE, "tools/list", {"cursor": cursor})
    forged = base64.urlsafe_b64encode(b'{"a":"0"}').decode().rstrip("=")
    payload = cursor.rpartition(".")[0]
    for refused in (
        post(gateway, ALICE, "tools/list", {"cursor": forged}),  # made by the caller
        post(gateway, ALICE, "tools/list", {"cursor": forged + "." + cursor.rpartition(".")[2]}),
        post(gateway, ALICE, "tools/list", {"cursor": payload}),  # its seal taken off
        post(gateway, BOB, "tools/list", {"cursor": cursor}),  # another caller's
        post(gateway, ALICE, "prompts/list", {"cursor": cursor}),  # another list's
    ):
        assert refused["error"]["message"] == "invalid cursor"
