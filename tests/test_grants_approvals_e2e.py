"""Grants, approvals, limits, admin API, decision records and metrics, end to end: two gateway
processes sharing one real Valkey, the SDK client over HTTP, the test upstream as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.identity import hash_key
from gateway.cli import main
from tests.gateway_proc import (
    GatewayProcess,
    calls_in,
    client,
    decision_of,
    hidden_refusal,
    initialize_body,
    run_gateway,
    text_of,
)
from tests.peers import PeerProcess
from tests.test_stdio_wire import MODERN_META
from tests.valkey_server import ValkeyProcess

ANALYST_KEY = "cgk_test-analyst-key-0123456789"
INTERN_KEY = "cgk_test-intern-key-0123456789"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"

POLICY = r"""
version: "1"
default: deny
tools:
  echo:
    limits:
      - {counter: echo_rate, window: minute, max: 3, scope: grant}
      - {counter: echo_session, window: minute, max: 5, scope: session}
  add:
    limits:
      - {counter: add_burst, window: hour, max: 30, scope: global}
  calls_seen: {action: allow}
  execute_query:
    rules:
      - id: analysts-only
        when: '"analyst" in agent.roles && agent.attrs.team == "finance"'
        action: allow
      - id: others-refused
        action: deny
        reason: only finance analysts may query
  delete_item:
    action: require_approval
    reason: deleting needs a human
    approval: {mode: retry, timeout: 600}
  write_file:
    action: require_approval
    reason: writing files needs a human
    approval: {mode: wait, timeout: 60}
  ask_user:
    action: require_approval
    approval: {mode: wait, timeout: 60}
  slow_progress:
    limits:
      - {counter: slow_open, window: minute, max: 100, scope: grant, failure_mode: open}
"""


def grants() -> dict[str, Any]:
    return {
        "analyst-bot": {
            "key_sha256": hash_key(ANALYST_KEY),
            "roles": ["analyst"],
            "attrs": {"team": "finance"},
        },
        "intern-bot": {"key_sha256": hash_key(INTERN_KEY), "agent": "intern"},
    }


def celgate_part(result: types.CallToolResult) -> dict[str, Any]:
    return decision_of(result)


@pytest.fixture(scope="module")
def pair(
    upstream: PeerProcess,
    valkey_server: ValkeyProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two replicas: same config, same Valkey, same session secret."""
    extra = {
        "grants": grants(),
        "admin": {"token_sha256": hash_key(ADMIN_TOKEN)},
        "limits": {"backend": valkey_server.url},
        "sessions": {"secret": "shared-secret-for-replicas-0123"},
    }
    servers = {"up": {"url": upstream.url}}
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(
            run_gateway(tmp_path_factory.mktemp("gw1"), POLICY, servers, **extra)
        )
        two = stack.enter_context(
            run_gateway(tmp_path_factory.mktemp("gw2"), POLICY, servers, **extra)
        )
        yield one, two


def admin(gw: GatewayProcess, method: str, path: str, token: str | None = ADMIN_TOKEN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, gw.base + path, headers=headers, json={}, timeout=10)


class TestAuthentication:
    def test_no_key_is_401_with_a_challenge(self, pair: Any, call_log: Path) -> None:
        gw = pair[0]
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}
        resp = httpx.post(gw.url("up"), json=body, timeout=5)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["error"]["message"] == "missing or invalid bearer key"

    async def test_wrong_key_is_401(self, pair: Any) -> None:
        with pytest.raises(BaseException) as caught:
            async with client(pair[0].url("up"), key="cgk_wrong") as c:
                await c.list_tools()
        assert "missing or invalid bearer key" in repr(caught.value)


class TestRolesAndAttributes:
    async def test_cel_reads_roles_and_attrs(self, pair: Any, call_log: Path) -> None:
        async with client(pair[0].url("up"), key=ANALYST_KEY) as c:
            ok = await c.call_tool("execute_query", {"sql": "select 'analyst'"})
        async with client(pair[0].url("up"), key=INTERN_KEY) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            refused = await c.call_tool("execute_query", {"sql": "select 'intern'"})
        assert not ok.is_error
        assert hidden_refusal(pair[0], refused)["rule"] == "others-refused"
        sqls = [c["arguments"].get("sql") for c in calls_in(call_log)]
        assert "select 'analyst'" in sqls and "select 'intern'" not in sqls
        # the role condition is fixed for this caller: the intern never sees the tool
        assert "execute_query" not in names


