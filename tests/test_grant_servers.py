"""A grant's ``servers:``: its key reaches those servers' endpoints and no other, on every
method, before anything is read or forwarded; ``/mcp`` only when it names every server."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cli.catalog import _identity, catalog_rows
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.policy.loader import load_policy
from tests.gateway_proc import GatewayProcess, client, initialize_body, run_gateway
from tests.peers import http_upstream

NARROW = "cgk_grant-servers-narrow"  # servers: [web]
BOTH = "cgk_grant-servers-both"  # servers: [web, ops]
WIDE = "cgk_grant-servers-wide"  # no servers: every one
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("grant-servers")
    with http_upstream() as up:
        servers = {"web": {"url": up.url}, "ops": {"url": up.url}}
        grants = {
            "narrow": {"key_sha256": digest(NARROW), "servers": ["web"]},
            "both": {"key_sha256": digest(BOTH), "servers": ["ops", "web"]},
            "wide": {"key_sha256": digest(WIDE)},
        }
        with run_gateway(directory, 'version: "1"\ndefault: allow\n', servers, grants=grants) as gw:
            yield gw


def post(gw: GatewayProcess, path: str, key: str, body: dict[str, object]) -> httpx.Response:
    headers = {**HEADERS, "authorization": f"Bearer {key}"}
    return httpx.post(gw.base + path, json=body, headers=headers, timeout=10)


class TestReach:
    async def test_the_named_server_serves_the_key(self, gateway: GatewayProcess) -> None:
        async with client(gateway.url("web"), NARROW) as c:
            result = await c.call_tool("echo", {"text": "hi"})
        assert not result.is_error

    @pytest.mark.parametrize("path", ["/mcp/ops", "/mcp", "/mcp/nosuch", "/mcp/ops/"])
    def test_other_endpoints_refuse_the_key(self, gateway: GatewayProcess, path: str) -> None:
        answer = post(gateway, path, NARROW, initialize_body("narrow"))
        assert answer.status_code == 403
        assert "insufficient_scope" in answer.headers["www-authenticate"]
        assert answer.json()["error"]["message"] == "this key may not reach " + path.rstrip("/")

    @pytest.mark.parametrize("method", ["GET", "DELETE"])
    def test_every_method_is_refused(self, gateway: GatewayProcess, method: str) -> None:
        headers = {"accept": "text/event-stream", "authorization": f"Bearer {NARROW}"}
        answer = httpx.request(method, gateway.base + "/mcp/ops", headers=headers, timeout=10)
        assert answer.status_code == 403

    async def test_a_tools_call_never_reaches_the_other_server(
        self, gateway: GatewayProcess
    ) -> None:
        call = {"method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
        answer = post(gateway, "/mcp/ops", NARROW, {"jsonrpc": "2.0", "id": 1, **call})
        assert answer.status_code == 403
        async with client(gateway.url("web"), NARROW) as c:  # recorded after the refusal
            assert not (await c.call_tool("echo", {"text": "after"})).is_error
        gateway.wait_records(1, where=lambda r: r.get("server") == "web")
        decided = [r for r in gateway.records() if r.get("server") == "ops"]
        assert not decided  # nothing decided, so nothing forwarded

    async def test_naming_every_server_reaches_the_aggregate(self, gateway: GatewayProcess) -> None:
        for key in (BOTH, WIDE):
            async with client(gateway.base + "/mcp", key) as c:
                names = {tool.name for tool in (await c.list_tools()).tools}
            assert {"web__echo", "ops__echo"} <= names


def config_problems(tmp_path: Path, grant: dict[str, object]) -> str:
    path = tmp_path / "celgate.yaml"
    path.write_text(
        "policy: rules.yaml\nservers:\n  web: {url: 'http://127.0.0.1:9/mcp'}\n"
        f"grants:\n  bot: {grant}\n"
    )
    (tmp_path / "rules.yaml").write_text('version: "1"\ndefault: deny\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    return str(caught.value)


def test_a_server_no_config_names_is_refused_at_load(tmp_path: Path) -> None:
    grant = {"key_sha256": digest(NARROW), "servers": ["web", "wbe"]}
    problems = config_problems(tmp_path, grant)
    assert "grants.bot.servers" in problems and "wbe" in problems


def test_an_empty_list_is_refused_at_load(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, {"key_sha256": digest(NARROW), "servers": []})
    assert "leave it out to reach every server" in problems


def narrow_bot_config(tmp_path: Path) -> Path:
    """A config whose grant ``bot`` reaches ``web`` only, of ``web`` and ``ops``."""
    path = tmp_path / "celgate.yaml"
    path.write_text(
        "policy: rules.yaml\nservers:\n  web: {url: 'http://127.0.0.1:9/mcp'}\n"
        "  ops: {url: 'http://127.0.0.1:9/mcp'}\n"
        f"grants:\n  bot: {{key_sha256: '{digest(NARROW)}', servers: [web]}}\n"
    )
    (tmp_path / "rules.yaml").write_text('version: "1"\ndefault: allow\n')
    return path


def test_the_catalogue_shows_what_a_grants_key_can_reach(tmp_path: Path) -> None:
    """``celgate catalog --grant`` said 'allow' for servers the key never reaches (403)."""
    path = narrow_bot_config(tmp_path)
    config = load_config(path, env={})
    tools = {"web": [{"name": "echo"}], "ops": [{"name": "echo"}]}
    rows = catalog_rows(config, load_policy(config.policy), tools, _identity(config, "bot"))
    effects = {row["server"]: row["effect"] for row in rows}
    assert effects == {"web": "allow", "ops": "deny (servers)"}


def test_decide_says_what_the_gateway_answers_a_grant_outside_its_servers(tmp_path: Path) -> None:
    """``celgate decide --grant`` said 'allow' for a server the grant's key never reaches."""
    path = narrow_bot_config(tmp_path)
    argv = [sys.executable, "-m", "gateway.cli", "decide", "--config", str(path), "--grant", "bot"]

    def effect(server: str) -> str:
        out = subprocess.run([*argv, "--server", server, "--tool", "drop"], capture_output=True)
        return str(json.loads(out.stdout)["effect"])

    assert effect("ops") == "deny (servers)"
    assert effect("web") == "allow"


