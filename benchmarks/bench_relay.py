"""The relay at ``/mcp/<server>``, this tree against an older one, interleaved in one run.

    python benchmarks/bench_relay.py [--against REV] [--calls N] [--rounds R] [--sdk]
                                     [--profile NAME] [--output FILE]

Targets, all in front of one upstream (``tests.servers.upstream``, Streamable HTTP,
stateful, SSE answers): the upstream itself (``direct``); celgate from this tree and from
``REV`` (``git archive`` of that commit into a temporary folder, default ``HEAD``), each with
an allow-all policy and with a CEL rule + two rate limits (memory limiter). Each target is
called in both protocol eras (2025-11-25 with a session; 2026-07-28 without one) by a lean
aiohttp JSON-RPC client (``--sdk``: the SDK's own ``mcp.Client``, ``legacy`` and ``auto``),
one call at a time; targets take turns in rounds so drift on a shared
machine hits all alike. Gateway CPU per call is ``utime + stime`` from ``/proc/<pid>/stat``
around each batch. Reports medians and the added median over direct.

``--profile NAME`` runs py-spy (raw collapsed stacks, ``results/relay-profile-NAME.txt``) on
one target (e.g. ``new/cel+limit``) for 10 s under a one-client load, after the timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from mcp import Client as McpClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_proc import wait_healthy, write_config  # noqa: E402
from tests.peers import PeerProcess, free_port, start_http_upstream  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "relay.json"
ERAS = {"legacy": "2025-11-25", "modern": "2026-07-28"}
META_KEY = "io.modelcontextprotocol/protocolVersion"
TICK = os.sysconf("SC_CLK_TCK")
ALLOW_ALL = "default: allow\n"
CEL_LIMIT = """\
default: deny
tools:
  echo:
    rules:
      - id: no-secrets
        when: 'args.text.matches("(?i)(password|secret)=")'
        action: deny
      - id: short-text
        when: 'size(args.text) < 4096'
        action: allow
    limits:
      - {counter: echo_rate, window: second, max: 1000000, scope: grant}
      - {counter: all_calls, window: minute, max: 100000000, scope: global}
