"""Added latency of a stdio upstream and of the aggregated endpoint, next to the relay.

    python benchmarks/bench_stdio_aggregate.py [--calls 300] [--rounds 5]

One celgate process (allow-all policy) with two servers: ``web`` (the test upstream over
Streamable HTTP) and ``st`` (the same server over stdio, behind the bridge). The SDK's client
(``mcp.Client``, legacy handshake, no cache) calls ``echo`` on six targets, which take turns in
rounds so drift hits them alike (sessions are opened outside the timer):

    http direct        the HTTP upstream itself
    relay  /mcp/web    celgate's relay to it
    stdio direct       the SDK's stdio client to its own child process
    relay  /mcp/st     celgate's relay to the stdio bridge
    aggregate web__    /mcp, routed to web
    aggregate st__     /mcp, routed to st

Added latency = median(target) - median(its direct baseline). Gateway CPU per call is the
gateway process's own utime + stime (``/proc/<pid>/stat``, every thread, not its stdio
children) over a target's calls, divided by their number; a direct target costs the gateway
nothing but its idle timers. Writes ``benchmarks/results/stdio_aggregate.json`` and a Markdown
table beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_proc import run_gateway  # noqa: E402
from tests.peers import REPO_ROOT, http_upstream, stdio_upstream_command  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stdio_aggregate.json"
BASELINE = {
    "relay /mcp/web": "http direct",
    "relay /mcp/st": "stdio direct",
    "aggregate web__echo": "http direct",
    "aggregate st__echo": "stdio direct",
}


TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` (all its threads, not its children): /proc/PID/stat 14, 15."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def timed_calls(c: Client, tool: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        text = f"bench {i}"
        started = time.perf_counter()
        result = await c.call_tool(tool, {"text": text})
        out.append((time.perf_counter() - started) * 1000)
        assert not result.is_error and result.content[0].text == text  # type: ignore[union-attr]
    return out


@contextlib.asynccontextmanager
async def clients(up_url: str, gw_base: str) -> AsyncIterator[dict[str, tuple[Client, str]]]:
    command, args = stdio_upstream_command()
    stdio = StdioServerParameters(command=command, args=args, env={"PYTHONPATH": str(REPO_ROOT)})
    targets: dict[str, tuple[Any, str]] = {
        "http direct": (up_url, "echo"),
        "relay /mcp/web": (f"{gw_base}/mcp/web", "echo"),
        "stdio direct": (stdio, "echo"),
        "relay /mcp/st": (f"{gw_base}/mcp/st", "echo"),
        "aggregate web__echo": (f"{gw_base}/mcp", "web__echo"),
        "aggregate st__echo": (f"{gw_base}/mcp", "st__echo"),
    }
    async with contextlib.AsyncExitStack() as stack:
        out = {}
        for label, (server, tool) in targets.items():
            c = await stack.enter_async_context(Client(server, mode="legacy", cache=None))
            await c.call_tool(tool, {"text": "warm"})
            out[label] = (c, tool)
        yield out


async def measure(calls: int, rounds: int) -> dict[str, Any]:
    policy = 'version: "1"\ndefault: allow\n'
    command, args = stdio_upstream_command()
    st = {"command": command, "args": args, "env": {"PYTHONPATH": str(REPO_ROOT)}}
    samples: dict[str, list[float]] = {}
    ticks: dict[str, int] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        http_upstream() as up,
        run_gateway(Path(tmp), policy, {"web": {"url": up.url}, "st": st}) as gw,
    ):
        async with clients(up.url, gw.base) as targets:
            for _ in range(rounds):
                for label, (c, tool) in targets.items():
                    before = cpu_ticks(gw.peer.pid)
                    samples.setdefault(label, []).extend(await timed_calls(c, tool, calls))
                    ticks[label] = ticks.get(label, 0) + cpu_ticks(gw.peer.pid) - before
    medians = {k: statistics.median(v) for k, v in samples.items()}
    added = {k: medians[k] - medians[base] for k, base in BASELINE.items()}
    return {
        "calls_per_target": calls * rounds,
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
        "p90_ms": {k: round(statistics.quantiles(v, n=10)[8], 3) for k, v in samples.items()},
        "added_median_ms": {k: round(v, 3) for k, v in added.items()},
        "gateway_cpu_us_per_call": {
            k: round(t * TICK_US / len(samples[k])) for k, t in ticks.items()
        },
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def table(result: dict[str, Any]) -> str:
    lines = [
        "| target | median ms | p90 ms | added median ms (vs baseline) | gateway CPU µs/call |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, median in result["median_ms"].items():
        added = result["added_median_ms"].get(label)
        extra = f"{added:+.3f} (vs {BASELINE[label]})" if added is not None else "baseline"
        cpu = result["gateway_cpu_us_per_call"][label]
        lines.append(
            f"| {label} | {median:.3f} | {result['p90_ms'][label]:.3f} | {extra} | {cpu} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per target per round")
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    result = anyio.run(measure, ns.calls, ns.rounds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    md = table(result)
    RESULTS.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
