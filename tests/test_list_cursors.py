"""A ``tools/list`` cursor a caller holds tells it nothing: sealed by the gateway.

Servers often page by name (the cursor is the page's last tool, in base64 or plain). The
gateway filtered the page to what its caller may see but passed the cursor on as the server
wrote it (on ``/mcp``, signed but readable), so the name of a tool hidden from the caller
reached it (red-team wave 40). Now the caller holds the server's cursor sealed (AES-GCM,
bound to the server or list and to the caller); a cursor not sealed here for this caller is
refused. A real gateway, ``tests.servers.literal`` paging by name, the SDK's client.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth.identity import hash_key
from tests.gateway_proc import GatewayProcess, client, initialize_body, run_gateway
from tests.peers import literal_upstream

KEY = "cgk_list-cursors-agent-0123456789ab"
OTHER = "cgk_list-cursors-other-0123456789ab"
SCHEMA = {"type": "object"}
PAGES = [
    [{"name": "echo", "inputSchema": SCHEMA}, {"name": "wipe_prod_db", "inputSchema": SCHEMA}],
    [{"name": "add", "inputSchema": SCHEMA}],
]
POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {}\n  add: {}\n'


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder: Path = tmp_path_factory.mktemp("list-cursors")
    (folder / "script.json").write_text(json.dumps({"pages": PAGES, "cursor_names": True}))
    grants = {"agent": {"key_sha256": hash_key(KEY)}, "other": {"key_sha256": hash_key(OTHER)}}
    with contextlib.ExitStack() as stack:
        lit = stack.enter_context(literal_upstream({"LITERAL_SCRIPT": str(folder / "script.json")}))
        yield stack.enter_context(
            run_gateway(folder, POLICY, {"lit": {"url": lit.url}}, grants=grants)
        )


def readable(cursor: str) -> str:
    """All a holder could read of a cursor: itself, and it as base64 (of JSON or not)."""
    decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    return cursor + decoded.decode("latin-1")


@pytest.mark.parametrize("path", ["/mcp/lit", "/mcp"])
async def test_a_cursor_names_no_hidden_tool(gw: GatewayProcess, path: str) -> None:
    async with client(gw.base + path, KEY, mode="legacy") as sdk:
        first = await sdk.list_tools()
        assert [t.name for t in first.tools] == ["echo" if path != "/mcp" else "lit__echo"]
        assert first.next_cursor is not None
        assert "wipe" not in readable(first.next_cursor)
        second = await sdk.list_tools(cursor=first.next_cursor)  # and it still pages
        assert [t.name for t in second.tools] == ["add" if path != "/mcp" else "lit__add"]


def test_a_cursor_not_sealed_for_its_caller_is_refused(gw: GatewayProcess) -> None:
    """The server's own cursor, or another caller's sealed one, reaches no server."""
    url = gw.url("lit")
    heads = {"accept": "application/json, text/event-stream"}

    def listing(key: str, sid: str | None, cursor: Any) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        if cursor is not None:
            body["params"] = {"cursor": cursor}
        headers = {**heads, "authorization": f"Bearer {key}"}
        if sid is not None:
            headers["mcp-session-id"] = sid
        return httpx.post(url, json=body, headers=headers, timeout=20)

    sids = {}
    for key in (KEY, OTHER):  # (the server keeps no sessions: none may be given)
        headers = {**heads, "authorization": f"Bearer {key}"}
        opened = httpx.post(url, json=initialize_body("raw"), headers=headers, timeout=20)
        sids[key] = opened.headers.get("mcp-session-id")
    mine = listing(KEY, sids[KEY], None).json()["result"]["nextCursor"]
    for key, cursor in ((KEY, "1:wipe_prod_db"), (KEY, "1"), (OTHER, mine)):
        answer = listing(key, sids[key], cursor).json()
        assert answer["error"]["code"] == -32602 and "invalid cursor" in answer["error"]["message"]
    assert listing(KEY, sids[KEY], mine).json()["result"]["tools"][0]["name"] == "add"
