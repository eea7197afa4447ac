"""End-to-end ``tools/call`` latency, throughput and proxy CPU: direct vs through celgate vs
FastMCP's proxy, one client, one upstream, interleaved in one run.

    python benchmarks/bench_e2e.py [--quick] [--levels 1,8,16,32] [--no-fastmcp] [--no-valkey]
                                   [--server uvicorn|granian|both] [--profile]

Targets: the test upstream (``tests.servers.upstream``, Streamable HTTP, stateful, SSE
answers) called directly; celgate with an allow-all policy; celgate with a realistic policy
(3 CEL rules and two rate limits, memory limiter), and the same with its limits in a loopback
valkey-server (``--no-valkey`` skips it); FastMCP's proxy, installed in its own virtual
environment (``benchmarks/fastmcp_proxy.py``). The client is a lean aiohttp JSON-RPC client
(one MCP session per concurrent worker, ``initialize`` outside the timer) so that it costs as
little CPU as possible on a machine it shares with the servers. At each concurrency level the
targets take turns in rounds, so drift hits all of them alike. Every answer is checked.

Proxy CPU per call is read from ``/proc/<pid>/stat`` (utime + stime) of the proxy process
around each batch. Writes ``benchmarks/results/e2e.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_proc import wait_healthy, write_config  # noqa: E402
from tests.peers import PeerProcess, free_port, start_http_upstream, start_process  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "e2e.json"
PROTOCOL = "2025-11-25"
TARGET_ADDED_MEDIAN_MS = 0.5
TARGET_CPU_US = 250.0
FASTMCP_VENV = Path(os.environ.get("CELGATE_FASTMCP_VENV", Path.home() / ".cache/celgate-fastmcp"))
FASTMCP_PINS = ("fastmcp==4.2.3", "uvloop", "httptools")
TICK = os.sysconf("SC_CLK_TCK")

ALLOW_ALL = "default: allow\n"
REALISTIC = """\
default: deny
tools:
  echo:
    rules:
      - id: no-secrets
        when: 'args.text.matches("(?i)(password|secret)=")'
        action: deny
        reason: arguments look like they carry a secret
      - id: high-risk
        when: 'tool.risk == "high"'
        action: require_approval
      - id: short-text
        when: 'size(args.text) < 4096 && agent.grant != "blocked"'
        action: allow
    limits:
      - {counter: echo_rate, window: second, max: 1000000, scope: grant}
      - {counter: all_calls, window: minute, max: 100000000, scope: global}
"""


@dataclass
class Target:
    name: str
    url: str
    pid: int | None  # the proxy process whose CPU is counted; None for direct
    share: float = 1.0  # of the calls: a proxy 20x slower gets fewer, or the run takes hours
    latencies_ns: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu_ticks: int = 0
    client_cpu_s: float = 0.0


@dataclass
class Row:
    target: str
    clients: int
    calls: int
    median_ms: float
    p99_ms: float
    calls_per_s: float
    proxy_cpu_us_per_call: float | None
    client_cpu_us_per_call: float
    added_median_ms: float | None = None
    median_ratio: float | None = None
    throughput_ratio: float | None = None


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process and its live descendants (granian serves from a child), in
    clock ticks: fields 14 and 15 of /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    total = int(fields[11]) + int(fields[12])
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += cpu_ticks(int(child))
    return total


class McpSession:
    """One MCP client session over raw HTTP: initialize once, then ``tools/call`` echo."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": PROTOCOL,
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
        params = {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "celgate-bench", "version": "1"},
        }
        status, body = await self.post(self._request("initialize", params))
        if status != 200 or b'"result"' not in body:
            raise RuntimeError(f"initialize on {self.url} failed: {status} {body[:300]!r}")
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        return {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}

    async def echo(self, text: str) -> None:
        params = {"name": "echo", "arguments": {"text": text}}
        status, body = await self.post(self._request("tools/call", params))
        if status != 200 or text.encode() not in body or b'"isError":true' in body:
            raise RuntimeError(f"tools/call on {self.url}: {status} {body[:300]!r}")


