"""Clients and servers nobody here wrote: the TypeScript SDK (1.32), which Claude Code, Cursor
and most hosts are built on, as a client of the gateway and as an upstream behind it.

The TypeScript client checks a result's ``structuredContent`` against the tool's
``outputSchema`` even when ``isError`` is true: a refusal that put the decision there surfaced
as "Structured content does not match the tool's output schema" instead of the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_proc import GatewayProcess, calls_in, client, run_gateway, text_of
from tests.peers import PeerProcess, start_ts_upstream, ts_client, ts_sdk_ready

ADMIN = "admin-token-for-ts-tests-0123456789"
KEY = "ts-agent-key-0123456789abcdef"
POLICY = """
version: "1"
default: deny
tools:
  echo: {}
  add:
    rules:
      - id: no-adding
        when: 'args.a > 100'
        action: deny
        reason: numbers over 100 are not for agents
    action: allow
  execute_query:
    limits:
      - {counter: queries, window: hour, max: 1, scope: grant}
  delete_item:
    action: require_approval
    approval: {mode: retry, timeout: 600}
"""
DECISION = "io.celgate/decision"


@pytest.fixture(scope="module")
def ts_ready() -> None:
    why = ts_sdk_ready()
    if why is not None:
        pytest.skip(why)


def _grants() -> dict[str, Any]:
    return {"ts": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}


@pytest.fixture(scope="module")
def gw(
    ts_ready: None, upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("ts")
    admin = {"token_sha256": hashlib.sha256(ADMIN.encode()).hexdigest()}
    servers = {"up": {"url": upstream.url}}
    with run_gateway(tmp, POLICY, servers, grants=_grants(), admin=admin) as gw:
        yield gw


def _text(result: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in result["content"])


class TestTypeScriptClientReadsEveryAnswer:
    def test_a_denial_of_a_typed_tool_is_read_as_its_reason(self, gw: GatewayProcess) -> None:
        """``add`` declares an outputSchema; the client still gets the reason, not an error."""
        out = ts_client(gw.url("up"), KEY, [{"name": "add", "arguments": {"a": 101, "b": 1}}])
        assert "fatal" not in out, out
        [call] = out["calls"]
        assert "error" not in call, call
        result = call["result"]
        assert result["isError"] is True
        assert "numbers over 100 are not for agents" in _text(result)
        assert result["_meta"][DECISION]["rule"] == "no-adding"
        assert "structuredContent" not in result

    def test_an_allowed_typed_call_keeps_its_structured_result(self, gw: GatewayProcess) -> None:
        out = ts_client(gw.url("up"), KEY, [{"name": "add", "arguments": {"a": 1, "b": 2}}])
        [call] = out["calls"]
        assert call["result"].get("isError") in (None, False), call
        assert call["result"]["structuredContent"] == {"result": 3.0}

    def test_a_rate_limit_says_when_to_retry(self, gw: GatewayProcess) -> None:
        calls = [{"name": "execute_query", "arguments": {"sql": "select 1"}}] * 2
        out = ts_client(gw.url("up"), KEY, calls)
        first, second = out["calls"]
        assert first["result"].get("isError") in (None, False), first
        decision = second["result"]["_meta"][DECISION]
        assert decision["counter"] == "queries" and decision["retry_after"] > 0
        assert "Retry after" in _text(second["result"])

    def test_a_held_call_names_its_approval(self, gw: GatewayProcess) -> None:
        out = ts_client(gw.url("up"), KEY, [{"name": "delete_item", "arguments": {"id": "x"}}])
        [call] = out["calls"]
        assert call["result"]["isError"] is True
        assert call["result"]["_meta"][DECISION]["approval_id"].startswith("apr_")

    def test_the_list_shows_only_what_may_be_called(self, gw: GatewayProcess) -> None:
        out = ts_client(gw.url("up"), KEY, [])
        assert {"echo", "add", "execute_query", "delete_item"} <= set(out["tools"])
        assert "write_file" not in out["tools"] and "crash" not in out["tools"]


@pytest.fixture(scope="module")
def ts_gw(
    ts_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, Path]]:
    tmp = tmp_path_factory.mktemp("ts-upstream")
    log = tmp / "calls.jsonl"
    peer = start_ts_upstream({"UPSTREAM_CALL_LOG": str(log)})
    try:
        with run_gateway(tmp, POLICY, {"ts": {"url": peer.url}}, grants=_grants()) as gw:
            yield gw, log
    finally:
        peer.stop()


class TestTypeScriptServerBehindTheGateway:
    def test_python_and_typescript_clients_call_through(
        self, ts_gw: tuple[GatewayProcess, Path]
    ) -> None:
        gw, log = ts_gw
        calls = [
            {"name": "echo", "arguments": {"text": "from ts"}},
            {"name": "add", "arguments": {"a": 500, "b": 1}},
            {"name": "write_file", "arguments": {"id": "nope"}},
        ]
        out = ts_client(gw.url("ts"), KEY, calls)
        echo, add, write = out["calls"]
        assert _text(echo["result"]) == "from ts"
        assert add["result"]["isError"] is True and "over 100" in _text(add["result"])
        assert write["result"]["isError"] is True
        assert "write_file" not in out["tools"] and "delete_item" in out["tools"]
        ran = [c["tool"] for c in calls_in(log)]
        assert ran == ["echo"], ran


async def test_on_mcp_a_2026_call_to_a_server_of_the_older_era_only_is_no_tool(
    ts_gw: tuple[GatewayProcess, Path],
) -> None:
    """This TypeScript server speaks 2025-11-25 only: a 2026-07-28 client's lists on /mcp leave
    it out, and its calls were still routed to it: decided and logged as allowed (or held
    for an approval no one could make good), then refused by the server with its own text
    (red-team wave 52). It is no tool in that era, as the lists say."""
    gw, log = ts_gw
    before, decided = len(calls_in(log)), len(gw.records())
    async with client(gw.base + "/mcp", KEY, mode="2026-07-28") as agent:
        refused = await agent.call_tool("ts__echo", {"text": "never"})
        held = await agent.call_tool("ts__delete_item", {"id": "x"})
    assert refused.is_error and held.is_error
    assert "no tool" in text_of(refused)
    assert all(r["effect"] == "deny" for r in gw.records()[decided:])  # nothing allowed, held
    assert len(calls_in(log)) == before  # the server heard no call
