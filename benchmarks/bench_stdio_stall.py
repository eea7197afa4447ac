"""How long one hostile stdio server's long lines hold the loop every caller shares.

    python benchmarks/bench_stdio_stall.py [--mib 60] [--lines 3]

A stdio server (written here, raw JSON lines) answers a call of ``go`` with ``--lines`` lines
of ``--mib`` MiB of plain numbers first: a ``notifications/message`` each (``notice``), an
answer to an id no request has, of numbers like ``1.5`` (``stray``; ``straynan``: ending
in a ``NaN``, which msgspec's quick read refuses), or its answer itself
that long (``answer``; ``bare``: without the ``resultType`` the 2026-07-28 era requires,
which the gateway adds by reading the answer whole and writing it again). ``--kinds`` picks
some of them (all by default).
Meanwhile another thread asks ``/healthz`` every 50 ms; the figure is its slowest answer,
which is what every other caller waited too. Both eras' clients are the SDK's (legacy era:
the session bridge; 2026-07-28: the shared one).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.gateway_proc import client, run_gateway  # noqa: E402

SERVER = r"""
import json, sys
MIB, LINES = int(sys.argv[1]), int(sys.argv[2])
INFO = {"capabilities": {"tools": {}}, "serverInfo": {"name": "long-lines", "version": "1"}}
TOOL = {"name": "go", "inputSchema": {"type": "object", "properties": {"kind": {"type": "string"}}}}
out = sys.stdout.buffer
def write(data):
    out.write(data + b"\n"); out.flush()
def numbers():
    return b"[" + b"0," * (MIB * 1024 * 1024 // 2 - 1) + b"0]"
for line in sys.stdin.buffer:
    msg = json.loads(line)
    method, i = msg.get("method"), msg.get("id")
    if i is None:
        continue
    if method == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"], **INFO}
    elif method == "server/discover":
        result = {"supportedVersions": ["2026-07-28"], **INFO, "resultType": "complete"}
    elif method == "tools/list":
        result = {"tools": [TOOL], "resultType": "complete"}
    elif method == "tools/call":
        kind = msg["params"]["arguments"]["kind"]
        if kind == "notice":
            for _ in range(LINES):
                write(b'{"jsonrpc":"2.0","method":"notifications/message","params":'
                      b'{"level":"info","data":' + numbers() + b"}}")
            result = {"content": [{"type": "text", "text": "done"}], "resultType": "complete"}
        elif kind in ("stray", "straynan"):
            last = b"NaN]" if kind == "straynan" else b"1.5]"
            floats = b"[" + b"1.5," * (MIB * 1024 * 1024 // 4 - 1) + last
            for _ in range(LINES):
                write(b'{"jsonrpc":"2.0","id":"nobody","result":{"x":' + floats + b"}}")
            result = {"content": [{"type": "text", "text": "done"}], "resultType": "complete"}
        else:
            head = b'{"jsonrpc":"2.0","id":' + json.dumps(i).encode() + b',"result":'
            told = b'"resultType":"complete",' if kind == "answer" else b""
            text = b'"content":[{"type":"text","text":"done"}],"data":'
            write(head + b"{" + told + text + numbers() + b"}}")
            continue
    else:
        result = {}
    write(json.dumps({"jsonrpc": "2.0", "id": i, "result": result}).encode())
"""


class Poller(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.worst, self.done = url, 0.0, False

    def run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self.done:
                started = time.monotonic()
                http.get(self.url)
                self.worst = max(self.worst, time.monotonic() - started)
                time.sleep(0.05)


async def measure(gw_url: str, base: str, mode: str, kind: str) -> tuple[float, float]:
    async with client(gw_url, mode=mode) as agent:
        await agent.list_tools()
        poller = Poller(base + "/healthz")
        poller.start()
        started = time.monotonic()
        try:
            await agent.call_tool("go", {"kind": kind})
        except Exception as exc:  # the answer's fate is not what is measured
            print(f"  ({mode} {kind}: {type(exc).__name__}: {str(exc)[:200]})")
        took = time.monotonic() - started
        poller.done = True
        poller.join()
    return poller.worst, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=60)
    parser.add_argument("--lines", type=int, default=3)
    parser.add_argument("--kinds", default="notice,stray,answer,bare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "server.py"
        script.write_text(SERVER)
        argv = [str(script), str(args.mib), str(args.lines)]
        servers = {"long": {"command": sys.executable, "args": argv, "timeout": 120}}
        policy = 'version: "1"\ndefault: deny\ntools:\n  go: {}\n'
        with run_gateway(Path(folder), policy, servers) as gw:
            for mode in ("legacy", "auto"):
                for kind in args.kinds.split(","):
                    worst, took = asyncio.run(measure(gw.url("long"), gw.base, mode, kind))
                    lines = args.lines if kind in ("notice", "stray", "straynan") else 1
                    print(
                        f"{mode:7} {kind:7} {lines} x {args.mib} MiB: /healthz worst "
                        f"{worst:.2f} s, the call {took:.2f} s"
                    )


if __name__ == "__main__":
    main()
