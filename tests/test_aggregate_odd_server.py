"""One server's odd answers on ``/mcp`` are that server's loss, never everyone's: a tools list
that is not a list, a ``server/discover`` with a ``ttlMs`` of "soon" and versions as a string,
an ``initialize`` naming a list as its protocol version. Each made the merged answer fail
(500) for every agent; the good server's tools are listed and called."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of
from tests.peers import literal_upstream

ODD = {
    "tools/list": {"tools": 5},
    "server/discover": {
        "supportedVersions": "2026-07-28",
        "ttlMs": "soon",
        "capabilities": {"tools": {}},
        "instructions": {"not": "text"},
        "resultType": "complete",
    },
    "initialize": {
        "protocolVersion": ["2025-11-25"],
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "odd", "version": "1"},
    },
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "odd", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("agg-odd")
    (folder / "odd.json").write_text(json.dumps({"results": ODD}))
    with (
        literal_upstream() as good,
        literal_upstream({"LITERAL_SCRIPT": str(folder / "odd.json")}) as odd,
    ):
        servers = {"good": {"url": good.url}, "odd": {"url": odd.url}}
        with run_gateway(folder, 'version: "1"\ndefault: allow\n', servers) as gw:
            yield gw


def post(gw: GatewayProcess, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": method,
        "params": {**(params or {}), "_meta": META},
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
    }
    return httpx.post(gw.base + "/mcp", json=body, headers=headers, timeout=10)


async def test_the_handshake_era_lists_and_calls_the_good_server(gateway: GatewayProcess) -> None:
    async with client(gateway.base + "/mcp", mode="legacy") as agent:
        names = {t.name for t in (await agent.list_tools()).tools}
        assert "good__echo" in names and not any(n.startswith("odd__") for n in names)
        assert "hi" in text_of(await agent.call_tool("good__echo", {"text": "hi"}))


def test_the_stateless_era_lists_the_good_server(gateway: GatewayProcess) -> None:
    answer = post(gateway, "tools/list")
    assert answer.status_code == 200
    names = {t["name"] for t in answer.json()["result"]["tools"]}
    assert "good__echo" in names


def test_discover_takes_only_what_reads(gateway: GatewayProcess) -> None:
    answer = post(gateway, "server/discover")
    assert answer.status_code == 200
    result = answer.json()["result"]
    assert result["ttlMs"] == 0 and result["supportedVersions"] == []
    assert "not" not in result.get("instructions", "")
    assert gateway.records("aggregate.internal_error") == []


PROTO = {"tools": {"listChanged": True, "__proto__": {"isAdmin": True}}}
HOSTILE = {
    "results": {
        "initialize": {
            "protocolVersion": "2025-11-25",
            "capabilities": PROTO,
            "serverInfo": {"name": "hostile", "version": "1"},
        },
        "server/discover": {
            "supportedVersions": ["2026-07-28"],
            "capabilities": PROTO,
            "serverInfo": {"name": "hostile", "version": "1"},
            "resultType": "complete",
        },
    }
}
REFUSING = {
    "errors": {
        "server/discover": {
            "code": -32602,
            "message": "unsupported protocol version",
            "data": {"supported": ["2026-07-28"], "io.celgate/decision": "allow", "x": 1},
        }
    }
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, ...]]:
    """``/mcp`` in front of a server whose capabilities hold a ``__proto__`` key (beside a
    good one), and, alone, in front of a server whose ``server/discover`` is an error."""
    folder = tmp_path_factory.mktemp("agg-hostile")
    (folder / "hostile.json").write_text(json.dumps(HOSTILE))
    (folder / "refusing.json").write_text(json.dumps(REFUSING))
    policy = 'version: "1"\ndefault: allow\n'
    (folder / "one").mkdir()
    (folder / "two").mkdir()
    with (
        literal_upstream() as good,
        literal_upstream({"LITERAL_SCRIPT": str(folder / "hostile.json")}) as bad,
        literal_upstream({"LITERAL_SCRIPT": str(folder / "refusing.json")}) as refusing,
        run_gateway(
            folder / "one", policy, {"good": {"url": good.url}, "bad": {"url": bad.url}}
        ) as one,
        run_gateway(folder / "two", policy, {"refusing": {"url": refusing.url}}) as two,
    ):
        yield one, two


async def test_a_proto_key_in_capabilities_reaches_no_client(
    hostile: tuple[GatewayProcess, ...],
) -> None:
    """A ``__proto__`` key (which a JavaScript client reads as its object's own) in one
    server's capabilities went into ``/mcp``'s merged ones, in both eras (red-team wave 60);
    the relay refuses such a message whole. Such an answer is none."""
    gw = hostile[0]
    answer = post(gw, "server/discover")
    assert answer.status_code == 200 and "__proto__" not in answer.text
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}
    headers = {"accept": "application/json, text/event-stream"}
    opened = httpx.post(gw.base + "/mcp", json=body, headers=headers, timeout=10)
    assert opened.status_code == 200 and "__proto__" not in opened.text
    async with client(gw.base + "/mcp", mode="legacy") as agent:
        assert "hi" in text_of(await agent.call_tool("good__echo", {"text": "hi"}))


def test_a_servers_error_is_told_as_an_error_only(hostile: tuple[GatewayProcess, ...]) -> None:
    """No server answered ``server/discover`` with a result: the first one's error went on
    whole, a forged ``io.celgate`` key and any other data with it (red-team wave 60). Its
    code, its message and the versions it names are told."""
    answer = post(hostile[1], "server/discover")
    assert answer.json()["error"] == {
        "code": -32602,
        "message": "unsupported protocol version",
        "data": {"supported": ["2026-07-28"]},
    }
