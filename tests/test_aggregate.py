"""The aggregated endpoint ``/mcp`` over two servers (one over HTTP, one over stdio).

Tools are namespaced ``server__tool``; calls are routed back and decided by the same policy
as the relay (keys may be ``server/tool`` or a bare name); elicitation reaches the client
whose call caused it; authentication and the Host guard come first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.gateway_proc import (
    GatewayProcess,
    calls_in,
    client,
    decision_of,
    hidden_refusal,
    initialize_body,
    run_gateway,
    text_of,
)
from tests.peers import PeerProcess, http_upstream
from tests.servers.test_servers_smoke import elicitation_answering
from tests.test_stdio_bridge import stdio_server

KEY = "cgk_aggregate-test-key"
OTHER_KEY = "cgk_aggregate-other-grant-key"
POLICY = r"""
version: "1"
default: deny
tools:
  echo: {action: allow}
  ask_user: {action: allow}
  web/delete_item: {action: allow}
  st/delete_item:
    action: deny
    reason: no deleting on the stdio server
"""


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("agg-calls")
    return {"web": base / "web.jsonl", "st": base / "st.jsonl"}


@pytest.fixture(scope="module")
def web(logs: dict[str, Path]) -> Iterator[PeerProcess]:
    with http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(logs["web"])}) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(
    web: PeerProcess, logs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("agg-gw")
    servers = {"web": {"url": web.url}, "st": stdio_server(logs["st"])}
    grants = {
        "bot": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()},
        "other": {"key_sha256": hashlib.sha256(OTHER_KEY.encode()).hexdigest()},
    }
    with run_gateway(directory, POLICY, servers, grants=grants) as gw:
        yield gw


def agg(gw: GatewayProcess, **kwargs: Any) -> Any:
    return client(f"{gw.base}/mcp", KEY, **kwargs)


class TestAggregate:
    async def test_tools_are_namespaced_and_filtered(self, gateway: GatewayProcess) -> None:
        async with agg(gateway) as c:
            names = {t.name for t in (await c.list_tools()).tools}
        assert {"web__echo", "st__echo", "web__delete_item", "web__ask_user"} <= names
        assert "st__delete_item" not in names  # denied by a server/tool key
        assert "web__write_file" not in names  # default deny

    async def test_calls_are_routed_to_their_server(
        self, gateway: GatewayProcess, logs: dict[str, Path]
    ) -> None:
        async with agg(gateway) as c:
            a = await c.call_tool("web__echo", {"text": "to web"})
            b = await c.call_tool("st__echo", {"text": "to stdio"})
        assert (text_of(a), text_of(b)) == ("to web", "to stdio")
        assert any(r.get("arguments") == {"text": "to web"} for r in calls_in(logs["web"]))
        assert any(r.get("arguments") == {"text": "to stdio"} for r in calls_in(logs["st"]))

    async def test_policy_applies_per_server(
        self, gateway: GatewayProcess, logs: dict[str, Path]
    ) -> None:
        async with agg(gateway) as c:
            ok = await c.call_tool("web__delete_item", {"id": "w1"})
            refused = await c.call_tool("st__delete_item", {"id": "s1"})
        assert not ok.is_error
        record = hidden_refusal(gateway, refused)  # hidden from its list: told as not there
        assert record["reason"] == "no deleting on the stdio server"
        verdict = decision_of(refused)
        assert verdict["effect"] == "deny" and verdict["decision_id"]
        assert not any(r.get("tool") == "delete_item" for r in calls_in(logs["st"]))
        await anyio.sleep(0.2)
        records = [r for r in gateway.records() if r["tool"] == "delete_item"]
        assert {(r["server"], r["effect"]) for r in records} >= {("web", "allow"), ("st", "deny")}

    async def test_unknown_tool(self, gateway: GatewayProcess) -> None:
        async with agg(gateway) as c:
            result = await c.call_tool("nowhere__echo", {"text": "x"})
        assert result.is_error

    async def test_elicitation_reaches_the_calling_client(self, gateway: GatewayProcess) -> None:
        asked_a: list[Any] = []
        asked_b: list[Any] = []
        async with (
            agg(gateway, elicitation_callback=elicitation_answering("a!", asked_a)) as a,
            agg(gateway, elicitation_callback=elicitation_answering("b!", asked_b)) as b,
        ):
            results: dict[str, types.CallToolResult] = {}

            async def ask(name: str, c: Any, tool: str) -> None:
                results[name] = await c.call_tool(tool, {"question": f"for {name}"})

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, "a", a, "st__ask_user")
                tg.start_soon(ask, "b", b, "web__ask_user")
        assert (text_of(results["a"]), text_of(results["b"])) == ("a!", "b!")
        assert [p.message for p in asked_a] == ["for a"]
        assert [p.message for p in asked_b] == ["for b"]

    async def test_resources_and_prompts_are_merged(self, gateway: GatewayProcess) -> None:
        async with agg(gateway) as c:
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            resources = (await c.list_resources()).resources
            # both servers list it: /mcp cannot say whose it is, so it reads neither's
            with pytest.raises(MCPError, match="more than one server lists"):
                await c.read_resource(str(resources[0].uri))
        async with client(gateway.url("web"), KEY) as c:
            read = await c.read_resource(str(resources[0].uri))
        assert {"web__test_simple_prompt", "st__test_simple_prompt"} <= prompts
        assert read.contents

    def test_no_key_is_refused(self, gateway: GatewayProcess) -> None:
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        resp = httpx.post(f"{gateway.base}/mcp", json=body, timeout=5)
        assert resp.status_code == 401
        assert "bearer" in resp.headers["www-authenticate"].lower()

    def test_a_session_belongs_to_the_grant_that_opened_it(self, gateway: GatewayProcess) -> None:
        """From the answer that creates it: another grant holding the id (before any list or
        call) gets 404, and so does a made-up or unsigned id."""
        url = f"{gateway.base}/mcp"
        base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        init = initialize_body("takeover")
        auth = {**base, "authorization": f"Bearer {KEY}"}
        opened = httpx.post(url, json=init, headers=auth, timeout=30)
        sid = opened.headers["mcp-session-id"]
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        for key, presented in (
            (OTHER_KEY, sid),
            (KEY, sid.rpartition(".")[0]),
            (KEY, sid + "x"),
        ):
            headers = {**base, "authorization": f"Bearer {key}", "mcp-session-id": presented}
            refused = httpx.post(url, json=listing, headers=headers, timeout=10)
            assert refused.status_code == 404, (key, presented, refused.text)
        headers = {**base, "authorization": f"Bearer {KEY}", "mcp-session-id": sid}
        done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert httpx.post(url, json=done, headers=headers, timeout=10).status_code == 202
        owned = httpx.post(url, json=listing, headers=headers, timeout=10)
        assert owned.status_code == 200 and "web__echo" in owned.text

    def test_foreign_host_is_refused(self, gateway: GatewayProcess) -> None:
        headers = {"authorization": f"Bearer {KEY}", "host": "evil.example.com"}
        resp = httpx.post(f"{gateway.base}/mcp", json={}, headers=headers, timeout=5)
        assert resp.status_code == 421