async def worker(session: McpSession, calls: int, out: list[int], tag: str) -> None:
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        await session.echo(f"{tag}-{i}")
        out.append(clock() - start)


async def batch(target: Target, sessions: list[McpSession], calls: int, record: bool) -> None:
    """``calls`` (times the target's share) spread over the given sessions, all at once."""
    per = max(1, int(calls * target.share) // len(sessions))
    lat: list[int] = []
    before = cpu_ticks(target.pid) if target.pid else 0
    start, client_cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(s, per, lat, f"w{i}") for i, s in enumerate(sessions)))
    elapsed = time.perf_counter() - start
    if record:
        target.latencies_ns += lat
        target.elapsed_s += elapsed
        target.client_cpu_s += time.process_time() - client_cpu
        target.cpu_ticks += (cpu_ticks(target.pid) - before) if target.pid else 0


async def run_level(targets: list[Target], clients: int, calls: int, rounds: int) -> list[Row]:
    # Idle connections are closed before the server (uvicorn: 5 s) can close them under us.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    async with aiohttp.ClientSession(connector=connector) as http:
        sessions = {t.name: [McpSession(http, t.url) for _ in range(clients)] for t in targets}
        for group in sessions.values():
            await asyncio.gather(*(s.open() for s in group))
        for t in targets:  # warm up: connections, caches, CEL runners
            await batch(t, sessions[t.name], max(clients * 20, 200), record=False)
        for t in targets:
            t.latencies_ns, t.elapsed_s, t.cpu_ticks, t.client_cpu_s = [], 0.0, 0, 0.0
        for r in range(rounds):
            shift = r % len(targets)
            for t in targets[shift:] + targets[:shift]:
                await batch(t, sessions[t.name], calls // rounds, record=True)
    return [_row(t, clients) for t in targets]


def _row(t: Target, clients: int) -> Row:
    lat = sorted(t.latencies_ns)
    n = len(lat)
    cpu = t.cpu_ticks / TICK / n * 1e6 if t.pid else None
    return Row(
        target=t.name,
        clients=clients,
        calls=n,
        median_ms=round(statistics.median(lat) / 1e6, 3),
        p99_ms=round(lat[min(n - 1, int(n * 0.99))] / 1e6, 3),
        calls_per_s=round(n / t.elapsed_s, 1),
        proxy_cpu_us_per_call=None if cpu is None else round(cpu, 1),
        client_cpu_us_per_call=round(t.client_cpu_s / n * 1e6, 1),
    )


def add_ratios(rows: list[Row]) -> None:
    direct = {r.clients: r for r in rows if r.target == "direct"}
    for r in rows:
        d = direct[r.clients]
        r.added_median_ms = round(r.median_ms - d.median_ms, 3)
        r.median_ratio = round(r.median_ms / d.median_ms, 2)
        r.throughput_ratio = round(r.calls_per_s / d.calls_per_s, 2)


# --------------------------------------------------------------------------- processes


def start_celgate(
    folder: Path, name: str, policy: str, upstream: str, server: str, **extra: Any
) -> tuple[PeerProcess, int]:
    port = free_port()
    sub = folder / name
    sub.mkdir()
    config = write_config(sub, policy, {"up": {"url": upstream}}, port, **extra)
    if server == "granian":
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-granian", str(config)]
    else:
        argv = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config), "--json-logs"]
    peer = start_process(argv, port=None, url="", log_path=sub / "gateway.log")
    wait_healthy(port, peer)
    return peer, port


def start_bare_relay(folder: Path, upstream: str) -> tuple[PeerProcess, int]:
    port = free_port()
    script = ROOT / "benchmarks" / "bare_relay.py"
    argv = [sys.executable, str(script), "--upstream", upstream, "--port", str(port)]
    peer = start_process(argv, port=port, url="", log_path=folder / "bare_relay.log")
    return peer, port


