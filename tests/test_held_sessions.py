"""Identical held calls of one agent in two sessions wait on one approval request: one
session's cancel ended the other's wait too (its request withdrawn, "refused by client",
never put to the operator: red-team wave 64). The cancel ends its own call's wait; the
request stays while another waits on it, and the operator's approval runs that call once.

A real gateway process, the test upstream over HTTP, raw HTTP clients in the handshake era."""

from __future__ import annotations

import json
from typing import Any

import httpx

from gateway.auth.identity import hash_key
from tests.gateway_proc import calls_in, initialize_body, run_gateway
from tests.peers import http_upstream

KEY = "cgk_held-sessions-agent-0123456789"
ADMIN = "cga_held-sessions-admin-0123456789abcdef"
POLICY = """
version: "1"
default: deny
tools:
  up/echo:
    action: require_approval
    approval: {mode: wait, timeout: 60}
"""
HEADERS = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {KEY}"}


async def _session(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    opened = await http.post(url, json=initialize_body("held", msg_id=0), headers=HEADERS)
    headers = {
        **HEADERS,
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await http.post(url, json=done, headers=headers)
    return headers


def _answer(text: str) -> Any:
    datas = [line[5:] for line in text.splitlines() if line.startswith("data:")]
    found = [json.loads(d) for d in datas if d.strip()] if datas else [json.loads(text)]
    return next(m for m in found if "result" in m or "error" in m)


async def test_one_sessions_cancel_leaves_the_others_wait(tmp_path: Any) -> None:
    log = tmp_path / "calls.jsonl"
    with (
        http_upstream(extra_env={"UPSTREAM_CALL_LOG": str(log)}) as up,
        run_gateway(
            tmp_path,
            POLICY,
            {"up": {"url": up.url}},
            grants={"bot": {"key_sha256": hash_key(KEY)}},
            admin={"token_sha256": hash_key(ADMIN)},
        ) as gw,
    ):
        url, admin = gw.url("up"), {"authorization": f"Bearer {ADMIN}"}
        async with httpx.AsyncClient(timeout=60) as http:
            one, two = await _session(http, url), await _session(http, url)
            answers: dict[str, Any] = {}
            ended = ""

            def body(msg_id: int) -> dict[str, Any]:
                params = {"name": "echo", "arguments": {"text": "once"}}
                return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}

            async with (
                http.stream("POST", url, json=body(7), headers=one) as first,
                http.stream("POST", url, json=body(9), headers=two) as second,
            ):  # both heads in hand: both calls are held, and may be cancelled
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
                cancel["params"] = {"requestId": 7}
                assert (await http.post(url, json=cancel, headers=one)).status_code == 202
                ended = (await first.aread()).decode()  # cancelled: no answer comes
                listed = await http.get(f"{gw.base}/admin/approvals?status=pending", headers=admin)
                (request,) = listed.json()  # still there: session two waits on it
                decided = f"{gw.base}/admin/approvals/{request['id']}/approve"
                assert (await http.post(decided, json={}, headers=admin)).status_code == 201
                answers["two"] = _answer((await second.aread()).decode())
    assert '"result"' not in ended
    assert answers["two"]["result"]["isError"] is False, answers["two"]
    assert [c["arguments"] for c in calls_in(log) if c.get("tool") == "echo"] == [{"text": "once"}]
