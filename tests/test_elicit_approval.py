"""In-band approval (``approval: {mode: elicit}``) end to end: a real gateway, the real test
upstream (its call log says what reached it), the Python SDK client in both eras and the
TypeScript SDK client (2025-11-25), each answering the gateway's question as told."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from gateway.approvals import stores
from gateway.approvals.stores import MemoryApprovalStore, ValkeyApprovalStore
from gateway.edge import inband
from gateway.edge.elicit import question
from gateway.errors import BackendUnavailable, ConfigError
from gateway.policy import Decision, load_policy
from gateway.policy.model import Call, Identity
from tests.gateway_proc import GatewayProcess, calls_in, client, decision_of, run_gateway, text_of
from tests.peers import NODE, REPO_ROOT, TS_DIR, TS_SDK, PeerProcess, free_port, ts_sdk_ready
from tests.valkey_server import ValkeyProcess

KEY = "elicit-agent-key-0123456789abcdef"
POLICY = """
version: "1"
default: deny
tools:
  echo: {}
  delete_item:
    action: require_approval
    reason: deleting needs a human
    approval: {mode: elicit, timeout: 120}
  ask_user:
    action: require_approval
    approval: {mode: elicit, timeout: 120}
  write_file:
    action: require_approval
    approval: {mode: elicit, fallback: retry, timeout: 120}
    limits:
      - {counter: writes, window: hour, max: 1, scope: grant}
"""
ERAS = ["legacy", "2026-07-28"]
Answer = tuple[str, bool | None]  # (action, approve)


@pytest.fixture(scope="module")
def gw(upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {"agent": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
    directory = tmp_path_factory.mktemp("elicit")
    with run_gateway(directory, POLICY, {"up": {"url": upstream.url}}, grants=grants) as gw:
        yield gw


def answering(answer: Answer, asked: list[types.ElicitRequestParams]) -> Any:
    action, approve = answer

    async def callback(_ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        content = {"approve": approve} if approve is not None else None
        return types.ElicitResult(action=action, content=content)  # type: ignore[arg-type]

    return callback


def reached(log: Path, item: str) -> int:
    return sum(1 for c in calls_in(log) if (c.get("arguments") or {}).get("id") == item)


@pytest.mark.parametrize("era", ERAS)
class TestThroughTheAggregate:
    """The same question on ``/mcp``: the call named ``up__delete_item`` there, the question
    naming the tool's real name, the answer going to the gateway (never to the server)."""

    @pytest.mark.parametrize(("answer", "runs"), [(("accept", True), 1), (("decline", None), 0)])
    async def test_asked_and_answered_on_mcp(
        self, gw: GatewayProcess, call_log: Path, era: str, answer: Answer, runs: int
    ) -> None:
        asked: list[types.ElicitRequestParams] = []
        item = f"agg-{answer[0]}-{era}"
        callback = answering(answer, asked)
        async with client(f"{gw.base}/mcp", KEY, mode=era, elicitation_callback=callback) as c:
            result = await c.call_tool("up__delete_item", {"id": item})
        [question] = asked
        assert "delete_item (server up)" in question.message and item in question.message
        assert reached(call_log, item) == runs
        if runs:
            assert text_of(result) == f"deleted {item}"
        else:
            assert result.is_error and decision_of(result)["error"] == "approval_declined"


async def test_a_call_cancelled_while_its_user_is_asked_never_runs(
    gw: GatewayProcess, call_log: Path
) -> None:
    """A call its client cancels while its user is asked (handshake era: the question on the
    call's stream) ends there, as a call held in wait mode does: the user's later approval
    runs nothing. It was not registered as cancellable, and ran upstream (red-team wave
    57)."""
    item = "py-cancelled-while-asked"
    asked, release = anyio.Event(), anyio.Event()

    async def callback(_ctx: Any, _params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.set()
        await release.wait()
        return types.ElicitResult(action="accept", content={"approve": True})

    async with client(gw.url("up"), KEY, mode="legacy", elicitation_callback=callback) as c:
        with anyio.fail_after(20), anyio.CancelScope() as scope:

            async def cancel_once_asked() -> None:
                await asked.wait()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_asked)
                await c.call_tool("delete_item", {"id": item})
        release.set()  # the user approves, after the call was cancelled
        after = await c.call_tool("echo", {"text": "after"})
    assert not after.is_error
    [record] = gw.wait_records(1, where=lambda r: r.get("args_digest") == _digest({"id": item}))
    assert record["effect"] != "allow"
    assert reached(call_log, item) == 0


