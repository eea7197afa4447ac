"""An https:// upstream: the certificate is verified, against the CA bundle the config names.

The upstream is the test MCP server serving TLS with a certificate from a throwaway CA
(trustme); the client is the SDK's, through celgate, over real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from gateway.config import load_config
from gateway.errors import ConfigError
from tests.gateway_proc import client, initialize_body, run_gateway, text_of
from tests.peers import HOST, start_http_upstream
from tests.servers.test_servers_smoke import eventually

POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'


@pytest.fixture(scope="module")
def ca_and_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    peer = start_http_upstream(log_path=folder / "upstream.log", tls=(cert_file, key_file))
    try:
        yield ca_file, peer.url
    finally:
        peer.stop()


async def test_calls_reach_an_https_upstream_that_the_ca_vouches_for(
    ca_and_upstream: tuple[Path, str], tmp_path: Path
) -> None:
    ca_file, url = ca_and_upstream
    servers = {"up": {"url": url, "ca_file": str(ca_file)}}
    with run_gateway(tmp_path, POLICY, servers) as gw:
        # The gateway's own reading of the server's tools verifies it by the same CA: it
        # used the system's store alone, and never read a private-CA server (red-team wave
        # 63: pins could not be updated, every tool read as high risk).
        await eventually(lambda: bool(gw.records("catalog.refreshed")), 20)
        (read,) = [r for r in gw.records("catalog.refreshed") if r["server"] == "up"]
        assert read["tools"] > 0 and not gw.records("catalog.list_failed")
        async with client(gw.url("up"), mode="legacy") as c:
            names = [t.name for t in (await c.list_tools()).tools]
            result = await c.call_tool("echo", {"text": "over tls"})
    assert names == ["echo"]  # filtered as usual
    assert "over tls" in text_of(result)


def test_an_unverified_certificate_is_refused(
    ca_and_upstream: tuple[Path, str], tmp_path: Path
) -> None:
    """Without the CA, the system's trust store does not know the certificate: nothing is sent
    to the upstream, the caller gets a clear error, and the gateway keeps serving."""
    _, url = ca_and_upstream
    init = initialize_body("raw")
    headers = {"accept": "application/json, text/event-stream"}
    with run_gateway(tmp_path, POLICY, {"up": {"url": url}}) as gw:
        for _ in range(2):
            resp = httpx.post(gw.url("up"), json=init, headers=headers, timeout=10)
            assert resp.status_code == 200  # a JSON-RPC error every client reads
            assert resp.json()["error"]["message"] == "upstream 'up' is unavailable"
        # A client's answer to a server's request is no request: its failure is a status
        # (a 200 told the TypeScript client its user's answer was delivered). Outside a
        # session it answers nothing, and is refused before any upstream is tried.
        answer = {"jsonrpc": "2.0", "id": "server-1", "result": {}}
        modern = {**headers, "mcp-protocol-version": "2026-07-28"}
        resp = httpx.post(gw.url("up"), json=answer, headers=modern, timeout=10)
        assert resp.status_code == 400
        assert resp.json()["id"] is None
        assert httpx.get(f"{gw.base}/healthz", timeout=5).status_code == 200


def test_ca_file_must_exist_and_needs_https(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "p.yaml").write_text('version: "1"\ndefault: deny\n')
    path = tmp_path / "celgate.yaml"
    path.write_text(
        "anonymous: true\npolicy: rules/\nservers:\n"
        "  a: {url: 'https://127.0.0.1:1/mcp', ca_file: missing.pem}\n"
        "  b: {url: 'http://127.0.0.1:1/mcp', ca_file: missing.pem}\n"
    )
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    path.write_text(path.read_text() + "  c: {url: 'https://127.0.0.1:1/mcp', ca_file: junk.pem}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    problems = [str(p) for p in caught.value.problems]
    assert problems[:2] == [
        f"{path}:4: servers.a.ca_file: missing.pem: no such file",
        f"{path}:5: servers.b.ca_file: only applies to https:// URLs",
    ]
    # A file of no certificate was "ok" here, and failed `celgate run` with a traceback.
    assert len(problems) == 3
    assert problems[2].startswith(f"{path}:6: servers.c.ca_file: junk.pem: no PEM CA certificate")
