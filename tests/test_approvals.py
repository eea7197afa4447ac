"""The approval service on an injected clock, over both stores (memory and a real Valkey)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.approval_stores import MemoryApprovalStore, ValkeyApprovalStore, make_store
from gateway.approvals import ApprovalService
from gateway.errors import ApprovalError
from gateway.policy import Call, Decision, Identity
from gateway.policy.model import Approval
from tests.valkey_server import ValkeyProcess


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "valkey"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ApprovalService, Clock]]:
    clock = Clock()
    store: Any
    if request.param == "memory":
        store = MemoryApprovalStore(clock)
    else:
        server: ValkeyProcess = request.getfixturevalue("valkey_db")
        store = ValkeyApprovalStore(server.url, prefix="test:ap:", clock=clock)
    yield ApprovalService(store, clock=clock, poll_seconds=0), clock
    await store.close()


def held(mode: str = "retry", timeout: float = 60.0) -> Decision:
    return Decision(
        effect="require_approval",
        rule="needs-a-human",
        reason="risky",
        revision="rev1",
        approval=Approval(mode, timeout),  # type: ignore[arg-type]
    )


CALL = Call(tool="drop_table", server="db", args={"table": "t"}, identity=Identity("g1", "bot"))


class TestApprovalService:
    async def test_pending_then_approved_passes_once(self, service: Any) -> None:
        svc, _ = service
        first = await svc.resolve(CALL, held(), "d1")
        assert first.effect == "require_approval" and first.error == "approval_pending"
        await svc.decide(first.approval_id, True, "alice", None)
        passed = await svc.resolve(CALL, held(), "d2")
        assert passed.effect == "allow" and passed.approval_id == first.approval_id
        again = await svc.resolve(CALL, held(), "d3")
        assert again.effect == "require_approval" and again.approval_id != first.approval_id

    async def test_other_arguments_are_another_request(self, service: Any) -> None:
        svc, _ = service
        first = await svc.resolve(CALL, held(), "d1")
        await svc.decide(first.approval_id, True, "alice", None)
        other = Call(tool="drop_table", server="db", args={"table": "u"}, identity=CALL.identity)
        result = await svc.resolve(other, held(), "d2")
        assert result.effect == "require_approval"
        assert result.approval_id != first.approval_id

    async def test_expired_request_cannot_be_approved(self, service: Any) -> None:
        svc, clock = service
        first = await svc.resolve(CALL, held(timeout=30), "d1")
        clock.now += 31
        with pytest.raises(ApprovalError, match="expired"):
            await svc.decide(first.approval_id, True, "alice", None)
        renewed = await svc.resolve(CALL, held(timeout=30), "d2")
        assert renewed.approval_id != first.approval_id

    async def test_approval_expires_if_not_used_in_time(self, service: Any) -> None:
        svc, clock = service
        first = await svc.resolve(CALL, held(timeout=30), "d1")
        await svc.decide(first.approval_id, True, "alice", None)
        clock.now += 31
        late = await svc.resolve(CALL, held(timeout=30), "d2")
        assert late.effect == "require_approval" and late.approval_id != first.approval_id

    async def test_refusal_is_reported_with_who_and_why(self, service: Any) -> None:
        svc, _ = service
        first = await svc.resolve(CALL, held(), "d1")
        await svc.decide(first.approval_id, False, "bob", "too risky")
        refused = await svc.resolve(CALL, held(), "d2")
        assert refused.effect == "deny" and refused.error == "approval_refused"
        assert "refused by bob: too risky" in refused.reason

    async def test_decided_twice_is_a_conflict(self, service: Any) -> None:
        svc, _ = service
        first = await svc.resolve(CALL, held(), "d1")
        await svc.decide(first.approval_id, True, "alice", None)
        with pytest.raises(ApprovalError, match="approved, not pending"):
            await svc.decide(first.approval_id, False, "bob", None)
        with pytest.raises(ApprovalError, match="not found"):
            await svc.decide("apr_nope", True, "alice", None)

    async def test_wait_mode_times_out_into_a_denial(self, service: Any) -> None:
        svc, clock = service
        ticks: list[float] = []

        async def tick(elapsed: float) -> None:
            ticks.append(elapsed)
            clock.now += 10  # time passes on the injected clock, not in the test

        result = await svc.resolve(CALL, held("wait", timeout=25), "d1", tick)
        assert result.effect == "deny" and result.error == "approval_expired"
        assert ticks == [0.0, 10.0, 20.0]

    async def test_list_shows_live_status(self, service: Any) -> None:
        svc, clock = service
        first = await svc.resolve(CALL, held(timeout=30), "d1")
        items = await svc.list()
        assert [(r.id, r.status) for r in items] == [(first.approval_id, "pending")]
        clock.now += 60
        assert (await svc.list())[0].status == "expired"


class TestStoreFromBackend:
    """Approvals live where the limits do; a URL the limiter would refuse is refused here
    too, never quietly turned into per-process memory."""

    @pytest.mark.parametrize("url", ["memory", "memory://"])
    def test_memory(self, url: str) -> None:
        assert isinstance(make_store(url), MemoryApprovalStore)

    @pytest.mark.parametrize(
        "url", ["valkey://127.0.0.1:6399/0", "valkeys://127.0.0.1:6399/0", "unix:///run/v.sock"]
    )
    async def test_valkey(self, url: str) -> None:
        store = make_store(url)
        assert isinstance(store, ValkeyApprovalStore)
        await store.close()

    @pytest.mark.parametrize("url", ["valky://127.0.0.1:6379", "redis://h:6379/0", "valkey://"])
    def test_rejected(self, url: str) -> None:
        with pytest.raises(ValueError, match="approval store: "):
            make_store(url)

    async def test_unix_socket_store_works(self, tmp_path: Any) -> None:
        from tests.valkey_server import running_valkey

        sock = tmp_path / "v.sock"
        with running_valkey("--unixsocket", str(sock)):
            clock = Clock()
            store = make_store(f"unix://{sock}", clock=clock)
            svc = ApprovalService(store, clock=clock, poll_seconds=0)
            first = await svc.resolve(CALL, held(), "d1")
            assert [r.status for r in await svc.list()] == ["pending"]
            assert first.approval_id
            await store.close()
