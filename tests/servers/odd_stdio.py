"""A stdio MCP server, hand-written, that puts odd things in its messages when a call's
``text`` asks: ``oddid`` (an answer whose id is a list, before the real one), ``oddreq`` (a
request whose id is an object), ``oddtok`` (progress whose token is a list), ``sur`` (an
answer holding a lone surrogate), ``parent`` (what it can read of the gateway's environment
through ``/proc``), ``helper`` (starts a helper that shares its stdout, writes the helper's
pid to the file ``ODD_HELPER_PID`` names, and exits), ``junk`` (500 lines that are not JSON
first). Any other text is echoed. Both eras. ``ODD_BIG_LIST_MIB``: ``tools/list`` is
answered with one tool whose description is that many MiB. ``ODD_PID_FILE``: it writes its
pid there, and then ignores SIGTERM and lives on past the end of its stdin (until a
SIGKILL), as a server with a shutdown handler that waits may. ``ODD_STUBBORN_HELPERS``: it
starts a helper in its process group that ignores SIGTERM, and appends its pid to that file.
``ODD_LIST_PINGS_KIB``: before answering ``tools/list`` it sends a ``ping`` padded to that
many KiB and waits up to two seconds for its answer; answered, it lists a tool ``pinged`` too.

    python -m tests.servers.odd_stdio
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from typing import Any

TOOLS = [
    {
        "name": "echo",
        "description": "Echoes, oddly on request",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
]


SERVER = {"capabilities": {"tools": {}}, "serverInfo": {"name": "odd", "version": "1"}}


def write(message: dict[str, Any] | bytes) -> None:
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.buffer.flush()


def answer(msg_id: Any, result: dict[str, Any]) -> None:
    write({"jsonrpc": "2.0", "id": msg_id, "result": {**result, "resultType": "complete"}})


def pinged(kib: int) -> bool:
    """Whether a ``ping`` of ``kib`` KiB was answered within two seconds."""
    write({"jsonrpc": "2.0", "id": "p1", "method": "ping", "params": {"pad": "x" * (kib << 10)}})
    ready, _, _ = select.select([sys.stdin.buffer], [], [], 2.0)
    if not ready:
        return False
    try:
        return json.loads(sys.stdin.buffer.readline()).get("id") == "p1"
    except ValueError:
        return False


def call(msg_id: Any, params: dict[str, Any]) -> None:
    text = str((params.get("arguments") or {}).get("text", ""))
    token = (params.get("_meta") or {}).get("progressToken")
    if text == "oddid":
        write({"jsonrpc": "2.0", "id": [msg_id], "result": {}})
    elif text == "oddreq":
        write({"jsonrpc": "2.0", "id": {"k": 1}, "method": "roots/list"})
    elif text == "junk":  # lines that are no message, in a burst
        for i in range(500):
            write(f"not json {i}".encode())
    elif text == "oddtok":
        progress = {"progressToken": [token], "progress": 1}
        write({"jsonrpc": "2.0", "method": "notifications/progress", "params": progress})
    elif text == "parent":
        try:
            with open(f"/proc/{os.getppid()}/environ", "rb") as file:
                text = file.read().decode(errors="replace")
        except OSError as exc:
            text = f"refused: {type(exc).__name__}"
    elif text == "helper":
        helper = subprocess.Popen(["sleep", "300"])  # stdout inherited: the pipe stays open
        with open(os.environ["ODD_HELPER_PID"], "w", encoding="utf-8") as file:
            file.write(str(helper.pid))
        os._exit(3)
    elif text == "sur":
        head = b'{"jsonrpc":"2.0","id":' + json.dumps(msg_id).encode()
        write(
            head
            + b',"result":{"content":[{"type":"text","text":"x\\ud800y"}],"resultType":"complete"}}'
        )
        return
    content = [{"type": "text", "text": f"echo: {text}"}]
    answer(msg_id, {"content": content, "isError": False})


STUBBORN_HELPER = (
    "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: signal.pause()"
)


def main() -> None:
    helpers = os.environ.get("ODD_STUBBORN_HELPERS")
    if helpers:  # a helper in its group that ignores SIGTERM (it exits itself on SIGTERM)
        helper = subprocess.Popen(
            [sys.executable, "-c", STUBBORN_HELPER], stdout=subprocess.DEVNULL
        )
        with open(helpers, "a", encoding="utf-8") as file:
            file.write(f"{helper.pid}\n")
    stubborn = os.environ.get("ODD_PID_FILE")
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(stubborn, "w", encoding="utf-8") as file:
            file.write(str(os.getpid()))
    serve()
    if stubborn:
        while True:
            signal.pause()  # a signal it does not ignore: SIGKILL


def serve() -> None:
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        method, msg_id = message.get("method"), message.get("id")
        params = message.get("params") or {}
        if method is None or "id" not in message:
            continue
        if method == "initialize":
            version = params.get("protocolVersion", "2025-11-25")
            info = {"name": "odd", "version": "1"}
            answer(
                msg_id,
                {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": info},
            )
        elif method == "server/discover":
            info = {"name": "odd", "version": "1"}
            versions = ["2026-07-28"]
            answer(
                msg_id,
                {"supportedVersions": versions, "capabilities": {"tools": {}}, "serverInfo": info},
            )
        elif method == "tools/list":
            big = int(os.environ.get("ODD_BIG_LIST_MIB", "0"))
            tools = [{**TOOLS[0], "description": "x" * (big << 20)}] if big else TOOLS
            pad = int(os.environ.get("ODD_LIST_PINGS_KIB", "0"))
            if pad and pinged(pad):
                tools = [*tools, {**TOOLS[0], "name": "pinged"}]
            answer(msg_id, {"tools": tools, "cacheScope": "private", "ttlMs": 0})
        elif method == "tools/call":
            call(msg_id, params)
        else:
            write({"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32601, "message": "no"}})


if __name__ == "__main__":
    main()
