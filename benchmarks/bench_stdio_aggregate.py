"""Added latency of a stdio upstream and of the aggregated endpoint, next to the relay.

    python benchmarks/bench_stdio_aggregate.py [--calls 300] [--rounds 5] [--against DIR]
                                               [--profile LABEL]

One celgate process (allow-all policy) with two servers: ``web`` (the test upstream over
Streamable HTTP) and ``st`` (the same server over stdio, behind the bridge). The SDK's client
(``mcp.Client``, no cache) calls ``echo`` on these targets, which take turns in rounds so drift
hits them alike (sessions are opened outside the timer); ``mode="legacy"`` (the 2025-11-25
handshake) unless marked ``(2026)``, ``mode="auto"``, which negotiates 2026-07-28:

    http direct        the HTTP upstream itself
    http direct, JSON  the same server stateless, answering in JSON (the SDK client's own cost
                       of an HTTP leg with JSON answers, as the stdio bridge gives them)
    relay  /mcp/web    celgate's relay to it
    stdio direct       the SDK's stdio client to its own child process
    relay  /mcp/st     celgate's relay to the stdio bridge
    aggregate web__    /mcp, routed to web
    aggregate st__     /mcp, routed to st
    stdio direct (2026), relay /mcp/st (2026)   the same two in the stateless era

``--against DIR`` starts a second gateway, same config, from another checkout (a git worktree
of an earlier commit, say) and adds its ``/mcp/st`` and ``st__echo`` to the rounds, marked
``[against]``: a before/after comparison under the same drifting load, which two runs one after
the other on a shared machine are not.

``--profile LABEL`` records the gateway behind one target with py-spy (raw collapsed stacks,
``benchmarks/results/stdio-profile-LABEL.txt``) while that target alone is called.

Added latency = median(target) - median(its direct baseline). Gateway CPU per call is the
gateway process's own utime + stime (``/proc/<pid>/stat``, every thread, not its stdio
children) over a target's calls, divided by their number; a direct target costs the gateway
nothing but its idle timers. Client CPU per call is the benchmark process's own CPU time
(``time.process_time``) over a target's calls: what the SDK client spends on one transport or
the other (a stdio child's CPU is in neither column). Writes
``benchmarks/results/stdio_aggregate.json`` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_proc import run_gateway, wait_healthy, write_config  # noqa: E402
from tests.peers import (  # noqa: E402
    REPO_ROOT,
    PeerProcess,
    free_port,
    http_upstream,
    stdio_upstream_command,
)

RESULTS = ROOT / "benchmarks" / "results" / "stdio_aggregate.json"
BASELINE = {
    "relay /mcp/web": "http direct",
    "relay /mcp/st": "stdio direct",
    "aggregate web__echo": "http direct",
    "aggregate st__echo": "stdio direct",
}
MODERN = {"relay /mcp/st (2026)": "stdio direct (2026)"}
AGAINST = {
    "relay /mcp/st [against]": "stdio direct",
    "aggregate st__echo [against]": "stdio direct",
    "relay /mcp/st (2026) [against]": "stdio direct (2026)",
}
BASELINES = BASELINE | MODERN | AGAINST
# (URL or stdio parameters, tool, gateway pid or None, client mode)
Target = tuple[Any, str, int | None, str]


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
async def clients(targets: dict[str, Target]) -> AsyncIterator[dict[str, tuple[Client, Target]]]:
    async with contextlib.AsyncExitStack() as stack:
        out = {}
        for label, target in targets.items():
            client = Client(target[0], mode=target[3], cache=None)  # type: ignore[arg-type]
            c = await stack.enter_async_context(client)
            await c.call_tool(target[1], {"text": "warm"})
            out[label] = (c, target)
        yield out


@contextlib.contextmanager
def other_gateway(tree: Path, directory: Path, policy: str, servers: Any) -> Iterator[PeerProcess]:
    """The gateway of another checkout (``--against``), with the same config."""
    port = free_port()
    config = write_config(directory, policy, servers, port)
    log_path = directory / "against.log"
    argv = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--json-logs"]
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    peer = PeerProcess(proc, port, f"http://127.0.0.1:{port}", argv, log_path)
    try:
        wait_healthy(port, peer)
        yield peer
    finally:
        peer.stop()


async def measure(
    calls: int, rounds: int, against: Path | None, profile: str | None = None
) -> dict[str, Any]:
    policy = 'version: "1"\ndefault: allow\n'
    command, args = stdio_upstream_command()
    st = {"command": command, "args": args, "env": {"PYTHONPATH": str(REPO_ROOT)}}
    stdio = StdioServerParameters(command=command, args=args, env={"PYTHONPATH": str(REPO_ROOT)})
    samples: dict[str, list[float]] = {}
    ticks: dict[str, int] = {}
    client_s: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        up = stack.enter_context(http_upstream())
        plain = stack.enter_context(http_upstream(stateless=True))
        servers = {"web": {"url": up.url}, "st": st}
        gw = stack.enter_context(run_gateway(tmp, policy, servers))
        pid, base = gw.peer.pid, gw.base
        targets: dict[str, Target] = {
            "http direct": (up.url, "echo", None, "legacy"),
            "http direct, JSON": (plain.url, "echo", None, "legacy"),
            "relay /mcp/web": (f"{base}/mcp/web", "echo", pid, "legacy"),
            "stdio direct": (stdio, "echo", None, "legacy"),
            "relay /mcp/st": (f"{base}/mcp/st", "echo", pid, "legacy"),
            "aggregate web__echo": (f"{base}/mcp", "web__echo", pid, "legacy"),
            "aggregate st__echo": (f"{base}/mcp", "st__echo", pid, "legacy"),
            "stdio direct (2026)": (stdio, "echo", None, "auto"),
            "relay /mcp/st (2026)": (f"{base}/mcp/st", "echo", pid, "auto"),
        }
        if against is not None:
            (tmp / "against").mkdir()
            other = stack.enter_context(other_gateway(against, tmp / "against", policy, servers))
            url = f"{other.url}/mcp"
            targets["relay /mcp/st [against]"] = (f"{url}/st", "echo", other.pid, "legacy")
            targets["aggregate st__echo [against]"] = (url, "st__echo", other.pid, "legacy")
            targets["relay /mcp/st (2026) [against]"] = (f"{url}/st", "echo", other.pid, "auto")
        if profile is not None:
            return await _profiled(targets, profile, calls * rounds)
        async with clients(targets) as running:
            for _ in range(rounds):
                for label, (c, (_, tool, gw_pid, _)) in running.items():
                    before = cpu_ticks(gw_pid) if gw_pid else 0
                    own = time.process_time()
                    samples.setdefault(label, []).extend(await timed_calls(c, tool, calls))
                    spent = cpu_ticks(gw_pid) - before if gw_pid else 0
                    ticks[label] = ticks.get(label, 0) + spent
                    client_s[label] = client_s.get(label, 0.0) + time.process_time() - own
    medians = {k: statistics.median(v) for k, v in samples.items()}
    baselines = {k: v for k, v in BASELINES.items() if k in medians}
    added = {k: medians[k] - medians[base] for k, base in baselines.items()}
    return {
        "calls_per_target": calls * rounds,
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
        "p90_ms": {k: round(statistics.quantiles(v, n=10)[8], 3) for k, v in samples.items()},
        "added_median_ms": {k: round(v, 3) for k, v in added.items()},
        "gateway_cpu_us_per_call": {
            k: round(t * TICK_US / len(samples[k])) for k, t in ticks.items()
        },
        "client_cpu_us_per_call": {
            k: round(t * 1e6 / len(samples[k])) for k, t in client_s.items()
        },
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
    }


async def _profiled(targets: dict[str, Target], label: str, calls: int) -> dict[str, Any]:
    """py-spy on the gateway behind ``label`` while that target alone takes ``calls`` calls."""
    target = targets[label]
    assert target[2] is not None and shutil.which("py-spy"), "a gateway target, and py-spy"
    out = RESULTS.parent / f"stdio-profile-{label.replace('/', '_').replace(' ', '_')}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    async with clients({label: target}) as running:
        cmd = ["py-spy", "record", "--pid", str(target[2]), "--rate", "500", "--format", "raw"]
        cmd += ["--output", str(out), "--nonblocking"]
        spy = await anyio.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await anyio.sleep(1)  # py-spy attaches
        await timed_calls(running[label][0], target[1], calls)
        spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        with anyio.fail_after(30):
            await spy.wait()
    return {"profile": str(out)}


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def table(result: dict[str, Any]) -> str:
    lines = [
        "| target | median ms | p90 ms | added median ms (vs baseline) | gateway CPU µs/call"
        " | client CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, median in result["median_ms"].items():
        added = result["added_median_ms"].get(label)
        base = BASELINES.get(label)
        extra = f"{added:+.3f} (vs {base})" if added is not None else "baseline"
        cpu = result["gateway_cpu_us_per_call"][label]
        own = result["client_cpu_us_per_call"][label]
        p90 = result["p90_ms"][label]
        lines.append(f"| {label} | {median:.3f} | {p90:.3f} | {extra} | {cpu} | {own} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per target per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--against", type=Path, help="another checkout whose gateway runs interleaved with this one"
    )
    parser.add_argument("--profile", metavar="LABEL", help="py-spy the gateway behind one target")
    ns = parser.parse_args()
    result = anyio.run(measure, ns.calls, ns.rounds, ns.against, ns.profile)
    if ns.profile:
        print(result["profile"])
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    md = table(result)
    RESULTS.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