"""
POLICIES = {"allow-all": ALLOW_ALL, "cel+limit": CEL_LIMIT}


@dataclass
class Target:
    name: str  # tree/policy/era, or direct/era
    url: str
    era: str
    pid: int | None
    latencies_ns: list[int] = field(default_factory=list)
    cpu_ticks: int = 0
    wall_ns: int = 0  # time its recorded batches took, end to end (throughput)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Client:
    """One MCP client: a session in the legacy era, none in the modern one."""

    def __init__(self, http: aiohttp.ClientSession, target: Target) -> None:
        self.http = http
        self.url = target.url
        self.version = ERAS[target.era]
        self.modern = target.era == "modern"
        self.headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": self.version,
        }
        self.next_id = 0

    async def post(self, payload: dict[str, Any]) -> tuple[int, bytes]:
        data = json.dumps(payload).encode()
        async with self.http.post(self.url, data=data, headers=self.headers) as resp:
            sid = resp.headers.get("mcp-session-id")
            if sid is not None:
                self.headers["Mcp-Session-Id"] = sid
            return resp.status, await resp.read()

    async def open(self) -> None:
        if self.modern:  # no handshake; the routing headers are required instead
            self.headers |= {"Mcp-Method": "tools/call", "Mcp-Name": "echo"}
            return
        params = {
            "protocolVersion": self.version,
            "capabilities": {},
            "clientInfo": {"name": "celgate-bench", "version": "1"},
        }
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
        status, body = await self.post(init)
        if status != 200 or b'"result"' not in body:
            raise RuntimeError(f"initialize on {self.url} failed: {status} {body[:300]!r}")
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def echo(self, text: str) -> None:
        self.next_id += 1
        params: dict[str, Any] = {"name": "echo", "arguments": {"text": text}}
        if self.modern:
            params["_meta"] = {
                META_KEY: self.version,
                "io.modelcontextprotocol/clientInfo": {"name": "celgate-bench", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        payload = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call", "params": params}
        status, body = await self.post(payload)
        if status != 200 or text.encode() not in body or b'"isError":true' in body:
            raise RuntimeError(f"tools/call on {self.url}: {status} {body[:300]!r}")


class SdkClient:
    """The SDK's own client (``mcp.Client``, no cache): ``legacy`` for the 2025-11-25 era,
    ``auto`` (which negotiates 2026-07-28) for the modern one. What most agents run."""

    def __init__(self, target: Target) -> None:
        self.client = McpClient(
            target.url, mode="legacy" if target.era == "legacy" else "auto", cache=None
        )
        self.session: Any = None

    async def open(self) -> None:
        self.session = await self.client.__aenter__()

    async def close(self) -> None:
        await self.client.__aexit__(None, None, None)

    async def echo(self, text: str) -> None:
        result = await self.session.call_tool("echo", {"text": text})
        if result.is_error or result.content[0].text != text:
            raise RuntimeError(f"tools/call on {self.client}: {result}")


async def batch(
    clients: list[Client | SdkClient], target: Target, calls: int, record: bool
) -> None:
    """``calls`` calls, shared by ``clients`` calling at once (each one call at a time)."""
    clock = time.perf_counter_ns
    before = cpu_ticks(target.pid) if target.pid else 0
    lat: list[int] = []

    async def one(client: Client | SdkClient, count: int) -> None:
        for i in range(count):
            start = clock()
            await client.echo(f"bench-{i}")
            lat.append(clock() - start)

    began = clock()
    each = max(1, calls // len(clients))
    await asyncio.gather(*(one(client, each) for client in clients))
    if record:
        target.wall_ns += clock() - began
        target.latencies_ns += lat
        target.cpu_ticks += (cpu_ticks(target.pid) - before) if target.pid else 0


async def run(
    targets: list[Target], calls: int, rounds: int, sdk: bool = False, clients: int = 1
) -> None:
    """``calls`` per target over ``rounds`` interleaved rounds, by ``clients`` clients at once."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    async with aiohttp.ClientSession(connector=connector) as http:
        made: dict[str, list[Client | SdkClient]] = {
            t.name: [SdkClient(t) if sdk else Client(http, t) for _ in range(clients)]
            for t in targets
        }
        for t in targets:
            for client in made[t.name]:
                await client.open()
            await batch(made[t.name], t, 200 * clients, record=False)  # warm up
        per = max(1, calls // rounds)
        for r in range(rounds):
            shift = r % len(targets)
            for t in targets[shift:] + targets[:shift]:
                await batch(made[t.name], t, per, record=True)
        for group in reversed(made.values()):
            for client in group:
                if isinstance(client, SdkClient):
                    await client.close()


# --------------------------------------------------------------------------- processes


def source_tree(rev: str, into: Path) -> Path:
    """The package as of ``rev``, unpacked from git (no worktree, nothing checked out)."""
    tree = into / "against"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "gateway"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def start_gateway(folder: Path, tree: Path, policy: str, upstream: str) -> PeerProcess:
    port = free_port()
    folder.mkdir(parents=True)
    config = write_config(folder, policy, {"up": {"url": upstream}}, port)
    argv = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--json-logs"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), str(ROOT)]))
    log = open(folder / "gateway.log", "wb")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}/mcp/up"
    peer = PeerProcess(proc=proc, port=port, url=url, argv=argv, log_path=folder / "gateway.log")
    wait_healthy(port, peer)
    return peer


@contextlib.contextmanager
def stack(against: str) -> Iterator[list[Target]]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stop:
        folder = Path(tmp)
        trees = {"old": source_tree(against, folder), "new": ROOT}
        up = start_http_upstream(log_path=folder / "upstream.log")
        stop.callback(up.stop)
        targets = [Target(f"direct/{era}", up.url, era, None) for era in ERAS]
        for tree_name, tree in trees.items():
            for label, policy in POLICIES.items():
                name = f"{tree_name}/{label}"
                peer = start_gateway(folder / name.replace("/", "_"), tree, policy, up.url)
                stop.callback(peer.stop)
                targets += [Target(f"{name}/{era}", peer.url, era, peer.pid) for era in ERAS]
        yield targets


