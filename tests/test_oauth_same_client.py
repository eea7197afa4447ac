"""Two users of one OAuth client: with ``claims: {grant: client_id, agent: sub}`` they share a
grant (its limits and quotas), but never each other's sessions or approvals.

Before, a session id and an approval were bound to the grant alone: bob could call tools, and
end the session, with alice's ``Mcp-Session-Id``, and run a call an operator had approved for
alice (the console showed it as alice's).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.authserver import AuthServer, auth_server, auth_server_ready, oauth_gateway
from tests.gateway_proc import GatewayProcess, calls_in, initialize_body
from tests.peers import http_upstream, raw_upstream
from tests.test_stdio_bridge import stdio_server
from tests.test_stdio_wire import MODERN_META

POLICY = """
version: "1"
default: deny
tools:
  echo: {action: allow}
  test_simple_text:
    action: allow
    limits: [{counter: per_session, max: 2, window: hour, scope: session}]
  one/echo:
    action: allow
    limits: [{counter: one_session, max: 2, window: hour, scope: session}]
  delete_item:
    action: require_approval
    reason: deleting needs a human
    approval: {mode: retry, timeout: 600}
"""
OAUTH = {"scopes": ["mcp"], "claims": {"grant": "client_id", "agent": "sub"}}
ADMIN = "admin-token-for-the-same-client-tests"
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def auth() -> Iterator[AuthServer]:
    why = auth_server_ready()
    if why is not None:
        pytest.skip(why)
    with auth_server({"claude-code": {"scope": "mcp"}}) as server:
        yield server


@pytest.fixture(scope="module")
def call_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("same-client-calls") / "calls.jsonl"


@pytest.fixture(scope="module")
def gw(auth: AuthServer, call_log: Path, tmp_path_factory: Any) -> Iterator[GatewayProcess]:
    admin = {"token_sha256": hashlib.sha256(ADMIN.encode()).hexdigest()}
    directory = tmp_path_factory.mktemp("same-client")
    with (
        http_upstream(log_path=call_log) as up,
        raw_upstream("one-sid", directory / "one.jsonl") as one,
    ):
        settings = {**OAUTH, "issuer": auth.url}
        security = {"max_requests_per_agent": 2}
        servers = {
            "up": {"url": up.url},
            "st": stdio_server(max_processes=50, max_processes_per_grant=2),
            "one": {"url": one.url},
        }
        with oauth_gateway(
            directory, POLICY, servers, settings, admin=admin, security=security
        ) as g:
            yield g


def bearer(auth: AuthServer, gw: GatewayProcess, user: str) -> dict[str, str]:
    token = auth.token("claude-code", gw.base, sub=user)
    return {**HEADERS, "authorization": f"Bearer {token}"}


def rpc(msg_id: int, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


def session(http: httpx.Client, path: str, headers: dict[str, str]) -> dict[str, str]:
    """A handshake-era session at ``path``: the headers its later requests carry."""
    opened = http.post(path, json=initialize_body("same-client"), headers=headers)
    assert opened.status_code == 200, opened.text
    ours = {
        **headers,
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert http.post(path, json=note, headers=ours).status_code == 202
    return ours


@pytest.mark.parametrize(("path", "echo"), [("/mcp/up", "echo"), ("/mcp", "up__echo")])
def test_one_user_cannot_ride_or_end_anothers_session(
    gw: GatewayProcess, auth: AuthServer, call_log: Path, path: str, echo: str
) -> None:
    alice, bob = bearer(auth, gw, "alice"), bearer(auth, gw, "bob")
    with httpx.Client(base_url=gw.base, timeout=20) as http:
        alices = session(http, path, alice)
        as_bob = {**alices, "authorization": bob["authorization"]}
        marker = f"bob in alice's session at {path}"
        ridden = http.post(
            path, json=rpc(2, "tools/call", name=echo, arguments={"text": marker}), headers=as_bob
        )
        assert ridden.status_code == 404, ridden.text
        assert http.delete(path, headers=as_bob).status_code == 404
        mine = rpc(3, "tools/call", name=echo, arguments={"text": "alice still"})
        answer = http.post(path, json=mine, headers=alices)
        assert answer.status_code == 200 and "alice still" in answer.text
    assert not any(c.get("arguments", {}).get("text") == marker for c in calls_in(call_log))


def test_an_approval_is_the_users_it_was_asked_for(
    gw: GatewayProcess, auth: AuthServer, call_log: Path
) -> None:
    alice, bob = bearer(auth, gw, "alice"), bearer(auth, gw, "bob")
    modern = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}
    args = {"id": "prod-db"}
    body = rpc(1, "tools/call", name="delete_item", arguments=args, _meta=MODERN_META)
    with httpx.Client(base_url=gw.base, timeout=20) as http:

        def held(headers: dict[str, str]) -> dict[str, Any]:
            answer = http.post(
                "/mcp/up", json=body, headers={**headers, **modern, "mcp-name": "delete_item"}
            )
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()["result"]
            return result

        asked = held(alice)["_meta"]["io.celgate/decision"]
        assert asked["error"] == "approval_pending"
        approve = http.post(
            f"/admin/approvals/{asked['approval_id']}/approve",
            json={"by": "carol"},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert approve.status_code == 201, approve.text
        bobs = held(bob)
        assert bobs["isError"] is True
        assert bobs["_meta"]["io.celgate/decision"]["approval_id"] != asked["approval_id"]
        assert not any(c.get("arguments") == {"id": "prod-db"} for c in calls_in(call_log))
        alices = held(alice)
        assert alices.get("isError") is not True, alices
    decided = gw.wait_records(2, where=lambda r: r.get("approval_id") == asked["approval_id"])
    assert [(r["agent"], r["effect"]) for r in decided] == [
        ("alice", "require_approval"),
        ("alice", "allow"),
    ]


def test_one_user_cannot_empty_anothers_session_bucket(
    gw: GatewayProcess, auth: AuthServer
) -> None:
    """2026-07-28 calls have no session: ``scope: session`` keyed them by the grant, so one
    user of the client emptied every other user's bucket (red-team wave 32)."""
    alice, bob = bearer(auth, gw, "alice"), bearer(auth, gw, "bob")
    modern = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}
    body = rpc(1, "tools/call", name="test_simple_text", arguments={}, _meta=MODERN_META)
    with httpx.Client(base_url=gw.base, timeout=20) as http:

        def error(headers: dict[str, str]) -> str | None:
            sent = {**headers, **modern, "mcp-name": "test_simple_text"}
            answer = http.post("/mcp/up", json=body, headers=sent)
            assert answer.status_code == 200, answer.text
            decision = answer.json()["result"].get("_meta", {}).get("io.celgate/decision", {})
            return decision.get("error")

        assert [error(alice) for _ in range(3)] == [None, None, "rate_limited"]
        assert error(bob) is None


