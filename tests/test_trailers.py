"""A chunked request body's trailer fields are not request headers.

uvicorn's httptools protocol adds trailer fields to the very list that becomes the request's
headers, and a request that arrives in one piece is parsed whole before the app starts: an
agent key or the admin token sent after the body authenticated it (past a front proxy that
checked the head), and a client behind a trusted proxy set ``request.ip`` with its own
``X-Forwarded-For`` trailer, passing a rule keyed on the address."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway_proc import OPERATOR, GatewayProcess, initialize_body, run_gateway
from tests.peers import http_upstream

KEY = "cgk_trailers-0123456789abcdefghij"
ADMIN = "celgate-test-operator"
OFFICE = "203.0.113.5"
POLICY = f"""version: "1"
default: deny
tools:
  echo:
    rules:
      - {{id: office, when: "request.ip == '{OFFICE}'", action: allow}}
    action: deny
    reason: only from the office
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {"alice": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
    folder = tmp_path_factory.mktemp("trailers")
    listen = {"trusted_proxies": ["127.0.0.1"]}
    with (
        http_upstream(stateless=True) as up,
        run_gateway(
            folder, POLICY, {"up": {"url": up.url}}, grants=grants, admin=OPERATOR, listen=listen
        ) as gateway,
    ):
        yield gateway


def chunked(port: int, path: str, body: bytes, head: list[str], trailer: str) -> tuple[int, str]:
    """One request whose body is chunked with ``trailer`` after it; the status and body."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += ["Accept: application/json, text/event-stream", "Transfer-Encoding: chunked"]
    lines += ["Connection: close", *head]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    raw += b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailer.encode() + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head_part, _, rest = reply.partition(b"\r\n\r\n")
    return int(head_part[9:12]), rest.decode("utf-8", "replace")


def call_body() -> bytes:
    params = {"name": "echo", "arguments": {"text": "from the trailer"}}
    return json.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params}
    ).encode()


def test_a_key_sent_as_a_trailer_authenticates_nothing(gw: GatewayProcess) -> None:
    body = json.dumps(initialize_body("trailer")).encode()
    status, _ = chunked(gw.port, "/mcp/up", body, [], f"Authorization: Bearer {KEY}")
    assert status == 401
    status, _ = chunked(gw.port, "/mcp/up", body, [f"Authorization: Bearer {KEY}"], "X-T: 1")
    assert status == 200  # a chunked body with a trailer still works


def test_the_admin_token_sent_as_a_trailer_is_no_token(gw: GatewayProcess) -> None:
    status, text = chunked(gw.port, "/admin/reload", b"{}", [], f"Authorization: Bearer {ADMIN}")
    assert status == 401 and "reloaded" not in text


def test_a_trailer_forwarded_for_does_not_set_the_address(
    gw: GatewayProcess, tmp_path: Path
) -> None:
    head = [f"Authorization: Bearer {KEY}", "Mcp-Protocol-Version: 2025-11-25"]
    proxied = [*head, "X-Forwarded-For: 198.51.100.7"]  # the proxy names the real client
    status, text = chunked(gw.port, "/mcp/up", call_body(), proxied, f"X-Forwarded-For: {OFFICE}")
    assert status == 200 and "only from the office" in text
    decision = gw.records("policy.decision")[-1]
    assert decision["effect"] == "deny"


def raw_exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on one connection and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def tiny_chunks(path: str, head: list[str], count: int) -> bytes:
    """A chunked POST whose body comes one byte a chunk, ``count`` chunks and no last one."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += ["Accept: application/json, text/event-stream", "Transfer-Encoding: chunked", *head]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + b"1\r\n \r\n" * count


def test_a_body_of_one_byte_chunks_is_refused_and_closed(gw: GatewayProcess) -> None:
    """Each chunk is parser callbacks in Python: one client's 1-byte chunks (2 MB/s of them)
    held the event loop for seconds, every other client waiting (red-team wave 44)."""
    keyed = [f"Authorization: Bearer {KEY}", "Mcp-Protocol-Version: 2025-11-25"]
    reply = raw_exchange(gw.port, tiny_chunks("/mcp/up", keyed, 1000))
    assert reply.startswith(b"HTTP/1.1 400 ") and b"request body chunks too small" in reply
    assert gw.records("client.chunks_too_small")
    # Answered before its body came (405 here): tiny chunks after the answer close the
    # connection too, with no second answer (they were parsed on, as long as they came).
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(tiny_chunks("/healthz", [], 1))
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 405 ")
        sock.sendall(b"1\r\n \r\n" * 1000)
        while chunk := sock.recv(65536):  # the gateway closes it
            reply += chunk
    assert reply.count(b"HTTP/1.1 ") == 1


def test_a_body_in_chunks_of_a_kilobyte_passes(gw: GatewayProcess) -> None:
    body = json.dumps(initialize_body("chunks", pad="x" * 400_000)).encode()
    lines = ["POST /mcp/up HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += ["Accept: application/json, text/event-stream", "Transfer-Encoding: chunked"]
    lines += [f"Authorization: Bearer {KEY}", "Connection: close"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    for at in range(0, len(body), 1100):  # past the 256 chunks any body may have
        piece = body[at : at + 1100]
        raw += b"%x\r\n" % len(piece) + piece + b"\r\n"
    reply = raw_exchange(gw.port, raw + b"0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and b'"protocolVersion"' in reply


def test_the_first_256_chunks_are_free_whatever_their_size(gw: GatewayProcess) -> None:
    """A body of exactly 256 one-byte chunks was refused: the last chunk (size 0, no body)
    was counted as the 257th (red-team wave 46). It is free; a 257th of data is not."""
    body = json.dumps(initialize_body("chunks", pad="x" * 300)).encode()
    assert 257 < len(body) < 1024
    lines = ["POST /mcp/up HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += ["Accept: application/json, text/event-stream", "Transfer-Encoding: chunked"]
    lines += [f"Authorization: Bearer {KEY}", "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    for free in (256, 257):
        pieces = [body[i : i + 1] for i in range(free - 1)] + [body[free - 1 :]]
        raw = head + b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
        reply = raw_exchange(gw.port, raw)
        expected = b"HTTP/1.1 200 " if free == 256 else b"HTTP/1.1 400 "
        assert reply.startswith(expected), (free, reply[:80])
