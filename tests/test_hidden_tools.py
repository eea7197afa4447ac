"""A tool hidden from an agent's ``tools/list`` is refused exactly as a name no server has.

``tools/list`` shows an agent only the tools the policy could allow it; a call to any other
was refused in ways that told a hidden tool from a missing one (red-team wave 37): by the rule
that refused it (``no-deletes`` against ``default``), by the argument-type reason that replaced
a condition that could not be evaluated (a guessed argument of the wrong type read the tool's
schema), by the ``Mcp-Param-*`` check its declared headers made before any policy, and on
``/mcp`` by being routed at all. Now the agent is told "no tool named ..." (rule ``route``,
error ``no_tool``) for both, on the relay and on ``/mcp``, in both eras; the record keeps what
decided. A tool the agent can see keeps its reasons.

Real gateway, the SDK test upstream (with its ``locate`` tool, whose schema declares a
header), calls written on the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth.identity import hash_key
from tests.gateway_proc import GatewayProcess, client, initialize_body, run_gateway
from tests.peers import http_upstream, literal_upstream

FINANCE = "cgk_hidden-tools-finance-0123456789"
OTHER = "cgk_hidden-tools-other-01234567890"
POLICY = """\
version: "1"
default: deny
tools:
  echo: {action: allow}
  execute_query:
    rules:
      - {id: finance-only, when: 'agent.attrs.team == "finance"', action: allow}
  locate:
    rules:
      - {id: finance-locate, when: 'agent.attrs.team == "finance"', action: allow}
  delete_item:
    rules:
      - {id: no-deletes, when: 'tool.kind == "delete"', action: deny}
    action: allow
