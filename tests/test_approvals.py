"""The approval service on an injected clock, over both stores (memory and a real Valkey)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import valkey

from gateway.approvals.service import (
    APPROVED_USE_SECONDS,
    CLIENT,
    CUT,
    GRACE_SECONDS,
    PREVIEW_BUDGET,
    PREVIEW_NODE,
    REREAD_POLLS,
    SETTLING_SECONDS,
    WAITER_SECONDS,
    ApprovalService,
    preview_args,
)
from gateway.approvals.stores import (
    WITHDRAWN_ARGS,
    MemoryApprovalStore,
    ValkeyApprovalStore,
    make_store,
)
from gateway.config import ApprovalsConfig
from gateway.errors import ApprovalError, BackendUnavailable
from gateway.policy import Call, Decision, Identity
from gateway.policy.model import Approval
from gateway.telemetry.audit import args_digest
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
    caps = ApprovalsConfig(max_pending_per_grant=3, max_pending=5)
    yield ApprovalService(store, clock=clock, poll_seconds=0, caps=caps), clock
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
        svc, clock = service
        first = await svc.resolve(CALL, held(), "d1")
        assert first.effect == "require_approval" and first.error == "approval_pending"
        await svc.decide(first.approval_id, True, "alice", None)
        passed = await svc.resolve(CALL, held(), "d2")
        assert passed.effect == "allow" and passed.approval_id == first.approval_id
        at_once = await svc.resolve(CALL, held(), "d3")  # it may yet be given back: no new one
        assert at_once.error == "approval_used" and at_once.approval_id == first.approval_id
        clock.now += SETTLING_SECONDS
        again = await svc.resolve(CALL, held(), "d3")
        assert again.effect == "require_approval" and again.approval_id != first.approval_id

    async def test_a_released_approval_passes_once_more(self, service: Any) -> None:
        """What a call that used an approval and then did not run gives back (both stores)."""
        svc, clock = service
        first = await svc.resolve(CALL, held(), "d1")
        await svc.decide(first.approval_id, True, "alice", None)
        assert (await svc.resolve(CALL, held(), "d2")).effect == "allow"
        await svc.release(first.approval_id)
        passed = await svc.resolve(CALL, held(), "d3")
        assert passed.effect == "allow" and passed.approval_id == first.approval_id
        clock.now += SETTLING_SECONDS
        again = await svc.resolve(CALL, held(), "d4")
        assert again.effect == "require_approval" and again.approval_id != first.approval_id

    async def test_identical_calls_while_one_is_given_back_keep_the_approval(
        self, service: Any
    ) -> None:
        """An approved call a limit refuses gives its approval back; identical calls made
        between its use and its return forgot it and made new requests, on either replica:
        the operator's approval orphaned, and one call pending twice (red-team wave 54)."""
        svc, clock = service
        first = await svc.resolve(CALL, held(), "d1")
        await svc.decide(first.approval_id, True, "alice", None)
        assert (await svc.resolve(CALL, held(), "d2")).effect == "allow"  # used: limit next
        clock.now += 1.0
        between = await asyncio.gather(*(svc.resolve(CALL, held(), f"x{n}") for n in range(4)))
        assert {(d.error, d.approval_id) for d in between} == {("approval_used", first.approval_id)}
        await svc.release(first.approval_id)  # the limit refused it
        passed = await svc.resolve(CALL, held(), "d3")
        assert passed.effect == "allow" and passed.approval_id == first.approval_id
        assert [r.id for r in await svc.store.list()] == [first.approval_id]  # none made

    async def test_identical_calls_at_once_share_one_request(self, service: Any) -> None:
        """Four identical held calls whose look-ups all run before any of them creates: one
        request, which all four name (two replicas would race the same way)."""
        svc, _ = service
        find = svc.store.find

        async def interleaved(match: str) -> Any:
            found = await find(match)
            await asyncio.sleep(0)  # every caller looks before any creates
            return found

        svc.store.find = interleaved
        results = await asyncio.gather(*(svc.resolve(CALL, held(), f"d{n}") for n in range(4)))
        assert {r.error for r in results} == {"approval_pending"}
        assert len({r.approval_id for r in results}) == 1
        assert [r.status for r in await svc.store.list()] == ["pending"]
        await svc.decide(results[0].approval_id, True, "alice", None)
        passed = await svc.resolve(CALL, held(), "d9")
        assert passed.effect == "allow" and passed.approval_id == results[0].approval_id

    async def test_other_arguments_are_another_request(self, service: Any) -> None:
        svc, _ = service
        first = await svc.resolve(CALL, held(), "d1")
        await svc.decide(first.approval_id, True, "alice", None)
        other = Call(tool="drop_table", server="db", args={"table": "u"}, identity=CALL.identity)
        result = await svc.resolve(other, held(), "d2")
        assert result.effect == "require_approval"
        assert result.approval_id != first.approval_id

    async def test_an_approval_given_at_the_last_moment_stays_usable(self, service: Any) -> None:
        """Approved 80 ms before the request's end: usable for its timeout (a minute at most)
        from the approval (both stores; the call 0.25 s later was told approval_expired)."""
        svc, clock = service
        first = await svc.resolve(CALL, held(timeout=60.0), "d1")
        clock.now += 60.0 - 0.08
        approved = await svc.decide(first.approval_id, True, "alice", None)
        assert approved.expires == pytest.approx(clock.now + APPROVED_USE_SECONDS)
        clock.now += 0.25
        passed = await svc.resolve(CALL, held(timeout=60.0), "d2")
        assert passed.effect == "allow" and passed.approval_id == first.approval_id

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
        clock.now += 31
        assert (await svc.list())[0].status == "expired"


