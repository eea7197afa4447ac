"""What only the Valkey limiter has to get right: outages, lost scripts, other processes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import valkey

from gateway.errors import BackendUnavailable
from gateway.ratelimit import Bucket, ValkeyRateLimiter
from gateway.ratelimit.valkey import SCRIPT_SHA, Outage
from tests.valkey_server import HOST, PATIENT, ValkeyProcess

CLOSED = Bucket("closed_c", "closed_c|grant=a", max=5, window=60.0, failure_mode="closed")
OPEN = Bucket("open_c", "open_c|grant=a", max=5, window=60.0, failure_mode="open")


@pytest.fixture
async def limiter(valkey_db: ValkeyProcess) -> AsyncIterator[ValkeyRateLimiter]:
    lim = ValkeyRateLimiter(valkey_db.url, timeout=PATIENT)
    yield lim
    await lim.close()


@pytest.fixture
def sync_client(valkey_db: ValkeyProcess) -> Iterator[valkey.Valkey]:
    client = valkey.Valkey.from_url(valkey_db.url)
    yield client
    client.close()


class TestOutage:
    """With Valkey down, failure_mode decides; the same limiter recovers when it is back."""

    async def test_failure_modes_while_down_then_recovery(
        self, limiter: ValkeyRateLimiter, valkey_db: ValkeyProcess
    ) -> None:
        assert (await limiter.acquire([CLOSED])).admitted  # pool holds a live connection
        valkey_db.stop()
        started = time.monotonic()
        closed = await limiter.acquire([CLOSED])
        opened = await limiter.acquire([OPEN])
        mixed = await limiter.acquire([OPEN, CLOSED])
        assert time.monotonic() - started < 1.5  # a dead server never hangs a call

        assert (closed.admitted, closed.backend_error, closed.failed_open) == (False, True, False)
        assert closed.refused_by == "closed_c" and closed.retry_after is None
        assert (opened.admitted, opened.backend_error, opened.failed_open) == (True, True, True)
        assert opened.refused_by is None
        assert not mixed.admitted and mixed.refused_by == "closed_c" and not mixed.failed_open
        with pytest.raises(BackendUnavailable):
            await limiter.peek([CLOSED])
        with pytest.raises(BackendUnavailable):
            await limiter.scan()
        assert limiter._outage.since is not None and limiter._outage.calls == 3  # acquires

        valkey_db.start()  # same port, empty, no scripts loaded
        for b in (CLOSED, OPEN):
            back = await limiter.acquire([b])
            assert back.admitted and not back.backend_error and not back.failed_open
            assert back.states[0].remaining == pytest.approx(4.0, abs=0.01)
        assert limiter._outage.since is None and limiter._outage.calls == 0

    async def test_stale_pooled_connections_after_restart(
        self, limiter: ValkeyRateLimiter, valkey_db: ValkeyProcess
    ) -> None:
        """A restart between two calls is invisible: every stale connection is replaced."""
        b = Bucket("c", "c|global", max=1000, window=60.0)
        warm = await asyncio.gather(*(limiter.acquire([b]) for _ in range(20)))
        assert all(r.admitted for r in warm)  # the pool now holds ~20 connections
        valkey_db.stop()
        valkey_db.start()
        after = await asyncio.gather(*(limiter.acquire([b]) for _ in range(20)))
        assert [r.backend_error for r in after] == [False] * 20
        assert all(r.admitted for r in after)

    async def test_hung_server_times_out(self) -> None:
        """A peer that accepts but never answers costs about the read timeout, not forever."""
        with socket.socket() as silent:
            silent.bind((HOST, 0))
            silent.listen(16)
            lim = ValkeyRateLimiter(f"valkey://{HOST}:{silent.getsockname()[1]}/0", timeout=0.3)
            started = time.monotonic()
            result = await lim.acquire([CLOSED])
            elapsed = time.monotonic() - started
            await lim.close()
        assert result.backend_error and not result.admitted
        assert 0.25 < elapsed < 0.9

    async def test_cancelling_a_waiting_acquire_is_a_cancellation(self) -> None:
        """A caller that goes away (a client disconnect) is not reported as a Valkey outage,
        and its connection goes back to the pool, closed (its reply could still arrive)."""
        with socket.socket() as silent:
            silent.bind((HOST, 0))
            silent.listen(16)
            lim = ValkeyRateLimiter(f"valkey://{HOST}:{silent.getsockname()[1]}/0", timeout=5)
            pool = lim._client.connection_pool
            task = asyncio.ensure_future(lim.acquire([CLOSED]))
            silent.setblocking(False)
            accepted: socket.socket | None = None
            heard = b""
            for _ in range(1000):  # until its command was sent (a busy machine: seconds)
                await asyncio.sleep(0.01)
                if accepted is None:
                    with contextlib.suppress(BlockingIOError):
                        accepted = silent.accept()[0]
                        accepted.setblocking(False)
                if accepted is not None:
                    with contextlib.suppress(BlockingIOError):
                        heard += accepted.recv(65536)
                if heard and pool._in_use_connections:  # type: ignore[attr-defined]
                    break  # (cancelled while connecting, a connection has no reply to lose)
            assert heard, "the command never reached the server"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not pool._in_use_connections  # type: ignore[attr-defined]
            assert not any(c.is_connected for c in pool._available_connections)  # type: ignore[attr-defined]
            assert lim._outage.since is None
            await lim.close()
            if accepted is not None:
                accepted.close()


class TestScriptCache:
    """The script is loaded on demand and again after the server forgot it."""

    async def test_noscript_after_flush_is_handled(
        self, limiter: ValkeyRateLimiter, sync_client: valkey.Valkey
    ) -> None:
        assert (await limiter.acquire([CLOSED])).admitted
        assert sync_client.script_exists(SCRIPT_SHA) == [True]
        sync_client.script_flush()
        assert sync_client.script_exists(SCRIPT_SHA) == [False]
        again = await limiter.acquire([CLOSED])
        assert again.admitted and not again.backend_error
        assert again.states[0].remaining == pytest.approx(3.0, abs=0.01)
        assert sync_client.script_exists(SCRIPT_SHA) == [True]


class TestStorage:
    """Keys live under the configured prefix as one compact string with a PX."""

    async def test_custom_prefix(
        self, valkey_db: ValkeyProcess, sync_client: valkey.Valkey
    ) -> None:
        lim = ValkeyRateLimiter(valkey_db.url, prefix="other:", timeout=PATIENT)
        await lim.acquire([CLOSED])
        assert sync_client.keys("*") == [b"other:closed_c|grant=a"]
        assert await lim.scan() == [("closed_c|grant=a", pytest.approx(4.0, abs=0.01))]
        await lim.close()

    async def test_glob_characters_in_scan_prefix_are_literal(
        self, limiter: ValkeyRateLimiter
    ) -> None:
        await limiter.acquire([Bucket("c", "c|grant=a*", 3, 60.0)])
        await limiter.acquire([Bucket("c", "c|grant=ab", 3, 60.0)])
        assert [k for k, _ in await limiter.scan("c|grant=a*")] == ["c|grant=a*"]


class TestConcurrency:
    """Many concurrent calls, from one or two processes, admit exactly max."""

    BUCKET = Bucket("burst", "burst|global", max=30, window=3600.0)

    async def test_one_process(self, limiter: ValkeyRateLimiter) -> None:
        results = await asyncio.gather(*(limiter.acquire([self.BUCKET]) for _ in range(200)))
        assert sum(r.admitted for r in results) == 30
        assert not any(r.backend_error for r in results)

    async def test_two_processes(self, valkey_db: ValkeyProcess) -> None:
        children = [await _spawn_child(valkey_db.url) for _ in range(2)]
        for child in children:  # both are connected and waiting before either starts
            assert child.stdout is not None
            assert (await child.stdout.readline()).strip() == b"ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = [await asyncio.wait_for(c.communicate(), 30) for c in children]
        admitted = [int(out.split()[-1]) for out, _ in outputs]
        assert all(c.returncode == 0 for c in children), outputs
        assert sum(admitted) == 30, admitted


CHILD = """
import asyncio, sys
from gateway.ratelimit import Bucket, ValkeyRateLimiter

