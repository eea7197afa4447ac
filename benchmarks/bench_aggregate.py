"""What ``/mcp`` costs over ``/mcp/<server>`` for the same call, and what an idle session holds.

    python benchmarks/bench_aggregate.py [--calls 200] [--rounds 5] [--sessions 1000]

One celgate process (allow-all policy) with two servers: ``web`` (the test upstream over
Streamable HTTP) and ``st`` (the same server over stdio). The SDK's client (``mcp.Client``, no
cache) calls ``echo`` through the relay and through the aggregate, for each server and each
era (``legacy``: 2025-11-25; ``auto``: 2026-07-28), the targets taking turns in rounds so
drift hits them alike. Added = median(aggregate) - median(relay to the same server, same era).
Gateway CPU per call is the gateway's own utime + stime over a target's calls.

Then sessions: ``--sessions`` handshake-era sessions are opened on ``/mcp`` (initialize and
initialized, raw HTTP) and left idle; the gateway's RSS before and after, divided by their
number, is the memory one idle session holds (gateway side only: the aggregate opens no
upstream session before first use). Then each calls ``web__echo`` once (a link to ``web``
opened and held) and the RSS is read again; then all are closed (DELETE) and it is read again.
Writes ``benchmarks/results/aggregate.json`` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_stdio_aggregate import TICK_US, clients, cpu_ticks, timed_calls  # noqa: E402
from tests.gateway_proc import run_gateway  # noqa: E402
from tests.peers import REPO_ROOT, http_upstream, stdio_upstream_command  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "aggregate.json"
PAIRS = {
    f"aggregate {server}__echo ({era})": f"relay /mcp/{server} ({era})"
    for server in ("web", "st")
    for era in ("legacy", "auto")
}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"},
    },
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def latency(base: str, pid: int, calls: int, rounds: int) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for server in ("web", "st"):
        for era in ("legacy", "auto"):
            targets[f"relay /mcp/{server} ({era})"] = (f"{base}/mcp/{server}", "echo", pid, era)
            targets[f"aggregate {server}__echo ({era})"] = (
                f"{base}/mcp",
                f"{server}__echo",
                pid,
                era,
            )
    samples: dict[str, list[float]] = {}
    ticks: dict[str, int] = {}
    async with clients(targets) as running:
        for _ in range(rounds):
            for label, (c, (_, tool, gw_pid, _)) in running.items():
                before = cpu_ticks(gw_pid)
                samples.setdefault(label, []).extend(await timed_calls(c, tool, calls))
                ticks[label] = ticks.get(label, 0) + cpu_ticks(gw_pid) - before
    medians = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "calls_per_target": calls * rounds,
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
        "aggregate_over_relay_ms": {a: round(medians[a] - medians[r], 3) for a, r in PAIRS.items()},
        "gateway_cpu_us_per_call": {
            k: round(t * TICK_US / len(samples[k])) for k, t in ticks.items()
        },
    }


def sessions(base: str, pid: int, count: int) -> dict[str, Any]:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    with httpx.Client(base_url=base, timeout=30) as http:
        warm = http.post("/mcp", json=INIT, headers=headers)  # first: the catalogue is learned
        http.delete("/mcp", headers={"mcp-session-id": warm.headers["mcp-session-id"]})
        before = rss_kib(pid)
        sids = []
        for _ in range(count):
            opened = http.post("/mcp", json=INIT, headers=headers)
            sid = opened.headers["mcp-session-id"]
            http.post("/mcp", json=done, headers={**headers, "mcp-session-id": sid})
            sids.append(sid)
        idle = rss_kib(pid)
        for i, sid in enumerate(sids):
            call = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "web__echo", "arguments": {"text": f"s{i}"}},
            }
            answer = http.post("/mcp", json=call, headers={**headers, "mcp-session-id": sid})
            assert answer.status_code == 200 and f"s{i}" in answer.text, answer.text
        used = rss_kib(pid)
        for sid in sids:
            http.delete("/mcp", headers={"mcp-session-id": sid})
        closed = rss_kib(pid)
    return {
        "sessions": count,
        "rss_kib": {"before": before, "idle": idle, "after_one_call": used, "closed": closed},
        "kib_per_idle_session": round((idle - before) / count, 1),
        "kib_per_session_with_a_link": round((used - before) / count, 1),
    }


def table(result: dict[str, Any]) -> str:
    lat = result["latency"]
    lines = [
        "| target | median ms | aggregate over relay ms | gateway CPU µs/call |",
        "|---|---:|---:|---:|",
    ]
    for label, median in lat["median_ms"].items():
        over = lat["aggregate_over_relay_ms"].get(label)
        shown = f"{over:+.3f}" if over is not None else "baseline"
        cpu = lat["gateway_cpu_us_per_call"][label]
        lines.append(f"| {label} | {median:.3f} | {shown} | {cpu} |")
    s = result["sessions"]
    lines += [
        "",
        f"{s['sessions']} idle handshake-era sessions on /mcp: "
        f"{s['kib_per_idle_session']} KiB each (gateway RSS {s['rss_kib']['before']} → "
        f"{s['rss_kib']['idle']} KiB); after one call each (a link to web held): "
        f"{s['kib_per_session_with_a_link']} KiB each; after DELETE: {s['rss_kib']['closed']} KiB.",
    ]
    return "\n".join(lines) + "\n"


async def run(calls: int, rounds: int, count: int) -> dict[str, Any]:
    policy = 'version: "1"\ndefault: allow\n'
    command, args = stdio_upstream_command()
    st = {"command": command, "args": args, "env": {"PYTHONPATH": str(REPO_ROOT)}}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        up = stack.enter_context(http_upstream())
        caps = {"max_sessions_per_grant": count + 10, "max_sessions": count + 10}
        gw = stack.enter_context(
            run_gateway(tmp, policy, {"web": {"url": up.url}, "st": st}, aggregate=caps)
        )
        result = {"latency": await latency(gw.base, gw.peer.pid, calls, rounds)}
        result["sessions"] = sessions(gw.base, gw.peer.pid, count)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=1000)
    ns = parser.parse_args()
    result = asyncio.run(run(ns.calls, ns.rounds, ns.sessions))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    RESULTS.with_suffix(".md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
