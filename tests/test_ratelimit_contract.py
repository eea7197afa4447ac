"""One behaviour, two backends: every test here runs on memory and on a real valkey-server.

Time: the memory limiter gets an injected clock that ``advance`` moves exactly; the Valkey
limiter runs on the server's clock, so ``advance`` really waits (windows are a fraction of a
second) and waits for a state are polls bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
import valkey

from gateway.ratelimit import (
    Bucket,
    BucketState,
    LimitResult,
    MemoryRateLimiter,
    RateLimiter,
    ValkeyRateLimiter,
    make_limiter,
)
from gateway.ratelimit.valkey import DEFAULT_PREFIX
from tests.valkey_server import PATIENT, ValkeyProcess


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """A limiter plus the backend-specific ways to move time and look at stored state."""

    kind: str
    limiter: RateLimiter
    advance: Callable[[float], Awaitable[None]]
    ttl_ms: Callable[[str], float | None]  # time until the stored bucket is dropped, None if gone

    async def until(self, check: Callable[[], Awaitable[bool]], deadline: float = 0.9) -> bool:
        """Poll ``check`` until it holds or ``deadline`` seconds pass (memory: checked once)."""
        end = time.monotonic() + deadline
        while True:
            if await check():
                return True
            if self.kind == "memory" or time.monotonic() > end:
                return False
            await asyncio.sleep(0.01)


def _memory_harness() -> Harness:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)

    async def advance(seconds: float) -> None:
        clock.now += seconds

    def ttl_ms(key: str) -> float | None:
        entry = limiter._buckets.get(key)
        return None if entry is None else (entry[2] - clock.now) * 1000

    return Harness("memory", limiter, advance, ttl_ms)


def _valkey_harness(server: ValkeyProcess) -> Harness:
    sync = valkey.Valkey.from_url(server.url)

    def ttl_ms(key: str) -> float | None:
        ttl = int(sync.pttl(DEFAULT_PREFIX + key))
        return None if ttl < 0 else float(ttl)

    return Harness("valkey", ValkeyRateLimiter(server.url, timeout=PATIENT), asyncio.sleep, ttl_ms)


@pytest.fixture(params=["memory", "valkey"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        harness = _memory_harness()
    else:
        harness = _valkey_harness(request.getfixturevalue("valkey_db"))
    yield harness
    await harness.limiter.close()


def bucket(key: str = "calls|grant=a", max_: int = 5, window: float = 60.0) -> Bucket:
    counter = key.split("|", 1)[0]
    return Bucket(counter=counter, key=key, max=max_, window=window)


async def take(h: Harness, buckets: list[Bucket], n: int, cost: int = 1) -> list[LimitResult]:
    return [await h.limiter.acquire(buckets, cost) for _ in range(n)]


class TestAdmission:
    """A full bucket admits exactly ``max`` calls, then refuses with a precise retry_after."""

    async def test_admits_exactly_max_then_refuses(self, h: Harness) -> None:
        b = bucket(max_=5, window=60.0)
        results = await take(h, [b], 6)
        assert [r.admitted for r in results] == [True] * 5 + [False]
        assert [round(r.states[0].remaining) for r in results[:5]] == [4, 3, 2, 1, 0]
        refused = results[5]
        assert refused.refused_by == "calls"
        assert refused.retry_after == pytest.approx(60.0 / 5, abs=0.05)
        assert not refused.backend_error and not refused.failed_open

    async def test_refusal_takes_nothing(self, h: Harness) -> None:
        b = bucket(max_=1, window=60.0)
        await take(h, [b], 4)
        (state,) = await h.limiter.peek([b])
        assert state.remaining == pytest.approx(0.0, abs=0.01)

    async def test_admission_is_an_ordinary_frozen_value(self, h: Harness) -> None:
        """Admissions are built through slot descriptors for speed; they must not differ."""
        b = bucket(max_=5)
        result = await h.limiter.acquire([b])
        remaining = result.states[0].remaining
        expected = LimitResult(True, (BucketState("calls", b.key, 5, 60.0, remaining),))
        assert result == expected and hash(result) == hash(expected)
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.admitted = False  # type: ignore[misc]

    async def test_no_buckets_is_admitted(self, h: Harness) -> None:
        result = await h.limiter.acquire([])
        assert result.admitted and result.states == ()


class TestRefill:
    """Tokens come back continuously at max/window a second, never beyond max."""

    async def test_admitted_again_after_retry_after(self, h: Harness) -> None:
        b = bucket(max_=2, window=0.2)
        assert all(r.admitted for r in await take(h, [b], 2))
        refused = await h.limiter.acquire([b])
        assert not refused.admitted
        assert refused.retry_after is not None
        assert 0.05 < refused.retry_after <= 0.1 + 1e-6
        await h.advance(refused.retry_after)
        assert (await h.limiter.acquire([b])).admitted
        # one token came back, not the whole burst
        assert not (await h.limiter.acquire([b])).admitted

    async def test_tokens_capped_at_max(self, h: Harness) -> None:
        b = bucket(max_=3, window=0.06)
        await take(h, [b], 1)
        await h.advance(0.3)  # five windows idle
        (state,) = await h.limiter.peek([b])
        assert state.remaining == 3
        assert [r.admitted for r in await take(h, [b], 4)] == [True, True, True, False]


class TestSeveralBuckets:
    """A call under several limits takes from all of them or from none."""

    async def test_all_or_nothing(self, h: Harness) -> None:
        narrow, wide = bucket("narrow|grant=a", max_=1), bucket("wide|global", max_=5)
        assert (await h.limiter.acquire([narrow, wide])).admitted
        refused = await h.limiter.acquire([wide, narrow])
        assert not refused.admitted and refused.refused_by == "narrow"
        _, wide_state = await h.limiter.peek([narrow, wide])
        assert wide_state.remaining == pytest.approx(4.0, abs=0.01)

    async def test_retry_after_is_the_slowest_refusing_bucket(self, h: Harness) -> None:
        fast, slow = bucket("fast|x", max_=1, window=10.0), bucket("slow|x", max_=1, window=100.0)
        await h.limiter.acquire([fast, slow])
        refused = await h.limiter.acquire([fast, slow])
        assert refused.refused_by == "fast"
        assert refused.retry_after == pytest.approx(100.0, abs=0.05)
        assert [round(s.remaining, 2) for s in refused.states] == [0.0, 0.0]

    async def test_repeated_key_takes_once(self, h: Harness) -> None:
        b = bucket(max_=2)
        result = await h.limiter.acquire([b, b])
        assert result.admitted and len(result.states) == 1
        assert result.states[0].remaining == pytest.approx(1.0, abs=0.01)

    async def test_keys_are_kept_apart(self, h: Harness) -> None:
        a, other = bucket("calls|grant=a", max_=1), bucket("calls|grant=b", max_=1)
        assert (await h.limiter.acquire([a])).admitted
        assert not (await h.limiter.acquire([a])).admitted
        assert (await h.limiter.acquire([other])).admitted


class TestCost:
    """A call may cost several tokens; a cost above max can never be admitted."""

    async def test_cost_above_one(self, h: Harness) -> None:
        b = bucket(max_=5, window=50.0)
        first = await h.limiter.acquire([b], cost=3)
        assert first.admitted and first.states[0].remaining == pytest.approx(2.0, abs=0.01)
        refused = await h.limiter.acquire([b], cost=3)
        assert not refused.admitted
        assert refused.retry_after == pytest.approx(10.0, abs=0.05)  # 1 token at 0.1/s
        assert (await h.limiter.acquire([b], cost=2)).admitted

    async def test_cost_above_max_has_no_retry_after(self, h: Harness) -> None:
        refused = await h.limiter.acquire([bucket(max_=2)], cost=3)
        assert not refused.admitted and refused.retry_after is None

    async def test_cost_below_one_is_rejected(self, h: Harness) -> None:
        with pytest.raises(ValueError, match="cost"):
            await h.limiter.acquire([bucket()], cost=0)


class TestPeekAndScan:
    """peek and scan report state and change nothing."""

    async def test_peek_does_not_consume(self, h: Harness) -> None:
        b = bucket(max_=3)
        (fresh,) = await h.limiter.peek([b])
        assert fresh.remaining == 3
        await h.limiter.acquire([b])
        for _ in range(5):
            (state,) = await h.limiter.peek([b])
            assert state.remaining == pytest.approx(2.0, abs=0.01)
        assert [r.admitted for r in await take(h, [b], 3)] == [True, True, False]

    async def test_scan_lists_keys_with_their_counter(self, h: Harness) -> None:
        for key in ("c1|grant=a", "c1|grant=b", "c2|grant=a"):
            await h.limiter.acquire([bucket(key, max_=4)])
        listed = await h.limiter.scan()
        assert [k for k, _ in listed] == ["c1|grant=a", "c1|grant=b", "c2|grant=a"]
        assert all(r == pytest.approx(3.0, abs=0.01) for _, r in listed)
        assert [k for k, _ in await h.limiter.scan("c1|")] == ["c1|grant=a", "c1|grant=b"]
        assert await h.limiter.scan("nothing") == []


class TestReset:
    """An operator refills chosen buckets at once; the others keep their level."""

    async def test_reset_refills_only_the_named_buckets(self, h: Harness) -> None:
        a, b = bucket("c1|grant=a", max_=2), bucket("c1|grant=b", max_=2)
        assert [r.admitted for r in await take(h, [a], 3)] == [True, True, False]
        await take(h, [b], 1)
        assert await h.limiter.reset(["c1|grant=a", "c1|grant=a", "never|grant=z"]) == 1
        assert [s.remaining for s in await h.limiter.peek([a])] == [2]
        (kept,) = await h.limiter.peek([b])
        assert kept.remaining == pytest.approx(1.0, abs=0.01)
        assert [k for k, _ in await h.limiter.scan()] == ["c1|grant=b"]
        assert [r.admitted for r in await take(h, [a], 3)] == [True, True, False]
        assert await h.limiter.reset([]) == 0


class TestExpiry:
    """A bucket's state lives exactly as long as it takes to refill; full buckets vanish."""

    async def test_ttl_is_time_to_full_and_key_goes_away(self, h: Harness) -> None:
        b = bucket(max_=2, window=0.4)
        await h.limiter.acquire([b])
        ttl = h.ttl_ms(b.key)
        assert ttl is not None and 150 < ttl <= 200.001  # one token back at 5/s
        await h.advance(0.2)
        await h.limiter.peek([b])  # an access to a full bucket drops it (memory)

        async def gone() -> bool:
            return h.ttl_ms(b.key) is None

        assert await h.until(gone)
        assert await h.limiter.scan() == []


