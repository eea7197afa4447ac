"""An upstream's ``tools/list`` answer whose ``tools`` is no list (an object, null, text) is
shown as an empty list: the relay failed on it with an internal error (500, a traceback
logged each time: red-team wave 52)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway_proc import GatewayProcess, client, run_gateway
from tests.peers import literal_upstream

SHAPES: dict[str, Any] = {
    "object": {"0": {"name": "secret", "inputSchema": {"type": "object"}}},
    "null": None,
    "text": "secret",
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("tools-not-a-list")
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, tools in SHAPES.items():
            script = folder / f"{name}.json"
            script.write_text(json.dumps({"results": {"tools/list": {"tools": tools}}}))
            peer = stack.enter_context(literal_upstream({"LITERAL_SCRIPT": str(script)}))
            servers[name] = {"url": peer.url}
        yield stack.enter_context(run_gateway(folder, 'version: "1"\ndefault: allow\n', servers))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("server", list(SHAPES))
async def test_tools_that_are_no_list_are_an_empty_list(
    gateway: GatewayProcess, server: str, mode: str
) -> None:
    async with client(gateway.url(server), mode=mode) as agent:
        assert (await agent.list_tools()).tools == []
    assert not gateway.records("relay.internal_error")
    assert gateway.records("upstream.misshapen_message")