async def main(url):
    lim = ValkeyRateLimiter(url, timeout=10.0)  # tests.valkey_server.PATIENT
    b = Bucket("burst", "burst|global", max=30, window=3600.0)
    await lim.load()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    results = await asyncio.gather(*(lim.acquire([b]) for _ in range(100)))
    assert not any(r.backend_error for r in results)
    print(sum(r.admitted for r in results), flush=True)
    await lim.close()

asyncio.run(main(sys.argv[1]))
"""


async def _spawn_child(url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


class _Records:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, object]]] = []

    def error(self, event: str, **fields: object) -> None:
        self.lines.append(("error", event, fields))

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append(("warning", event, fields))


class TestOutageRecords:
    """An outage is logged when it starts, every 30 s (or when the error changes) while it
    lasts, and when it ends; never once per failed call."""

    def test_start_reminders_and_end(self) -> None:
        now = [100.0]
        records = _Records()
        outage = Outage(clock=lambda: now[0], logger=records)
        refused = ConnectionRefusedError(111, "Connect call failed")
        for _ in range(500):  # a burst of calls in the first second
            outage.failed(refused)
        now[0] = 129.0
        outage.failed(refused)
        now[0] = 130.5
        outage.failed(refused)  # 30 s since the first record
        now[0] = 131.0
        outage.failed(TimeoutError("valkey did not answer within 0.5 s"))  # a new kind
        now[0] = 140.0
        outage.recovered()
        assert [(level, event) for level, event, _ in records.lines] == [
            ("error", "ratelimit.backend_down"),
            ("error", "ratelimit.backend_still_down"),
            ("error", "ratelimit.backend_still_down"),
            ("warning", "ratelimit.backend_recovered"),
        ]
        assert records.lines[0][2]["error"] == "ConnectionRefusedError"
        assert records.lines[1][2] == {
            "error": "ConnectionRefusedError",
            "detail": "[Errno 111] Connect call failed",
            "down_s": 30.5,
            "failed_calls": 502,
        }
        assert records.lines[2][2]["error"] == "TimeoutError"
        assert records.lines[3][2] == {"down_s": 40.0, "failed_calls": 503}
        assert outage.since is None and outage.calls == 0
        outage.failed(refused)  # the next outage is logged afresh
        assert records.lines[-1][1] == "ratelimit.backend_down"