def fastmcp_python() -> Path:
    """The FastMCP venv's interpreter, created on first use (its pins clash with ours)."""
    python = FASTMCP_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FASTMCP_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", *FASTMCP_PINS]
        subprocess.run(pip, check=True)
    return python


def start_fastmcp(folder: Path, upstream: str) -> tuple[PeerProcess, int]:
    port = free_port()
    script = ROOT / "benchmarks" / "fastmcp_proxy.py"
    argv = [str(fastmcp_python()), str(script), "--upstream", upstream, "--port", str(port)]
    peer = start_process(argv, port=port, url="", log_path=folder / "fastmcp.log", timeout=60)
    return peer, port


@contextlib.contextmanager
def stack(ns: argparse.Namespace) -> Iterator[list[Target]]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stop:
        folder = Path(tmp)
        up = start_http_upstream(log_path=folder / "upstream.log")
        stop.callback(up.stop)
        targets = [Target("direct", up.url, None)]
        bare, bare_port = start_bare_relay(folder, up.url)
        stop.callback(bare.stop)
        targets.append(Target("bare relay (floor)", f"http://127.0.0.1:{bare_port}/mcp", bare.pid))
        servers = ["uvicorn", "granian"] if ns.server == "both" else [ns.server]
        for server in servers:
            suffix = "" if len(servers) == 1 else f"/{server}"
            for label, policy in (("allow-all", ALLOW_ALL), ("3 rules+limits", REALISTIC)):
                name = f"celgate {label}{suffix}"
                peer, port = start_celgate(
                    folder, name.replace(" ", "_").replace("/", "_"), policy, up.url, server
                )
                stop.callback(peer.stop)
                targets.append(Target(name, f"http://127.0.0.1:{port}/mcp/up", peer.pid))
        if not ns.no_valkey:  # the same policy with its limits shared through Valkey
            from tests.valkey_server import running_valkey

            valkey = stop.enter_context(running_valkey())
            name = "celgate 3 rules+limits/valkey"
            peer, port = start_celgate(
                folder, "valkey", REALISTIC, up.url, "uvicorn", limits={"backend": valkey.url}
            )
            stop.callback(peer.stop)
            targets.append(Target(name, f"http://127.0.0.1:{port}/mcp/up", peer.pid))
        if not ns.no_fastmcp:
            peer, port = start_fastmcp(folder, up.url)
            stop.callback(peer.stop)
            fastmcp = Target("fastmcp proxy", f"http://127.0.0.1:{port}/mcp", peer.pid, 0.05)
            targets.append(fastmcp)
        yield targets


def profile(targets: list[Target], seconds: int) -> str:
    """py-spy on the realistic-policy gateway while one client calls it."""
    target = next(t for t in targets if "rules" in t.name)
    out = RESULTS.parent / "e2e-profile.txt"
    cmd = [
        "py-spy",
        "record",
        "--pid",
        str(target.pid),
        "--duration",
        str(seconds),
        "--rate",
        "400",
    ]
    cmd += ["--format", "raw", "--output", str(out), "--nonblocking"]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    asyncio.run(run_level([target], 1, 250 * seconds, 1))
    spy.wait(timeout=seconds + 30)
    return str(out)


# --------------------------------------------------------------------------- report