class TestRetryApproval:
    async def test_approved_on_another_replica_passes_once(self, pair: Any, call_log: Path) -> None:
        one, two = pair
        args = {"id": "item-42"}
        async with client(one.url("up"), key=ANALYST_KEY) as c:
            pending = await c.call_tool("delete_item", args)
            approval_id = celgate_part(pending)["approval_id"]
            assert pending.is_error and "pending approval" in text_of(pending)
            listed = admin(two, "GET", "/admin/approvals?status=pending").json()
            assert [r["args"] for r in listed if r["id"] == approval_id] == [args]
            assert admin(two, "POST", f"/admin/approvals/{approval_id}/approve").status_code == 201
            other_args = await c.call_tool("delete_item", {"id": "item-43"})
            assert other_args.is_error  # an approval never covers different arguments
            passed = await c.call_tool("delete_item", args)
            assert not passed.is_error, text_of(passed)
            again = await c.call_tool("delete_item", args)
        # used: the identical call at once is told so (after a few seconds, a new request)
        assert again.is_error and "already used" in text_of(again)
        deleted = [x for x in calls_in(call_log) if x["tool"] == "delete_item"]
        assert [x["arguments"] for x in deleted] == [args]

    async def test_refused_stays_refused(self, pair: Any, call_log: Path) -> None:
        one, two = pair
        args = {"id": "item-refused"}
        async with client(one.url("up"), key=ANALYST_KEY) as c:
            pending = await c.call_tool("delete_item", args)
            approval_id = celgate_part(pending)["approval_id"]
            resp = httpx.post(
                f"{two.base}/admin/approvals/{approval_id}/deny",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                json={"by": "alice", "note": "not today"},
                timeout=5,
            )
            assert resp.status_code == 201
            refused = await c.call_tool("delete_item", args)
        assert refused.is_error
        assert "refused by alice: not today" in text_of(refused)
        assert celgate_part(refused)["error"] == "approval_refused"
        assert not any(x["arguments"] == args for x in calls_in(call_log))
        twice = admin(two, "POST", f"/admin/approvals/{approval_id}/approve")
        assert twice.status_code == 409


