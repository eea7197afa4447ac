"""``/mcp`` in the 2026-07-28 era: no session held by the gateway. The SDK client in
``mode="auto"`` negotiates 2026-07-28 through ``/mcp``, lists the tools of two servers (one
over HTTP, one over stdio) merged and filtered, and calls each, progress round-tripping;
calls are decided by the one pipeline and recorded with the server and the tool's real name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.gateway_proc import (
    GatewayProcess,
    calls_in,
    client,
    hidden_refusal,
    run_gateway,
    text_of,
)
from tests.peers import PeerProcess, http_upstream
from tests.test_stdio_bridge import stdio_server

KEY = "cgk_aggregate-modern-key"
POLICY = r"""
version: "1"
default: deny
tools:
  echo: {action: allow}
  slow_progress: {action: allow}
  web/delete_item: {action: allow}
  st/delete_item:
    action: deny
    reason: no deleting on the stdio server
"""
MODERN = "2026-07-28"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("aggm-calls")
    return {"web": base / "web.jsonl", "st": base / "st.jsonl"}


@pytest.fixture(scope="module")
def web(logs: dict[str, Path]) -> Iterator[PeerProcess]:
    with http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(logs["web"])}) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(
    web: PeerProcess, logs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("aggm-gw")
    servers = {"web": {"url": web.url}, "st": {**stdio_server(logs["st"]), "prefix": "local"}}
    grants = {"bot": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
    with run_gateway(directory, POLICY, servers, grants=grants) as gw:
        yield gw


def agg(gw: GatewayProcess, **kwargs: Any) -> Any:
    return client(f"{gw.base}/mcp", KEY, **kwargs)


class TestModernEra:
    async def test_auto_negotiates_2026_and_calls_both_servers(
        self, gateway: GatewayProcess, logs: dict[str, Path]
    ) -> None:
        """Tools of both servers, one with a configured prefix; calls routed by prefix with
        the real name upstream; progress of each call comes back to the caller."""
        updates: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            updates.append(progress)

        async with agg(gateway, mode="auto") as c:
            assert c.protocol_version == MODERN
            names = {t.name for t in (await c.list_tools()).tools}
            a = await c.call_tool("web__echo", {"text": "to web"})
            b = await c.call_tool("local__echo", {"text": "to stdio"})
            p = await c.call_tool(
                "local__slow_progress", {"steps": 3, "delay_ms": 5}, progress_callback=on_progress
            )
            q = await c.call_tool(
                "web__slow_progress", {"steps": 2, "delay_ms": 5}, progress_callback=on_progress
            )
        assert {"web__echo", "local__echo", "web__delete_item"} <= names
        assert "local__delete_item" not in names and "web__write_file" not in names
        assert (text_of(a), text_of(b)) == ("to web", "to stdio")
        assert not p.is_error and not q.is_error
        assert updates == [1, 2, 3, 1, 2]
        assert any(r.get("arguments") == {"text": "to web"} for r in calls_in(logs["web"]))
        assert any(r.get("arguments") == {"text": "to stdio"} for r in calls_in(logs["st"]))

    async def test_denied_call_names_the_server_and_real_tool(
        self, gateway: GatewayProcess, logs: dict[str, Path]
    ) -> None:
        async with agg(gateway, mode="auto") as c:
            refused = await c.call_tool("local__delete_item", {"id": "s1"})
        record = hidden_refusal(gateway, refused)  # hidden from its list: told as not there
        assert record["reason"] == "no deleting on the stdio server"
        assert (record["server"], record["tool"]) == ("st", "delete_item")  # real names
        assert not any(r.get("tool") == "delete_item" for r in calls_in(logs["st"]))
        records = gateway.wait_records(1, where=lambda r: r["tool"] == "delete_item")
        assert ("st", "deny") in {(r["server"], r["effect"]) for r in records}

    async def test_prompts_and_resources_are_merged_and_routed(
        self, gateway: GatewayProcess
    ) -> None:
        async with agg(gateway, mode="auto") as c:
            assert c.protocol_version == MODERN
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            resources = (await c.list_resources()).resources
            with pytest.raises(MCPError, match="more than one server lists"):  # web and local
                await c.read_resource(str(resources[0].uri))
            unknown = await c.call_tool("nowhere__echo", {"text": "x"})
            with pytest.raises(MCPError, match="unknown prompt"):
                await c.get_prompt("nowhere__p")
        assert unknown.is_error and "no tool named 'nowhere__echo'" in text_of(unknown)
        assert {"web__test_simple_prompt", "local__test_simple_prompt"} <= prompts
        assert resources

    async def test_a_tool_name_past_1024_characters_is_refused(
        self, gateway: GatewayProcess
    ) -> None:
        """Before any policy: such a name is in no catalogue, and would be in every record
        (recorded as a deny all the same, under no name of its own)."""
        before = len(gateway.records())
        async with agg(gateway, mode="auto") as c:
            with pytest.raises(MCPError, match="at most 1024 characters"):
                await c.call_tool("web__" + "e" * 1025, {"text": "x"})
            await c.call_tool("web__echo", {"text": "after"})
        records = gateway.wait_records(before + 2)[before:]
        assert [(r["tool"], r["effect"]) for r in records] == [
            ("<not a name>", "deny"),
            ("echo", "allow"),
        ]
        assert (records[0]["rule"], records[0]["error"]) == ("params", "bad_params")

    def test_mcp_name_header_must_match_the_prefixed_name(self, gateway: GatewayProcess) -> None:
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "web__echo",
                "arguments": {"text": "h"},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
                },
            },
        }
        headers = {
            "authorization": f"Bearer {KEY}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": MODERN,
            "mcp-method": "tools/call",
        }
        url = f"{gateway.base}/mcp"
        bad = httpx.post(url, json=body, headers={**headers, "mcp-name": "echo"}, timeout=10)
        assert bad.status_code == 400 and "Mcp-Name" in bad.text
        good = httpx.post(url, json=body, headers={**headers, "mcp-name": "web__echo"}, timeout=10)
        assert good.status_code == 200 and '"h"' in good.text
