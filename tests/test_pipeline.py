"""One admission pipeline (``gateway.pipeline.admission``) behind every face.

``admit`` on a real gateway object with the in-memory limiter and approval store on an
injected clock: a human's wait is measured apart from the decision. Then end to end through
a real gateway process: the relay, the held SSE call and the aggregated endpoint each write
one record per call and time their upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.approvals import stores
from gateway.approvals.service import SETTLING_SECONDS, ApprovalService
from gateway.approvals.stores import MemoryApprovalStore
from gateway.auth.identity import hash_key
from gateway.config import load_config
from gateway.pipeline import gateway as gateway_module
from gateway.pipeline.admission import Admission, Tick, Wait, admit, timed_upstream
from gateway.pipeline.gateway import Gateway
from gateway.policy import Call, CompiledPolicy, Decision, Identity
from gateway.policy.loader import load_policy
from gateway.ratelimit.memory import MemoryRateLimiter
from gateway.server.build import build_gateway
from gateway.telemetry.audit import args_digest
from tests.gateway_proc import GatewayProcess, client, run_gateway, text_of, write_config
from tests.peers import PeerProcess, free_port

KEY = "cgk_pipeline-test-key-0123456789"
ADMIN_TOKEN = "admin-token-for-pipeline-0123456789"
POLICY = r"""
version: "1"
default: deny
tools:
  echo: {action: allow}
  write_file:
    action: require_approval
    reason: writing files needs a human
    approval: {mode: wait, timeout: 600}
    limits:
      - {counter: writes, window: hour, max: 5, scope: grant}
  delete_item:
    action: require_approval
    reason: deleting needs a human
    approval: {mode: retry, timeout: 600}
  purge:
    action: require_approval
    approval: {mode: retry, timeout: 7200}
    limits:
      - {counter: purges, window: hour, max: 1, scope: grant}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def sample(gw: Gateway, name: str, labels: dict[str, str] | None = None) -> float:
    assert gw.metrics is not None
    value = gw.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def call_of(tool: str, **args: Any) -> Call:
    return Call(tool=tool, server="up", args=args, identity=Identity("bot", "bot"), session="s1")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def gw(tmp_path: Path, clock: Clock) -> Any:
    """A gateway built from a config file, its limiter and approvals on the test's clock."""
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}  # never reached: admit does not forward
    gateway = build_gateway(load_config(write_config(tmp_path, POLICY, servers, free_port())))
    await gateway.limiter.close()
    assert gateway.approvals is not None and gateway.metrics is not None
    await gateway.approvals.store.close()
    gateway.limiter = MemoryRateLimiter(clock)
    gateway.approvals = ApprovalService(
        MemoryApprovalStore(clock), clock=clock, poll_seconds=0, on_event=gateway.metrics.approval
    )
    yield gateway
    await gateway.close()


async def operator(gw: Gateway, clock: Clock, seconds: float, approve: bool = True) -> None:
    """A human who finds the pending request, takes ``seconds`` (injected) and decides."""
    assert gw.approvals is not None
    while not (pending := [r for r in await gw.approvals.list() if r.status == "pending"]):
        await anyio.lowlevel.checkpoint()
    clock.now += seconds
    await gw.approvals.decide(pending[0].id, approve, "ops", None)


async def held_then_reloaded(
    gw: Gateway, clock: Clock, newer: CompiledPolicy, call: Call
) -> Admission:
    """``call`` held in wait mode; meanwhile the rules become ``newer``, then an operator
    approves."""

    async def reload_then_approve() -> None:
        assert gw.approvals is not None
        while not await gw.approvals.list():
            await anyio.lowlevel.checkpoint()
        gw.policy = newer
        await operator(gw, clock, 1.0)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reload_then_approve)
            return await admit(gw, call, clock=clock)