class TestMemoryClock:
    """With an exact clock, refill is checked to the tick (Valkey's round trips blur this)."""

    async def test_half_the_wait_is_not_enough(self) -> None:
        h = _memory_harness()
        b = bucket(max_=2, window=0.2)
        await take(h, [b], 2)
        await h.advance(0.05)
        refused = await h.limiter.acquire([b])
        assert not refused.admitted
        assert refused.retry_after == pytest.approx(0.05)
        await h.advance(0.05)
        assert (await h.limiter.acquire([b])).admitted


class TestMemoryEviction:
    """The in-memory dict cannot grow without bound: a sweep drops every full bucket."""

    async def test_sweep_drops_full_buckets(self) -> None:
        clock = FakeClock()
        limiter = MemoryRateLimiter(clock, sweep_interval=1.0)
        for i in range(1000):
            limiter.acquire_now([bucket(f"c|grant={i}", max_=2, window=0.5)])
        assert len(limiter) == 1000
        clock.now += 0.4  # not full yet, and no sweep due
        limiter.acquire_now([bucket("c|other", max_=2, window=0.5)])
        assert len(limiter) == 1001
        clock.now += 0.7  # all refilled; the sweep interval has passed
        limiter.acquire_now([bucket("c|last", max_=2, window=0.5)])
        assert len(limiter) == 1