def profile(targets: list[Target], name: str, seconds: int = 10) -> str:
    target = next(t for t in targets if t.name == name)
    out = RESULTS.parent / f"relay-profile-{name.replace('/', '_')}.txt"
    assert target.pid is not None and shutil.which("py-spy")
    cmd = ["py-spy", "record", "--pid", str(target.pid), "--duration", str(seconds)]
    cmd += ["--rate", "500", "--format", "raw", "--output", str(out), "--nonblocking"]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    fresh = Target(target.name, target.url, target.era, target.pid)
    asyncio.run(run([fresh], 400 * seconds, 1))
    spy.wait(timeout=seconds + 30)
    return str(out)


# --------------------------------------------------------------------------- report


def rows(targets: list[Target]) -> list[dict[str, Any]]:
    direct = {t.era: t for t in targets if t.pid is None}
    out = []
    for t in targets:
        n = len(t.latencies_ns)
        median = statistics.median(t.latencies_ns)
        rate = n / (t.wall_ns / 1e9)
        base = direct[t.era]
        out.append(
            {
                "target": t.name,
                "calls": n,
                "median_ms": round(median / 1e6, 3),
                "added_median_ms": round((median - statistics.median(base.latencies_ns)) / 1e6, 3),
                "cpu_us_per_call": round(t.cpu_ticks / TICK / n * 1e6, 1) if t.pid else None,
                "calls_per_s": round(rate),
                "throughput_x": round(rate / (len(base.latencies_ns) / (base.wall_ns / 1e9)), 2),
            }
        )
    return out


def write_results(
    benchmark: str, table: list[dict[str, Any]], md: str, output: Path, **extra: Any
) -> dict[str, Any]:
    """``output`` (JSON: the rows and how they were measured) and its Markdown beside it."""
    script = Path(sys.argv[0]).name
    report = {
        "benchmark": benchmark,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        **extra,
        "rows": table,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text(f"`{report['command']}`\n\n{md}\n", encoding="utf-8")
    return report


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| target | calls | median ms | added median ms | gateway CPU µs/call | CPU new/old |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by_name = {r["target"]: r for r in table}
    for r in table:
        cpu = r["cpu_us_per_call"]
        old = by_name.get(r["target"].replace("new/", "old/", 1))
        ratio = ""
        if r["target"].startswith("new/") and old and old["cpu_us_per_call"]:
            ratio = f"{cpu / old['cpu_us_per_call']:.2f}"
        lines.append(
            f"| {r['target']} | {r['calls']} | {r['median_ms']:.3f} "
            f"| {r['added_median_ms']:+.3f} | {'' if cpu is None else f'{cpu:.0f}'} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="the older revision (git rev)")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per target")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument(
        "--profile", metavar="NAME", help="py-spy one target, e.g. new/cel+limit/modern"
    )
    parser.add_argument(
        "--sdk", action="store_true", help="call with the SDK's client, not the lean one"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args()
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ns.against],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with stack(ns.against) as targets:
        asyncio.run(run(targets, ns.calls, ns.rounds, ns.sdk))
        profile_file = profile(targets, ns.profile) if ns.profile else None
    table = rows(targets)
    report = {
        "benchmark": "relay",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "against": rev,
        "command": " ".join(["python", "benchmarks/bench_relay.py", *sys.argv[1:]]),
        "rows": table,
        "profile": profile_file,
    }
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = markdown(table)
    ns.output.with_suffix(".md").write_text(
        f"`{report['command']}` (old = {rev}), {report['when']}\n\n{md}\n", encoding="utf-8"
    )
    print(md)
    print(f"wrote {ns.output}")


if __name__ == "__main__":
    main()
