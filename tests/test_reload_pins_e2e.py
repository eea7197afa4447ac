"""Hot reload, tool pinning and shadow mode against a running gateway process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from gateway.server import lifecycle
from tests.gateway_proc import (
    OPERATOR,
    GatewayProcess,
    calls_in,
    client,
    decision_of,
    hidden_refusal,
    run_gateway,
    text_of,
    write_config,
)
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


def test_pins_that_cannot_be_written_are_one_line(tmp_path: Path) -> None:
    """A pins file whose folder is missing, or a folder in its place, failed ``celgate pins
    update`` with a traceback; the file is written beside and renamed into place (a watching
    gateway never reads it half written), nothing else left in its folder (red-team wave 63)."""
    with http_upstream() as up:
        config = write_config(tmp_path, ALLOW, {"up": {"url": up.url}}, 9, pins={"file": "p.yaml"})
        (tmp_path / "folder.yaml").mkdir()
        for out in ("missing/p.yaml", "folder.yaml"):
            cmd = [sys.executable, "-m", "gateway.cli", "pins", "update", "--config", str(config)]
            done = subprocess.run(
                [*cmd, "--out", str(tmp_path / out)],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
            assert (
                done.stderr.strip()
                .splitlines()[-1]
                .startswith(f"celgate: cannot write {tmp_path / out}: ")
            )
        before = set(os.listdir(tmp_path))
        assert pins_update(config).returncode == 0
        assert set(os.listdir(tmp_path)) == before | {"p.yaml"}
        assert "echo: sha256:" in (tmp_path / "p.yaml").read_text()


class TestPinning:
    async def test_changed_tool_is_denied_then_repinned(self, tmp_path: Path) -> None:
        port_env = {"UPSTREAM_ECHO_DESCRIPTION": "Echoes the text back"}
        with http_upstream(extra_env=port_env) as up:
            port = up.port
            servers = {"up": {"url": up.url}}
            with run_gateway(tmp_path, ALLOW, servers, pins={"file": "pins.yaml"}) as gw:
                config = tmp_path / "celgate.yaml"
                reloads = len(gw.records("policy.reloaded"))
                assert pins_update(config).returncode == 0
                assert "echo: sha256:" in (tmp_path / "pins.yaml").read_text()
                # its reload, before anything else (a late one passed for the repin's below)
                await until(lambda: len(gw.records("policy.reloaded")) > reloads)
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


GUARDED = (
    'version: "1"\ndefault: deny\ntools:\n  echo: {}\n'
    "  delete_item: {action: deny, reason: no deletes here}\n"
)
# Each tries to let delete_item through, or would have crashed the reload before.
HOSTILE = {
    "merge-key": "default: deny\ntools:\n  base: &b {}\n  echo: {}\n  delete_item:\n    <<: *b\n",
    "date-key": "default: deny\ntools:\n  echo: {}\n  delete_item: {}\n  2001-13-45: {}\n",
    "deep-cel": (
        "default: deny\ntools:\n  echo: {}\n  delete_item:\n    rules:\n"
        f"      - {{when: '{'(' * 3000}true{')' * 3000}', action: allow}}\n"
    ),
    "truncated": "default: deny\ntools:\n  echo: {}\n  delete_item:\n",
    "empty": "",
}


def write_atomically(path: Path, text: str) -> None:
    """As docs/rules.md says: a hidden temp file in the same folder, renamed over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class TestHostileReload:
    async def test_old_policy_keeps_serving(self, tmp_path: Path) -> None:
        """Hostile and cut-off files on hot reload are refused one by one; the gateway keeps
        the old policy (delete_item never reaches the upstream), stays alive and ready."""
        call_log = tmp_path / "calls.jsonl"
        with (
            http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(call_log)}) as up,
            run_gateway(tmp_path, GUARDED, {"up": {"url": up.url}}, admin=OPERATOR) as gw,
        ):
            policy = tmp_path / "policy.yaml"
            for name, text in HOSTILE.items():
                failed = len(gw.records("policy.reload_failed"))
                write_atomically(policy, text)
                os.kill(gw.peer.pid, signal.SIGHUP)
                await until(lambda n=failed: len(gw.records("policy.reload_failed")) > n)
                async with client(gw.url("up"), mode="legacy") as c:
                    refused = await c.call_tool("delete_item", {"id": name})
                    echoed = await c.call_tool("echo", {"text": name})
                assert hidden_refusal(gw, refused)["reason"] == "no deletes here", name
                assert not echoed.is_error, name
            health = await anyio.to_thread.run_sync(get_json, f"{gw.base}/healthz")
            ready = await anyio.to_thread.run_sync(get_json, f"{gw.base}/readyz")
            assert gw.peer.alive()
        assert health == (200, {"status": "alive"})
        assert ready[0] == 200 and "stopped" not in ready[1], ready
        assert set(ready[1]["components"]) == {
            "catalog_refresh",
            "upstream_health",
            "policy_watcher",
        }
        assert not [c for c in calls_in(call_log) if c.get("tool") == "delete_item"]
        assert any(c.get("tool") == "echo" for c in calls_in(call_log))
        failures = [p for r in gw.records("policy.reload_failed") for p in r["problems"]]
        assert any("policy.yaml:6: tools.delete_item: merge keys" in p for p in failures)
        assert any("policy.yaml:4: tools.delete_item: entry has no body" in p for p in failures)
        assert any("policy.yaml:1: no `tools` and no `default`" in p for p in failures)
        assert gw.records("policy.reloaded") == []
        decisions = {d["revision"] for d in gw.records("policy.decision")}
        assert len(decisions) == 1  # one policy served throughout


class _Fatal(BaseException):
    """Neither an Exception nor a cancellation: what a component cannot recover from."""


class TestSupervisor:
    """A failing background step is logged and retried; one that dies for good is reported as
    stopped, and neither touches the other components of the task group."""

    async def test_failure_retried_and_death_contained(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(lifecycle, "BACKOFF_FIRST", 0.0)
        gateway: Any = SimpleNamespace(extras={})
        runs = {"flaky": 0, "steady": 0}

        async def flaky() -> None:
            runs["flaky"] += 1
            if runs["flaky"] == 1:
                raise RuntimeError("first run fails")
            if runs["flaky"] == 3:
                raise _Fatal

        async def steady() -> None:
            runs["steady"] += 1

        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lifecycle.supervise, gateway, "flaky", flaky, 0.0)
                tg.start_soon(lifecycle.supervise, gateway, "steady", steady, 0.0)
                registry = lifecycle.components(gateway)
                await until(lambda: registry.stopped() == ["flaky"] and runs["steady"] > 50)
                tg.cancel_scope.cancel()
        report = registry.report()
        assert report["flaky"] == {"state": "stopped", "failures": 0, "last_error": "_Fatal"}
        assert report["steady"]["state"] == "running"
        failed = [e for e in logs if e["event"] == "background.failed"]
        assert failed[0]["component"] == "flaky" and failed[0]["error"] == "first run fails"
        assert "RuntimeError: first run fails" in failed[0]["exception"]
        assert [e["component"] for e in logs if e["event"] == "background.stopped"] == ["flaky"]
