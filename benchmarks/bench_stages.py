"""What each stage of a relayed call costs in the real gateway process, in one interleaved run.

    python benchmarks/bench_stages.py [--calls 2000] [--rounds 5]

In-process figures (``bench_inproc.py``, cProfile) understate what Python work costs in the
served gateway: there, three processes (client, gateway, upstream) share two cores and their
caches, and the same code runs two to three times slower than in a tight loop. So the stages
are measured here by leaving them out of a real ``celgate run`` (the gateway started through
this file, which replaces one stage before serving), all in front of one upstream and called
by ``bench_relay.py``'s lean client in the 2026-07-28 era, allow-all:

    bare relay          ``bare_relay.py``: the server stack relaying bytes
    frame               celgate's relay path with the message left unread: the Host/Origin
                        guard, authentication, the request and its body, the forward and the
                        relayed answer
    + message           also the body parsed and classified, routing headers, session, view
                        and the call (tool, arguments, classification)
    + admission, no record, no metrics
                        also decide, pin, limits (none here) and the admission's bookkeeping
    celgate             as shipped: also the decision record and the metrics

Each row's CPU minus the one above is that stage's cost. Gateway CPU per call is utime +
stime of the serving process from ``/proc``. Not for deployment: the launcher patches code.
Writes ``benchmarks/results/stages.json`` and ``stages.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

RESULTS = HERE / "results" / "stages.json"
STAGES = {
    "frame": "frame",
    "message": "+ message",
    "admission": "+ admission, no record, no metrics",
    "full": "celgate",
}


# --------------------------------------------------------------------------- the launcher


def _frame_only() -> None:
    from gateway.edge import relay
    from gateway.edge.boundary import json_body
    from gateway.edge.forward import Forward, forward

    async def post(self: Any, incoming: Any, send: Any, upstream: Any, identity: Any) -> None:
        body = await json_body(self.gw, incoming)
        await forward(incoming, send, Forward(upstream, None, body, grant=identity.grant))

    relay.Relay._post = post  # type: ignore[method-assign]


def _message_only() -> None:
    from gateway.edge import relay
    from gateway.edge.forward import forward

    async def through(*args: Any) -> None:
        _, incoming, send, _, _, fwd, *_ = args
        await forward(incoming, send, fwd)

    relay.call_through = through  # type: ignore[assignment]


def _no_bookkeeping() -> None:
    from gateway.telemetry.audit import DecisionLog
    from gateway.telemetry.metrics import Metrics

    DecisionLog.record = lambda self, *a, **k: {}  # type: ignore[method-assign]
    for name in ("decision", "upstream", "limiter"):
        setattr(Metrics, name, lambda self, *a, **k: None)


def serve(stage: str, argv: list[str]) -> None:
    """``celgate run`` with ``stage``'s later stages left out."""
    {"frame": _frame_only, "message": _message_only, "admission": _no_bookkeeping}.get(
        stage, lambda: None
    )()
    from gateway.cli import main

    sys.argv = ["celgate", *argv]
    main()


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def stack() -> Iterator[list[Any]]:
    from bench_floor import start_script
    from bench_relay import ALLOW_ALL, Target

    from tests.gateway_proc import wait_healthy, write_config
    from tests.peers import PeerProcess, free_port, start_http_upstream

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stop:
        folder = Path(tmp)
        up = start_http_upstream(log_path=folder / "upstream.log")
        stop.callback(up.stop)
        bare = start_script("bare_relay.py", up.url, folder)
        stop.callback(bare.stop)
        targets = [Target("direct", up.url, "modern", None)]
        targets.append(Target("bare relay", bare.url, "modern", bare.pid))
        for stage, label in STAGES.items():
            port, where = free_port(), folder / stage
            where.mkdir()
            config = write_config(where, ALLOW_ALL, {"up": {"url": up.url}}, port)
            argv = [sys.executable, __file__, "--serve", stage, "run", "--config", str(config)]
            argv.append("--json-logs")
            env = dict(os.environ, PYTHONPATH=str(HERE.parent))
            log_path = where / "gateway.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}/mcp/up"
            peer = PeerProcess(proc=proc, port=port, url=url, argv=argv, log_path=log_path)
            stop.callback(peer.stop)
            wait_healthy(port, peer)
            targets.append(Target(label, url, "modern", proc.pid))
        yield targets


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| target | median ms | added median ms | CPU µs/call | the stage's own µs |",
        "|---|---:|---:|---:|---:|",
    ]
    before: float | None = None
    for r in table:
        cpu = r["cpu_us_per_call"]
        own = "" if cpu is None or before is None else f"{cpu - before:+.0f}"
        shown = "" if cpu is None else f"{cpu:.0f}"
        added = f"{r['added_median_ms']:+.3f}"
        lines.append(f"| {r['target']} | {r['median_ms']:.3f} | {added} | {shown} | {own} |")
        before = cpu if cpu is not None else before
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per target")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls")
    ns = parser.parse_args()
    if ns.quick:
        ns.calls, ns.rounds = 200, 2
    from bench_relay import rows, run, write_results

    with stack() as targets:
        asyncio.run(run(targets, ns.calls, ns.rounds))
    table = rows(targets)
    md = markdown(table)
    write_results("stages", table, md, ns.output)
    print(md)


if __name__ == "__main__":
    main()