class TestBucket:
    """A bucket that could divide by zero is refused when built."""

    @pytest.mark.parametrize(("max_", "window"), [(0, 1.0), (1, 0.0), (1, -1.0)])
    def test_bad_bucket(self, max_: int, window: float) -> None:
        with pytest.raises(ValueError, match="must be"):
            Bucket("c", "c|k", max_, window)


class TestFactory:
    """The backend URL picks the limiter; a bad URL is an error, never memory."""

    @pytest.mark.parametrize("url", ["memory", "memory://"])
    def test_memory(self, url: str) -> None:
        assert isinstance(make_limiter(url), MemoryRateLimiter)

    @pytest.mark.parametrize(
        "url", ["valkey://127.0.0.1:6399/0", "valkeys://u:p@127.0.0.1:6399/2", "valkey://h"]
    )
    async def test_valkey(self, url: str) -> None:
        limiter = make_limiter(url)
        assert isinstance(limiter, ValkeyRateLimiter)
        await limiter.close()

    def test_clock_is_used(self) -> None:
        clock = FakeClock()
        limiter = make_limiter("memory", clock=clock)
        assert isinstance(limiter, MemoryRateLimiter)
        b = bucket(max_=1, window=1.0)
        limiter.acquire_now([b])
        clock.now += 1.0
        assert limiter.acquire_now([b]).admitted

    @pytest.mark.parametrize(
        "url",
        [
            "redis://127.0.0.1:6379/0",
            "memroy",
            "",
            "valkey://",
            "valkey://127.0.0.1:port/0",
            "valkey://127.0.0.1:6379/zero",
            "127.0.0.1:6379",
        ],
    )
    def test_rejected(self, url: str) -> None:
        with pytest.raises(ValueError, match="rate-limit backend"):
            make_limiter(url)
