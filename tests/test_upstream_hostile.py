"""Hostile and broken upstreams, end to end: a real gateway process relaying to
``tests.servers.raw_upstream`` processes told to misbehave, and raw HTTP/1.1 clients.

* ``cont`` sends ``100 Continue`` before each tool answer (and honours Expect);
* ``closing`` closes the connection after reading a ``tools/call``;
* ``hanging`` never answers a ``tools/call`` (``servers.hanging.timeout: 1``);
* ``normal`` behaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest

from gateway.auth.identity import hash_key
from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import NODE, TS_DIR, TS_SDK, raw_upstream, ts_sdk_ready

KEY_A = "cgk_hostile-agent-a-0123456789"
KEY_B = "cgk_hostile-agent-b-0123456789"
HEAD_TIMEOUT = 1.0
POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'
UPSTREAMS = {
    "normal": "",
    "cont": "continue,expect",
    "closing": "close",
    "hanging": "hang",
    "longsid": "long-sid",
}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("raw-upstreams")
    return {name: directory / f"{name}.jsonl" for name in UPSTREAMS}


@pytest.fixture(scope="module")
def gateway(
    logs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with contextlib.ExitStack() as stack:
        servers: dict[str, Any] = {}
        for name, misbehave in UPSTREAMS.items():
            peer = stack.enter_context(raw_upstream(misbehave, logs[name]))
            servers[name] = {"url": peer.url, "timeout": HEAD_TIMEOUT if name == "hanging" else 10}
        grants = {
            "agent-a": {"key_sha256": hash_key(KEY_A)},
            "agent-b": {"key_sha256": hash_key(KEY_B)},
        }
        directory = tmp_path_factory.mktemp("gw-hostile")
        yield stack.enter_context(run_gateway(directory, POLICY, servers, grants=grants))


def seen(log: Path) -> list[dict[str, Any]]:
    """The requests an upstream logged, in order."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def call(msg_id: str, text: str) -> dict[str, Any]:
    params = {"name": "echo", "arguments": {"text": text}}
    return {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}


class _Answer:
    """httptools callbacks: the final answer's status and body; interim (1xx) heads skipped."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body = b""
        self.done = False
        self.interim: list[int] = []

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.interim.append(status)
        else:
            self.status = status

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = self.status != 0


async def post(
    gw: GatewayProcess, server: str, message: dict[str, Any], key: str, *, expect: bool = False
) -> tuple[int, dict[str, Any]]:
    """One raw HTTP/1.1 POST to the gateway; with ``expect``, the body waits for its 100."""
    body = json.dumps(message).encode()
    head = [
        f"POST /mcp/{server} HTTP/1.1",
        f"host: 127.0.0.1:{gw.port}",
        "content-type: application/json",
        "accept: application/json, text/event-stream",
        f"authorization: Bearer {key}",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if expect:
        head.append("expect: 100-continue")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if expect:
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(body)
        answer = _Answer()
        while not answer.done:
            data = await reader.read(65536)
            assert data, "the gateway closed the connection before answering"
            answer.parser.feed_data(data)
    finally:
        writer.close()
    return answer.status, json.loads(answer.body)


def text_of(reply: dict[str, Any]) -> str:
    return "".join(part["text"] for part in reply["result"]["content"])


class TestInterimAnswers:
    """An upstream's ``100 Continue`` never stands for an answer: each agent gets its own."""

    async def test_two_agents_never_receive_each_others_answers(
        self, gateway: GatewayProcess, logs: dict[str, Path]
    ) -> None:
        async def one(agent: str, key: str, n: int) -> None:
            msg_id = f"{agent}-{n}"
            status, reply = await post(gateway, "cont", call(msg_id, agent), key, expect=True)
            assert (status, reply["id"], text_of(reply)) == (200, msg_id, f"{msg_id} {agent}")

        async with asyncio.timeout(30):
            for n in range(10):
                await asyncio.gather(one("a", KEY_A, n), one("b", KEY_B, n))
        calls = [r for r in seen(logs["cont"]) if r["rpc"] == "tools/call"]
        assert len(calls) == 20
        assert all(r["expect"] is None for r in calls)  # the agents' Expect stopped at the gateway