def test_one_key_in_two_grants_is_refused_at_load(tmp_path: Path) -> None:
    """The grant written last won, silently: a key meant for some servers reached all."""
    path = tmp_path / "celgate.yaml"
    path.write_text(
        "policy: rules.yaml\nservers:\n  web: {url: 'http://127.0.0.1:9/mcp'}\n"
        f"grants:\n  narrow: {{key_sha256: '{digest(NARROW)}', servers: [web]}}\n"
        f"  again: {{key_sha256: '{digest(NARROW)}'}}\n"
        f"admin: {{token_sha256: '{digest(NARROW)}'}}\n"
    )
    (tmp_path / "rules.yaml").write_text('version: "1"\ndefault: allow\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    found = [str(p) for p in caught.value.problems]
    assert found == [
        f"{path}:6: grants.again.key_sha256: the same key as grants.narrow (line 5): one key, "
        "one grant",
        f"{path}:7: admin.token_sha256: is an agent's key (a grant's key_sha256): the admin "
        "token must be its own",
    ]


def test_a_digest_with_a_final_newline_is_no_digest(tmp_path: Path) -> None:
    """``$`` matches before a final newline: "<hex>\\n" passed as a digest, a second copy of a
    key that the one-key-one-grant check did not see."""
    path = tmp_path / "celgate.yaml"
    path.write_text(
        "policy: rules.yaml\nservers:\n  web: {url: 'http://127.0.0.1:9/mcp'}\n"
        f'grants:\n  narrow: {{key_sha256: "{digest(NARROW)}\\n"}}\n'
    )
    (tmp_path / "rules.yaml").write_text('version: "1"\ndefault: allow\n')
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        load_config(path, env={})
