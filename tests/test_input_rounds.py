"""Under 2026-07-28, a tool that asks its client for input answers ``input_required``, and the
client sends the same ``tools/call`` again with the answer: one call in two rounds. Each round
was decided as a call of its own and took a token from the tool's limits: with a limit of
one, the round after the user had answered was refused (``rate_limited``), and an approved
call's continuation too, after the human had approved it. The gateway now carries the
upstream's ``requestState`` inside its own, bound to the call, and the retry goes on as the
same call: decided again (a deny still denies), its limits not taken again, used once.
Real gateway, the SDK test upstream (its ``ask_user`` tool asks through ``input_required``),
the SDK's client in both eras."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import types

from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of
from tests.peers import PeerProcess, literal_upstream

KEY = "input-rounds-key-0123456789abcdef"
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}
HEADERS = {
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "echo",
}
OTHER = "input-rounds-other-0123456789abcd"  # a grant of its own: a token of its own
POLICY = """
version: "1"
default: deny
tools:
  plain/ask_user:
    limits:
      - {counter: asks, window: hour, max: 1, scope: grant}
  held/ask_user:
    action: require_approval
    approval: {mode: elicit, timeout: 120}
    limits:
      - {counter: held_asks, window: hour, max: 1, scope: grant}
"""


@pytest.fixture(scope="module")
def gw(upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {
        name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest()}
        for name, key in (("agent", KEY), ("other", OTHER))
    }
    servers = {"plain": {"url": upstream.url}, "held": {"url": upstream.url}}
    folder: Path = tmp_path_factory.mktemp("rounds")
    with run_gateway(folder, POLICY, servers, grants=grants) as gateway:
        yield gateway


def _answering(asked: list[str]) -> Any:
    async def callback(_ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        ours = params.message.startswith("celgate holds")
        asked.append("approval" if ours else "tool")
        content: dict[str, Any] = {"approve": True} if ours else {"answer": "blue"}
        return types.ElicitResult(action="accept", content=content)

    return callback


@pytest.mark.parametrize(
    ("server", "questions"), [("plain", ["tool"]), ("held", ["approval", "tool"])]
)
async def test_a_call_in_rounds_takes_its_limit_once(
    gw: GatewayProcess, server: str, questions: list[str]
) -> None:
    asked: list[str] = []
    async with client(
        gw.url(server), KEY, mode="2026-07-28", elicitation_callback=_answering(asked)
    ) as c:
        result = await c.call_tool("ask_user", {"question": "colour?"})
        assert not result.is_error and text_of(result) == "blue", text_of(result)
        assert asked == questions
        again = await c.call_tool("ask_user", {"question": "colour again?"})
    assert again.is_error and "rate_limited" in str(again.meta)  # the next call is counted
    records = [r for r in gw.records() if r["server"] == server]
    continued = [r for r in records if "(round 2) after its upstream asked" in r["reason"]]
    assert len(continued) == 1 and continued[0]["effect"] == "allow"
    assert "limits" not in continued[0]  # its first round took them


async def test_a_continuation_is_used_once_and_bound_to_its_call(gw: GatewayProcess) -> None:
    """The state that carries the upstream's is the gateway's: another call's arguments, or
    the same state twice, are refused before the upstream sees anything."""
    async with client(gw.url("plain"), OTHER, mode="2026-07-28") as c:
        first = await c.session.call_tool(
            "ask_user", {"question": "bound?"}, allow_input_required=True
        )
        assert isinstance(first, types.InputRequiredResult), first
        state = first.request_state
        assert state and state.startswith("celgate.v1.")
        answers = {
            key: {"action": "accept", "content": {"answer": "x"}} for key in first.input_requests
        }
        moved = await c.session.call_tool(
            "ask_user",
            {"question": "another"},
            input_responses=answers,
            request_state=state,
            allow_input_required=True,
        )
        assert isinstance(moved, types.CallToolResult) and moved.is_error
        assert "approval_state_mismatch" in str(moved.meta)


@pytest.fixture(scope="module")
def asking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway in front of an upstream whose tool asks for more input at every round."""
    folder = tmp_path_factory.mktemp("asking")
    script = folder / "script.json"
    script.write_text(json.dumps({"ask_always": True}))
    policy = (
        'version: "1"\ndefault: deny\ntools:\n  echo:\n    limits:\n'
        "      - {counter: echoes, window: hour, max: 1, scope: grant}\n"
    )
    with (
        literal_upstream({"LITERAL_SCRIPT": str(script)}) as peer,
        run_gateway(folder, policy, {"lit": {"url": peer.url}}) as gateway,
    ):
        yield gateway