def call_of(grant: str, agent: str | None = None, **args: Any) -> Call:
    identity = Identity(grant, agent or grant)
    return Call(tool="delete_note", server="notes", args=args, identity=identity)


class TestWhatTheApproverSees:
    """A request keeps the call's arguments (bounded): two calls of one tool differ."""

    async def test_two_deletes_show_their_own_arguments(self, service: Any) -> None:
        svc, _ = service
        await svc.resolve(call_of("g1", note_id="groceries"), held(), "d1")
        await svc.resolve(call_of("g1", note_id="taxes-2024", tags=[], n=2**60 + 1), held(), "d2")
        listed = {r.args["note_id"]: r for r in await svc.list()}
        assert set(listed) == {"groceries", "taxes-2024"}
        taxes = listed["taxes-2024"]
        assert taxes.args == {"note_id": "taxes-2024", "tags": [], "n": 2**60 + 1}
        assert not taxes.args_truncated
        assert taxes.args_digest == args_digest(
            {"note_id": "taxes-2024", "tags": [], "n": 2**60 + 1}
        )

    async def test_large_arguments_are_cut_with_a_marker_and_the_digest_kept(
        self, service: Any
    ) -> None:
        svc, _ = service
        args = {"body": "x" * 100_000, "ids": list(range(500))}
        await svc.resolve(call_of("g1", **args), held(), "d1")
        (request,) = await svc.list()
        assert request.args_truncated and request.args_digest == args_digest(args)
        assert request.args["body"].startswith("x" * 100)
        assert request.args["body"].endswith(f"{CUT} 98000 more characters not shown")
        assert request.args["ids"][-1] == f"{CUT} 450 more items not shown"