def test_users_given_one_upstream_session_id_keep_buckets_of_their_own(
    gw: GatewayProcess, auth: AuthServer
) -> None:
    """An upstream that hands every client the one session id (``one-sid``): each user's
    gateway session is their own, and so is its ``scope: session`` bucket (it was keyed by
    the grant and the upstream's id: alice's calls emptied bob's, red-team wave 35)."""
    alice, bob = bearer(auth, gw, "alice"), bearer(auth, gw, "bob")
    with httpx.Client(base_url=gw.base, timeout=20) as http:
        alices, bobs = session(http, "/mcp/one", alice), session(http, "/mcp/one", bob)
        assert alices["mcp-session-id"] != bobs["mcp-session-id"]

        def error(headers: dict[str, str], n: int) -> str | None:
            body = rpc(n, "tools/call", name="echo", arguments={"text": f"call {n}"})
            answer = http.post("/mcp/one", json=body, headers=headers)
            assert answer.status_code == 200, answer.text
            result = answer.json()["result"]
            decision = result.get("_meta", {}).get("io.celgate/decision", {})
            return decision.get("error")

        assert [error(alices, n) for n in range(3)] == [None, None, "rate_limited"]
        assert error(bobs, 3) is None


@pytest.mark.asyncio
async def test_one_user_holding_streams_leaves_another_users_places(
    gw: GatewayProcess, auth: AuthServer
) -> None:
    """``max_requests_per_agent`` counts each user of a grant apart: bob's open streams use
    bob's places, never alice's."""
    alice, bob = bearer(auth, gw, "alice"), bearer(auth, gw, "bob")
    async with httpx.AsyncClient(base_url=gw.base, timeout=20) as http:
        with httpx.Client(base_url=gw.base, timeout=20) as sync:
            bobs = [session(sync, "/mcp/up", bob) for _ in range(2)]
        async with contextlib.AsyncExitStack() as streams:
            for headers in bobs:  # bob's two places, held by a GET stream on each session
                held = await streams.enter_async_context(
                    http.stream("GET", "/mcp/up", headers=headers)
                )
                assert held.status_code == 200
            refused = await http.post("/mcp/up", json=initialize_body("bob"), headers=bob)
            assert refused.status_code == 429 and "of this agent" in refused.text
            opened = await http.post("/mcp/up", json=initialize_body("alice"), headers=alice)
            assert opened.status_code == 200, opened.text
            # At his cap, bob can still end a session (it gives places back): it was 429.
            ended = await http.delete("/mcp/up", headers=bobs[0])
            assert ended.status_code < 300, ended.text


def test_one_user_cannot_end_anothers_stdio_process(auth: AuthServer, gw: GatewayProcess) -> None:
    """A stdio server's processes are counted per user of the client: at the cap, the
    caller's own idle session gives way, never another user's."""
    alice, mallory = bearer(auth, gw, "alice"), bearer(auth, gw, "mallory")
    with httpx.Client(base_url=gw.base, timeout=30) as http:
        hers = session(http, "/mcp/st", alice)
        for _ in range(3):  # past the cap: mallory's own oldest gives way each time
            session(http, "/mcp/st", mallory)
        ping = http.post("/mcp/st", json=rpc(9, "ping"), headers=hers)
        assert ping.status_code == 200, ping.text