def test_the_catalogue_of_one_server_is_bounded(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``MAX_KNOWN_TOOLS`` a server's least recently listed tool is forgotten (read
    again with its list when next called), whatever names the server invents."""
    monkeypatch.setattr(gateway_module, "MAX_KNOWN_TOOLS", 3)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    for n in range(6):
        gw.observe("up", {"name": f"t{n}", "inputSchema": schema})
    gw.observe("up", {"name": "t3", "inputSchema": schema})  # listed again: kept longest
    gw.observe("up", {"name": "t6", "inputSchema": schema})
    kept = sorted(name for server, name in gw.catalog if server == "up")
    assert kept == ["t3", "t5", "t6"]
    assert sorted(name for _, name in gw.arg_shapes) == ["t3", "t5", "t6"]


class TestAdmit:
    async def test_an_approval_a_limit_refuses_is_kept(self, gw: Gateway, clock: Clock) -> None:
        """An approved call the limit refuses never runs: its approval is not used up, and the
        identical call passes on it once the bucket refills."""
        assert gw.approvals is not None
        assert (await admit(gw, call_of("purge", t="a"))).decision.error == "approval_pending"
        await operator(gw, clock, 1.0)
        assert (await admit(gw, call_of("purge", t="a"))).allowed  # the hour's one token
        held = await admit(gw, call_of("purge", t="b"))
        await operator(gw, clock, 1.0)
        refused = await admit(gw, call_of("purge", t="b"))
        assert refused.decision.error == "rate_limited"
        statuses = {r.id: r.status for r in await gw.approvals.list()}
        assert statuses[held.decision.approval_id] == "approved"
        clock.now += 3600
        passed = await admit(gw, call_of("purge", t="b"))
        assert passed.allowed and passed.decision.approval_id == held.decision.approval_id
        at_once = await admit(gw, call_of("purge", t="b"))  # (it might yet be given back)
        assert at_once.decision.error == "approval_used"
        clock.now += SETTLING_SECONDS
        again = await admit(gw, call_of("purge", t="b"))
        assert again.decision.error == "approval_pending"

    async def test_a_wait_is_timed_apart_from_the_decision(self, gw: Gateway, clock: Clock) -> None:
        """Approved after 42 injected seconds: the wait is the approval's, not the decision's;
        limits are taken after the approval, and the call is recorded once, allowed."""
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(operator, gw, clock, 42.0)
                admission = await admit(gw, call_of("write_file", path="/tmp/a"), clock=clock)
        assert admission.allowed and admission.approval_wait == 42.0
        assert admission.latency == 0.0
        (record,) = gw.decisions.recent
        assert record["decision_id"] == admission.decision_id
        assert record["effect"] == "allow" and record["approval_id"].startswith("apr_")
        assert record["latency_ms"] == 0.0 and record["approval_wait_ms"] == 42000.0
        assert record["limits"]["remaining"] == {"writes": 4.0}
        assert sample(gw, "celgate_approval_wait_seconds_sum") == 42.0
        assert sample(gw, "celgate_approval_wait_seconds_count") == 1.0
        assert sample(gw, "celgate_decision_seconds_sum") == 0.0
        assert sample(gw, "celgate_decision_seconds_count") == 1.0

    async def test_retry_mode_answers_at_once_with_no_wait(self, gw: Gateway, clock: Clock) -> None:
        admission = await admit(gw, call_of("delete_item", id="x"), clock=clock)
        assert admission.decision.effect == "require_approval"
        assert admission.decision.error == "approval_pending"
        assert admission.approval_wait is None
        (record,) = gw.decisions.recent
        assert "approval_wait_ms" not in record and record["error"] == "approval_pending"
        assert sample(gw, "celgate_approval_wait_seconds_count") == 0.0

    async def test_refused_after_a_wait_takes_no_tokens(self, gw: Gateway, clock: Clock) -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(operator, gw, clock, 7.0, False)
                admission = await admit(gw, call_of("write_file", path="/tmp/b"), clock=clock)
        assert admission.decision.error == "approval_refused"
        (record,) = gw.decisions.recent
        assert record["approval_wait_ms"] == 7000.0 and "limits" not in record

    async def test_the_face_holds_and_ticks(self, gw: Gateway, clock: Clock) -> None:
        """A face's ``hold`` gets the held decision and runs the wait with its keep-alive."""
        held: list[Decision] = []
        ticks: list[float] = []

        async def keepalive(elapsed: float) -> None:
            ticks.append(elapsed)
            clock.now += 5.0  # each poll of the pending request takes five injected seconds
            if len(ticks) == 3:
                await operator(gw, clock, 0.0)

        async def hold(decision: Decision, wait: Wait) -> Decision:
            held.append(decision)
            tick: Tick = keepalive
            return await wait(tick)

        with anyio.fail_after(10):
            call = call_of("write_file", path="/tmp/c")
            admission = await admit(gw, call, hold=hold, clock=clock)
        assert [d.effect for d in held] == ["require_approval"]
        assert ticks == [0.0, 5.0, 10.0]
        assert admission.allowed and admission.approval_wait == 15.0 and admission.latency == 0.0

    async def test_a_caller_gone_is_recorded_as_held(self, gw: Gateway, clock: Clock) -> None:
        async def hold(decision: Decision, wait: Wait) -> Decision:
            return decision  # the client went away before anyone decided

        admission = await admit(gw, call_of("write_file", path="/tmp/d"), hold=hold, clock=clock)
        assert admission.decision.effect == "require_approval" and not admission.allowed
        assert [r["effect"] for r in gw.decisions.recent] == ["require_approval"]

    async def test_a_cancelled_wait_still_writes_its_record(
        self, gw: Gateway, clock: Clock
    ) -> None:
        result: list[Admission] = []

        async def call() -> None:
            result.append(await admit(gw, call_of("write_file", path="/tmp/e"), clock=clock))

        task = asyncio.create_task(call())
        assert gw.approvals is not None
        while not await gw.approvals.list():
            await anyio.lowlevel.checkpoint()
        clock.now += 3.0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (record,) = gw.decisions.recent
        assert record["effect"] == "require_approval" and record["approval_wait_ms"] == 3000.0
        assert not result

    @pytest.mark.parametrize(
        ("now_says", "effect"),
        [("action: deny\n    reason: writing is now forbidden", "deny"), ("{}", "allow")],
    )
    async def test_a_reload_while_held_decides_the_approved_call_again(
        self, gw: Gateway, clock: Clock, tmp_path: Path, now_says: str, effect: str
    ) -> None:
        """The operator tightens the rule while a call waits, then approves the old request:
        the call is decided again under the rules now in force (it ran under the old one)."""
        folder = tmp_path / "reloaded"
        folder.mkdir()
        (folder / "p.yaml").write_text(f'version: "1"\ntools:\n  write_file:\n    {now_says}\n')
        newer = load_policy([folder])
        admission = await held_then_reloaded(gw, clock, newer, call_of("write_file", path="/tmp/r"))
        assert admission.decision.effect == effect
        assert admission.decision.revision == newer.revision
        if effect == "deny":
            assert "the policy changed while the call was held" in admission.decision.reason
            assert "writing is now forbidden" in admission.decision.reason

    async def test_a_tool_changed_while_held_is_refused_once_approved(
        self, gw: Gateway, clock: Clock
    ) -> None:
        """The server changes the tool while its call waits (here its schema, so that the
        call's arguments no longer fit; a pin refuses a changed tool the same way): once
        approved the call is decided again, refused as a call to that tool is now, and its
        approval is overruled (the desk read "used", and the call ran on the changed tool:
        only a reload decided a held call again; red-team wave 33)."""
        as_string = {"type": "object", "properties": {"path": {"type": "string"}}}
        gw.observe("up", {"name": "write_file", "inputSchema": as_string})

        async def change_then_approve() -> None:
            assert gw.approvals is not None
            while not await gw.approvals.list():
                await anyio.lowlevel.checkpoint()
            as_number = {"type": "object", "properties": {"path": {"type": "integer"}}}
            gw.observe("up", {"name": "write_file", "inputSchema": as_number})
            await operator(gw, clock, 1.0)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(change_then_approve)
                admission = await admit(gw, call_of("write_file", path="/tmp/z"), clock=clock)
        decision = admission.decision
        assert decision.effect == "deny" and decision.approval_id
        assert "what it calls changed while the call was held" in decision.reason
        assert gw.approvals is not None
        (request,) = await gw.approvals.list()
        assert (request.status, request.decided_by) == ("denied", "policy")
        assert sample(gw, "celgate_approvals_total", {"event": "overruled"}) == 1.0
        (record,) = gw.decisions.recent
        assert record["effect"] == "deny" and record["approval_id"] == decision.approval_id

    async def test_a_call_approved_in_band_after_a_reload_is_decided_again(
        self, gw: Gateway, clock: Clock, tmp_path: Path
    ) -> None:
        """``mode: elicit`` in the handshake era: the client's human is asked on the call's
        own stream; the operator reloads the rule to deny meanwhile, then the human says
        yes. The call ran (only desk approvals were decided again; red-team wave 34)."""
        from dataclasses import replace

        asked, denied = tmp_path / "asked", tmp_path / "denied"
        for folder, rule in (
            (asked, "action: require_approval\n    approval: {mode: elicit, timeout: 60}"),
            (denied, "action: deny\n    reason: no more writing"),
        ):
            folder.mkdir()
            (folder / "p.yaml").write_text(f'version: "1"\ntools:\n  write_file:\n    {rule}\n')
        gw.policy = load_policy([asked])
        newer = load_policy([denied])

        async def elicit(decision: Decision, tick: Any) -> Decision:
            assert decision.effect == "require_approval"
            gw.policy = newer  # reloaded while the human reads the question
            return replace(decision, effect="allow", reason="approved by the client's human")

        admission = await admit(gw, call_of("write_file", path="/tmp/i"), elicit=elicit)
        assert admission.decision.effect == "deny"
        assert "the policy changed while the call was held" in admission.decision.reason
        assert admission.decision.revision == newer.revision

    async def test_a_reload_that_raises_a_tools_risk_denies_the_held_call(
        self, gw: Gateway, clock: Clock, tmp_path: Path
    ) -> None:
        """The tightening is the tool's risk: the re-decision reads it under the new rules
        (it kept the risk worked out when the call was held, and the call ran)."""
        folder = tmp_path / "risky"
        folder.mkdir()
        (folder / "p.yaml").write_text(
            'version: "1"\ntools:\n  "write_*": {risk: high}\n  up/write_file:\n'
            "    rules:\n      - {when: 'tool.risk == \"high\"', action: deny}\n"
            "      - {action: require_approval}\n"
        )
        newer = load_policy([folder])
        read_only = {"name": "write_file", "annotations": {"readOnlyHint": True}}
        gw.observe("up", read_only)  # listed: read/low under the rules it is held under
        admission = await held_then_reloaded(gw, clock, newer, call_of("write_file", path="/tmp/k"))
        assert admission.decision.effect == "deny"

    async def test_an_approval_given_just_before_the_end_is_usable(
        self, gw: Gateway, clock: Clock
    ) -> None:
        """Approved 80 ms before its request's timeout, found by the next poll after it: the
        call runs (it was answered approval_expired)."""

        async def late_operator() -> None:
            await operator(gw, clock, 600.0 - 0.08)
            clock.now += 0.25  # the held call's next poll comes after the timeout

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(late_operator)
                admission = await admit(gw, call_of("write_file", path="/tmp/late"), clock=clock)
        assert admission.allowed

    async def test_a_flood_of_withdrawn_requests_keeps_an_unused_approval(
        self, gw: Gateway, clock: Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past the decided requests kept, what an agent's own cancelled calls made goes
        first, and an approval not used yet stays until it expires."""
        monkeypatch.setattr(stores, "KEEP_DECIDED", 5)
        assert gw.approvals is not None
        store = gw.approvals.store
        held = await admit(gw, call_of("purge", t="kept"))
        await gw.approvals.decide(held.decision.approval_id or "", True, "ops", None)
        for i in range(12):
            flood = await admit(gw, call_of("delete_item", id=f"f{i}"))
            await store.transition(
                flood.decision.approval_id or "", "pending", "denied", "client", None
            )
            clock.now += 2.0  # each sweep runs (at most once a second)
        approved = await store.get(held.decision.approval_id or "")
        assert approved is not None and approved.status == "approved"
        passed = await admit(gw, call_of("purge", t="kept"))
        assert passed.allowed

    async def test_timed_upstream_records_every_forward(self, gw: Gateway, clock: Clock) -> None:
        call = call_of("echo", text="x")
        async with timed_upstream(gw, call, clock=clock):
            clock.now += 0.25
        with pytest.raises(OSError):
            async with timed_upstream(gw, call, clock=clock):
                clock.now += 0.5
                raise OSError("upstream went away")
        labels = {"server": "up"}
        assert sample(gw, "celgate_upstream_seconds_count", labels) == 2.0
        assert sample(gw, "celgate_upstream_seconds_sum", labels) == 0.75


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def gateway(upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    extra = {
        "grants": {"bot": {"key_sha256": hash_key(KEY)}},
        "admin": {"token_sha256": hash_key(ADMIN_TOKEN)},
        "audit": {"log_arguments": True},  # records are matched to calls by their arguments
    }
    servers = {"up": {"url": upstream.url}}
    with run_gateway(tmp_path_factory.mktemp("pipeline"), POLICY, servers, **extra) as gw:
        yield gw


def admin(gw: GatewayProcess, method: str, path: str) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return httpx.request(method, gw.base + path, headers=headers, json={}, timeout=10)


def scrape(gw: GatewayProcess) -> dict[str, float]:
    """Every sample of /metrics, by name and labels (read with the admin token)."""
    resp = admin(gw, "GET", "/metrics")
    assert resp.status_code == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


UPSTREAM_COUNT = "celgate_upstream_seconds_count{server=up}"
WAIT_COUNT = "celgate_approval_wait_seconds_count{}"


def rpc(msg_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


@contextlib.asynccontextmanager
async def raw_session(gw: GatewayProcess) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """An initialized 2025-11-25 session on the relay, over plain HTTP, taking SSE."""
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }
    info = {"name": "raw", "version": "0"}
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info}
    async with httpx.AsyncClient(headers=headers, timeout=15) as http:
        url = gw.url("up")
        resp = await http.post(url, json=rpc(0, "initialize", init))
        http.headers["mcp-session-id"] = resp.headers["mcp-session-id"]
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        yield http, url


async def records_for(gw: GatewayProcess, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The decision records of calls made with ``args``, once the log holds one."""
    with anyio.fail_after(10):
        while True:
            found = [r for r in gw.records() if r.get("args") == args]
            if found:
                return found
            await anyio.sleep(0.02)


async def pending_request(gw: GatewayProcess, args: dict[str, Any]) -> str:
    """The id of the pending approval request of the call made with ``args``."""
    digest = args_digest(args)
    with anyio.fail_after(15):
        while True:
            items = admin(gw, "GET", "/admin/approvals?status=pending").json()
            found = [r["id"] for r in items if r["args_digest"] == digest]
            if found:
                return str(found[0])
            await anyio.sleep(0.05)


async def approve_when_pending(gw: GatewayProcess, args: dict[str, Any]) -> None:
    approval_id = await pending_request(gw, args)
    admin(gw, "POST", f"/admin/approvals/{approval_id}/approve")


class TestEveryFace:
    async def test_relay(self, gateway: GatewayProcess) -> None:
        before = scrape(gateway)
        args = {"text": "through the relay"}
        async with client(gateway.url("up"), key=KEY) as c:
            result = await c.call_tool("echo", args)
        assert text_of(result) == "through the relay"
        (record,) = await records_for(gateway, args)
        assert record["effect"] == "allow" and "approval_wait_ms" not in record
        after = scrape(gateway)
        assert after[UPSTREAM_COUNT] == before.get(UPSTREAM_COUNT, 0.0) + 1

    async def test_held_stream(self, gateway: GatewayProcess) -> None:
        before = scrape(gateway)
        args = {"path": "/tmp/pipeline-held.txt", "content": "x"}
        async with client(gateway.url("up"), key=KEY) as c:
            task = asyncio.create_task(c.call_tool("write_file", args))
            await approve_when_pending(gateway, args)
            with anyio.fail_after(15):
                result = await task
        assert not result.is_error, text_of(result)
        (record,) = await records_for(gateway, args)
        assert record["effect"] == "allow" and record["approval_id"].startswith("apr_")
        assert record["approval_wait_ms"] > record["latency_ms"]
        after = scrape(gateway)
        assert after[UPSTREAM_COUNT] == before.get(UPSTREAM_COUNT, 0.0) + 1
        assert after[WAIT_COUNT] == before.get(WAIT_COUNT, 0.0) + 1

    async def test_held_call_is_answered_as_a_stream(self, gateway: GatewayProcess) -> None:
        """Raw HTTP, to see the wire: the held call's answer is the SSE stream opened while
        it waited, carrying the upstream's answer; the call is recorded once."""
        args = {"path": "/tmp/pipeline-raw.txt", "content": "z"}
        async with raw_session(gateway) as (http, url):
            call = {"name": "write_file", "arguments": args}
            async with http.stream("POST", url, json=rpc(1, "tools/call", call)) as stream:
                assert stream.headers["content-type"] == "text/event-stream"
                await approve_when_pending(gateway, args)
                body = (await stream.aread()).decode()
        assert '"id":1' in body.replace(" ", "") and "pipeline-raw" in body
        (record,) = await records_for(gateway, args)
        assert record["effect"] == "allow" and record["approval_wait_ms"] > 0

    async def test_a_held_caller_gone_is_recorded_once(self, gateway: GatewayProcess) -> None:
        """The client hangs up while its call waits: the wait ends, nothing is forwarded, and
        the one record says the call was still held."""
        before = scrape(gateway)
        args = {"path": "/tmp/pipeline-gone.txt", "content": "w"}
        async with raw_session(gateway) as (http, url):
            call = {"name": "write_file", "arguments": args}
            async with http.stream("POST", url, json=rpc(1, "tools/call", call)) as stream:
                assert stream.headers["content-type"] == "text/event-stream"
                await pending_request(gateway, args)
        (record,) = await records_for(gateway, args)
        assert record["effect"] == "require_approval" and "approval_wait_ms" in record
        assert scrape(gateway).get(UPSTREAM_COUNT, 0.0) == before.get(UPSTREAM_COUNT, 0.0)

    async def test_aggregate(self, gateway: GatewayProcess) -> None:
        before = scrape(gateway)
        args = {"text": "through the aggregate"}
        async with client(f"{gateway.base}/mcp", key=KEY) as c:
            result = await c.call_tool("up__echo", args)
        assert text_of(result) == "through the aggregate"
        (record,) = await records_for(gateway, args)
        assert record["effect"] == "allow" and record["server"] == "up"
        after = scrape(gateway)
        assert after[UPSTREAM_COUNT] == before.get(UPSTREAM_COUNT, 0.0) + 1

    async def test_aggregate_wait_is_timed_apart(self, gateway: GatewayProcess) -> None:
        before = scrape(gateway)
        args = {"path": "/tmp/pipeline-aggregate.txt", "content": "y"}
        async with client(f"{gateway.base}/mcp", key=KEY) as c:
            task = asyncio.create_task(c.call_tool("up__write_file", args))
            await approve_when_pending(gateway, args)
            with anyio.fail_after(15):
                result = await task
        assert not result.is_error, text_of(result)
        (record,) = await records_for(gateway, args)
        assert record["approval_wait_ms"] > record["latency_ms"]
        after = scrape(gateway)
        assert after[UPSTREAM_COUNT] == before.get(UPSTREAM_COUNT, 0.0) + 1
        assert after[WAIT_COUNT] == before.get(WAIT_COUNT, 0.0) + 1

    async def test_a_denial_is_recorded_once_and_not_forwarded(
        self, gateway: GatewayProcess
    ) -> None:
        before = scrape(gateway)
        args = {"id": "pipeline-retry"}
        async with client(gateway.url("up"), key=KEY) as c:
            result = await c.call_tool("delete_item", args)
        assert result.is_error and "pending approval" in text_of(result)
        (record,) = await records_for(gateway, args)
        assert record["error"] == "approval_pending"
        assert scrape(gateway).get(UPSTREAM_COUNT, 0.0) == before.get(UPSTREAM_COUNT, 0.0)