class TestPreview:
    def test_small_arguments_are_kept_whole(self) -> None:
        args = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
        assert preview_args(args) == (args, False)

    def test_deep_wide_and_oversized_values_are_bounded(self) -> None:
        deep: Any = "bottom"
        for _ in range(20):
            deep = {"down": deep}
        wide = {f"k{i}": i for i in range(80)}
        many = {f"s{i}": "y" * 2000 for i in range(40)}
        preview, cut = preview_args({"deep": deep, "wide": wide, "many": many})
        assert cut
        text = json.dumps(preview)
        assert len(text) < 20_000
        assert f"{CUT} nested deeper than this is not shown" in text
        assert preview["wide"][CUT] == f"{CUT} 30 more keys not shown"
        assert "more keys not shown" in str(preview["many"].get(CUT))

    def test_containers_spend_the_budget_too(self) -> None:
        """Lists 50 wide and 4 deep, empty at the bottom (1.25 million of them in a 3.8 MB
        body): the budget counted characters only, so the preview copied every one, 90 MB
        kept a pending request (red-team wave 33)."""
        nested: Any = []
        for _ in range(4):
            nested = [nested] * 50
        preview, cut = preview_args({"x": nested})
        assert cut

        def nodes(value: Any) -> int:
            if isinstance(value, list):
                return 1 + sum(nodes(v) for v in value)
            if isinstance(value, dict):
                return 1 + sum(nodes(v) for v in value.values())
            return 1

        assert nodes(preview) <= PREVIEW_BUDGET // PREVIEW_NODE + 60

    def test_every_argument_is_named_past_the_budget(self) -> None:
        """An agent orders its arguments: nine long harmless ones spent the budget, and
        ``"path": "/"`` last was neither named nor shown (red-team wave 42). Each of the
        call's own arguments is named, a short value shown, a long one marked."""
        args = {f"note{i}": "harmless " * 222 for i in range(9)}
        args.update({"path": "/", "recursive": True, "extra": "z" * 500, "k" * 300: 1})
        preview, cut = preview_args(args)
        assert cut and preview["path"] == "/" and preview["recursive"] is True
        assert preview["extra"] == f"{CUT} value not shown"
        assert ("k" * 100 + f"{CUT} 200 more characters") in preview
        assert len(json.dumps(preview)) < PREVIEW_BUDGET + 4000
        wide = preview_args({f"a{i}": i for i in range(500)})[0]
        assert len(wide) == 201 and wide[CUT] == f"{CUT} 300 more keys not shown"

    def test_long_integers_spend_the_budget_by_their_digits(self) -> None:
        """An integer cost one node whatever its length: 960 integers of 4,299 digits were
        kept whole, 4 MB a preview, and one listing of six took 13 s on the loop (red-team
        wave 41). Now their digits are spent; one too long for what is left is cut whole."""
        big = int("7" * 1000)
        preview, cut = preview_args({"id": "note-1", "nums": [[big] * 48] * 20})
        assert cut and len(json.dumps(preview)) < PREVIEW_BUDGET + 4000
        assert preview["id"] == "note-1" and preview["nums"][0][0] == big  # shown exactly
        assert f"{CUT} an integer of 1000 digits not shown" in json.dumps(preview)
        huge = 7**5000  # past what a request may carry (from a store, say): never converted
        assert preview_args({"n": huge})[0]["n"].startswith(f"{CUT} an integer of 4226 digits")
        fine = {"n": 2**63, "m": -(10**30), "f": 1.5, "b": True}
        assert preview_args(fine) == (fine, False)


class TestPendingCaps:
    """Past the cap (3 per grant, 5 in all here) a held call is refused and nothing queued;
    a decision or an expiry frees a place."""

    async def test_a_grant_past_its_cap_is_refused(self, service: Any) -> None:
        svc, _ = service
        for i in range(3):
            queued = await svc.resolve(call_of("g1", note_id=i), held(), f"d{i}")
            assert queued.error == "approval_pending"
        full = await svc.resolve(call_of("g1", note_id=99), held(), "d9")
        assert full.effect == "deny" and full.error == "approval_queue_full"
        assert "agent g1 of grant g1 already has 3 calls waiting" in full.reason
        assert full.approval_id is None
        assert len(await svc.list()) == 3
        # the same call again still finds its own request: no new place is needed
        again = await svc.resolve(call_of("g1", note_id=0), held(), "d10")
        assert again.error == "approval_pending"
        other = await svc.resolve(call_of("g2", note_id=99), held(), "d11")
        assert other.error == "approval_pending"

    async def test_one_user_of_a_grant_cannot_fill_the_queue_of_the_others(
        self, service: Any
    ) -> None:
        """The users of one OAuth client share a grant: each has places of its own."""
        svc, _ = service
        for i in range(3):
            await svc.resolve(call_of("ide", "mallory", note_id=i), held(), f"d{i}")
        full = await svc.resolve(call_of("ide", "mallory", note_id=9), held(), "d9")
        assert full.error == "approval_queue_full"
        alice = await svc.resolve(call_of("ide", "alice", note_id=1), held(), "d10")
        assert alice.error == "approval_pending"
        await svc.decide(alice.approval_id, False, "ops", None)  # a decision frees her place
        again = await svc.resolve(call_of("ide", "alice", note_id=2), held(), "d11")
        assert again.error == "approval_pending"

    async def test_the_gateway_cap_holds_across_grants(self, service: Any) -> None:
        svc, _ = service
        for i in range(5):
            await svc.resolve(call_of(f"g{i % 3}", note_id=i), held(), f"d{i}")
        full = await svc.resolve(call_of("g9", note_id=1), held(), "dx")
        assert full.error == "approval_queue_full"
        assert "the gateway already has 5" in full.reason

    async def test_a_decision_frees_a_place(self, service: Any) -> None:
        svc, _ = service
        first = await svc.resolve(call_of("g1", note_id=0), held(), "d0")
        for i in range(1, 3):
            await svc.resolve(call_of("g1", note_id=i), held(), f"d{i}")
        await svc.decide(first.approval_id, False, "alice", None)
        fourth = await svc.resolve(call_of("g1", note_id=3), held(), "d3")
        assert fourth.error == "approval_pending"

    async def test_expired_requests_free_their_place_and_are_evicted(self, service: Any) -> None:
        svc, clock = service
        for i in range(3):
            await svc.resolve(call_of("g1", note_id=i), held(timeout=30), f"d{i}")
        clock.now += 31
        fresh = await svc.resolve(call_of("g1", note_id=3), held(timeout=30), "d3")
        assert fresh.error == "approval_pending"
        if isinstance(svc.store, MemoryApprovalStore):  # Valkey evicts by its own TTL clock
            clock.now += 30
            assert [r.id for r in await svc.list()] == [fresh.approval_id]

    async def test_a_flood_of_held_calls_stays_bounded(self, service: Any) -> None:
        svc, _ = service
        refused = 0
        for i in range(3000):
            result = await svc.resolve(call_of("flood", note_id=i), held(), f"d{i}")
            refused += result.error == "approval_queue_full"
        assert refused == 2997 and len(await svc.list()) == 3


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


