"""Names on ``/mcp`` route where they were listed, whoever lists them: two servers with an
empty prefix that both offer a name make it ambiguous (hidden from everyone, routed nowhere),
what one grant may see never decides where another grant's calls go, and a prefix that begins
with another's and the separator is refused when the config loads."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.telemetry.audit import args_digest
from tests.gateway_proc import GatewayProcess, client, decision_of, run_gateway, text_of
from tests.peers import REPO_ROOT

ALICE = "cgk_names-alice-0123456789abcdef"
BOB = "cgk_names-bob-0123456789abcdef"
POLICY = """
version: "1"
default: deny
tools:
  "p1/x":
    rules: [{when: '"a" in agent.roles', action: allow}]
  "p2/x":
    rules: [{when: '"b" in agent.roles', action: allow}]
  "p1/only1":
    rules: [{when: '"a" in agent.roles', action: allow}]
  "p2/only2": {}
"""


def named(tag: str, tools: str) -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": ["-m", "tests.servers.named"],
        "cwd": str(REPO_ROOT),
        "env": {"NAMED_TAG": tag, "NAMED_TOOLS": tools, "PYTHONPATH": str(REPO_ROOT)},
        "prefix": "",
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {
        "alice": {"key_sha256": hashlib.sha256(ALICE.encode()).hexdigest(), "roles": ["a"]},
        "bob": {"key_sha256": hashlib.sha256(BOB.encode()).hexdigest(), "roles": ["b"]},
    }
    servers = {"p1": named("p1", "x,only1"), "p2": named("p2", "x,only2")}
    with run_gateway(tmp_path_factory.mktemp("names"), POLICY, servers, grants=grants) as gw:
        yield gw


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_name_two_servers_offer_is_nobodys(gateway: GatewayProcess, mode: str) -> None:
    url = f"{gateway.base}/mcp"
    async with client(url, ALICE, mode=mode) as alice, client(url, BOB, mode=mode) as bob:
        assert {t.name for t in (await alice.list_tools()).tools} == {"only1", "only2"}
        assert {t.name for t in (await bob.list_tools()).tools} == {"only2"}
        assert text_of(await alice.call_tool("only1", {})) == "p1:only1"
        assert text_of(await bob.call_tool("only2", {})) == "p2:only2"
        await bob.list_tools()  # what bob may see changes nothing for alice
        assert text_of(await alice.call_tool("only1", {})) == "p1:only1"
        for caller in (alice, bob):
            refused = await caller.call_tool("x", {})
            assert refused.is_error and "no tool named 'x'" in text_of(refused)
    collisions = gateway.records("aggregate.name_collision")
    assert [(r["kind"], r["name"]) for r in collisions] == [("tool", "x")]  # logged once
    # refused before any policy, and recorded all the same (names probed were in no log)
    routed = gateway.wait_records(2, where=lambda r: r["tool"] == "x")
    assert len(routed) >= 2 and {r["grant"] for r in routed} == {"alice", "bob"}
    assert {(r["server"], r["effect"], r["rule"], r["error"]) for r in routed} == {
        ("", "deny", "route", "no_tool")
    }
    # without its arguments: no entry's secret_args are known for a name no server has (a
    # password was logged in clear, and digested unmasked)
    async with client(url, ALICE, mode=mode) as alice:
        answered = await alice.call_tool("login", {"password": "hunter2-SECRET"})
    [login] = gateway.wait_records(1, where=lambda r: r["tool"] == "login")[-1:]
    assert login["args_digest"] == args_digest({}) and "args" not in login
    # answered as every refusal is: its decision (and the record's id) in _meta
    told = decision_of(answered)
    assert (told["decision_id"], told["error"]) == (login["decision_id"], "no_tool")


async def test_each_server_stays_reachable_on_its_own_endpoint(gateway: GatewayProcess) -> None:
    async with client(gateway.url("p1"), ALICE) as alice:
        assert text_of(await alice.call_tool("x", {})) == "p1:x"
    async with client(gateway.url("p2"), ALICE) as alice:
        refused = await alice.call_tool("x", {})
    assert refused.is_error and decision_of(refused)["effect"] == "deny"


def test_a_prefix_that_begins_with_another_and_the_separator_is_refused(tmp_path: Path) -> None:
    """Server ``a``'s tool ``b__c`` would show as ``a__b__c``, which routes to ``a__b``."""
    path = tmp_path / "celgate.yaml"
    path.write_text(
        "anonymous: true\npolicy: p.yaml\nservers:\n  a: {url: 'http://127.0.0.1:1/mcp'}\n"
        "  a__b: {url: 'http://127.0.0.1:2/mcp'}\n"
        "  c: {url: 'http://127.0.0.1:3/mcp', prefix: 'a.'}\n"
    )
    (tmp_path / "p.yaml").write_text('version: "1"\ndefault: deny\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "celgate.yaml:5: servers.a__b.prefix: prefix 'a__b' begins with servers.a's" in text
    assert "servers.c" not in text  # 'a.__' does not begin with 'a__'