def test_one_admission_runs_at_most_ten_rounds(asking: GatewayProcess) -> None:
    """One token ran the tool upstream for as many rounds as the upstream kept asking (200
    rounds, 201 runs, a limit of one an hour): an admission now goes on for ten rounds, all
    within its first round's expiry; the next retry is a call of its own."""
    state: str | None = None
    seen: list[str] = []
    for _ in range(12):
        params: dict[str, Any] = {"name": "echo", "arguments": {"x": 1}, "_meta": META}
        if state is not None:
            params["requestState"] = state
            params["inputResponses"] = {"more": {"action": "accept", "content": {}}}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        answer = httpx.post(asking.url("lit"), json=body, headers=HEADERS, timeout=20).json()
        result = answer["result"]
        if result.get("resultType") != "input_required":
            seen.append("refused: " + str(result.get("_meta")))
            break
        state = result["requestState"]
        seen.append("ours" if state.startswith("celgate.v1.") else "upstream's")
    assert seen[:9] == ["ours"] * 9
    assert seen[9] == "upstream's"  # the tenth round's: passed as it came
    assert seen[10].startswith("refused") and "rate_limited" in seen[10]
    reasons = [r["reason"] for r in asking.records() if r["tool"] == "echo"]
    first = asking.records()[0]["decision_id"]
    assert f"continuing {first} (round 2)" in reasons[1]
    assert f"continuing {first} (round 10)" in reasons[9]


def test_a_continuation_state_is_carried_only_for_its_call(tmp_path: Path) -> None:
    """The upstream's state inside the gateway's went back upstream on any call that carried
    it, checked or not: a handshake-era request (whose state nothing checks) replayed one
    call's upstream state onto other calls, other tools and other servers, as often as it
    liked (red-team wave 37). Now it is put back only for the call it was issued for, once
    its state is checked and used up; elsewhere the upstream gets no state at all."""
    calls = tmp_path / "calls.jsonl"
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"ask_always": True}))
    env = {"LITERAL_SCRIPT": str(script), "UPSTREAM_CALL_LOG": str(calls)}
    with (
        literal_upstream(env) as peer,
        run_gateway(tmp_path, 'version: "1"\ndefault: allow\n', {"a": {"url": peer.url}}) as gw,
    ):
        params: dict[str, Any] = {"name": "echo", "arguments": {"x": 1}, "_meta": META}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        answer = httpx.post(gw.url("a"), json=body, headers=HEADERS, timeout=20).json()
        state = answer["result"]["requestState"]
        assert state.startswith("celgate.v1.")
        legacy = {**HEADERS, "mcp-protocol-version": "2025-11-25", "mcp-name": "add"}
        for _ in range(2):  # another tool, the handshake era, twice
            params = {"name": "add", "arguments": {"y": 2}, "requestState": state}
            body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
            httpx.post(gw.url("a"), json=body, headers=legacy, timeout=20).raise_for_status()
        params = {"name": "echo", "arguments": {"x": 1}, "_meta": META, "requestState": state}
        params["inputResponses"] = {"more": {"action": "accept", "content": {}}}
        body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}
        httpx.post(gw.url("a"), json=body, headers=HEADERS, timeout=20).raise_for_status()
    seen = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [(r["tool"], r.get("requestState")) for r in seen] == [
        ("echo", None),
        ("add", None),
        ("add", None),
        ("echo", "up-0"),  # its own continuation: the upstream's state, back in place
    ]