class TestValkeyKeys:
    """What the Valkey store keeps, and how long: read from Valkey itself."""

    @pytest.fixture
    async def valkey_store(self, valkey_db: ValkeyProcess) -> AsyncIterator[Any]:
        clock = Clock()
        store = ValkeyApprovalStore(valkey_db.url, prefix="test:keys:", clock=clock)
        yield ApprovalService(store, clock=clock, poll_seconds=0), store, clock
        await store.close()

    async def test_held_calls_waiting_on_a_request_are_known_to_every_replica(
        self, valkey_store: Any, valkey_db: ValkeyProcess
    ) -> None:
        """A cancel on one replica withdrew the request an identical held call of the same
        agent still waited on at another (red-team wave 65): each waiting call marks the
        request in the store while it waits, its mark ending by itself if its replica
        stops marking it."""
        svc, store, clock = valkey_store
        first = await svc.resolve(CALL, held(), "d1")
        other = ValkeyApprovalStore(valkey_db.url, prefix="test:keys:", clock=clock)  # a replica
        try:
            await store.mark_waiting(first.approval_id, "a", clock.now + WAITER_SECONDS)
            await other.mark_waiting(first.approval_id, "b", clock.now + 5)
            assert await other.waiting(first.approval_id, clock.now) == 2
            await store.unmark_waiting(first.approval_id, "a")
            assert await store.waiting(first.approval_id, clock.now) == 1
            assert await store.waiting(first.approval_id, clock.now + 6) == 0  # b's mark ended
        finally:
            await other.close()

    async def test_a_held_call_polls_the_status_not_the_request(self, valkey_store: Any) -> None:
        """Each wait-mode call re-read and decoded its whole request every 0.25 s: 40 held
        calls with large arguments slowed every other call on the replica tenfold (red-team
        wave 44). It polls a small status key; the request is read once it changed."""
        svc, store, _ = valkey_store
        reads, polls = [], []
        read = store.get

        async def counted(approval_id: str) -> Any:
            reads.append(approval_id)
            return await read(approval_id)

        store.get = counted
        ids: list[str] = []

        async def tick(_elapsed: float) -> None:
            polls.append(_elapsed)
            if len(polls) == 30:
                await svc.decide(ids[0], True, "alice", None)

        decision = await svc.resolve(CALL, held("wait"), "d1", tick=tick, waits_on=ids.append)
        assert decision.effect == "allow" and len(polls) == 30
        assert len(reads) <= 3  # (before it waits, and once approved; never a poll's)

    async def test_a_decision_that_left_the_status_key_is_read_all_the_same(
        self, valkey_store: Any, valkey_db: ValkeyProcess
    ) -> None:
        """A replica of an earlier version decides without writing the status key: the held
        call reads its whole request every REREAD_POLLS polls (it waited out its timeout and
        was refused, approved, during a rolling upgrade: red-team wave 45)."""
        svc, _, _ = valkey_store
        polls: list[float] = []
        ids: list[str] = []

        async def tick(elapsed: float) -> None:
            polls.append(elapsed)
            if len(polls) == 3:
                await svc.decide(ids[0], True, "alice", None)
                with valkey.Valkey.from_url(valkey_db.url) as raw:  # as the earlier one left it
                    raw.set(f"test:keys:status:{ids[0]}", "pending")

        decision = await svc.resolve(CALL, held("wait"), "d1", tick=tick, waits_on=ids.append)
        assert decision.effect == "allow" and len(polls) < 3 + REREAD_POLLS

    async def test_a_store_over_its_memory_cap_queues_nothing(
        self, valkey_store: Any, valkey_db: ValkeyProcess
    ) -> None:
        """Over Valkey's maxmemory (noeviction), a request is refused before anything of it is
        written: its script began with a command that frees memory, and Valkey then let its
        writes through (19 requests of 750 KB past a 1.5 MiB cap, red-team wave 44)."""
        svc, store, _ = valkey_store
        with valkey.Valkey.from_url(valkey_db.url) as admin:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)  # over it already
            try:
                with pytest.raises(BackendUnavailable):
                    await svc.resolve(CALL, held(), "d1")
                with pytest.raises(BackendUnavailable):
                    await store.consume_once("t" * 20, 60, await store.current_epoch(), "g1")
            finally:
                admin.config_set("maxmemory", 0)
        assert await store.list() == []
        first = await svc.resolve(CALL, held(), "d2")  # room again: queued
        assert first.error == "approval_pending"

    async def test_an_approval_keeps_its_match_key_while_usable(self, valkey_store: Any) -> None:
        """The match key lived until the request's first expiry: approved in its last
        seconds, the identical call made within the approval's window found no approval and
        made a new request (retry mode, two replicas on one Valkey)."""
        svc, store, clock = valkey_store
        first = await svc.resolve(CALL, held(timeout=5.0), "d1")
        request = await store.get(first.approval_id)
        key = store._match(request.match)
        await store.client.expire(key, 1)  # as if its five seconds had nearly passed
        clock.now += 4.9
        await svc.decide(first.approval_id, True, "alice", None)
        assert await store.client.ttl(key) >= 5  # usable for the approval's window
        clock.now += 3.0
        passed = await svc.resolve(CALL, held(timeout=5.0), "d2")
        assert passed.effect == "allow" and passed.approval_id == first.approval_id

    async def test_in_memory_a_withdrawn_request_is_kept_briefly_without_its_arguments(
        self,
    ) -> None:
        """An agent cancelling held calls in a loop kept every one's preview in memory (they
        leave the pending set, so its cap never filled) until 5,000 decided ones (red-team
        wave 33): withdrawn, a request keeps no arguments, and goes after a minute."""
        from gateway.approvals.service import KEEP_SECONDS

        clock = Clock()
        store = MemoryApprovalStore(clock)
        svc = ApprovalService(store, clock=clock, poll_seconds=0)
        big = Call(tool="t", server="db", args={"x": "y" * 5000}, identity=CALL.identity)
        first = await svc.resolve(big, held(), "d1")
        await store.transition(first.approval_id, "pending", "denied", CLIENT, "cancelled")
        withdrawn = await store.get(first.approval_id)
        assert withdrawn is not None and "y" * 100 not in json.dumps(withdrawn.args)
        other = Call(tool="u", server="db", args={}, identity=CALL.identity)
        decided = await svc.resolve(other, held(), "d2")
        await svc.decide(decided.approval_id, False, "alice", None)  # an operator's: a day
        clock.now += GRACE_SECONDS + 2
        await svc.resolve(
            Call(tool="v", server="db", args={}, identity=CALL.identity), held(), "d3"
        )
        assert await store.get(first.approval_id) is None
        assert await store.get(decided.approval_id) is not None and GRACE_SECONDS < KEEP_SECONDS

    async def test_a_withdrawn_request_is_kept_briefly(self, valkey_store: Any) -> None:
        """Withdrawn by its client, a request is decided by nobody: it was kept a day, with
        its arguments, and one agent cancelling held calls in a loop filled Valkey; then a
        minute, still with its arguments (170 MiB of them, red-team wave 61). It keeps none,
        as in memory."""
        svc, store, _ = valkey_store
        big = Call(tool="t", server="db", args={"x": "y" * 5000}, identity=CALL.identity)
        first = await svc.resolve(big, held(), "d1")
        await store.transition(first.approval_id, "pending", "denied", CLIENT, "cancelled")
        assert 0 < await store.client.ttl(store._req(first.approval_id)) <= GRACE_SECONDS
        raw = await store.client.get(store._req(first.approval_id))
        assert b"y" * 100 not in raw and len(raw) < 1000
        withdrawn = await store.get(first.approval_id)
        assert withdrawn is not None and withdrawn.args == WITHDRAWN_ARGS
        assert withdrawn.args_truncated and withdrawn.status == "denied"
        decided = await svc.resolve(
            Call(tool="t", server="db", args={}, identity=CALL.identity), held(), "d2"
        )
        await svc.decide(decided.approval_id, False, "alice", None)  # an operator's: a day
        assert await store.client.ttl(store._req(decided.approval_id)) > GRACE_SECONDS
