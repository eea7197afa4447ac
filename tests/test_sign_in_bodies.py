"""The console's sign-in is the one page that reads a body before any credential. Read by
Litestar, a sign-in body sent a byte at a time held a connection each (never evicted: a
request under way) until no agent got in, and each could hold 10 MB. The edge reads it first:
at most ``MAX_SIGN_IN_BYTES``, within ``SIGN_IN_SECONDS``, ``MAX_SIGN_INS_READING`` at once."""

from __future__ import annotations

import hashlib
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.server.app import MAX_SIGN_IN_BYTES, MAX_SIGN_INS_READING
from tests.gateway_proc import OPERATOR, GatewayProcess, initialize_body, run_gateway
from tests.peers import http_upstream

KEY = "cgk_sign-in-bodies-0123456789ab"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    grants = {"bot": {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}}
    folder = tmp_path_factory.mktemp("sign-in")
    sessions = {"secret": "k8Jd93ndk2Lqp0Zx7vBn"}
    with (
        http_upstream() as up,
        run_gateway(
            folder,
            'version: "1"\ndefault: allow\n',
            {"up": {"url": up.url}},
            grants=grants,
            admin=OPERATOR,
            sessions=sessions,
        ) as gateway,
    ):
        yield gateway


def sign_in_head(gw: GatewayProcess, length: int, path: str = "/console/login") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
        f"Origin: http://127.0.0.1:{gw.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("path", ["/console/login", "/console/login/", "//console//login"])
def test_slow_sign_ins_are_few_and_agents_go_on(gw: GatewayProcess, path: str) -> None:
    """Sixteen at most; the oldest gives way to a newer one. Litestar routes the other
    spellings to the same sign-in: they read their bodies unbounded until they counted too."""
    slow = [
        socket.create_connection(("127.0.0.1", gw.port)) for _ in range(MAX_SIGN_INS_READING + 8)
    ]
    try:
        for sock in slow:
            sock.sendall(sign_in_head(gw, 100, path) + b"{")
        answered: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(answered) < 8 and time.monotonic() < deadline:
            readable, _, _ = select.select(slow, [], [], 0.5)
            for sock in readable:
                answered.append(sock.recv(4096))
                slow.remove(sock)
                sock.close()
        assert len(answered) == 8, "every slow sign-in was let in"
        assert all(a.startswith(b"HTTP/1.1 503") for a in answered)
        headers = {"authorization": f"Bearer {KEY}"}
        headers["accept"] = "application/json, text/event-stream"
        answer = httpx.post(gw.url("up"), json=initialize_body("agent"), headers=headers)
        assert answer.status_code == 200
    finally:
        for sock in slow:
            sock.close()


def test_slow_sign_ins_kept_renewed_do_not_shut_operators_out(gw: GatewayProcess) -> None:
    slow = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(MAX_SIGN_INS_READING)]
    try:
        for sock in slow:
            sock.sendall(sign_in_head(gw, 100) + b"{")
        headers = {"content-type": "application/json", "origin": gw.base}
        body = {"token": "celgate-test-operator", "operator": "alice"}
        deadline = time.monotonic() + 10
        while True:  # once the slow ones are all being read, the operator still gets in
            answer = httpx.post(f"{gw.base}/console/login", json=body, headers=headers)
            readable, _, _ = select.select(slow, [], [], 0)
            if readable or time.monotonic() > deadline:
                break
        assert answer.status_code == 200, answer.text
        assert readable, "no slow sign-in gave way"
        assert readable[0].recv(4096).startswith(b"HTTP/1.1 503")  # it gave way (not 408)
    finally:
        for sock in slow:
            sock.close()


def test_a_sign_in_body_past_its_bound_is_refused_unread(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(sign_in_head(gw, 9_900_000))
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    body = b'{"token": "' + b"a" * MAX_SIGN_IN_BYTES + b'"}'
    answer = httpx.post(
        f"{gw.base}/console/login",
        content=body,
        headers={"content-type": "application/json", "origin": gw.base},
    )
    assert answer.status_code == 413
