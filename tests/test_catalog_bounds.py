"""What one server's ``tools/list`` may bring into the catalogue is bounded: a server that
answered every page with a new cursor had the gateway hold 1.6 GiB for the read's 15 s, at
every refresh and whenever an agent called a name the catalogue lacked. The tools read so far
are kept (a tool past them is an unlisted one: execute, high risk)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config.model import ServerConfig
from gateway.inventory import discovery
from tests.peers import literal_upstream


@pytest.mark.parametrize(("cursor", "expected"), [("next", discovery.MAX_TOOLS), ("same", 100)])
async def test_a_list_that_never_ends_is_cut(tmp_path: Path, cursor: str, expected: int) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"endless": {"per_page": 50, "cursor": cursor}}))
    with literal_upstream({"LITERAL_SCRIPT": str(script)}) as up:
        tools = await discovery.list_tools(ServerConfig(name="endless", url=up.url))
    assert len(tools) == expected  # "same": the first page, and the second once
    assert len({t["name"] for t in tools}) == len(tools)
