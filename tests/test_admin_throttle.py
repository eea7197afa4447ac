"""Guessing the admin token is slow: after ten wrong tokens from one address, the console's
sign-in and the admin API answer 429 with Retry-After without checking even the right token,
and one more try comes back every few seconds (the clock injected here, no waiting)."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.auth.throttle import FailureThrottle
from gateway.cli.keys import ADMIN_PREFIX, new_secret
from tests.gateway_proc import GatewayProcess, run_gateway
from tests.peers import PeerProcess, http_upstream

TOKEN = "cga_throttle-test-admin-token"
AGENT_KEY = "cgk_throttle-test-agent-key"


class TestThrottle:
    def test_burst_then_one_try_per_refill(self) -> None:
        now = [100.0]
        throttle = FailureThrottle(burst=3, refill_seconds=6.0, clock=lambda: now[0])
        for _ in range(3):
            assert throttle.wait("10.0.0.1") is None
            throttle.failed("10.0.0.1")
        assert throttle.wait("10.0.0.1") == pytest.approx(6.0)
        assert throttle.wait("10.0.0.2") is None  # another address is not held up
        now[0] += 6.0
        assert throttle.wait("10.0.0.1") is None
        throttle.failed("10.0.0.1")
        assert throttle.wait("10.0.0.1") == pytest.approx(6.0)

    def test_memory_is_bounded(self) -> None:
        throttle = FailureThrottle(burst=1, max_clients=100, clock=lambda: 0.0)
        for i in range(1000):
            throttle.failed(f"10.0.{i // 256}.{i % 256}")
        assert len(throttle._tries) == 100


@pytest.fixture(scope="module")
def upstream() -> Iterator[PeerProcess]:
    with http_upstream() as up:
        yield up


@pytest.fixture
def gateway(upstream: PeerProcess, tmp_path: Path) -> Iterator[GatewayProcess]:
    admin = {"token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    policy = 'version: "1"\ndefault: allow\n'
    grants = {"bot": {"key_sha256": hashlib.sha256(AGENT_KEY.encode()).hexdigest()}}
    servers = {"up": {"url": upstream.url}}
    with run_gateway(tmp_path, policy, servers, admin=admin, grants=grants) as gw:
        yield gw


def test_admin_api_then_console_are_throttled(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.base, timeout=10) as http:
        wrong = {"authorization": "Bearer cga_not-the-token"}
        assert [http.get("/admin/policy", headers=wrong).status_code for _ in range(10)] == [
            401
        ] * 10
        held = http.get("/admin/policy", headers={"authorization": f"Bearer {TOKEN}"})
        assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1
        origin = {"origin": gateway.base}
        login = http.post("/console/login", json={"token": TOKEN}, headers=origin)
        assert login.status_code == 429 and "try later" in login.text
        assert http.get("/healthz").status_code == 200  # nothing else is held up


def test_the_right_token_is_not_counted(gateway: GatewayProcess) -> None:
    with httpx.Client(base_url=gateway.base, timeout=10) as http:
        right = {"authorization": f"Bearer {TOKEN}"}
        assert all(http.get("/admin/policy", headers=right).status_code == 200 for _ in range(15))


def test_agent_keys_tried_on_the_admin_api_are_counted(gateway: GatewayProcess) -> None:
    """An agent's key is a wrong admin token: it was refused (403) without being counted, so
    keys could be tried on ``/admin`` at any rate."""
    with httpx.Client(base_url=gateway.base, timeout=10) as http:
        agent = {"authorization": f"Bearer {AGENT_KEY}"}
        assert {http.get("/admin/policy", headers=agent).status_code for _ in range(10)} == {403}
        held = http.get("/admin/policy", headers={"authorization": f"Bearer {TOKEN}"})
        assert held.status_code == 429


def _answers_on_one_connection(gateway: GatewayProcess, path: str, token: str) -> bytes:
    """Two requests sent at once on one connection, and all it reads until the gateway
    closes it, or both are answered (or 10 s pass)."""
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
    request = (head + f"Authorization: Bearer {token}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request * 2)
        read = b""
        with contextlib.suppress(TimeoutError):
            while read.count(b"HTTP/1.1 ") < 2 and (chunk := sock.recv(65536)):
                read += chunk
    return read


@pytest.mark.parametrize("path", ["/admin/policy", "/metrics"])
def test_a_refused_operator_request_ends_its_connection(gateway: GatewayProcess, path: str) -> None:
    """As the MCP endpoints' refusals of who is calling do: a guesser may not keep one
    connection to try token after token on."""
    read = _answers_on_one_connection(gateway, path, "cga_wrong")
    assert read.count(b"HTTP/1.1 401") == 1 and b"connection: close" in read.lower()
    kept = _answers_on_one_connection(gateway, "/healthz", "anything")
    assert kept.count(b"HTTP/1.1 200") == 2  # what is answered keeps its connection


def test_a_generated_token_is_checked_however_many_guesses_came(
    upstream: PeerProcess, tmp_path: Path
) -> None:
    """Any client sharing the operator's address (an agent on the same host, a proxy) kept
    the operator out for good with one wrong token every six seconds: the right token was
    refused unchecked (red-team wave 58). A token of the form ``celgate admin-token new``
    makes (256 random bits) is always checked; guesses of any other form are still held."""
    generated, digest = new_secret(ADMIN_PREFIX)
    servers, admin = {"up": {"url": upstream.url}}, {"token_sha256": digest}
    with (
        run_gateway(tmp_path, 'version: "1"\ndefault: deny\n', servers, admin=admin) as gw,
        httpx.Client(base_url=gw.base, timeout=10) as http,
    ):
        wrong = {"authorization": "Bearer guess"}
        assert {http.get("/admin/policy", headers=wrong).status_code for _ in range(10)} == {401}
        assert http.get("/admin/policy", headers=wrong).status_code == 429
        right = {"authorization": f"Bearer {generated}"}
        assert http.get("/admin/policy", headers=right).status_code == 200
        assert http.get("/metrics", headers=right).status_code == 200
        login = http.post("/console/login", json={"token": generated}, headers={"origin": gw.base})
        assert login.status_code == 200, login.text
        other, _ = new_secret(ADMIN_PREFIX)  # of the form, but not it: refused, and counted
        assert (
            http.get("/admin/policy", headers={"authorization": f"Bearer {other}"}).status_code
            == 401
        )
