"""What each layer under celgate's relay costs, in one interleaved run.

    python benchmarks/bench_floor.py [--calls 3000] [--rounds 10] [--clients 1]

Targets, all in front of one upstream (``tests.servers.upstream``, Streamable HTTP), called in
both eras by ``bench_relay.py``'s lean aiohttp client (keep-alive, one call at a time):

    direct          the upstream itself
    raw relay       ``raw_relay.py``: httptools on uvloop and celgate's h1 client, no framework
    bare relay      ``bare_relay.py``: the same relay as an ASGI app under uvicorn, served with
                    celgate's protocol (the floor ``bench_e2e.py`` reports)
    celgate         this tree, allow-all, and CEL rule + two limits (memory limiter)

Gateway CPU per call is utime + stime of the relay's process from ``/proc`` around each batch.
The raw relay is the least any relay written in Python costs on this machine (two sockets,
one request parsed, one forwarded); what the bare relay adds is the ASGI server's; what
celgate adds on top is its own. ``--clients 16``: sixteen clients call each target at once
(the calls shared among them), and calls/s against direct is throughput. Writes
``benchmarks/results/floor.json`` and ``floor.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_relay import ERAS, POLICIES, Target, rows, run, start_gateway, write_results  # noqa: E402

from tests.peers import PeerProcess, free_port, start_http_upstream, start_process  # noqa: E402

RESULTS = HERE / "results" / "floor.json"


def start_script(script: str, upstream: str, folder: Path) -> PeerProcess:
    port = free_port()
    argv = [sys.executable, str(HERE / script), "--upstream", upstream, "--port", str(port)]
    return start_process(
        argv, port=port, url=f"http://127.0.0.1:{port}/mcp/up", log_path=folder / f"{script}.log"
    )


@contextlib.contextmanager
def stack() -> Iterator[list[Target]]:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stop:
        folder = Path(tmp)
        up = start_http_upstream(log_path=folder / "upstream.log")
        stop.callback(up.stop)
        targets = [Target(f"direct/{era}", up.url, era, None) for era in ERAS]
        for name, script in (("raw relay", "raw_relay.py"), ("bare relay", "bare_relay.py")):
            peer = start_script(script, up.url, folder)
            stop.callback(peer.stop)
            targets += [Target(f"{name}/{era}", peer.url, era, peer.pid) for era in ERAS]
        for label, policy in POLICIES.items():
            name = f"celgate {label}"
            peer = start_gateway(folder / label.replace("+", "_"), HERE.parent, policy, up.url)
            stop.callback(peer.stop)
            targets += [Target(f"{name}/{era}", peer.url, era, peer.pid) for era in ERAS]
        yield targets


def markdown(table: list[dict[str, Any]]) -> str:
    floor = {
        r["target"].split("/")[1]: r["cpu_us_per_call"]
        for r in table
        if r["target"].startswith("raw relay/")
    }
    lines = [
        "| target | median ms | added median | CPU µs/call | CPU / raw relay | calls/s x direct |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        cpu, base = r["cpu_us_per_call"], floor.get(r["target"].split("/")[1])
        ratio = f"{cpu / base:.2f}" if cpu and base else ""
        shown = "" if cpu is None else f"{cpu:.0f}"
        added = r["added_median_ms"]
        cells = f"{r['median_ms']:.3f} | {added:+.3f} | {shown} | {ratio} | {r['throughput_x']:.2f}"
        lines.append(f"| {r['target']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per target")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--clients", type=int, default=1, help="clients calling at once")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls")
    ns = parser.parse_args()
    if ns.quick:
        ns.calls, ns.rounds = 200, 2
    with stack() as targets:
        asyncio.run(run(targets, ns.calls, ns.rounds, clients=ns.clients))
    table = rows(targets)
    md = markdown(table)
    write_results("floor", table, md, ns.output)
    print(md)


if __name__ == "__main__":
    main()