def markdown(rows: list[Row]) -> str:
    lines = [
        "| clients | target | median ms | p99 ms | calls/s | added median ms | median x "
        "| throughput x | proxy CPU µs/call | client CPU µs/call |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = "" if r.proxy_cpu_us_per_call is None else f"{r.proxy_cpu_us_per_call:.0f}"
        lines.append(
            f"| {r.clients} | {r.target} | {r.median_ms:.3f} | {r.p99_ms:.3f} "
            f"| {r.calls_per_s:,.0f} | {r.added_median_ms:+.3f} | {r.median_ratio:.2f} "
            f"| {r.throughput_ratio:.2f} | {cpu} | {r.client_cpu_us_per_call:.0f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[Row]) -> dict[str, Any]:
    single = [r for r in rows if r.clients == 1 and r.target.startswith("celgate")]
    floor = next((r for r in rows if r.clients == 1 and r.target.startswith("bare")), None)
    out: dict[str, Any] = {
        "target_added_median_ms": TARGET_ADDED_MEDIAN_MS,
        "target_cpu_us_per_call": TARGET_CPU_US,
        "meets_target": {
            r.target: (r.added_median_ms or 0) < TARGET_ADDED_MEDIAN_MS
            and (r.proxy_cpu_us_per_call or 0) < TARGET_CPU_US
            for r in single
        },
    }
    if floor is not None and floor.proxy_cpu_us_per_call:
        # What celgate adds over a relay that only moves bytes, measured in the same run.
        out["over_bare_relay"] = {
            r.target: {
                "added_median_ms": round(r.median_ms - floor.median_ms, 3),
                "cpu_us_per_call": round(
                    (r.proxy_cpu_us_per_call or 0) - floor.proxy_cpu_us_per_call, 1
                ),
            }
            for r in single
        }
    return out


def run(ns: argparse.Namespace) -> dict[str, Any]:
    levels = [int(x) for x in ns.levels.split(",")]
    calls = ns.calls // (10 if ns.quick else 1)
    rows: list[Row] = []
    with stack(ns) as targets:
        for clients in levels:
            rows += asyncio.run(run_level(targets, clients, max(calls, clients * 5), ns.rounds))
        profile_file = profile(targets, 10) if ns.profile else None
    add_ratios(rows)
    return {
        "benchmark": "e2e",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "server": ns.server,
        "client": "aiohttp JSON-RPC, one MCP session per worker, protocol " + PROTOCOL,
        "rows": [asdict(r) for r in rows],
        "profile": profile_file,
        **verdict(rows),
    }


def granian_app() -> Any:
    """The app factory granian's worker imports: ``celgate run`` minus the server."""
    from gateway.config import load_config
    from gateway.server.app import build_app
    from gateway.server.build import build_gateway
    from gateway.telemetry.audit import configure_logging

    configure_logging(json_logs=True)
    return build_app(build_gateway(load_config(os.environ["CELGATE_BENCH_CONFIG"])))


def serve_granian(config_path: str) -> None:
    """Serve celgate under granian (one worker, uvloop): the server-choice comparison."""
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    from gateway.config import load_config

    config = load_config(config_path)
    os.environ["CELGATE_BENCH_CONFIG"] = config_path
    server = Server(
        "bench_e2e:granian_app",
        address=config.listen.host,
        port=config.listen.port,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        workers=1,
        factory=True,
        working_dir=Path(__file__).resolve().parent,
        log_enabled=False,
    )
    server.serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument("--levels", default="1,8,16,32", help="concurrent clients, comma-separated")
    parser.add_argument("--calls", type=int, default=4000, help="timed calls per target and level")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per level")
    parser.add_argument("--server", choices=["uvicorn", "granian", "both"], default="uvicorn")
    parser.add_argument("--no-fastmcp", action="store_true", help="skip FastMCP's proxy")
    parser.add_argument("--no-valkey", action="store_true", help="skip the Valkey-backed target")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway (10 s)")
    parser.add_argument("--serve-granian", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    ns = parser.parse_args()
    if ns.serve_granian:
        serve_granian(ns.serve_granian)
        return
    report = run(ns)
    ns.output.parent.mkdir(parents=True, exist_ok=True)
    ns.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown([Row(**r) for r in report["rows"]]))
    print(f"\nmeets target (1 client): {report['meets_target']}")
    if "over_bare_relay" in report:
        print(f"celgate over the bare relay (1 client): {report['over_bare_relay']}")
    print(f"wrote {ns.output}")


if __name__ == "__main__":
    main()
