"""A stdio child's stderr becomes the gateway's own log lines, labelled, escaped and bounded.

Before, the child inherited the gateway's stderr: a child could write a line that read as one
of the gateway's JSON log lines (a forged decision record), clear an operator's terminal, or
flood the log. Now each of its lines is one ``stdio.stderr`` event naming the server.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import structlog

from gateway.telemetry.childlog import STDERR_LINE, STDERR_LINES_PER_SECOND, StderrLog
from gateway.upstream import stdio_child
from tests.gateway_proc import client, run_gateway, text_of
from tests.peers import REPO_ROOT
from tests.servers.test_servers_smoke import eventually
from tests.test_stdio_bridge import POLICY

FORGED = '{"event": "policy.decision", "decision": "allow", "tool": "delete_item"}'
CHILD = f"""
import os, sys
sys.stderr.write({FORGED!r} + "\\n")
sys.stderr.write("\\x1b[2Jscreen cleared\\rrow forged\\n")
sys.stderr.write("x" * 100000 + "\\n")
sys.stderr.flush()
os.execv(sys.executable, [sys.executable, "-m", "tests.servers.upstream", "--stdio"])
"""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _drain(sink: StderrLog, *chunks: bytes) -> None:
    stream = asyncio.StreamReader()
    for chunk in chunks:
        stream.feed_data(chunk)
    stream.feed_eof()
    await sink.drain(stream)


class TestStderrLog:
    async def test_each_line_is_an_event_naming_its_server_with_controls_escaped(self) -> None:
        with structlog.testing.capture_logs() as logs:
            await _drain(StderrLog("st", "st[1]", Clock()), b"one\r\n\x1b[2Jtw", b"o\nno newline")
        assert [(e["event"], e["server"], e["child"], e["line"]) for e in logs] == [
            ("stdio.stderr", "st", "st[1]", "one"),
            ("stdio.stderr", "st", "st[1]", "\\x1b[2Jtwo"),
            ("stdio.stderr", "st", "st[1]", "no newline"),
        ]

    async def test_a_long_line_is_cut_and_says_so(self) -> None:
        with structlog.testing.capture_logs() as logs:
            await _drain(
                StderrLog("st", "st[1]", Clock()), b"y" * (STDERR_LINE * 10) + b"\nshort\n"
            )
        assert len(logs[0]["line"]) == STDERR_LINE and logs[0]["cut"] is True
        assert logs[1]["line"] == "short" and "cut" not in logs[1]

    async def test_a_flood_is_bounded_per_second_and_the_rest_is_counted(self) -> None:
        clock = Clock()
        sink = StderrLog("st", "st[1]", clock)
        with structlog.testing.capture_logs() as logs:
            for n in range(STDERR_LINES_PER_SECOND + 70):
                sink.line(f"line {n}".encode())
            clock.now += 1.0
            sink.line(b"next second")
        lines = [e for e in logs if e["event"] == "stdio.stderr"]
        assert len(lines) == STDERR_LINES_PER_SECOND + 1
        assert lines[-1]["line"] == "next second"
        dropped = [e for e in logs if e["event"] == "stdio.stderr_dropped"]
        assert dropped == [
            {
                "event": "stdio.stderr_dropped",
                "server": "st",
                "child": "st[1]",
                "lines": 70,
                "log_level": "warning",
            }
        ]

    async def test_what_is_dropped_at_the_end_is_counted_too(self) -> None:
        flood = b"".join(b"%d\n" % n for n in range(STDERR_LINES_PER_SECOND + 5))
        with structlog.testing.capture_logs() as logs:
            await _drain(StderrLog("st", "st[1]", Clock()), flood)
        assert logs[-1]["event"] == "stdio.stderr_dropped" and logs[-1]["lines"] == 5


async def test_a_child_cannot_forge_or_flood_the_gateways_log(tmp_path: Path) -> None:
    server = {
        "command": sys.executable,
        "args": ["-c", CHILD],
        "env": {"PYTHONPATH": str(REPO_ROOT)},
        "cwd": str(REPO_ROOT),
    }
    with run_gateway(tmp_path, POLICY, {"st": server}) as gw:
        async with client(gw.url("st"), mode="legacy") as c:
            assert text_of(await c.call_tool("echo", {"text": "still works"})) == "still works"
        await eventually(lambda: len(gw.records("stdio.stderr")) >= 3, 10)
        lines = [r["line"] for r in gw.records("stdio.stderr") if r["server"] == "st"]
        text = gw.log_path.read_text()
    assert FORGED in lines
    assert "\\x1b[2Jscreen cleared\\rrow forged" in lines
    assert any(len(line) == STDERR_LINE and set(line) == {"x"} for line in lines)
    # No line of the gateway's log is the child's line on its own, nor holds its raw controls.
    for raw in text.splitlines():
        assert raw != FORGED and "\x1b" not in raw and "\r" not in raw
        if raw.startswith("{"):
            assert json.loads(raw).get("tool") != "delete_item"
    assert stdio_child.LINE_LIMIT > STDERR_LINE  # stdout's messages are not bounded by this
