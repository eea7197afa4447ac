"""celgate side by side with the gateways users would pick instead, in one interleaved run.

    python benchmarks/bench_peers.py [--rounds 5] [--seconds 0.5] [--window 3] [--sessions 1000]
                                     [--rev HEAD] [--skip fastmcp,contextforge,...] [--quick]

Targets, all in front of one upstream (the test upstream: the conformance "everything"
scenarios plus ``echo``; Streamable HTTP, or stdio for the stdio rows):

    direct                 the upstream itself
    stdio direct           the SDK's stdio client to its own child process
    celgate relay          /mcp/up, allow-all                         } one celgate
    celgate relay stdio    /mcp/st, the same upstream over stdio      } process
    celgate aggregate      /mcp, tool up__echo                        }
    celgate relay CEL      /mcp/up, CEL rule + two limits (memory)      another one
    bare relay             ``bare_relay.py``: celgate's server stack relaying bytes, no policy
    fastmcp / mcp-policy-gateway / contextforge    see ``peers_launch.py``

celgate and the upstream come from ``git archive REV`` (others may be editing the working
tree). The client is the SDK's own (``mcp.Client(..., mode="legacy"|"auto", cache=None)``),
in both eras: legacy (2025-11-25, a session) and auto (2026-07-28 where the target speaks it;
the era each target negotiated is reported). In each round every (target, era) takes its turn
in a rotated order: ``--seconds`` of one client calling ``echo`` one call at a time (latency,
gateway CPU), then 16 clients at once, counted for ``--window`` seconds (calls/s in steady
state; "stdio direct" is 16 workers on its one client). Gateway CPU is utime + stime from
/proc (with forked workers for the peers; without celgate's stdio child, the upstream).
Memory: RSS of the gateway once started and warmed by one call, and the growth of its RSS
while ``--sessions`` legacy sessions are opened (initialize + initialized) and left idle.
Writes ``benchmarks/results/peers.json`` and ``peers.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers_launch as pl  # noqa: E402
from bench_relay import CEL_LIMIT  # noqa: E402

RESULTS = HERE / "results" / "peers.json"
ERAS = {"legacy": "legacy", "2026-07-28": "auto"}
ALLOW = "default: allow\n"
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
PEERS: dict[str, Callable[[Path, str], pl.Started]] = {
    "fastmcp": pl.start_fastmcp,
    "mcp-policy-gateway": pl.start_mcp_policy_gateway,
    "contextforge": pl.start_contextforge,
}


@dataclass
class Target:
    name: str
    server: Callable[[], Any]  # Client's first argument, made fresh per client
    tool: str
    baseline: str = ""  # the direct target its added latency is measured against
    started: pl.Started | None = None  # None: a direct target, no gateway CPU
    clients: dict[str, list[Client]] = field(default_factory=dict)
    lat: dict[str, list[float]] = field(default_factory=dict)
    ticks: dict[str, int] = field(default_factory=dict)
    many: dict[str, list[float]] = field(default_factory=dict)  # [calls, seconds]
    errors: dict[str, int] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)
    era_seen: dict[str, str] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)


def http_server(url: str, token: str | None) -> Callable[[], Any]:
    if token is None:
        return lambda: url
    headers = {"Authorization": f"Bearer {token}"}
    return lambda: streamable_http_client(url, http_client=create_mcp_http_client(headers))


def gateway_target(name: str, s: pl.Started, tool: str = "", url: str = "") -> Target:
    url = url or s.url
    t = Target(name, http_server(url, s.token), tool or s.tool, "direct", s)
    t.memory["url"] = url
    return t


# --------------------------------------------------------------------------- timing


async def call(t: Target, c: Client, era: str, text: str) -> bool:
    try:
        result = await c.call_tool(t.tool, {"text": text})
        ok = not result.is_error and result.content[0].text == text  # type: ignore[union-attr]
    except Exception as exc:  # a peer failing under load is a figure, not the end of the run
        ok, result = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        t.errors[era] = t.errors.get(era, 0) + 1
        t.first_error.setdefault(era, str(result)[:300])
    return ok


async def one_client(t: Target, era: str, seconds: float) -> None:
    c, clock = t.clients[era][0], time.perf_counter
    pid, tree = (t.started.peer.pid, t.started.tree) if t.started else (0, False)
    before, out, deadline, i = pl.cpu_ticks(pid, tree) if pid else 0, [], clock() + seconds, 0
    while (start := clock()) < deadline:
        i += 1
        if await call(t, c, era, f"one {i}"):
            out.append((clock() - start) * 1000)
    t.ticks[era] = t.ticks.get(era, 0) + (pl.cpu_ticks(pid, tree) - before if pid else 0)
    t.lat.setdefault(era, []).extend(out)


async def many_clients(t: Target, era: str, ns: argparse.Namespace) -> None:
    """Calls/s of ``ns.clients`` clients in steady state: all start, then completions are
    counted over ``ns.window`` seconds after a ramp of a third of that; calls still out then
    finish uncounted (a closed loop's first and last calls would bias a short window)."""
    clients = t.clients[era] if len(t.clients[era]) > 1 else t.clients[era] * ns.clients
    done, stop = [0], anyio.Event()

    async def worker(c: Client, w: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ok = await call(t, c, era, f"w{w} {i}")  # awaited before ``done`` is read
            done[0] += ok

    async with anyio.create_task_group() as tg:
        for w, c in enumerate(clients[: ns.clients]):
            tg.start_soon(worker, c, w)
        await anyio.sleep(ns.window / 3)
        first, start = done[0], time.perf_counter()
        await anyio.sleep(ns.window)
        counted, took = done[0] - first, time.perf_counter() - start
        stop.set()
    calls, total = t.many.setdefault(era, [0.0, 0.0])
    t.many[era] = [calls + counted, total + took]


async def run_rounds(targets: list[Target], ns: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for t in targets:
            for era, mode in ERAS.items():
                count = 1 if t.name == "stdio direct" else 1 + ns.clients
                for _ in range(count):
                    c = Client(t.server(), mode=mode, cache=None)  # type: ignore[arg-type]
                    await stack.enter_async_context(c)
                    await call(t, c, era, "warm")
                    t.clients.setdefault(era, []).append(c)
                t.era_seen[era] = t.clients[era][0].protocol_version or "?"
                t.errors[era] = 0
        pairs = [(t, era) for t in targets for era in ERAS]
        for r in range(ns.rounds):
            shift = (r * 7) % len(pairs)
            for t, era in pairs[shift:] + pairs[:shift]:
                await one_client(t, era, ns.seconds)
                await many_clients(t, era, ns)
            print(f"round {r + 1}/{ns.rounds} done", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memory


def memory_idle(t: Target) -> None:
    assert t.started is not None
    rss, pss = pl.memory_kb(t.started.peer.pid, t.started.tree)
    t.memory |= {"idle_rss_mb": round(rss / 1024, 1), "idle_pss_mb": round(pss / 1024, 1)}


async def open_sessions(t: Target, count: int) -> None:
    """``count`` legacy sessions (initialize, initialized), left open and idle; the
    gateway's RSS growth per 1,000."""
    assert t.started is not None
    pid, tree = t.started.peer.pid, t.started.tree
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }
    if t.started.token:
        headers["Authorization"] = f"Bearer {t.started.token}"
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "celgate-bench", "version": "1"},
        },
    }
    opened, failed, stateless = [0], [0], [0]
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    before = pl.memory_kb(pid, tree)[0]
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as http:

        async def one() -> None:
            try:
                resp = await http.post(t.memory["url"], json=init)
                if resp.status_code != 200:
                    raise RuntimeError(resp.status_code)
                sid = resp.headers.get("mcp-session-id")  # none: the target keeps no session
                stateless[0] += sid is None
                note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
                more = {"Mcp-Session-Id": sid} if sid else {}
                await http.post(t.memory["url"], json=note, headers=more)
                opened[0] += 1
            except Exception:
                failed[0] += 1

        for start in range(0, count, 16):
            await asyncio.gather(*(one() for _ in range(min(16, count - start))))
    await asyncio.sleep(1)
    grown = pl.memory_kb(pid, tree)[0] - before
    per = grown / 1024 * 1000 / opened[0] if opened[0] else None
    t.memory |= {"sessions_opened": opened[0], "sessions_failed": failed[0]}
    t.memory["sessions_without_id"] = stateless[0]
    t.memory["mb_per_1000_sessions"] = None if per is None else round(per, 1)


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def stack(ns: argparse.Namespace, failed: dict[str, str]) -> Iterator[list[Target]]:
    with tempfile.TemporaryDirectory(prefix="celgate-peers-") as tmp, contextlib.ExitStack() as st:
        folder = Path(tmp)
        tree = pl.unpack_tree(ns.rev, folder)
        up = pl.start_upstream(tree, folder)
        st.callback(up.peer.stop)
        stdio = pl.stdio_server(tree)
        params = StdioServerParameters(
            command=stdio["command"], args=stdio["args"], env=stdio["env"]
        )
        targets = [
            Target("direct", lambda: up.url, "echo"),
            Target("stdio direct", lambda: params, "echo"),
        ]
        # The aggregate keeps 64 sessions per grant by default: raised to hold --sessions.
        room = {"aggregate": {"max_sessions_per_grant": ns.sessions + 64, "max_sessions": 10**5}}
        # So does the relay, per upstream (256 an agent), in revisions that count them.
        server: dict[str, Any] = {"url": up.url}
        if "max_sessions_per_grant" in (tree / "gateway/config/servers.py").read_text():
            server.update(max_sessions_per_grant=ns.sessions + 64, max_sessions=10**5)
        allow = _celgate(tree, folder / "allow", ALLOW, {"up": server}, st, **room)
        cel = _celgate(tree, folder / "cel", CEL_LIMIT, {"up": server}, st)
        # Its own process: each legacy session on a stdio relay is a child process of its own.
        # One legacy session is one process: the defaults (16 in all, 8 a grant) would evict.
        cap = ns.clients + 1
        stdio_cap = {**stdio, "max_processes": cap, "max_processes_per_grant": cap}
        on_stdio = _celgate(tree, folder / "stdio", ALLOW, {"st": stdio_cap}, st)
        stdio_relay = gateway_target("celgate relay to stdio", on_stdio)
        stdio_relay.baseline, stdio_relay.memory["skip"] = "stdio direct", "a child per session"
        floor = pl.start_bare_relay(folder, up.url)
        st.callback(floor.peer.stop)
        targets += [
            gateway_target("bare relay (no policy: the floor)", floor),
            gateway_target("celgate relay, allow-all", allow),
            gateway_target("celgate relay, CEL rule + limit", cel),
            stdio_relay,
            gateway_target("celgate aggregate /mcp", allow, "up__echo", allow.url[: -len("/up")]),
        ]
        for name, start in PEERS.items():
            if name in ns.skip:
                continue
            try:
                peer = start(folder, up.url)
            except Exception as exc:  # reported, and the run goes on without it
                failed[name] = f"{type(exc).__name__}: {exc}"[-2000:]
                continue
            st.callback(peer.peer.stop)
            targets.append(gateway_target(name, peer))
        yield targets