class TestSentOnce:
    """A call whose connection dies after the write is not sent again: the agent gets an
    error (-32001, with HTTP 200: every client reads it)."""

    async def test_connection_closed_after_the_write(
        self, gateway: GatewayProcess, logs: dict[str, Path]
    ) -> None:
        listing = {"jsonrpc": "2.0", "id": "list-1", "method": "tools/list"}
        status, reply = await post(gateway, "closing", listing, KEY_A)  # a connection to reuse
        assert status == 200 and [t["name"] for t in reply["result"]["tools"]] == ["echo"]
        status, reply = await post(gateway, "closing", call("once-1", "approved once"), KEY_A)
        assert status == 200
        assert reply["id"] == "once-1"
        assert reply["error"] == {
            "code": -32001,
            "message": "upstream 'closing' is unavailable",
        }
        records = seen(logs["closing"])
        calls = [r for r in records if r["rpc"] == "tools/call"]
        assert [r["id"] for r in calls] == ["once-1"]  # exactly once
        earlier = {r["conn"] for r in records if r["rpc"] != "tools/call"}
        assert calls[0]["conn"] in earlier  # it went on a reused connection, the risky case


class TestHeadTimeout:
    """``servers.X.timeout`` bounds the wait for an answer; the gateway serves others meanwhile."""

    async def test_never_answering_upstream(
        self, gateway: GatewayProcess, logs: dict[str, Path]
    ) -> None:
        started = time.monotonic()
        hung = asyncio.create_task(post(gateway, "hanging", call("late-1", "x"), KEY_A))
        for n in range(3):  # others are served while that call waits
            status, reply = await post(gateway, "normal", call(f"ok-{n}", "fine"), KEY_B)
            assert (status, text_of(reply)) == (200, f"ok-{n} fine")
        listing = {"jsonrpc": "2.0", "id": "list-2", "method": "tools/list"}
        status, _ = await post(gateway, "hanging", listing, KEY_B)
        assert status == 200
        assert not hung.done()
        async with asyncio.timeout(HEAD_TIMEOUT + 5):
            status, reply = await hung
        elapsed = time.monotonic() - started
        assert HEAD_TIMEOUT * 0.9 <= elapsed < HEAD_TIMEOUT + 4
        assert status == 200  # a JSON-RPC error every client reads
        assert reply["id"] == "late-1"
        assert reply["error"] == {
            "code": -32001,
            "message": "upstream 'hanging' did not answer in time",
        }
        async with asyncio.timeout(HEAD_TIMEOUT + 5):
            status, reply = await post(gateway, "hanging", call("late-2", "x"), KEY_A)
        assert (status, reply["id"]) == (200, "late-2")
        calls = [r for r in seen(logs["hanging"]) if r["rpc"] == "tools/call"]
        assert [r["id"] for r in calls] == ["late-1", "late-2"]
        assert calls[0]["conn"] != calls[1]["conn"]  # the timed-out connection was dropped


class TestClientsReadIt:
    """The TypeScript SDK (and the Inspector with it) reads a JSON-RPC error only with HTTP
    200: sent with 504 (or 502), it raised a transport error carrying the raw JSON, and a host
    could not tell an upstream's failure from a broken connection to the gateway."""

    def test_the_ts_client_reads_an_upstream_timeout_as_an_mcp_error(
        self, gateway: GatewayProcess
    ) -> None:
        missing = ts_sdk_ready()
        if missing is not None:
            pytest.skip(missing)
        calls = [{"name": "echo", "arguments": {"text": "x"}}]
        argv = [str(NODE), str(TS_DIR / "client.mjs"), str(TS_SDK), gateway.url("hanging")]
        done = subprocess.run(
            [*argv, KEY_A, json.dumps(calls), "accept"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert "fatal" not in out, out
        error = out["calls"][0]["error"]
        assert error["code"] == -32001, error
        assert "upstream 'hanging' did not answer in time" in error["message"]


class TestSessionIds:
    async def test_an_unusable_session_id_is_not_passed_on(self, gateway: GatewayProcess) -> None:
        """A 5,000-character session id (wrapped, larger still) made every later request of
        its client too large to read (431): the upstream's initialize is its error."""
        init = {
            "jsonrpc": "2.0",
            "id": "init-1",
            "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}},
        }
        status, reply = await post(gateway, "longsid", init, KEY_A)
        assert (status, reply["id"], reply["error"]["code"]) == (200, "init-1", -32001)
        assert reply["error"]["message"] == "upstream 'longsid' gave an unusable session id"
        status, reply = await post(gateway, "normal", init, KEY_A)  # the others as they were
        assert status == 200 and "result" in reply
