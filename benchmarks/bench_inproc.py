"""celgate's own work per call, with no socket: the relay app called in process.

    python benchmarks/bench_inproc.py [--calls 20000] [--profile N]

The gateway is built from a config as ``celgate run`` builds it (allow-all, then CEL rule +
two limits with the memory limiter); its upstream's pool is replaced by an in-process one
(``AsgiPool``) in front of a tiny ASGI app that answers every call at once. Each call is a
2026-07-28 ``tools/call`` given to the gateway's ASGI app as uvicorn would give it (scope,
receive, send), on asyncio's own loop. What is measured is celgate's Python work (parse,
checks, decision, limits, record, metrics, forward and relay of the answer) plus the small
in-process upstream, without the kernel's socket costs or the ASGI server's: the part of the
gateway's CPU per call that celgate's own code decides. Decision records go to stderr (send
it to /dev/null). ``--profile N``: cProfile over N more calls, the top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_relay import POLICIES  # noqa: E402

from gateway.config import load_config  # noqa: E402
from gateway.server.app import build_app  # noqa: E402
from gateway.server.build import build_gateway  # noqa: E402
from gateway.telemetry.audit import configure_logging  # noqa: E402
from gateway.upstream.inproc import AsgiPool  # noqa: E402
from tests.gateway_proc import write_config  # noqa: E402

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
HEADERS = [
    (b"host", b"127.0.0.1:9"),
    (b"accept", b"application/json, text/event-stream"),
    (b"content-type", b"application/json"),
    (b"mcp-protocol-version", b"2026-07-28"),
    (b"mcp-method", b"tools/call"),
    (b"mcp-name", b"echo"),
]


async def echo_upstream(scope: Any, receive: Any, send: Any) -> None:
    message = json.loads((await receive())["body"])
    text = message["params"]["arguments"]["text"]
    result = {
        "content": [{"type": "text", "text": text}],
        "isError": False,
        "resultType": "complete",
    }
    out = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": out})


def gateway_app(policy: str, folder: Path) -> Any:
    config = write_config(folder, policy, {"up": {"url": "http://127.0.0.1:9/mcp"}}, 9)
    gateway = build_gateway(load_config(config))
    gateway.upstreams["up"].pool = AsgiPool(echo_upstream, "up")
    return build_app(gateway)


async def call(app: Any, i: int) -> None:
    params = {"name": "echo", "arguments": {"text": f"bench {i}"}, "_meta": META}
    body = json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params})
    raw = body.encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/mcp/up",
        "raw_path": b"/mcp/up",
        "query_string": b"",
        "root_path": "",
        "headers": [*HEADERS, (b"content-length", str(len(raw)).encode())],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 9),
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    if sent[0]["status"] != 200 or f"bench {i}".encode() not in sent[1]["body"]:
        raise RuntimeError(f"call {i}: {sent}")


async def measure(app: Any, calls: int, profile: int) -> tuple[float, str]:
    for i in range(500):
        await call(app, i)
    started = time.perf_counter()
    for i in range(calls):
        await call(app, i)
    per_call = (time.perf_counter() - started) / calls * 1e6
    report = ""
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(profile):
            await call(app, i)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        report = out.getvalue()
    return per_call, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls")
    ns = parser.parse_args()
    if ns.quick:
        ns.calls = 500
    configure_logging(json_logs=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, policy in POLICIES.items():
            folder = Path(tmp) / label.replace("+", "_")
            folder.mkdir()
            per_call, report = asyncio.run(
                measure(gateway_app(policy, folder), ns.calls, ns.profile)
            )
            print(f"{label}: {per_call:.1f} µs a call in process", file=sys.stdout, flush=True)
            if report:
                print(report, file=sys.stdout, flush=True)


if __name__ == "__main__":
    main()