async def test_a_hold_made_an_operators_while_its_user_is_asked_waits_for_one(
    upstream: PeerProcess, call_log: Path, tmp_path: Path
) -> None:
    """A reload during the question moved ``delete_item`` from the client's own approval to
    an operator's: the user's approve then ran the call on the client's word, where a new
    call would wait for an operator (handshake era; red-team wave 59). It is held for an
    operator now, as a new call is."""
    grants = {"agent": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
    item = "py-tightened-while-asked"
    stricter = POLICY.replace(
        "approval: {mode: elicit, timeout: 120}", "approval: {mode: retry}", 1
    )
    assert stricter != POLICY
    with run_gateway(tmp_path, POLICY, {"up": {"url": upstream.url}}, grants=grants) as gw:

        async def callback(_ctx: Any, _params: types.ElicitRequestParams) -> types.ElicitResult:
            reloads = len(gw.records("policy.reloaded"))
            (tmp_path / "policy.new").write_text(stricter)
            (tmp_path / "policy.new").rename(tmp_path / "policy.yaml")
            with anyio.fail_after(20):
                while len(gw.records("policy.reloaded")) <= reloads:
                    await anyio.sleep(0.05)
            return types.ElicitResult(action="accept", content={"approve": True})

        async with client(gw.url("up"), KEY, mode="legacy", elicitation_callback=callback) as c:
            result = await c.call_tool("delete_item", {"id": item})
    assert result.is_error
    assert decision_of(result)["effect"] == "require_approval", text_of(result)
    assert decision_of(result)["approval_id"].startswith("apr_")  # an operator's request
    assert reached(call_log, item) == 0


@pytest.mark.parametrize("era", ERAS)
class TestPythonClient:
    async def test_accept_reaches_the_upstream_once(
        self, gw: GatewayProcess, call_log: Path, era: str
    ) -> None:
        """The question names tool, server, arguments and reason; on approve the call runs."""
        asked: list[types.ElicitRequestParams] = []
        item = f"py-accept-{era}"
        callback = answering(("accept", True), asked)
        async with client(gw.url("up"), KEY, mode=era, elicitation_callback=callback) as c:
            result = await c.call_tool("delete_item", {"id": item})
        assert not result.is_error, text_of(result)
        assert text_of(result) == f"deleted {item}"
        [question] = asked
        assert "delete_item" in question.message and "server up" in question.message
        assert item in question.message and "deleting needs a human" in question.message
        assert reached(call_log, item) == 1
        [record] = gw.wait_records(
            1,
            where=lambda r: (
                r.get("effect") == "allow"
                and str(r.get("approval_id", "")).startswith("elc_")
                and r["args_digest"] == _digest({"id": item})
            ),
        )
        assert "approved in the client" in record["reason"]

    @pytest.mark.parametrize(
        ("answer", "code"),
        [
            (("decline", None), "approval_declined"),
            (("accept", False), "approval_declined"),
            (("cancel", None), "approval_cancelled"),
        ],
    )
    async def test_decline_and_cancel_are_denials_with_a_reason(
        self, gw: GatewayProcess, call_log: Path, era: str, answer: Answer, code: str
    ) -> None:
        item = f"py-{answer[0]}-{answer[1]}-{era}"
        callback = answering(answer, [])
        async with client(gw.url("up"), KEY, mode=era, elicitation_callback=callback) as c:
            result = await c.call_tool("delete_item", {"id": item})
        assert result.is_error
        assert decision_of(result)["error"] == code
        assert "celgate refused this call" in text_of(result)
        assert reached(call_log, item) == 0

    async def test_a_client_without_elicitation_gets_the_fallback(
        self, gw: GatewayProcess, call_log: Path, era: str
    ) -> None:
        item = f"py-nocap-{era}"
        async with client(gw.url("up"), KEY, mode=era) as c:
            result = await c.call_tool("delete_item", {"id": item})
        decision = decision_of(result)
        assert decision["error"] == "approval_pending" and decision["approval_id"].startswith(
            "apr_"
        )
        assert "An operator must approve it" in text_of(result)
        assert reached(call_log, item) == 0

    async def test_an_approved_call_still_takes_its_limits(
        self, gw: GatewayProcess, era: str
    ) -> None:
        """Approval comes before limits: the second approved write is refused by the limit."""
        callback = answering(("accept", True), [])
        outcomes = []
        async with client(gw.url("up"), KEY, mode=era, elicitation_callback=callback) as c:
            for n in range(2):
                args = {"path": f"/tmp/{era}-{n}", "content": "x"}
                outcomes.append(await c.call_tool("write_file", args))
        errors = [decision_of(r).get("error") if r.is_error else None for r in outcomes]
        if era == ERAS[0]:
            assert errors == [None, "rate_limited"], [text_of(r) for r in outcomes]
        else:  # the counter is the grant's: the legacy run already spent it
            assert errors == ["rate_limited", "rate_limited"]


def _digest(args: dict[str, Any]) -> str:
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("era", ERAS)
class TestApprovedToolThatAsksItself:
    async def test_approved_once_then_the_tools_own_question(
        self, gw: GatewayProcess, call_log: Path, era: str
    ) -> None:
        """The human approves once; the tool's own question (``input_required`` under
        2026-07-28) then goes to the client and its answer to the tool, not asked again."""
        asked: list[str] = []

        async def callback(_ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
            ours = params.message.startswith("celgate holds")
            asked.append("approval" if ours else "tool")
            content: dict[str, Any] = {"approve": True} if ours else {"answer": f"42-{era}"}
            return types.ElicitResult(action="accept", content=content)

        question = f"the answer, {era}?"
        async with client(gw.url("up"), KEY, mode=era, elicitation_callback=callback) as c:
            result = await c.call_tool("ask_user", {"question": question})
        assert not result.is_error and text_of(result) == f"42-{era}", text_of(result)
        assert asked == ["approval", "tool"]
        runs = [
            x for x in calls_in(call_log) if (x.get("arguments") or {}) == {"question": question}
        ]
        assert 1 <= len(runs) <= 2  # 2026-07-28: asked, then answered


class TestRequestStateUnder20260728:
    """The client's retry is checked: issued here, for this call, not expired, used once."""

    async def _first(self, c: Any, item: str) -> types.InputRequiredResult:
        first = await c.session.call_tool("delete_item", {"id": item}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult), first
        assert first.request_state and first.request_state.startswith("celgate.v1.")
        return first

    async def test_replayed_tampered_and_moved_states_are_refused(
        self, gw: GatewayProcess, call_log: Path
    ) -> None:
        item = "py-state"
        yes = {"celgate-approval": types.ElicitResult(action="accept", content={"approve": True})}
        callback = answering(("accept", True), [])
        async with client(gw.url("up"), KEY, mode="2026-07-28", elicitation_callback=callback) as c:
            first = await self._first(c, item)
            state = first.request_state
            assert state is not None
            body, _, mac = state.rpartition(".")
            tampered = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac
            refused = {}
            for name, args, token in [
                ("tampered", {"id": item}, tampered),
                ("moved", {"id": "another-item"}, state),
            ]:
                result = await c.session.call_tool(
                    "delete_item", args, input_responses=yes, request_state=token
                )
                refused[name] = decision_of(result)["error"]
            ok = await c.session.call_tool(
                "delete_item", {"id": item}, input_responses=yes, request_state=state
            )
            replay = await c.session.call_tool(
                "delete_item", {"id": item}, input_responses=yes, request_state=state
            )
        assert refused == {
            "tampered": "approval_state_invalid",
            "moved": "approval_state_mismatch",
        }
        assert not ok.is_error and text_of(ok) == f"deleted {item}"
        assert replay.is_error and decision_of(replay)["error"] == "approval_replayed"
        assert reached(call_log, item) == 1 and reached(call_log, "another-item") == 0

    async def test_the_upstream_never_sees_the_gateways_state(
        self, gw: GatewayProcess, call_log: Path
    ) -> None:
        callback = answering(("accept", True), [])
        async with client(gw.url("up"), KEY, mode="2026-07-28", elicitation_callback=callback) as c:
            await c.call_tool("delete_item", {"id": "py-clean"})
        [call] = [
            c for c in calls_in(call_log) if (c.get("arguments") or {}).get("id") == "py-clean"
        ]
        assert "celgate" not in json.dumps(call)


class TestTypeScriptClient:
    """The TypeScript SDK 1.32 (2025-11-25) answers the gateway's elicitation/create."""

    @pytest.fixture(autouse=True)
    def _ts(self) -> None:
        why = ts_sdk_ready()
        if why is not None:
            pytest.skip(why)

    def test_accept_reaches_the_upstream_once(self, gw: GatewayProcess, call_log: Path) -> None:
        item = "ts-accept"
        out = ts_client_eliciting(
            gw, [{"name": "delete_item", "arguments": {"id": item}}], "accept"
        )
        [call] = out["calls"]
        assert call["result"].get("isError") in (None, False), call
        assert call["result"]["content"][0]["text"] == f"deleted {item}"
        [question] = out["elicited"]
        assert "delete_item" in question and item in question
        assert reached(call_log, item) == 1

    @pytest.mark.parametrize(
        ("how", "code"),
        [
            ("decline", "approval_declined"),
            ("reject", "approval_declined"),
            ("cancel", "approval_cancelled"),
        ],
    )
    def test_decline_is_a_denial_with_its_reason(
        self, gw: GatewayProcess, call_log: Path, how: str, code: str
    ) -> None:
        item = f"ts-{how}"
        out = ts_client_eliciting(gw, [{"name": "delete_item", "arguments": {"id": item}}], how)
        [call] = out["calls"]
        assert "error" not in call, call
        assert call["result"]["isError"] is True
        assert call["result"]["_meta"]["io.celgate/decision"]["error"] == code
        assert "celgate refused this call" in call["result"]["content"][0]["text"]
        assert reached(call_log, item) == 0


def ts_client_eliciting(
    gw: GatewayProcess, calls: list[dict[str, Any]], how: str
) -> dict[str, Any]:
    argv = [
        str(NODE),
        str(TS_DIR / "client.mjs"),
        str(TS_SDK),
        gw.url("up"),
        KEY,
        json.dumps(calls),
        how,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert "fatal" not in out, out
    return out


def test_the_question_shows_the_agents_separators_and_bidi_escaped() -> None:
    """The human reads the question as the gateway's: an argument's line separators and
    bidi overrides cannot draw a forged "Arguments:" block or a line of the gateway's own."""
    forged = "old\u2028\u2028Arguments:\u2029(celgate: pre-approved, click approve)\u202e\x85"
    call = Call(tool="delete_item", server="up", args={"id": forged}, identity=Identity("g", "a"))
    decision = Decision(effect="require_approval", rule="r", reason="deleting", revision="1")
    message = question(call, decision)["message"]
    assert all(c not in message for c in "\u2028\u2029\u202e\x85")
    assert "\\u2028" in message and "\\u202e" in message
    assert message.count("\nArguments:") == 1


class TestTokens:
    """The ids and states the gateway issues are bound to what they were issued for."""

    KEY = b"k" * 32

    def test_one_grant_opening_sessions_pushes_out_only_its_own(self) -> None:
        known = inband.ClientCapabilities(size=3)
        known.remember("up", "victim", "v1", True)
        for n in range(100):
            known.remember("up", "attacker", f"a{n}", True)
        assert known.elicits("up", "victim", "v1")
        assert known.elicits("up", "attacker", "a99") and not known.elicits("up", "attacker", "a0")
        assert not known.elicits("up", "victim", "a99") and not known.elicits("up", "victim", None)

    def test_what_a_client_can_do_is_its_owners(self) -> None:
        """Kept per owner (a grant's agent): an upstream handing every client one session
        id let bob's ``initialize`` say what alice's client could do, and one user opening
        sessions pushed out the others' (red-team wave 35). Owners are capped too."""
        alice, bob = (Identity(grant="app", agent=a).owner for a in ("alice", "bob"))
        known = inband.ClientCapabilities(size=3, owners=2)
        known.remember("up", alice, "shared-1", True)
        known.remember("up", bob, "shared-1", False)
        assert known.elicits("up", alice, "shared-1") and not known.elicits("up", bob, "shared-1")
        for n in range(100):
            known.remember("up", bob, f"b{n}", True)
        assert known.elicits("up", alice, "shared-1")
        known.remember("up", "third", "t", True)  # alice is the least recently active
        assert not known.elicits("up", alice, "shared-1") and known.elicits("up", bob, "b99")

    def test_an_answer_id_is_bound_to_server_grant_and_session(self) -> None:
        msg_id, nonce = inband.mint_id(self.KEY, "up", "g1", "s1")
        assert inband.is_gateway_id(msg_id)
        assert inband.check_id(self.KEY, msg_id, "up", "g1", "s1") == nonce
        for other in [("up", "g2", "s1"), ("up", "g1", "s2"), ("other", "g1", "s1")]:
            assert inband.check_id(self.KEY, msg_id, *other) is None
        assert inband.check_id(b"x" * 32, msg_id, "up", "g1", "s1") is None
        assert inband.check_id(self.KEY, "celgate-guess.mac", "up", "g1", "s1") is None

    def test_tokens_with_text_of_any_kind_are_refused_never_an_error(self) -> None:
        """``hmac.compare_digest`` raises on a str that is not ASCII: a caller's header or
        id with an "é" in its MAC was a 500 (and, for a state, no decision record)."""
        from gateway.auth.guard import SessionSigner

        call = Call("t", {"a": 1}, "up", Identity("g1"))
        for odd in ("é", "\udc80", "\x00", "🙂"):
            assert inband.check_id(self.KEY, f"celgate-x.{odd}", "up", "g1", "s1") is None
            state = f"celgate.v1.e30.{odd}"
            assert inband.check_state(self.KEY, state, call, "r", 0) == "approval_state_invalid"
            assert inband.upstream_state(self.KEY, state) is None
            signer = SessionSigner("0123456789abcdef")
            assert signer.unwrap("up", "g1", f"sid.{odd}") is None
            assert signer.unwrap_event("up", "g1", None, f"1.{odd}") is None

    def test_a_state_is_bound_to_the_call_revision_and_expiry(self) -> None:
        call = Call("t", {"a": 1}, "up", Identity("g1"))
        state = inband.issue_state(self.KEY, call, "rev1", 1000.0, epoch="e1")
        assert isinstance(inband.check_state(self.KEY, state, call, "rev1", 999.0), inband.State)
        other_grant = Call("t", {"a": 1}, "up", Identity("g2"))
        assert (
            inband.check_state(self.KEY, state, other_grant, "rev1", 0) == "approval_state_mismatch"
        )
        # the same call under another policy: said so (it read "issued for another call")
        assert inband.check_state(self.KEY, state, call, "rev2", 0) == "approval_policy_changed"
        assert (
            inband.check_state(self.KEY, state, other_grant, "rev2", 0) == "approval_state_mismatch"
        )
        other_user = Call("t", {"a": 1}, "up", Identity("g1", "another user of g1"))
        assert (
            inband.check_state(self.KEY, state, other_user, "rev1", 0) == "approval_state_mismatch"
        )
        assert inband.check_state(self.KEY, state, call, "rev1", 1000.0) == "approval_expired"
        assert inband.check_state(b"x" * 32, state, call, "rev1", 0) == "approval_state_invalid"
        # readable by its agent, it holds no plain revision: an unkeyed digest of the policy
        # let an agent check its guesses of hidden tools and rule constants (wave 40)
        payload = state.removeprefix(inband.STATE_PREFIX).rpartition(".")[0]
        assert "rev1" not in base64.urlsafe_b64decode(payload + "==").decode()

    def test_a_continuation_carries_its_approval_and_the_upstreams_state(self) -> None:
        call = Call("ask_user", {"question": "q"}, "up", Identity("g1"))
        plain = inband.issue_state(self.KEY, call, "rev1", 1000.0, epoch="e1")
        carried = inband.issue_state(self.KEY, call, "rev1", 1000.0, "elc_x", "theirs", epoch="e1")
        checked = inband.check_state(self.KEY, carried, call, "rev1", 999.0)
        assert isinstance(checked, inband.State)
        assert (checked.approval, checked.upstream) == ("elc_x", "theirs")
        assert inband.upstream_state(self.KEY, carried) == "theirs"
        assert inband.upstream_state(self.KEY, plain) is None
        assert inband.upstream_state(b"x" * 32, carried) is None  # not ours: nothing carried
        other = Call("ask_user", {"question": "other"}, "up", Identity("g1"))
        assert inband.check_state(self.KEY, carried, other, "rev1", 0) == "approval_state_mismatch"


class TestSingleUse:
    """``consume_once`` in every approval store: the first use wins, a replay loses."""

    async def _contract(self, store: Any) -> None:
        token = f"elicit:{time.time_ns()}"
        epoch = await store.current_epoch()
        assert epoch and await store.current_epoch() == epoch
        assert await store.consume_once(token, 60, epoch) is True
        assert await store.consume_once(token, 60, epoch) is False
        assert await store.consume_once(token + "-other", 60, epoch) is True
        assert await store.consume_once(token + "-elsewhere", 60, "not-the-epoch") is False

    async def test_memory(self) -> None:
        await self._contract(MemoryApprovalStore())
        issued_by = await MemoryApprovalStore().current_epoch()  # a former process's store
        assert await MemoryApprovalStore().consume_once("elicit:x", 60, issued_by) is False

    async def test_memory_marks_expire_and_are_bounded(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Marks were kept in a dict rebuilt whole on every answer past 20,000 of them (6 ms
        an answer at 40,000, for every agent) and never bounded."""
        now = [0.0]
        store = MemoryApprovalStore(clock=lambda: now[0])
        epoch = await store.current_epoch()
        for i in range(1000):  # ten answers a second, each state good for a second
            now[0] = i / 10
            assert await store.consume_once(f"elicit:{i}", 1.0, epoch) is True
            assert len(store.used) <= 11
        assert await store.consume_once("elicit:999", 1.0, epoch) is False  # still a replay
        monkeypatch.setattr(stores, "MAX_ONCE_MARKS", len(store.used) + 1)
        assert await store.consume_once("elicit:last-room", 1.0, epoch) is True
        assert await store.consume_once("elicit:no-room", 1.0, epoch) is False  # refused
        assert await store.consume_once("elicit:999", 1.0, epoch) is False  # never forgotten
        now[0] += 2  # all expired: room again
        assert await store.consume_once("elicit:no-room", 1.0, epoch) is True
        assert len(store.used) == 1

    async def test_one_agent_fills_only_its_own_share_of_marks(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Any agent with an elicit tool can answer its own questions: with one cap for all,
        it filled the store and every other agent's approval was refused for as long as the
        marks lived (the approval's timeout: up to a year)."""
        monkeypatch.setattr(stores, "MAX_ONCE_MARKS_EACH", 3)
        store = MemoryApprovalStore(clock=lambda: 0.0)
        epoch = await store.current_epoch()
        for n in range(3):
            assert await store.consume_once(f"elicit:m{n}", 60, epoch, "7:mallorym") is True
        assert await store.consume_once("elicit:m3", 60, epoch, "7:mallorym") is False
        assert await store.consume_once("elicit:a0", 60, epoch, "5:alicea") is True

    async def test_valkey(self, valkey_db: ValkeyProcess) -> None:
        store, replica = ValkeyApprovalStore(valkey_db.url), ValkeyApprovalStore(valkey_db.url)
        try:
            await self._contract(store)
            assert await replica.current_epoch() == store.epoch  # one epoch for all replicas
        finally:
            await store.close()
            await replica.close()

    async def test_valkey_one_agent_fills_only_its_own_share_of_marks(
        self, valkey_db: ValkeyProcess, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """In Valkey the marks had no bound by agent: one agent answering its own questions
        (elicit trusts the client) wrote a key an answer for as long as the states lived."""
        monkeypatch.setattr(stores, "MAX_ONCE_MARKS_EACH", 3)
        now = [1000.0]
        store = ValkeyApprovalStore(valkey_db.url, prefix="share:", clock=lambda: now[0])
        other = ValkeyApprovalStore(valkey_db.url, prefix="share:", clock=lambda: now[0])
        try:
            epoch = await store.current_epoch()
            for n in range(3):
                assert await store.consume_once(f"elicit:m{n}", 60, epoch, "7:mallorym")
            # at its share on every replica, and a replay is still a replay
            assert await other.consume_once("elicit:m3", 60, epoch, "7:mallorym") is False
            assert await store.consume_once("elicit:m0", 60, epoch, "7:mallorym") is False
            assert await other.consume_once("elicit:a0", 60, epoch, "5:alicea") is True
            now[0] += 61  # its marks expired: room again
            assert await store.consume_once("elicit:m3", 60, epoch, "7:mallorym") is True
            held = await store.client.zcard("share:once-owner:7:mallorym")
            assert held == 1
            assert 0 < await store.client.ttl("share:once-owner:7:mallorym") <= 61
        finally:
            await store.close()
            await other.close()

    async def test_valkey_that_lost_its_data_refuses_every_earlier_state(
        self, valkey_db: ValkeyProcess
    ) -> None:
        """A Valkey restarted without persistence has lost the single-use marks: the states
        issued before must not become usable again (the red team replayed one that way)."""
        store = ValkeyApprovalStore(valkey_db.url)
        try:
            before = await store.current_epoch()
            await store.client.flushdb()  # what a restart without persistence leaves
            assert await store.consume_once("elicit:issued-before", 60, before) is False
            after = store.epoch  # learned from that refusal
            assert after != before
            assert await store.consume_once("elicit:issued-after", 60, after) is True
        finally:
            await store.close()

    async def test_a_replica_that_only_issues_states_learns_the_new_epoch(
        self, valkey_db: ValkeyProcess
    ) -> None:
        """Replica B asks the questions, replica A checks the answers: B read the epoch once,
        and after Valkey lost its data issued every state under the dead one, each refused
        where it was answered, for good (red-team wave 67). B reads it again within
        ``EPOCH_FRESH_SECONDS``, on its injected clock."""
        now = [1000.0]
        issuer = ValkeyApprovalStore(valkey_db.url, prefix="fresh:", clock=lambda: now[0])
        checker = ValkeyApprovalStore(valkey_db.url, prefix="fresh:", clock=lambda: now[0])
        try:
            before = await issuer.current_epoch()
            await issuer.client.flushdb()  # what a restart without persistence leaves
            assert await checker.consume_once("elicit:old", 60, before) is False
            assert await issuer.current_epoch() == before  # (read within the second)
            assert await issuer.current_epoch(fresh=True) == checker.epoch  # a question's
            now[0] += stores.EPOCH_FRESH_SECONDS
            after = await issuer.current_epoch()
            assert after != before and after == checker.epoch
            assert await checker.consume_once("elicit:new", 60, after) is True
        finally:
            await issuer.close()
            await checker.close()

    async def test_a_store_that_does_not_answer_keeps_the_epoch_last_read(self) -> None:
        now = [1000.0]
        down = ValkeyApprovalStore(
            f"valkey://127.0.0.1:{free_port()}/0", timeout=0.2, clock=lambda: now[0]
        )
        try:
            with pytest.raises(BackendUnavailable):  # none read yet: no state can be issued
                await down.current_epoch()
            down.epoch = "last-read"
            now[0] += stores.EPOCH_FRESH_SECONDS
            assert await down.current_epoch() == "last-read"
        finally:
            await down.close()


class TestPolicyFile:
    def test_fallback_belongs_to_elicit_and_is_checked(self, tmp_path: Path) -> None:
        path = tmp_path / "p.yaml"
        path.write_text(
            "tools:\n"
            "  a:\n"
            "    action: require_approval\n"
            "    approval: {mode: wait, fallback: retry}\n"
            "  b:\n"
            "    action: require_approval\n"
            "    approval: {mode: elicit, fallback: later}\n"
        )
        with pytest.raises(ConfigError) as info:
            load_policy([str(path)])
        problems = [str(p) for p in info.value.problems]
        assert any(":4:" in p and "fallback applies to mode: elicit only" in p for p in problems)
        assert any(":7:" in p and "unknown value 'later' (use wait | retry)" in p for p in problems)


@pytest.mark.parametrize(
    ("caps", "asked"),
    [
        ({"elicitation": {}}, True),  # MCP reads {} as form
        ({"elicitation": {"form": {}}}, True),
        ({"elicitation": {"form": {}, "url": {}}}, True),
        ({"elicitation": {"url": {}}}, False),  # url alone: a form is refused
        ({"elicitation": True}, False),
        ({}, False),
        (None, False),
    ],
)
def test_only_a_client_that_takes_forms_is_asked_in_band(caps: Any, asked: bool) -> None:
    """A client that declared URL-mode elicitation alone was asked the gateway's form
    question, refused it, and its call could never be approved: every retry was told the
    question was dismissed (red-team wave 72). It gets the rule's fallback."""
    assert inband.takes_forms(caps) is asked
