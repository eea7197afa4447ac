"""Hot reload, tool pinning and shadow mode against a running gateway process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.gateway_proc import GatewayProcess, client, decision_of, run_gateway, text_of
from tests.peers import REPO_ROOT, http_upstream

ALLOW = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'
DENY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: deny, reason: echo is switched off}\n'
BROKEN = 'version: "1"\ndefault: deny\ntools:\n  echo:\n    action: allow\n    colour: red\n'


async def until(predicate: Any, within: float = 15.0) -> None:
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(0.05)


def records(gw: GatewayProcess, event: str) -> list[dict[str, Any]]:
    return gw.records(event)


class TestHotReload:
    async def test_valid_then_invalid_file_while_calls_run(self, tmp_path: Path) -> None:
        with (
            http_upstream() as up,
            run_gateway(tmp_path, ALLOW, {"up": {"url": up.url}}) as gw,
        ):
            policy = tmp_path / "policy.yaml"
            outcomes: list[bool] = []
            errors: list[BaseException] = []
            stop = asyncio.Event()

            async def keep_calling() -> None:
                async with client(gw.url("up"), mode="legacy") as c:
                    while not stop.is_set():
                        try:
                            result = await c.call_tool("echo", {"text": "x"})
                            outcomes.append(not result.is_error)
                        except Exception as exc:
                            errors.append(exc)

            caller = asyncio.create_task(keep_calling())
            await until(lambda: len(outcomes) > 5)
            first_rev = records(gw, "policy.decision")[-1]["revision"]
            policy.write_text(DENY)
            await until(lambda: any(r.get("why") for r in records(gw, "policy.reloaded")))
            await until(lambda: outcomes and not outcomes[-1])
            policy.write_text(BROKEN)
            await until(lambda: bool(records(gw, "policy.reload_failed")))
            count = len(outcomes)
            await until(lambda: len(outcomes) > count + 5)
            stop.set()
            await caller
        assert errors == []
        assert outcomes[0] is True and outcomes[-1] is False  # the broken file changed nothing
        failed = records(gw, "policy.reload_failed")[0]
        assert f"{policy}:6: tools.echo.colour: unknown field" in failed["problems"]
        decisions = records(gw, "policy.decision")
        revisions = [d["revision"] for d in decisions]
        assert revisions[0] == first_rev and revisions[-1] != first_rev
        assert len(set(revisions)) == 2
        reloaded = records(gw, "policy.reloaded")[0]
        assert (reloaded["old_revision"], reloaded["revision"]) == (first_rev, revisions[-1])

    async def test_sighup_reloads(self, tmp_path: Path) -> None:
        with (
            http_upstream() as up,
            run_gateway(tmp_path, ALLOW, {"up": {"url": up.url}}) as gw,
        ):
            os.kill(gw.peer.pid, signal.SIGHUP)
            await until(lambda: any(r["why"] == "SIGHUP" for r in records(gw, "policy.reloaded")))


def pins_update(config: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gateway.cli", "pins", "update", "--config", str(config)]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


class TestPinning:
    async def test_changed_tool_is_denied_then_repinned(self, tmp_path: Path) -> None:
        port_env = {"UPSTREAM_ECHO_DESCRIPTION": "Echoes the text back"}
        with http_upstream(extra_env=port_env) as up:
            port = up.port
            servers = {"up": {"url": up.url}}
            with run_gateway(tmp_path, ALLOW, servers, pins={"file": "pins.yaml"}) as gw:
                config = tmp_path / "celgate.yaml"
                assert pins_update(config).returncode == 0
                assert "echo: sha256:" in (tmp_path / "pins.yaml").read_text()
                up.stop()
                changed = {"UPSTREAM_ECHO_DESCRIPTION": "Echoes, and also mails it home"}
                with http_upstream(port=port, extra_env=changed):
                    async with client(gw.url("up"), mode="legacy") as c:
                        await c.list_tools()  # the gateway sees the new definition
                        refused = await c.call_tool("echo", {"text": "hi"})
                    assert refused.is_error
                    assert "changed since it was pinned" in text_of(refused)
                    assert decision_of(refused)["rule"] == "pins"
                    reloads = len(gw.records("policy.reloaded"))
                    assert pins_update(config).returncode == 0
                    # the pins file changed: the watcher reloads it with the rules
                    await until(lambda: len(gw.records("policy.reloaded")) > reloads)
                    async with client(gw.url("up"), mode="legacy") as c:
                        allowed = await c.call_tool("echo", {"text": "hi again"})
                    assert not allowed.is_error, text_of(allowed)


SHADOW = """\
version: "1"
default: deny
tools:
  echo:
    rules:
      - id: would-block-long-texts
        mode: shadow
        when: 'size(args.text) > 5'
        action: deny
        reason: texts over 5 characters
    action: allow
"""


class TestShadowMode:
    @pytest.mark.parametrize("mode", ["auto"])
    async def test_shadow_rule_is_logged_not_enforced(self, tmp_path: Path, mode: str) -> None:
        with (
            http_upstream() as up,
            run_gateway(tmp_path, SHADOW, {"up": {"url": up.url}}) as gw,
        ):
            async with client(gw.url("up"), mode=mode) as c:
                result = await c.call_tool("echo", {"text": "a long text"})
            await until(lambda: bool(gw.records()))
        assert not result.is_error
        record = gw.records()[-1]
        assert record["effect"] == "allow"
        assert record["shadow"] == [
            {
                "rule": "would-block-long-texts",
                "would_effect": "deny",
                "reason": "texts over 5 characters",
            }
        ]