def _celgate(
    tree: Path,
    folder: Path,
    policy: str,
    servers: dict[str, Any],
    st: contextlib.ExitStack,
    **extra: Any,
) -> pl.Started:
    gw = pl.start_celgate(tree, folder, policy, servers, **extra)
    st.callback(gw.stop)
    return pl.Started(gw, f"http://127.0.0.1:{gw.port}/mcp/{next(iter(servers))}", tree=False)


async def measure(targets: list[Target], ns: argparse.Namespace) -> None:
    for t in targets:
        if t.started is not None:
            async with Client(t.server(), mode="legacy", cache=None) as c:  # type: ignore[arg-type]
                await call(t, c, "warm", "warm")
            memory_idle(t)
    await run_rounds(targets, ns)
    for t in targets:
        if t.started is not None and "skip" not in t.memory:
            await open_sessions(t, ns.sessions)


# --------------------------------------------------------------------------- report


def rows(targets: list[Target]) -> list[dict[str, Any]]:
    by_name = {t.name: t for t in targets}
    out = []
    for t in targets:
        row: dict[str, Any] = {"target": t.name, "baseline": t.baseline or None, **t.memory}
        for era in ERAS:
            lat, n = t.lat.get(era) or [float("nan")], len(t.lat.get(era, []))
            calls, took = t.many.get(era, [0.0, 1.0])
            part = {
                "era": t.era_seen.get(era),
                "calls": n,
                "errors": t.errors.get(era, 0),
                "first_error": t.first_error.get(era),
                "median_ms": round(statistics.median(lat), 3),
                "cpu_us_per_call": round(t.ticks[era] * TICK_US / n) if t.started and n else None,
                "calls_per_s_16": round(calls / took, 1),
            }
            if t.baseline:
                base = by_name[t.baseline]
                part["added_median_ms"] = round(
                    part["median_ms"] - statistics.median(base.lat[era]), 3
                )
                b_calls, b_took = base.many[era]
                part["throughput_16_vs_direct"] = round(
                    part["calls_per_s_16"] / (b_calls / b_took), 2
                )
            row[era] = part
        out.append(row)
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    def pair(row: dict[str, Any], key: str, fmt: str) -> str:
        vals = [row[era].get(key) for era in ERAS]
        return " / ".join("-" if v is None else format(v, fmt) for v in vals)

    lines = [
        "| target | added median ms | gateway CPU µs/call | 16-client calls/s vs direct "
        "| RSS idle MB | MB per 1,000 idle sessions | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        if not r["baseline"]:
            continue
        errs = pair(r, "errors", "d")
        cpu = pair(r, "cpu_us_per_call", ",")
        lines.append(
            f"| {r['target']} | {pair(r, 'added_median_ms', '+.2f')} | {cpu} "
            f"| {pair(r, 'throughput_16_vs_direct', '.2f')} | {r.get('idle_rss_mb', '-')} "
            f"| {r.get('mb_per_1000_sessions', '-')} | {errs} |"
        )
    base = [r for r in table if not r["baseline"]]
    lines.append("")
    lines.append(
        "Baselines (median ms, 16-client calls/s), legacy / 2026-07-28: "
        + "; ".join(
            f"{r['target']} {pair(r, 'median_ms', '.2f')} ms, {pair(r, 'calls_per_s_16', ',.0f')}/s"
            for r in base
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=0.5, help="per target, era and level")
    parser.add_argument("--window", type=float, default=3.0, help="seconds counted, 16 clients")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--sessions", type=int, default=1000, help="idle sessions opened")
    parser.add_argument("--rev", default="HEAD", help="celgate's revision ('worktree': as is)")
    parser.add_argument("--skip", default="", help=f"peers to leave out, of {','.join(PEERS)}")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 200 sessions")
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args()
    ns.skip = set(filter(None, ns.skip.split(",")))
    if ns.quick:
        ns.rounds, ns.sessions = min(ns.rounds, 2), min(ns.sessions, 200)
    logging.getLogger("mcp").setLevel(logging.ERROR)  # "Session termination failed" at exit
    failed: dict[str, str] = {}
    with stack(ns, failed) as targets:
        anyio.run(measure, targets, ns)
    table = rows(targets)
    fails = "".join(f"\n\n{name} failed: {why}" for name, why in failed.items())
    client = "mcp.Client (mcp 2.3.0), mode legacy / auto, cache=None"
    md = "Legacy / 2026-07-28 in each cell.\n\n" + markdown(table)
    pl.write_report(
        ns.output,
        "bench_peers.py",
        md,
        fails,
        benchmark="peers",
        celgate_rev=pl.short_rev(ns.rev),
        client=client,
        failed=failed,
        rows=table,
    )


if __name__ == "__main__":
    main()
