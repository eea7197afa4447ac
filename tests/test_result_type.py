"""A 2026-07-28 client reads every result the gateway relays: each names its ``resultType``.

In 2026-07-28 a server MUST name every result's ``resultType``; the SDKs read a missing one as
``complete`` only from servers of earlier revisions, and the TypeScript SDK (the Inspector's)
refuses the result otherwise ("missing required resultType"). An upstream that answers
2026-07-28 requests without it (the literal test server, as many hand-written servers do) had
every answer relayed as it came, and the Inspector could read none of them through the
gateway; nor lists without ``ttlMs``. The gateway speaks 2026-07-28 to its client: a result
without ``resultType`` is ``complete``, told as such, and a list without freshness hints is
not to be kept (``ttlMs`` 0, ``private``); a handshake-era client's answers are left as they
came.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import CACHE, NODE, REPO_ROOT, PeerProcess, literal_upstream

POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {}\n  "lit__echo": {}\n'
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}
INSPECTOR = (
    CACHE / "inspector/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"
)


@pytest.fixture(scope="module")
def literal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """Its call results hold the word ``resultType`` (a column of the tool's output), never
    as the result's own key: the word anywhere in an answer let it pass unread."""
    script = tmp_path_factory.mktemp("lit") / "script.json"
    script.write_text(json.dumps({"call_extra": {"structuredContent": {"resultType": "col"}}}))
    with literal_upstream({"LITERAL_SCRIPT": str(script)}) as peer:
        yield peer


@pytest.fixture(scope="module")
def gw(literal: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder: Path = tmp_path_factory.mktemp("gw")
    with run_gateway(folder, POLICY, {"lit": {"url": literal.url}}) as gateway:
        yield gateway


def _modern(url: str, method: str, params: dict[str, Any], name: str | None = None) -> Any:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**params, "_meta": META}}
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
    }
    if name is not None:
        headers["mcp-name"] = name
    answer = httpx.post(url, json=body, headers=headers, timeout=20)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_upstream_itself_leaves_result_type_out(literal: PeerProcess) -> None:
    """What makes the rest of this file mean something."""
    answer = _modern(literal.url, "tools/call", {"name": "echo", "arguments": {"t": 1}}, "echo")
    assert "resultType" not in answer["result"]


@pytest.mark.parametrize("face", ["relay", "aggregate"])
def test_a_call_result_names_its_result_type(gw: GatewayProcess, face: str) -> None:
    url, name = (gw.url("lit"), "echo") if face == "relay" else (gw.base + "/mcp", "lit__echo")
    answer = _modern(url, "tools/call", {"name": name, "arguments": {"t": 1}}, name)
    result = answer["result"]
    assert result["resultType"] == "complete"
    assert result["content"] == [{"type": "text", "text": '{"t": 1}'}]  # the rest as it came
    assert result["structuredContent"] == {"resultType": "col"}
    assert answer["id"] == 7


def test_a_filtered_list_and_an_empty_result_name_it_too(gw: GatewayProcess) -> None:
    listed = _modern(gw.url("lit"), "tools/list", {})["result"]
    assert listed["resultType"] == "complete"
    # a list's freshness hints are required too: 0 (not kept) where left out; public is
    # private (the list is this caller's)
    assert listed["ttlMs"] == 0 and listed["cacheScope"] == "private"
    assert [t["name"] for t in listed["tools"]] == ["echo"]
    assert _modern(gw.url("lit"), "ping", {})["result"] == {"resultType": "complete"}


def test_freshness_hints_no_client_reads_are_mended(tmp_path: Path) -> None:
    """A ``ttlMs`` of 1.5 or a ``cacheScope`` of "shared" made the SDKs (and the Inspector)
    fail to read the whole list on the relay; ``/mcp`` mended them (red-team wave 68). And a
    filtered tools list kept for the server's hour went on showing a tool a reload hid:
    the relay's is never to be kept, as ``/mcp``'s."""
    script = tmp_path / "script.json"
    odd = {"ttlMs": 1.5, "cacheScope": "shared"}
    tools = [{"name": "echo", "inputSchema": {"type": "object"}}]
    results = {
        "tools/list": {"tools": tools, "ttlMs": 3_600_000, "cacheScope": "public"},
        "prompts/list": {"prompts": [], **odd},
        "resources/list": {"resources": [], "ttlMs": "60000", "cacheScope": None},
    }
    script.write_text(json.dumps({"results": results}))
    with (
        literal_upstream({"LITERAL_SCRIPT": str(script)}) as up,
        run_gateway(tmp_path, POLICY, {"lit": {"url": up.url}}) as gw,
    ):
        for method in results:
            result = _modern(gw.url("lit"), method, {})["result"]
            assert (result["ttlMs"], result["cacheScope"]) == (0, "private"), method


def test_a_handshake_era_answer_is_left_as_it_came(gw: GatewayProcess) -> None:
    params = {"name": "echo", "arguments": {"t": 1}}
    body = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": params}
    headers = {"accept": "application/json, text/event-stream"}
    headers["mcp-protocol-version"] = "2025-11-25"
    answer = httpx.post(gw.url("lit"), json=body, headers=headers, timeout=20)
    assert answer.status_code == 200, answer.text
    assert "resultType" not in answer.json()["result"]


@pytest.mark.skipif(not INSPECTOR.exists(), reason="scripts/install_node.sh not run")
@pytest.mark.parametrize("face", ["relay", "aggregate"])
def test_the_inspector_reads_the_relayed_call(gw: GatewayProcess, face: str) -> None:
    url, name = (gw.url("lit"), "echo") if face == "relay" else (gw.base + "/mcp", "lit__echo")
    argv = [str(NODE), str(INSPECTOR), "--cli", url, "--transport", "http"]
    argv += ["--protocol-era", "modern", "--format", "json", "--method", "tools/call"]
    argv += ["--tool-name", name, "--tool-args-json", '{"t": 2}']
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=REPO_ROOT)
    out = done.stdout.strip()
    assert out.startswith("{"), done.stderr[-500:]
    answer = json.loads(out)
    assert "error" not in answer, answer
    assert answer["result"]["content"] == [{"type": "text", "text": '{"t": 2}'}]


@pytest.mark.parametrize(
    ("data", "keys"),
    [
        (b'{"id":1,"result":{"resultType":"complete","ttlMs":0}}', (True, True, False)),
        (
            b'{"id":1,"result":{"resultType":"complete","ttlMs":60000,"cacheScope":"public"}}',
            (True, True, True),
        ),
        # values no client reads (the SDKs failed the whole result): to be read and mended
        (
            b'{"id":1,"result":{"resultType":"x","ttlMs":1.5,"cacheScope":"shared"}}',
            (True,) + (False,) * 2,
        ),
        (b'{"id":1,"result":{"ttlMs":-1,"cacheScope":null}}', (False,) * 3),
        (b'{"id":1,"result":{"ttlMs":"60000","cacheScope":"PUBLIC"}}', (False,) * 3),
        (b'{"id":1,"result":{"content":[],"x":{"resultType":1,"cacheScope":2}}}', (False,) * 3),
        (b'{"id":1,"result":{"r\\u0065sultType":"complete"}}', (True, False, False)),
        (b'{"id":1,"error":{"code":1}}', None),
        (b'{"id":1,"result":[1]}', None),
        (b"[1, 2]", None),
    ],
)
def test_the_results_own_keys_are_read_without_building_it(
    data: bytes, keys: tuple[bool, bool, bool] | None
) -> None:
    from gateway.wire.sse import result_keys

    assert result_keys(data) == keys