class TestConsoleAcrossReplicas:
    async def test_signed_in_on_one_replica_approves_on_the_other(
        self, pair: Any, call_log: Path
    ) -> None:
        """The console session lives in Valkey: the load balancer may send each request to
        any replica, and signing out on one ends the session on all."""
        one, two = pair
        login = httpx.post(
            one.base + "/console/login",
            json={"token": ADMIN_TOKEN, "operator": "erin"},
            headers={"Origin": one.base},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        cookie = {"Cookie": f"celgate_console={login.cookies['celgate_console']}"}
        csrf = {"X-CSRF-Token": login.json()["csrf"], "Origin": two.base, **cookie}
        args = {"id": "item-console"}
        async with client(one.url("up"), key=ANALYST_KEY) as c:
            approval_id = celgate_part(await c.call_tool("delete_item", args))["approval_id"]
            seen = httpx.get(two.base + "/console/session", headers=csrf, timeout=10).json()
            assert seen["signed_in"] and seen["operator"] == "erin"
            url = f"{two.base}/admin/approvals/{approval_id}/approve"
            unsafe = httpx.post(url, headers=cookie, json={}, timeout=10)
            assert unsafe.status_code == 403  # no CSRF token: refused there too
            approved = httpx.post(url, headers=csrf, json={"by": "erin"}, timeout=10)
            assert approved.status_code == 201, approved.text
            assert not (await c.call_tool("delete_item", args)).is_error
        out = httpx.post(two.base + "/console/logout", headers=csrf, timeout=10)
        assert out.status_code == 200
        after = httpx.get(one.base + "/admin/approvals", headers=cookie, timeout=10)
        assert after.status_code == 401
        gone = httpx.get(one.base + "/console/session", headers=cookie, timeout=10).json()
        assert gone == {"signed_in": False}


class TestWaitApproval:
    async def _pending_id(self, gw: GatewayProcess, tool: str) -> str:
        with anyio.fail_after(15):
            while True:
                items = admin(gw, "GET", "/admin/approvals?status=pending").json()
                found = [r["id"] for r in items if r["tool"] == tool]
                if found:
                    return str(found[0])
                await anyio.sleep(0.05)

    @pytest.mark.parametrize("accept", ["application/json, text/event-stream", "application/json"])
    @pytest.mark.parametrize("path", ["/mcp/up", "/mcp"])
    async def test_a_held_call_its_client_cancels_is_withdrawn(
        self, pair: Any, call_log: Path, path: str, accept: str
    ) -> None:
        """notifications/cancelled for a call held here ends its wait and withdraws its
        request: approving it afterwards runs nothing (the upstream never saw the call, so
        the cancel forwarded there had stopped nothing)."""
        one, two = pair
        name = "write_file" if path == "/mcp/up" else "up__write_file"
        target = f"/tmp/cancelled-{len(path)}-{len(accept)}.txt"
        base = {
            "authorization": f"Bearer {ANALYST_KEY}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        async with httpx.AsyncClient(base_url=one.base, timeout=20) as http:
            opened = await http.post(path, json=initialize_body("cancels"), headers=base)
            session = {
                **base,
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await http.post(path, json=note, headers=session)
            args = {"path": target, "content": "x"}
            call = {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": name, "arguments": args},
            }

            async def held() -> str:  # held on a stream, or as a JSON answer to come
                asks = {**session, "accept": accept}
                async with http.stream("POST", path, json=call, headers=asks) as answer:
                    return (await answer.aread()).decode()

            task = asyncio.create_task(held())
            approval_id = await self._pending_id(two, "write_file")
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled"}
            cancel["params"] = {"requestId": 7}  # type: ignore[assignment]
            assert (await http.post(path, json=cancel, headers=session)).status_code == 202
            with anyio.fail_after(15):
                got = await task
        assert "wrote" not in got

        def withdrawn(record: dict[str, Any]) -> bool:
            return record.get("approval_id") == approval_id

        [record] = one.wait_records(1, where=withdrawn, within=10)
        assert record["error"] == "approval_withdrawn"
        listed = admin(two, "GET", "/admin/approvals").json()
        [request] = [r for r in listed if r["id"] == approval_id]
        assert (request["status"], request["decided_by"]) == ("denied", "client")
        assert admin(two, "POST", f"/admin/approvals/{approval_id}/approve").status_code == 409
        assert not any(x["arguments"].get("path") == target for x in calls_in(call_log))

    @pytest.mark.parametrize("accept", ["application/json", "application/json, text/event-stream"])
    async def test_a_client_gone_while_held_ends_its_wait(self, pair: Any, accept: str) -> None:
        """A held call answered as JSON has no stream to watch: its client going away ends
        the wait all the same (recorded as still held). In the 2026-07-28 era closing the
        request is how a client cancels (there is no ``notifications/cancelled``): its
        approval request is withdrawn, as a cancel withdraws it in the handshake era, and
        an operator is not left approving a call nobody waits for."""
        one, two = pair
        target = f"/tmp/held-then-gone-{len(accept)}.txt"
        args = {"path": target, "content": "x"}
        params = {"name": "write_file", "arguments": args, "_meta": MODERN_META}
        sent = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params})
        head = (
            f"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1:{one.port}\r\n"
            f"Authorization: Bearer {ANALYST_KEY}\r\nContent-Type: application/json\r\n"
            f"Accept: {accept}\r\nMcp-Protocol-Version: 2026-07-28\r\n"
            "Mcp-Method: tools/call\r\nMcp-Name: write_file\r\n"
            f"Content-Length: {len(sent)}\r\n\r\n"
        )
        sock = socket.create_connection(("127.0.0.1", one.port))
        try:
            sock.sendall(head.encode() + sent.encode())
            approval_id = await self._pending_id(two, "write_file")
        finally:
            sock.close()

        def held(record: dict[str, Any]) -> bool:
            return record.get("approval_id") == approval_id

        # recorded as held still, tied to the request the desk shows, and saying what became
        # of it (the record named no approval, and read as the rule's plain hold)
        [record] = one.wait_records(1, where=held, within=10)
        assert (record["effect"], record["error"]) == ("require_approval", "approval_withdrawn")
        assert record["reason"].startswith("withdrawn by its client")
        with anyio.fail_after(15):
            while True:
                listed = admin(two, "GET", "/admin/approvals").json()
                [request] = [r for r in listed if r["id"] == approval_id]
                if request["status"] != "pending":
                    break
                await anyio.sleep(0.05)
        assert (request["status"], request["decided_by"]) == ("denied", "client")

    @pytest.mark.parametrize("mode", ["legacy", "auto"])
    async def test_an_approved_tool_that_asks_the_client_is_approved_once(
        self, pair: Any, call_log: Path, mode: str
    ) -> None:
        """Approved by an operator, the tool asks the client for input (2026-07-28:
        ``input_required``, then a retry with the answer): the retry goes on under the same
        approval, never held for a second one."""
        one, two = pair
        question = f"favourite colour, {mode}?"

        async def answer(_ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            return types.ElicitResult(action="accept", content={"answer": f"blue-{mode}"})

        async with client(
            one.url("up"), key=ANALYST_KEY, mode=mode, elicitation_callback=answer
        ) as c:
            task = asyncio.create_task(c.call_tool("ask_user", {"question": question}))
            approval_id = await self._pending_id(two, "ask_user")
            admin(two, "POST", f"/admin/approvals/{approval_id}/approve")
            with anyio.fail_after(15):
                result = await task
        assert not result.is_error and text_of(result) == f"blue-{mode}", text_of(result)
        held = [r for r in admin(two, "GET", "/admin/approvals").json() if r["tool"] == "ask_user"]
        assert [(r["id"], r["status"]) for r in held if r["id"] == approval_id] == [
            (approval_id, "used")
        ]
        assert not [r for r in held if r["status"] == "pending"]

    @pytest.mark.parametrize("mode", ["legacy", "auto"])
    async def test_held_call_goes_through_once_approved(
        self, pair: Any, call_log: Path, mode: str
    ) -> None:
        one, two = pair
        path = f"/tmp/approved-{mode}.txt"
        async with client(one.url("up"), key=ANALYST_KEY, mode=mode) as c:
            task = asyncio.create_task(c.call_tool("write_file", {"path": path, "content": "x"}))
            approval_id = await self._pending_id(two, "write_file")
            assert not task.done()
            admin(two, "POST", f"/admin/approvals/{approval_id}/approve")
            with anyio.fail_after(15):
                result = await task
        assert not result.is_error, text_of(result)
        assert any(x["arguments"].get("path") == path for x in calls_in(call_log))

    async def test_held_call_refused(self, pair: Any, call_log: Path) -> None:
        one, two = pair
        path = "/tmp/refused.txt"
        async with client(one.url("up"), key=ANALYST_KEY, mode="legacy") as c:
            task = asyncio.create_task(c.call_tool("write_file", {"path": path, "content": "x"}))
            approval_id = await self._pending_id(two, "write_file")
            admin(two, "POST", f"/admin/approvals/{approval_id}/deny")
            with anyio.fail_after(15):
                result = await task
        assert result.is_error and "refused" in text_of(result)
        assert not any(x["arguments"].get("path") == path for x in calls_in(call_log))


class TestLimitsAcrossReplicas:
    async def test_limit_is_shared_and_says_when_to_retry(self, pair: Any) -> None:
        one, two = pair
        results = []
        async with (
            client(one.url("up"), key=INTERN_KEY) as c1,
            client(two.url("up"), key=INTERN_KEY) as c2,
        ):
            for i in range(5):
                target = c1 if i % 2 == 0 else c2
                results.append(await target.call_tool("echo", {"text": f"n{i}"}))
        admitted = [r for r in results if not r.is_error]
        refused = [r for r in results if r.is_error]
        assert len(admitted) == 3 and len(refused) == 2
        part = celgate_part(refused[0])
        assert part["counter"] == "echo_rate"
        assert 0 < part["retry_after"] <= 20.0  # one token every 20 s
        assert "rate limit 'echo_rate' exceeded" in text_of(refused[0])

    async def test_200_concurrent_calls_admit_exactly_30(self, pair: Any) -> None:
        one, two = pair

        async def burst(gw: GatewayProcess) -> list[bool]:
            async with client(gw.url("up"), key=ANALYST_KEY) as c:
                got = await asyncio.gather(
                    *(c.call_tool("add", {"a": i, "b": 1}) for i in range(100))
                )
            return [not r.is_error for r in got]

        first, second = await asyncio.gather(burst(one), burst(two))
        assert sum(first) + sum(second) == 30


class TestAdminApi:
    def test_no_token_wrong_token_and_agent_key(self, pair: Any) -> None:
        gw = pair[0]
        none = admin(gw, "GET", "/admin/policy", token=None)
        wrong = admin(gw, "GET", "/admin/policy", token="nope")
        agent = admin(gw, "GET", "/admin/policy", token=ANALYST_KEY)
        assert none.status_code == 401 and "www-authenticate" in none.headers
        assert wrong.status_code == 401
        assert agent.status_code == 403
        ok = admin(gw, "GET", "/admin/policy")
        assert ok.status_code == 200 and len(ok.json()["revision"]) == 16
        assert ok.headers["cache-control"] == "no-store"

    def test_openapi_schema_is_the_operators(self, pair: Any) -> None:
        """The admin API's schema is operator data: behind the admin token like /metrics."""
        url = pair[0].base + "/openapi/openapi.json"
        assert httpx.get(url, timeout=5).status_code == 401
        agent = {"Authorization": f"Bearer {ANALYST_KEY}"}
        assert httpx.get(url, headers=agent, timeout=5).status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        schema = httpx.get(url, headers=auth, timeout=5).json()
        assert "/admin/approvals/{approval_id}/approve" in schema["paths"]


class TestRecordsAndMetrics:
    async def test_decision_record_fields(self, pair: Any) -> None:
        gw = pair[0]
        async with client(gw.url("up"), key=ANALYST_KEY, mode="legacy") as c:
            await c.call_tool("execute_query", {"sql": "select 'record'"})
        await anyio.sleep(0.2)
        rec = [r for r in gw.records() if r["tool"] == "execute_query"][-1]
        assert rec["grant"] == "analyst-bot"
        assert rec["agent"] == "analyst-bot"
        assert rec["effect"] == "allow" and rec["rule"] == "analysts-only"
        assert rec["server"] == "up" and rec["session"]
        assert rec["args_digest"].startswith("sha256:") and "args" not in rec
        assert rec["latency_ms"] >= 0 and len(rec["decision_id"]) == 32
        assert rec["revision"] == admin(gw, "GET", "/admin/policy").json()["revision"]

    async def test_metrics_are_scraped_and_parsed(self, pair: Any) -> None:
        gw = pair[0]
        async with client(gw.url("up"), key=ANALYST_KEY) as c:
            await c.call_tool("calls_seen", {})
            await c.call_tool("delete_item", {"id": "for-the-metrics"})  # an approval request
            await c.call_tool("slow_progress", {"steps": 1, "delay_ms": 1})  # a limited call
        assert httpx.get(gw.base + "/metrics", timeout=5).status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        text = httpx.get(gw.base + "/metrics", headers=auth, timeout=5).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = [s for s in families["celgate_calls"].samples if s.name == "celgate_calls_total"]
        assert any(
            s.labels == {"server": "up", "tool": "calls_seen", "effect": "allow"} for s in samples
        )
        assert "celgate_decision_seconds" in families
        assert "celgate_approval_wait_seconds" in families  # a human's wait, timed apart
        health = families["celgate_upstream_up"].samples
        assert [(s.labels, s.value) for s in health] == [({"server": "up"}, 1.0)]
        assert "celgate_upstream_seconds" in families
        approvals = families["celgate_approvals"].samples
        requested = [s for s in approvals if s.labels.get("event") == "requested"]
        assert any(s.name == "celgate_approvals_total" and s.value >= 1 for s in requested)
        timed = families["celgate_limiter_seconds"].samples
        assert next(s.value for s in timed if s.name == "celgate_limiter_seconds_count") >= 1
        assert families["celgate_limiter_backend_up"].samples[0].value == 1.0


class TestValkeyOutage:
    async def test_closed_denies_open_admits_and_both_recover(
        self, pair: Any, valkey_server: ValkeyProcess
    ) -> None:
        gw = pair[0]
        async with client(gw.url("up"), key=ANALYST_KEY) as c:
            valkey_server.stop()
            try:
                closed = await c.call_tool("add", {"a": 1, "b": 2})
                opened = await c.call_tool("slow_progress", {"steps": 1, "delay_ms": 1})
                assert _backend_up(gw) == 0.0
            finally:
                valkey_server.start()
            assert closed.is_error
            assert "rate limit backend unavailable" in text_of(closed)
            assert not opened.is_error
            recovered = await c.call_tool("slow_progress", {"steps": 1, "delay_ms": 1})
        assert not recovered.is_error
        assert _backend_up(gw) == 1.0

    async def test_a_replicas_first_modern_calls_in_an_outage_are_served(
        self, upstream: PeerProcess, valkey_server: ValkeyProcess, tmp_path: Path
    ) -> None:
        """A replica that had not yet read the store's epoch asked for it on its first
        allowed 2026-07-28 call, and with Valkey down refused that call and every other
        (503), limits or none, ``failure_mode: open`` too (red-team wave 44): such a call
        goes on, its retry a call of its own."""
        extra = {
            "grants": grants(),
            "limits": {"backend": valkey_server.url},
            "sessions": {"secret": "shared-secret-for-replicas-0123"},
        }
        with run_gateway(tmp_path, POLICY, {"up": {"url": upstream.url}}, **extra) as fresh:
            valkey_server.stop()
            try:
                async with client(fresh.url("up"), key=ANALYST_KEY, mode="auto") as c:
                    plain = await c.call_tool("calls_seen", {})
                    opened = await c.call_tool("slow_progress", {"steps": 1, "delay_ms": 1})
                    closed = await c.call_tool("add", {"a": 1, "b": 2})
            finally:
                valkey_server.start()
        assert not plain.is_error and not opened.is_error
        assert closed.is_error and "rate limit backend unavailable" in text_of(closed)

    def test_a_held_call_with_the_store_down_is_answered_under_its_id(
        self, pair: Any, valkey_server: ValkeyProcess
    ) -> None:
        """A store that cannot be reached refuses the call (never forwarded) as every refusal
        is, a tool error under HTTP 200 and the call's id: a 503 read as a broken transport
        to the TypeScript SDK and the Inspector (red-team wave 37). The outage is logged as
        it starts and as it ends, never with a traceback per call."""
        gw = pair[0]
        tracebacks = gw.log_path.read_text().count("Traceback")
        outages = len(gw.records("approvals.backend_down"))
        headers = {
            "Authorization": f"Bearer {ANALYST_KEY}",
            "Accept": "application/json, text/event-stream",
            "Mcp-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "delete_item",
        }
        from tests.test_stdio_wire import MODERN_META

        args = {"id": "store-down"}
        params = {"name": "delete_item", "arguments": args, "_meta": MODERN_META}
        body = {"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": params}
        valkey_server.stop()
        try:
            answers = [
                httpx.post(gw.url("up"), json={**body, "id": 77 + n}, headers=headers, timeout=10)
                for n in range(3)
            ]
        finally:
            valkey_server.start()
        assert [a.status_code for a in answers] == [200] * 3, answers[0].text
        assert [a.json()["id"] for a in answers] == [77, 78, 79]
        result = answers[0].json()["result"]
        assert result["isError"] is True and "unavailable" in result["content"][0]["text"]
        assert len(gw.records("approvals.backend_down")) == outages + 1
        assert gw.log_path.read_text().count("Traceback") == tracebacks
        denied = gw.wait_records(3, where=lambda r: r.get("error") == "internal_error")
        assert [r["effect"] for r in denied[-3:]] == ["deny"] * 3
        params["arguments"] = {"id": "store-back"}
        again = httpx.post(gw.url("up"), json=body, headers=headers, timeout=10)
        assert again.status_code == 200, again.text

    @pytest.mark.parametrize("mode", ["legacy", "auto"])
    async def test_a_held_stream_with_the_store_down_ends_with_an_answer(
        self, pair: Any, valkey_server: ValkeyProcess, mode: str
    ) -> None:
        """A wait-mode call opens its stream before the store is asked: a store that cannot
        be reached then is answered on that stream, under the call's id, not by cutting it."""
        gw = pair[0]
        async with client(gw.url("up"), key=ANALYST_KEY, mode=mode) as c:
            valkey_server.stop()
            try:
                refused = await c.call_tool("write_file", {"path": f"/tmp/{mode}", "content": "x"})
            finally:
                valkey_server.start()
            # the store's next use (a retry-mode hold) ends the outage, logged as it ends
            recovered = len(gw.records("approvals.backend_recovered"))
            held = await c.call_tool("delete_item", {"id": f"after-{mode}"})
        assert refused.is_error and "unavailable" in text_of(refused)
        assert "pending approval apr_" in text_of(held)
        assert gw.wait_records(recovered + 1, "approvals.backend_recovered")


def _backend_up(gw: Any) -> float:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    text = httpx.get(gw.base + "/metrics", headers=auth, timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return float(families["celgate_limiter_backend_up"].samples[0].value)


class TestOperatorCommands:
    def test_keys_new_prints_a_key_once_with_its_config_line(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["keys", "new", "--grant", "bot"]) == 0
        out = capsys.readouterr().out
        found = re.search(r"(cgk_\S+)", out)
        assert found is not None
        assert f"  bot:\n    key_sha256: {hash_key(found.group(1))}" in out

    async def test_approvals_and_limits_from_the_command_line(
        self,
        pair: Any,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        one, two = pair
        monkeypatch.setenv("CELGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        args = {"id": "from-the-cli"}
        async with client(one.url("up"), key=ANALYST_KEY) as c:
            pending = await c.call_tool("delete_item", args)
            approval_id = celgate_part(pending)["approval_id"]
            assert main(["approvals", "list", "--url", two.base]) == 0
            assert approval_id in capsys.readouterr().out
            approve = ["approvals", "approve", approval_id, "--url", two.base, "--by", "carol"]
            assert main(approve) == 0
            assert f"{approval_id}: approved by carol" in capsys.readouterr().out
            passed = await c.call_tool("delete_item", args)
            await c.call_tool("echo", {"text": "take a token"})
        assert not passed.is_error
        assert main(["limits", "show", "--grant", "analyst-bot", "--url", one.base]) == 0
        assert "echo_rate|grant=analyst-bot  remaining" in capsys.readouterr().out
        with pytest.raises(SystemExit, match="needs --grant, --counter or --all"):
            main(["limits", "reset", "--url", two.base])
        reset = ["limits", "reset", "--grant", "analyst-bot", "--counter", "echo_rate"]
        assert main([*reset, "--url", two.base]) == 0  # the other replica: shared state
        out = capsys.readouterr().out
        assert "refilled 1 bucket(s)" in out and "echo_rate|grant=analyst-bot" in out
        assert main(["limits", "show", "--grant", "analyst-bot", "--url", one.base]) == 0
        shown = capsys.readouterr().out
        assert "echo_rate|grant=analyst-bot" not in shown
        assert "echo_session|session=" in shown  # its sessions' buckets are the grant's too
        assert main(["limits", "reset", "--grant", "analyst-bot", "--url", two.base]) == 0
        assert "echo_session|session=" in capsys.readouterr().out
        assert main(["limits", "show", "--grant", "intern-bot", "--url", one.base]) == 0
        assert "echo_session" not in capsys.readouterr().out
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        vague = httpx.post(one.base + "/admin/limits/reset", json={}, headers=auth, timeout=5)
        assert vague.status_code == 400 and "name a grant or a counter" in vague.text
        for empty in ({"counter": ""}, {"grant": ""}):  # read as every bucket of every grant
            nothing = httpx.post(one.base + "/admin/limits/reset", json=empty, headers=auth)
            assert nothing.status_code == 400 and "named by nothing" in nothing.text
        typo = httpx.post(
            one.base + "/admin/limits/reset", json={"counter": "echo_rte"}, headers=auth
        )
        assert (
            typo.status_code == 404 and "no counter 'echo_rte'" in typo.text
        )  # refilled 0, said ok
        with pytest.raises(SystemExit, match="404"):
            main(["approvals", "approve", "apr_nosuchrequest", "--url", two.base])
        with pytest.raises(SystemExit, match="name something"):
            main(["limits", "reset", "--grant", "analyst-bot", "--counter", "", "--url", two.base])
        # A grant name is a query value: "x&grant=analyst-bot" names no grant, not analyst's
        with pytest.raises(SystemExit, match="404"):
            main(["limits", "show", "--grant", "x&grant=analyst-bot", "--url", one.base])
        assert "remaining" not in capsys.readouterr().out
        # a grant the config has not (a typo) is said, not "refilled 0" while it stays limited
        misspelt = {"grant": "analyst_bot", "counter": "echo_rate"}
        refused = httpx.post(one.base + "/admin/limits/reset", json=misspelt, headers=auth)
        assert refused.status_code == 404 and "no grant 'analyst_bot'" in refused.text
        assert "analyst-bot" in refused.text  # the grants it has
        assert "anonymous" not in refused.text  # (not one of them: anonymous is off)
        agent = {"Authorization": f"Bearer {ANALYST_KEY}"}
        as_agent = httpx.post(one.base + "/admin/limits/reset", json={"all": 1}, headers=agent)
        assert as_agent.status_code == 403  # an agent key is never an admin token
        with pytest.raises(SystemExit, match="401"):
            main(["approvals", "list", "--url", two.base, "--token", "wrong"])
