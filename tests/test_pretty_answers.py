"""An upstream that writes its JSON answers pretty-printed (line ends between the values, as
JSON allows): every call's answer still reaches the SDK's client, the one held for an approval
too. Held, the answer read whole went into the SSE event as it came, ``data: {`` and lines no
client reads: the call ran upstream and its answer was lost (red-team wave 54). Real gateway,
the hand-written literal server, the SDK's client in both eras, on the relay and ``/mcp``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from gateway.auth.identity import hash_key
from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of
from tests.peers import literal_upstream
from tests.test_pipeline import ADMIN_TOKEN, approve_when_pending

POLICY = """
version: "1"
default: deny
tools:
  echo: {}
  write_file:
    action: require_approval
    approval: {mode: wait, timeout: 60}
"""
#: Line ends where JSON allows whitespace: before the members and inside the result.
PRETTY = [['{"jsonrpc"', '{\n  "jsonrpc"'], ['"result": {', '"result":\r\n {\n']]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("pretty")
    script = tmp / "script.json"
    script.write_text(json.dumps({"raw_replace": PRETTY}))
    extra: dict[str, Any] = {"admin": {"token_sha256": hash_key(ADMIN_TOKEN)}}
    with (
        literal_upstream({"LITERAL_SCRIPT": str(script)}) as lit,
        run_gateway(tmp, POLICY, {"lit": {"url": lit.url}}, **extra) as gw,
    ):
        yield gw


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
@pytest.mark.parametrize("path", ["/mcp/lit", "/mcp"])
async def test_a_pretty_answer_is_read_held_or_not(
    gw: GatewayProcess, mode: str, path: str
) -> None:
    prefix = "lit__" if path == "/mcp" else ""
    args = {"path": f"/tmp/pretty-{mode}-{path.count('/')}", "content": "x"}
    async with client(gw.base + path, mode=mode) as agent:
        plain = await agent.call_tool(prefix + "echo", {"text": "plain"})
        held = asyncio.create_task(agent.call_tool(prefix + "write_file", args))
        await approve_when_pending(gw, args)
        with anyio.fail_after(15):
            result = await held
    assert not plain.is_error and not result.is_error, text_of(result)
    assert args["path"] in text_of(result)  # its own answer, read
