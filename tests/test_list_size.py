"""A list answer past ``clientview.MAX_LIST_ANSWER_BYTES`` is shown as empty, logged: each
value of a list is read, checked and written again on the event loop every caller shares, and
one upstream's list of 45 MB held it 6 s (red-team wave 50). The aggregate (``/mcp``) shows
that server's part as empty too, without reading it; the other servers' items are there."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from gateway.edge.clientview import MAX_LIST_ANSWER_BYTES
from tests.gateway_proc import GatewayProcess, client, run_gateway
from tests.peers import literal_upstream

PADDING = "x" * 100_000
COUNT = MAX_LIST_ANSWER_BYTES // len(PADDING) + 10
BIG = {
    "tools/list": {
        "tools": [
            {"name": f"t{n}", "inputSchema": {"type": "object"}, "_meta": {"pad": PADDING}}
            for n in range(COUNT)
        ]
    },
    "prompts/list": {"prompts": [{"name": f"p{n}", "description": PADDING} for n in range(COUNT)]},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("list-size")
    (folder / "big.json").write_text(json.dumps({"results": BIG}))
    with (
        literal_upstream() as good,
        literal_upstream({"LITERAL_SCRIPT": str(folder / "big.json")}) as big,
    ):
        servers = {"good": {"url": good.url}, "big": {"url": big.url}}
        with run_gateway(folder, 'version: "1"\ndefault: allow\n', servers) as gw:
            yield gw


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_list_too_large_is_shown_empty(gateway: GatewayProcess, mode: str) -> None:
    async with client(gateway.url("big"), mode=mode) as agent:
        assert (await agent.list_tools()).tools == []
        assert (await agent.list_prompts()).prompts == []
    async with client(gateway.base + "/mcp", mode=mode) as agent:
        names = {tool.name for tool in (await agent.list_tools()).tools}
        assert "good__echo" in names and not any(n.startswith("big") for n in names)
        prompts = {prompt.name for prompt in (await agent.list_prompts()).prompts}
        assert not any(n.startswith("big") for n in prompts)
    cut = gateway.records("upstream.list_too_large")
    assert {r["list"] for r in cut if "size" in r} == {"tools", "prompts"}  # the aggregate's
    assert all(r["size"] > MAX_LIST_ANSWER_BYTES for r in cut if "size" in r)
    assert any(r.get("oversized") for r in gateway.records("tools.too_many"))
