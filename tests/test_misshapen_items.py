"""An item an upstream lists in a shape MCP does not give it (a tool whose ``inputSchema``
is no object schema, ``annotations`` that are text, a prompt whose ``arguments`` are text, a
resource without its ``uri``) made the whole list unreadable to the Python and TypeScript
SDKs, and on ``/mcp`` every server's list with it (red-team wave 47). Such an item is left
out (logged ``upstream.misshapen_items``); the rest of the list, and the other servers',
reach every client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from gateway.edge.shapes import well_formed
from tests.gateway_proc import GatewayProcess, client, run_gateway
from tests.peers import literal_upstream, ts_client, ts_sdk_ready
from tests.test_output_schemas import AJV_REFUSED

SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
BAD_TOOLS = [
    {"name": "b1", "inputSchema": "x"},
    {"name": "b2"},
    {"name": "b3", "inputSchema": {"type": "string"}},
    {"name": "b4", "inputSchema": {"type": "object", "properties": []}},
    {"name": "b5", "inputSchema": {"type": "object", "required": "text"}},
    {"name": "b6", "inputSchema": SCHEMA, "annotations": "lie"},
    {"name": "b7", "inputSchema": SCHEMA, "annotations": {"readOnlyHint": "yes"}},
    {"name": "b8", "inputSchema": SCHEMA, "title": 5},
    {"name": "b9", "inputSchema": SCHEMA, "icons": [{}]},
    {"name": "b10", "inputSchema": SCHEMA, "outputSchema": 5},
    # wave 48: what the TypeScript SDK's listing compiles or checks besides
    {"name": "b11", "inputSchema": {"type": "object", "properties": {"a": 5}}},
    {"name": "b12", "inputSchema": {"type": "object", "properties": {"a": True}}},
    {
        "name": "b13",
        "inputSchema": SCHEMA,
        "outputSchema": {"type": "object", "properties": {"a": {"type": "bogus"}}},
    },
    {"name": "b14", "inputSchema": SCHEMA, "outputSchema": {"type": "object", "$ref": "#/nope"}},
    # wave 49: valid against the meta-schema, but no schema Ajv compiles
    *(
        {"name": f"b-{name}", "inputSchema": SCHEMA, "outputSchema": {"type": "object", **schema}}
        for name, schema in AJV_REFUSED.items()
    ),
]
FINE = {"name": "fine", "inputSchema": SCHEMA, "annotations": {"readOnlyHint": True}}
# wave 48: nulls where a field may only be absent (the TypeScript SDK refused the list), and
# a whole number written as a float: mended, not dropped
NULLS = {"name": "nulls", "inputSchema": SCHEMA, "description": None, "annotations": None}
# wave 50: a bound past any float (it crashed the check, and the list with it), and an $id
# the TypeScript SDK fails on (taken out: it changes nothing the schema's own refs mean)
MENDED = [
    {
        "name": "big-bound",
        "inputSchema": SCHEMA,
        "outputSchema": {"type": "object", "properties": {"n": {"maximum": 10**400}}},
    },
    {
        "name": "urn-id",
        "inputSchema": SCHEMA,
        "outputSchema": {
            "type": "object",
            "$id": "urn:x",
            "$defs": {"n": {"type": "string"}},
            "properties": {"a": {"$ref": "#/$defs/n"}},
        },
    },
]
KEPT = {"fine", "nulls", "big-bound", "urn-id"}
ODD = {
    "tools/list": {"tools": [*BAD_TOOLS, FINE, NULLS, *MENDED], "nextCursor": 5, "_meta": "x"},
    "prompts/list": {
        "prompts": [{"name": "p-bad", "arguments": "x"}, {"name": "p-fine", "arguments": []}],
        "_meta": {"progressToken": []},
        "nextCursor": [],
    },
    "resources/list": {
        "resources": [
            {"name": "r-bad"},
            {"name": "r-fine", "uri": "odd://r"},
            {"name": "r-big", "uri": "odd://big", "size": 1024.0, "title": None},
            # wave 49: a lastModified no ISO date and time with its offset
            *(
                {"name": f"r-date{n}", "uri": f"odd://d{n}", "annotations": {"lastModified": when}}
                for n, when in enumerate(["yesterday", "2025-01-01", "2025-01-01T00:00:00", 5])
            ),
            {
                "name": "r-dated",
                "uri": "odd://dated",
                "annotations": {"lastModified": "2025-01-01T00:00:00.5+02:00"},
            },
        ]
    },
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("misshapen")
    (folder / "odd.json").write_text(json.dumps({"results": ODD}))
    with (
        literal_upstream() as good,
        literal_upstream({"LITERAL_SCRIPT": str(folder / "odd.json")}) as odd,
    ):
        servers = {"good": {"url": good.url}, "odd": {"url": odd.url}}
        with run_gateway(folder, 'version: "1"\ndefault: allow\n', servers) as gw:
            yield gw


def test_the_shapes() -> None:
    assert well_formed("tools", FINE) and not any(well_formed("tools", t) for t in BAD_TOOLS)
    assert well_formed("tools", {**FINE, "outputSchema": {"type": "object"}})
    defs = {"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}
    assert well_formed("tools", {**FINE, "outputSchema": {"type": "object", **defs}})


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("path", ["/mcp", "/mcp/odd"])
async def test_the_sdk_reads_the_rest_of_the_lists(
    gateway: GatewayProcess, mode: str, path: str
) -> None:
    prefix = "odd__" if path == "/mcp" else ""
    async with client(gateway.base + path, mode=mode) as agent:
        tools = {t.name for t in (await agent.list_tools()).tools}
        assert {f"{prefix}{name}" for name in KEPT} <= tools and not {
            f"{prefix}{t['name']}" for t in BAD_TOOLS
        } & tools
        if path == "/mcp":
            assert "good__echo" in tools
        prompts = {p.name for p in (await agent.list_prompts()).prompts}
        assert f"{prefix}p-fine" in prompts and f"{prefix}p-bad" not in prompts
        resources = {r.name for r in (await agent.list_resources()).resources}
        assert resources == {"r-fine", "r-big", "r-dated"}
    assert gateway.records("upstream.misshapen_items")


@pytest.mark.parametrize("path", ["/mcp", "/mcp/odd"])
def test_the_typescript_sdk_reads_the_tools(gateway: GatewayProcess, path: str) -> None:
    problem = ts_sdk_ready()
    assert problem is None, problem
    out = ts_client(gateway.base + path, None, [], resources=True)
    prefix = "odd__" if path == "/mcp" else ""
    assert {f"{prefix}{name}" for name in KEPT} <= set(out["tools"])
    assert set(out["resources"]) == {"r-fine", "r-big", "r-dated"}
