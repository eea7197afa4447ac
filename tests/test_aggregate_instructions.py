"""What ``/mcp``'s ``initialize`` tells a client a server offers (its capabilities and its
instructions, which a model reads as trusted text) is what the server told the gateway's own
neutral session: it was whatever it told the last client session opened to it, so one agent's
session (its clientInfo, its user, its workspace) reached every later agent of every grant,
and any agent could write the instructions the others' models read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.edge.agg.merge import MAX_INSTRUCTIONS
from tests.gateway_proc import GatewayProcess, initialize_body, run_gateway
from tests.peers import literal_upstream

ALICE = "cgk_agg-instructions-alice-0123456789"
BOB = "cgk_agg-instructions-bob-0123456789ab"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("agg-instructions")
    (folder / "script.json").write_text(json.dumps({"instructions_for_client": True}))
    grants = {
        name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}
        for name, key in (("alice", ALICE), ("bob", BOB))
    }
    with literal_upstream({"LITERAL_SCRIPT": str(folder / "script.json")}) as up:
        servers = {"lit": {"url": up.url}}
        with run_gateway(folder, 'version: "1"\ndefault: allow\n', servers, grants=grants) as g:
            yield g


def initialize(gw: GatewayProcess, key: str, name: str) -> tuple[str, dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}", "accept": "application/json, text/event-stream"}
    body = initialize_body(name)
    answer = httpx.post(gw.base + "/mcp", json=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.headers["mcp-session-id"], answer.json()["result"]


def test_one_agents_session_does_not_write_anothers_instructions(gw: GatewayProcess) -> None:
    sid, _ = initialize(gw, ALICE, "IGNORE-PREVIOUS-alice-secret")
    headers = {
        "authorization": f"Bearer {ALICE}",
        "accept": "application/json, text/event-stream",
        "mcp-session-id": sid,
        "mcp-protocol-version": "2025-11-25",
    }
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert httpx.post(gw.base + "/mcp", json=listing, headers=headers).status_code == 200
    _, seen = initialize(gw, BOB, "bob")
    assert "alice-secret" not in json.dumps(seen)
    assert "session of celgate" in seen["instructions"]  # the gateway's own session's answer


def test_what_a_server_offers_is_told_within_bounds(tmp_path: Path) -> None:
    """A server's 40 MiB of instructions (or of one capability) went whole into every
    client's ``initialize`` answer: one agent looping initialize held the loop for seconds
    (red-team wave 39). Each server's instructions are cut, a heavy capability is told
    without its details, the others as they are."""
    huge = {
        "protocolVersion": "2025-11-25",
        "capabilities": {"tools": {"listChanged": True}, "prompts": {"x": "y" * 100_000}},
        "serverInfo": {"name": "literal", "version": "1"},
        "instructions": "Use the tools well. " + "z" * 1_000_000,
    }
    (tmp_path / "script.json").write_text(json.dumps({"results": {"initialize": huge}}))
    grants = {"alice": {"key_sha256": hashlib.sha256(ALICE.encode()).hexdigest()}}
    with (
        literal_upstream({"LITERAL_SCRIPT": str(tmp_path / "script.json")}) as up,
        run_gateway(
            tmp_path, 'version: "1"\ndefault: allow\n', {"lit": {"url": up.url}}, grants=grants
        ) as gw,
    ):
        _, result = initialize(gw, ALICE, "alice")
        assert result["instructions"].startswith("lit: Use the tools well. zzz")
        assert len(result["instructions"]) < MAX_INSTRUCTIONS + 100
        assert "[cut by celgate" in result["instructions"]
        assert result["capabilities"]["tools"] == {"listChanged": True}
        assert result["capabilities"]["prompts"] == {}
        assert gw.records("aggregate.instructions_cut")