"""
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}
DECISION = "io.celgate/decision"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder: Path = tmp_path_factory.mktemp("hidden-tools")
    grants = {
        "finance": {"key_sha256": hash_key(FINANCE), "attrs": {"team": "finance"}},
        "other": {"key_sha256": hash_key(OTHER)},  # no team: finance-only cannot evaluate
    }
    with (
        http_upstream(extra_env={"UPSTREAM_PARAM_HEADERS": "1"}) as up,
        run_gateway(folder, POLICY, {"up": {"url": up.url}}, grants=grants) as gateway,
    ):
        yield gateway


def headers(key: str, era: str, name: str, sid: str | None = None) -> dict[str, str]:
    out = {
        "authorization": f"Bearer {key}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": era,
    }
    if era == MODERN:
        out.update({"mcp-method": "tools/call", "mcp-name": name})
    if sid is not None:
        out["mcp-session-id"] = sid
    return out


def told(resp: httpx.Response) -> dict[str, Any]:
    """The decision a refusal carries, as its agent reads it."""
    text = resp.text
    if resp.headers["content-type"].startswith("text/event-stream"):
        text = next(
            line[5:] for line in text.splitlines() if line.startswith("data:") and "{" in line
        )
    result = httpx.Response(200, content=text).json()["result"]
    assert result["isError"] is True
    decision: dict[str, Any] = result["_meta"][DECISION]
    return decision


def call(
    http: httpx.Client, url: str, key: str, era: str, name: str, args: Any, **extra: Any
) -> httpx.Response:
    params: dict[str, Any] = {"name": name, "arguments": args}
    sid = None
    if era == MODERN:
        params["_meta"] = META
    else:
        opened = http.post(url, json=initialize_body("hidden"), headers=headers(key, era, name))
        sid = opened.headers.get("mcp-session-id")
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    return http.post(url, json=body, headers={**headers(key, era, name, sid), **extra})


PROBES = [
    ("execute_query", {"sql": {"x": 1}}, {}),  # a mistyped argument: the schema's reason
    ("delete_item", {"id": "1"}, {}),  # a rule on tool.kind: its label
    ("locate", {"region": "eu"}, {"mcp-param-region": "us"}),  # a declared header
]


@pytest.mark.parametrize("era", ["2025-11-25", MODERN])
@pytest.mark.parametrize(("path", "prefix"), [("/mcp/up", ""), ("/mcp", "up__")])
def test_hidden_tools_are_refused_as_missing_ones(
    gw: GatewayProcess, era: str, path: str, prefix: str
) -> None:
    url = gw.base + path
    with httpx.Client(timeout=20) as http:
        missing = told(call(http, url, OTHER, era, prefix + "no_such_tool", {"sql": {"x": 1}}))
        assert (missing["rule"], missing["error"]) == ("route", "no_tool")
        assert missing["reason"] == f"no tool named '{prefix}no_such_tool' on {path}"
        for tool, args, extra in PROBES:
            resp = call(http, url, OTHER, era, prefix + tool, args, **extra)
            assert resp.status_code == 200, resp.text
            hidden = told(resp)
            assert hidden.pop("decision_id") != missing["decision_id"]
            expected = {**missing, "reason": f"no tool named '{prefix}{tool}' on {path}"}
            expected.pop("decision_id")
            assert hidden == expected, tool


async def test_the_record_keeps_what_decided_and_visible_tools_keep_their_reasons(
    gw: GatewayProcess,
) -> None:
    async with client(gw.url("up"), OTHER, mode="legacy") as c:
        listed = {t.name for t in (await c.list_tools()).tools}
    assert "echo" in listed and not listed & {"execute_query", "locate", "delete_item"}
    mine = [r for r in gw.records() if r["grant"] == "other" and r["tool"] == "execute_query"]
    # what decided: the argument's type, which the agent was not told
    assert mine and all((r["rule"], r["error"]) == ("schema", "argument_type") for r in mine)
    deletes = [r for r in gw.records() if r["grant"] == "other" and r["tool"] == "delete_item"]
    assert deletes and all(r["rule"] == "no-deletes" for r in deletes)
    with httpx.Client(timeout=20) as http:
        # the finance agent sees execute_query: a mistyped argument is told so
        resp = call(http, gw.url("up"), FINANCE, MODERN, "execute_query", {"sql": {"x": 1}})
        seen = told(resp)
        assert (seen["rule"], seen["error"]) == ("schema", "argument_type")
        # ... and locate: a header that disagrees with its body is refused, and recorded
        resp = call(
            http,
            gw.url("up"),
            FINANCE,
            MODERN,
            "locate",
            {"region": "eu"},
            **{"mcp-param-region": "us"},
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] == -32020
    refused = gw.wait_records(1, where=lambda r: r.get("error") == "header_mismatch")
    assert refused[0]["grant"] == "finance" and refused[0]["rule"] == "params"


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """``/mcp`` with two servers of no prefix: their names are the servers' own, and a name
    neither lists is routed to neither."""
    folder: Path = tmp_path_factory.mktemp("hidden-bare")
    grants = {"other": {"key_sha256": hash_key(OTHER)}}
    with (
        http_upstream() as up,
        literal_upstream({}) as lit,
        run_gateway(
            folder,
            POLICY,
            {"up": {"url": up.url, "prefix": ""}, "lit": {"url": lit.url, "prefix": ""}},
            grants=grants,
        ) as gw,
    ):
        yield gw


def _shape(resp: httpx.Response) -> tuple[int, Any]:
    """What an agent can compare of two refusals: the status, and the JSON-RPC error's
    code or the tool error's rule and error."""
    text = resp.text
    if resp.headers["content-type"].startswith("text/event-stream"):
        text = next(
            line[5:] for line in text.splitlines() if line.startswith("data:") and "{" in line
        )
    answer = httpx.Response(200, content=text).json()
    if "error" in answer:
        return resp.status_code, answer["error"]["code"]
    decision = answer["result"]["_meta"][DECISION]
    return resp.status_code, (decision["rule"], decision["error"])


@pytest.mark.parametrize("era", ["2025-11-25", MODERN])
def test_on_mcp_with_no_prefix_odd_calls_tell_nothing_either(
    bare: GatewayProcess, era: str
) -> None:
    """A name no server has was routed nowhere and refused as a tool error before its
    arguments or its task were looked at, where a hidden tool's call with arguments that
    are no object was -32602 and a task-augmented one -32003 (red-team wave 39)."""
    url = bare.base + "/mcp"
    with httpx.Client(timeout=20) as http:
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
        listing_headers = {**headers(OTHER, MODERN, "x"), "mcp-method": "tools/list"}
        del listing_headers["mcp-name"]
        listed = http.post(url, json=listing, headers=listing_headers)
        assert "tools" in listed.json()["result"]  # the servers' names are learned
        for args, extra in (([1], {}), ("text", {}), ({}, {"task": {"ttl": 60000}})):
            shapes = set()
            for name in ("execute_query", "no_such_tool"):
                params: dict[str, Any] = {"name": name, "arguments": args, **extra}
                if era == MODERN:
                    params["_meta"] = META
                    sid = None
                else:
                    init = initialize_body("bare")
                    sid = http.post(url, json=init, headers=headers(OTHER, era, name)).headers[
                        "mcp-session-id"
                    ]
                body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
                shapes.add(
                    _shape(http.post(url, json=body, headers=headers(OTHER, era, name, sid)))
                )
            assert len(shapes) == 1, (args, extra, shapes)
