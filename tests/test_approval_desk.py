"""The approval desk over HTTP, end to end: a real gateway process on a real Valkey, the test
upstream as a process, the SDK client as the agent. What the approver is shown, the pending
caps, the record of each decision, and what the console and admin API refuse."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth.identity import hash_key
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.policy import load_policy
from gateway.ratelimit.client import valkey_client
from gateway.server.console import CSP
from gateway.server.console.sessions import (
    IDLE_SECONDS,
    MAX_SECONDS,
    MAX_SESSIONS,
    ConsoleSessions,
    SessionStoreDown,
    make_sessions,
)
from gateway.telemetry.audit import args_digest
from tests.gateway_proc import GatewayProcess, client, decision_of, run_gateway
from tests.peers import PeerProcess, free_port
from tests.valkey_server import ValkeyProcess

BOT_KEY = "cgk_desk-bot-key-0123456789"
OTHER_KEY = "cgk_desk-other-key-0123456789"
ADMIN_TOKEN = "desk-admin-token-0123456789abcdef"
CRED = "a-credential-tag"  # what the store compares; the gateway's is credential_tag's
POLICY = """
version: "1"
default: deny
tools:
  delete_item:
    action: require_approval
    reason: deleting needs a human
    approval: {mode: retry, timeout: 600}
    secret_args: [password, auth.token]
  write_file:
    action: require_approval
    approval: {mode: retry, timeout: 60}
"""


@pytest.fixture(scope="module")
def desk(
    upstream: PeerProcess, valkey_server: ValkeyProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Caps of 3 pending per grant and 5 in all, approvals in a real Valkey."""
    extra = {
        "grants": {
            "bot": {"key_sha256": hash_key(BOT_KEY)},
            "other": {"key_sha256": hash_key(OTHER_KEY)},
        },
        "admin": {"token_sha256": hash_key(ADMIN_TOKEN)},
        "limits": {"backend": valkey_server.url, "key_prefix": "desk:"},
        "approvals": {"max_pending_per_grant": 3, "max_pending": 5},
    }
    servers = {"up": {"url": upstream.url}}
    with run_gateway(tmp_path_factory.mktemp("desk"), POLICY, servers, **extra) as gw:
        yield gw


def admin(gw: GatewayProcess, method: str, path: str, **headers: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **headers}
    return httpx.request(method, gw.base + path, headers=headers, json={}, timeout=10)


def pending(gw: GatewayProcess) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = admin(gw, "GET", "/admin/approvals?status=pending").json()
    return items


def deny_all(gw: GatewayProcess) -> None:
    for item in pending(gw):
        admin(gw, "POST", f"/admin/approvals/{item['id']}/deny")


class TestWhatTheApproverSees:
    async def test_two_deletes_of_different_notes_look_different(
        self, desk: GatewayProcess
    ) -> None:
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            first = await agent.call_tool("delete_item", {"id": "groceries"})
            second = await agent.call_tool("delete_item", {"id": "taxes-2024"})
        ids = {decision_of(first)["approval_id"], decision_of(second)["approval_id"]}
        listed = {r["id"]: r for r in pending(desk) if r["id"] in ids}
        assert sorted(r["args"]["id"] for r in listed.values()) == ["groceries", "taxes-2024"]
        for row in listed.values():
            assert (row["server"], row["tool"], row["grant"], row["agent"]) == (
                "up",
                "delete_item",
                "bot",
                "bot",
            )
            assert row["expires"] - row["created"] == 600 and row["args_digest"]
            assert row["args_truncated"] is False
        deny_all(desk)

    async def test_a_huge_argument_is_listed_cut_with_a_marker(self, desk: GatewayProcess) -> None:
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            held = await agent.call_tool("delete_item", {"id": "z" * 200_000})
        approval_id = decision_of(held)["approval_id"]
        response = admin(desk, "GET", "/admin/approvals?status=pending")
        assert len(response.content) < 30_000
        (row,) = [r for r in response.json() if r["id"] == approval_id]
        assert row["args_truncated"] is True
        assert row["args"]["id"].endswith("[celgate: cut] 198000 more characters not shown")
        deny_all(desk)

    async def test_a_listing_is_cut_and_trimmed_as_asked(self, desk: GatewayProcess) -> None:
        """A console polls the desk every 3 s: it asks for what it shows (the pending, the
        oldest first, their arguments as text; the decided without arguments), not for every
        request with its arguments twice (red-team wave 49: 34 MB a listing)."""
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            held = [
                decision_of(await agent.call_tool("delete_item", {"id": f"n-{n}", "big": 2**60}))
                for n in range(3)
            ]
        ids = [h["approval_id"] for h in held]
        oldest = admin(desk, "GET", "/admin/approvals?status=pending&order=oldest&limit=2")
        assert oldest.headers["x-total-count"] == "3"
        assert [r["id"] for r in oldest.json()] == ids[:2]
        newest = admin(desk, "GET", "/admin/approvals?status=pending&limit=1&args=text").json()
        assert [r["id"] for r in newest] == ids[2:] and "args" not in newest[0]
        assert newest[0]["arg_names"] == ["id", "big"]
        assert json.loads(newest[0]["args_text"]) == {"id": "n-2", "big": 2**60}
        admin(desk, "POST", f"/admin/approvals/{ids[0]}/deny")
        decided = admin(desk, "GET", "/admin/approvals?status=decided&args=none").json()
        assert ids[0] in [r["id"] for r in decided] and ids[1] not in [r["id"] for r in decided]
        assert not any("args" in r or "args_text" in r for r in decided)
        both = admin(desk, "GET", "/admin/approvals?status=pending").json()
        assert all(r["args"] == json.loads(r["args_text"]) for r in both)
        for bad in ("limit=0", "limit=100000", "args=all", "order=random", "args=text%0a"):
            assert admin(desk, "GET", f"/admin/approvals?{bad}").status_code == 400
        deny_all(desk)
        # a later call under a shorter timeout expires first: the desk shows it first
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            await agent.call_tool("delete_item", {"id": "slow"})
            soon = decision_of(await agent.call_tool("write_file", {"path": "p", "content": ""}))
        url = "/admin/approvals?status=pending&order=expiring&limit=1"
        assert [r["id"] for r in admin(desk, "GET", url).json()] == [soon["approval_id"]]
        deny_all(desk)


class TestPendingCaps:
    async def test_past_the_caps_held_calls_are_refused_and_nothing_is_queued(
        self, desk: GatewayProcess
    ) -> None:
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            for i in range(3):
                held = await agent.call_tool("delete_item", {"id": f"cap-{i}"})
                assert decision_of(held)["error"] == "approval_pending"
            full = await agent.call_tool("delete_item", {"id": "cap-3"})
        part = decision_of(full)
        assert full.is_error and part["error"] == "approval_queue_full"
        assert "grant bot already has 3 calls waiting" in part["reason"]
        async with client(desk.url("up"), key=OTHER_KEY) as other:
            results = [await other.call_tool("delete_item", {"id": f"o-{i}"}) for i in range(3)]
        assert [decision_of(r)["error"] for r in results] == [
            "approval_pending",
            "approval_pending",
            "approval_queue_full",
        ]
        assert "the gateway already has 5" in decision_of(results[-1])["reason"]
        assert len(pending(desk)) == 5
        deny_all(desk)
        metrics = admin(desk, "GET", "/metrics").text
        samples = {
            s.labels.get("event"): s.value
            for f in text_string_to_metric_families(metrics)
            if f.name == "celgate_approvals"
            for s in f.samples
            if s.name.endswith("_total")
        }
        assert samples["queue_full"] >= 2 and samples["denied"] >= 5


class TestDecisionRecords:
    async def test_every_decision_is_logged_with_who_what_and_why(
        self, desk: GatewayProcess
    ) -> None:
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            held = await agent.call_tool("delete_item", {"id": "logged"})
        approval_id = decision_of(held)["approval_id"]
        body = {"by": "dana", "note": "not this one"}
        url = f"{desk.base}/admin/approvals/{approval_id}/deny"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert httpx.post(url, json=body, headers=auth, timeout=10).status_code == 201
        (record,) = desk.wait_records(
            1, "approval.decided", where=lambda r: r["approval_id"] == approval_id
        )
        assert record["decision"] == "denied" and record["by"] == "dana"
        assert (record["note"], record["tool"], record["grant"]) == (
            "not this one",
            "delete_item",
            "bot",
        )


class TestOperatorPagesRefuseOtherSites:
    """The console and admin API: DNS rebinding (a foreign Host) and cross-site requests (a
    foreign Origin) are refused before the token is looked at; no cookie is ever accepted."""

    def test_console_is_served_with_a_strict_policy(self, desk: GatewayProcess) -> None:
        page = httpx.get(desk.base + "/console", timeout=10)
        assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "require-trusted-types-for 'script'" in CSP
        assert "<script>" not in page.text and 'src="/console/app.js"' in page.text
        assert page.headers["x-frame-options"] == "DENY"
        script = httpx.get(desk.base + "/console/app.js", timeout=10)
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "innerHTML" not in script.text.replace("an innerHTML assignment", "")

    @pytest.mark.parametrize("path", ["/console", "/admin/approvals"])
    def test_a_rebinding_host_is_refused(self, desk: GatewayProcess, path: str) -> None:
        response = admin(desk, "GET", path, Host="attacker.example")
        assert response.status_code == 421

    def test_a_cross_site_approval_is_refused(self, desk: GatewayProcess) -> None:
        url = "/admin/approvals/apr_x/approve"
        foreign = admin(desk, "POST", url, Origin="http://attacker.example")
        assert foreign.status_code == 403
        same_site = admin(desk, "POST", url, Origin=desk.base)
        assert same_site.status_code == 404  # past the guards: the id is unknown
        cookie_only = httpx.post(
            desk.base + url, json={}, headers={"Cookie": f"token={ADMIN_TOKEN}"}, timeout=10
        )
        assert cookie_only.status_code == 401


class TestConfig:
    def test_caps_are_checked_with_file_and_line(self, tmp_path: Path) -> None:
        path = tmp_path / "celgate.yaml"
        (tmp_path / "p.yaml").write_text('version: "1"\ndefault: deny\ntools: {}\n')
        path.write_text(
            "policy: p.yaml\nanonymous: true\napprovals:\n"
            "  max_pending_per_grant: 0\n  max_pending: many\n  max_pendng: 3\n"
        )
        with pytest.raises(ConfigError) as err:
            load_config(path)
        text = str(err.value)
        assert "celgate.yaml:4" in text and "approvals.max_pending_per_grant" in text
        assert "celgate.yaml:5" in text and "approvals.max_pending" in text
        assert "max_pendng" in text

    def test_defaults(self, tmp_path: Path) -> None:
        path = tmp_path / "celgate.yaml"
        (tmp_path / "p.yaml").write_text('version: "1"\ndefault: deny\ntools: {}\n')
        path.write_text(
            "policy: p.yaml\nanonymous: true\nservers: {up: {url: 'http://127.0.0.1:9/mcp'}}\n"
        )
        config = load_config(path)
        assert (config.approvals.max_pending_per_grant, config.approvals.max_pending) == (
            20,
            1000,
        )


def login(gw: GatewayProcess, token: str = ADMIN_TOKEN, **headers: str) -> httpx.Response:
    headers = {"Origin": gw.base, **headers}
    body = {"token": token, "operator": "erin"}
    return httpx.post(gw.base + "/console/login", json=body, headers=headers, timeout=10)


def signed_in(gw: GatewayProcess) -> tuple[httpx.Client, str]:
    """A client holding a console session's cookie, and the session's CSRF token."""
    response = login(gw)
    assert response.status_code == 200, response.text
    http = httpx.Client(base_url=gw.base, cookies=response.cookies, timeout=10)
    return http, response.json()["csrf"]


class TestConsoleLogin:
    """The admin token is posted once; the session is a random id in an HttpOnly,
    SameSite=Strict cookie, and each state-changing request needs its CSRF token and Origin."""

    def test_a_wrong_token_is_refused_and_sets_no_cookie(self, desk: GatewayProcess) -> None:
        response = login(desk, token="not-the-token")
        assert response.status_code == 401 and "set-cookie" not in response.headers
        assert desk.wait_records(1, "console.login_refused")

    def test_the_cookie_is_http_only_strict_and_not_the_token(self, desk: GatewayProcess) -> None:
        cookie = login(desk).headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http on loopback
        assert ADMIN_TOKEN not in cookie and hash_key(ADMIN_TOKEN) not in cookie
        https = login(desk, Origin=desk.base.replace("http://", "https://"))
        assert "Secure" in https.headers["set-cookie"]

    def test_a_login_needs_its_own_origin(self, desk: GatewayProcess) -> None:
        assert login(desk, Origin="http://attacker.example").status_code == 403
        no_origin = httpx.post(
            desk.base + "/console/login", json={"token": ADMIN_TOKEN}, timeout=10
        )
        assert no_origin.status_code == 403

    def test_the_session_reads_and_acts_with_csrf_and_origin(self, desk: GatewayProcess) -> None:
        http, csrf = signed_in(desk)
        with http:
            token = {"X-CSRF-Token": csrf}
            assert http.get("/admin/approvals", headers=token).status_code == 200
            # The cookie alone (every port of the host has it: red-team wave 58) reads
            # nothing, and is not told the token.
            assert http.get("/admin/approvals").status_code == 403
            assert (
                http.get("/admin/approvals", headers={"X-CSRF-Token": "x" * 43}).status_code == 403
            )
            assert http.get("/console/session").json() == {"signed_in": False}
            told = http.get("/console/session", headers=token).json()
            assert told["signed_in"] and told["operator"] == "erin"
            url = "/admin/approvals/apr_unknown/approve"
            checks = {
                "no csrf": http.post(url, json={}, headers={"Origin": desk.base}),
                "wrong csrf": http.post(
                    url, json={}, headers={"Origin": desk.base, "X-CSRF-Token": "x" * 43}
                ),
                "no origin": http.post(url, json={}, headers={"X-CSRF-Token": csrf}),
                "cross-site fetch": http.post(
                    url,
                    json={},
                    headers={
                        "Origin": desk.base,
                        "X-CSRF-Token": csrf,
                        "Sec-Fetch-Site": "cross-site",
                    },
                ),
            }
            assert {k: r.status_code for k, r in checks.items()} == dict.fromkeys(checks, 403)
            ok = http.post(url, json={}, headers={"Origin": desk.base, "X-CSRF-Token": csrf})
            assert ok.status_code == 404  # past every check: the id is unknown

    async def test_the_decision_is_recorded_under_the_signed_in_name(
        self, desk: GatewayProcess
    ) -> None:
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            held = await agent.call_tool("delete_item", {"id": "by-session"})
        approval_id = decision_of(held)["approval_id"]
        http, csrf = signed_in(desk)
        with http:
            response = http.post(
                f"/admin/approvals/{approval_id}/deny",
                json={"by": "someone-else", "note": "from the console"},
                headers={"Origin": desk.base, "X-CSRF-Token": csrf},
            )
        assert response.status_code == 201 and response.json()["decided_by"] == "erin"
        (record,) = desk.wait_records(
            1, "approval.decided", where=lambda r: r["approval_id"] == approval_id
        )
        assert (record["by"], record["note"]) == ("erin", "from the console")

    def test_logout_ends_the_session(self, desk: GatewayProcess) -> None:
        http, csrf = signed_in(desk)
        with http:
            refused = http.post("/console/logout", headers={"Origin": desk.base})
            assert refused.status_code == 403  # no CSRF token
            out = http.post("/console/logout", headers={"Origin": desk.base, "X-CSRF-Token": csrf})
            assert out.status_code == 200 and "Max-Age=0" in out.headers["set-cookie"]
            assert http.get("/admin/approvals").status_code == 401
            assert http.get("/console/session").json() == {"signed_in": False}

    def test_a_session_ends_with_the_admin_token_it_was_opened_with(
        self,
        desk: GatewayProcess,
        upstream: PeerProcess,
        valkey_server: ValkeyProcess,
        tmp_path: Path,
    ) -> None:
        """Sessions live in Valkey: a replica with the same token takes them, and one started
        after the token was rotated (a leaked token's remedy) or removed refuses them. They
        outlived the rotation for up to twelve hours (red-team wave 53)."""
        http, csrf = signed_in(desk)
        limits = {"backend": valkey_server.url, "key_prefix": "desk:"}
        servers = {"up": {"url": upstream.url}}
        admins = {
            "same": {"token_sha256": hash_key(ADMIN_TOKEN)},
            "rotated": {"token_sha256": hash_key("a-new-admin-token-0123456789abcdef")},
            "none": None,
        }
        seen = {}
        with http:
            for name, section in admins.items():
                extra: dict[str, Any] = {"limits": limits}
                if section is not None:
                    extra["admin"] = section
                folder = tmp_path / name
                folder.mkdir()
                with run_gateway(folder, POLICY, servers, **extra) as replica:
                    cookies = {"celgate_console": http.cookies["celgate_console"]}
                    token = {"X-CSRF-Token": csrf}
                    read = httpx.get(
                        replica.base + "/admin/policy", cookies=cookies, headers=token, timeout=10
                    )
                    state = httpx.get(
                        replica.base + "/console/session",
                        cookies=cookies,
                        headers=token,
                        timeout=10,
                    )
                    headers = {"Origin": replica.base, "X-CSRF-Token": csrf}
                    act = httpx.post(
                        replica.base + "/admin/reload", cookies=cookies, headers=headers, timeout=10
                    )
                    seen[name] = (read.status_code, state.json()["signed_in"], act.status_code)
            still = http.get("/admin/approvals", headers={"X-CSRF-Token": csrf})
            assert still.status_code == 200  # its own replica: still in
        assert seen["same"] == (200, True, 201)
        assert seen["rotated"][:2] == (401, False) and seen["rotated"][2] in (401, 403)
        assert seen["none"][:2] in ((401, False), (403, False)) and seen["none"][2] in (401, 403)

    def test_the_bearer_header_still_works_and_a_cookie_with_the_token_does_not(
        self, desk: GatewayProcess
    ) -> None:
        assert admin(desk, "GET", "/admin/approvals").status_code == 200
        forged = httpx.get(
            desk.base + "/admin/approvals",
            headers={"Cookie": f"celgate_console={ADMIN_TOKEN}"},
            timeout=10,
        )
        assert forged.status_code == 401


class TestConsoleSessions:
    """Sessions are bounded in time (idle and absolute) on an injected clock, in this process
    and in Valkey alike; in this process, also in number."""

    @pytest.fixture(params=["memory", "valkey"])
    async def store(self, request: Any, valkey_db: ValkeyProcess) -> Any:
        now = [1000.0]
        if request.param == "memory":
            yield ConsoleSessions(clock=lambda: now[0]), now
            return
        client = valkey_client(valkey_db.url)
        yield make_sessions(client, "t:", clock=lambda: now[0]), now
        await client.aclose()

    @staticmethod
    async def used(sessions: Any, session_id: str) -> bool:
        """A request of the session that passed the CSRF checks: read, then renewed."""
        found = await sessions.get(session_id, CRED)
        return found is not None and await sessions.renew(session_id, found)

    async def test_idle_and_absolute_deadlines(self, store: Any) -> None:
        sessions, now = store
        idle_id, _ = await sessions.open("ann", CRED)
        busy_id, _ = await sessions.open("bob", CRED)
        read_id, _ = await sessions.open("cy", CRED)
        now[0] += IDLE_SECONDS - 1
        assert await self.used(sessions, busy_id)
        # only read (a request refused for want of the CSRF token): no use of the session;
        # it kept an abandoned session alive for its 12 hours (red-team wave 67)
        assert await sessions.get(read_id, CRED) is not None
        now[0] += 2
        assert await sessions.get(idle_id, CRED) is None  # idle too long
        assert await sessions.get(read_id, CRED) is None
        assert await self.used(sessions, busy_id)
        while now[0] < 1000.0 + MAX_SECONDS:
            assert await self.used(sessions, busy_id)
            now[0] += IDLE_SECONDS / 2
        assert await sessions.get(busy_id, CRED) is None  # past the absolute deadline, however busy

    async def test_a_session_is_its_own_and_closing_ends_it(self, store: Any) -> None:
        sessions, _ = store
        one, first = await sessions.open("  ann\n  lee ", CRED)
        two, _ = await sessions.open("bob", CRED)
        found = await sessions.get(one, CRED)
        assert found is not None and found.operator == "ann lee" and found.csrf == first.csrf
        for forged in ("", "x" * 43, one + "x", "x" * 10_000, None):
            assert await sessions.get(forged, CRED) is None
        await sessions.close(one)
        assert await sessions.get(one, CRED) is None and await sessions.get(two, CRED) is not None

    async def test_a_session_is_good_only_with_the_credential_it_was_opened_with(
        self, store: Any
    ) -> None:
        sessions, _ = store
        one, _ = await sessions.open("ann", CRED)
        for other in ("another-tag", "", None, CRED.upper()):
            assert await sessions.get(one, other) is None

    async def test_at_most_so_many_the_least_recently_used_ends(self) -> None:
        sessions = ConsoleSessions(clock=lambda: 0.0)
        ids = [(await sessions.open(f"op{i}", CRED))[0] for i in range(MAX_SESSIONS)]
        assert await self.used(sessions, ids[0])  # now the most recently used
        await sessions.open("one more", CRED)
        assert len(sessions.live) == MAX_SESSIONS
        assert (
            await sessions.get(ids[1], CRED) is None
            and await sessions.get(ids[0], CRED) is not None
        )

    async def test_valkey_holds_only_the_hash_and_forgets_at_the_deadline(
        self, valkey_db: ValkeyProcess
    ) -> None:
        client = valkey_client(valkey_db.url)
        try:
            session_id, _ = await make_sessions(client, "t:").open("ann", CRED)
            keys = [k.decode() for k in await client.keys("t:cs:*")]
            assert len(keys) == 1 and session_id not in keys[0]
            assert 0 < await client.ttl(keys[0]) <= IDLE_SECONDS
        finally:
            await client.aclose()

    async def test_a_sign_out_between_a_read_and_its_refresh_stays_signed_out(
        self, valkey_db: ValkeyProcess
    ) -> None:
        """Replica B reads the session, replica A signs it out, then B refreshes its expiry:
        the refresh must not bring the session back (the order is forced here)."""
        client, other = valkey_client(valkey_db.url), valkey_client(valkey_db.url)
        try:
            replica_a, replica_b = make_sessions(other, "race:"), make_sessions(client, "race:")
            session_id, _ = await replica_a.open("ann", CRED)
            refresh = client.set

            async def signed_out_first(*args: Any, **kwargs: Any) -> Any:
                await replica_a.close(session_id)
                return await refresh(*args, **kwargs)

            client.set = signed_out_first  # type: ignore[method-assign]
            found = await replica_b.get(session_id, CRED)
            assert found is not None and not await replica_b.renew(session_id, found)
            client.set = refresh  # type: ignore[method-assign]
            assert await client.keys("race:cs:*") == []
            assert await replica_a.get(session_id, CRED) is None
        finally:
            await client.aclose()
            await other.aclose()

    async def test_valkey_down_is_refused_never_signed_in(self) -> None:
        client = valkey_client(f"valkey://127.0.0.1:{free_port()}/0", timeout=0.2)
        try:
            with pytest.raises(SessionStoreDown):
                await make_sessions(client).get("x" * 43, CRED)
            with pytest.raises(SessionStoreDown):
                await make_sessions(client).open("ann", CRED)
        finally:
            await client.aclose()


class TestLiveStream:
    async def test_the_stream_needs_a_session_and_filters(self, desk: GatewayProcess) -> None:
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert httpx.get(desk.base + "/console/events", headers=bearer).status_code == 401
        response = login(desk)
        cookies, csrf = response.cookies, response.json()["csrf"]
        seen: list[dict[str, Any]] = []
        async with httpx.AsyncClient(base_url=desk.base, cookies=cookies, timeout=10) as http:
            query = {"grant": "other", "tool": "up/not_in_policy", "effect": "deny"}
            # the cookie alone (sent to every port of the host) opens no stream
            assert (await http.get("/console/events", params=query)).status_code == 403
            query["csrf"] = csrf  # (an EventSource sends no header: the page puts it here)
            async with http.stream("GET", "/console/events", params=query) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                async with client(desk.url("up"), key=BOT_KEY) as bot:
                    await bot.call_tool("not_in_policy", {"marker": 1})  # another grant
                async with client(desk.url("up"), key=OTHER_KEY) as other:
                    await other.call_tool("not_in_policy", {"marker": 2})
                with anyio.fail_after(10):
                    async for line in stream.aiter_lines():
                        if line.startswith("data: "):
                            seen.append(json.loads(line[6:]))
                            break
        (record,) = seen
        assert (record["grant"], record["tool"], record["effect"]) == (
            "other",
            "not_in_policy",
            "deny",
        )

    async def test_a_stream_signed_out_while_it_waits_tells_nothing_more(
        self, desk: GatewayProcess
    ) -> None:
        """The session was checked before each wait, not after: a record that came in the
        15 s after sign-out (idle expiry, eviction) still reached the page, arguments too."""
        response = login(desk)
        csrf = response.json()["csrf"]
        lines: list[str] = []
        async with (
            httpx.AsyncClient(base_url=desk.base, cookies=response.cookies) as http,
            http.stream("GET", "/console/events", params={"csrf": csrf}, timeout=10) as stream,
        ):
            lines_in = stream.aiter_lines()
            out = await http.post(
                "/console/logout", headers={"Origin": desk.base, "X-CSRF-Token": csrf}
            )
            assert out.status_code == 200
            async with client(desk.url("up"), key=OTHER_KEY) as other:
                await other.call_tool("called_after_sign_out", {})  # a denial, recorded
            with anyio.fail_after(10):
                async for line in lines_in:
                    lines.append(line)
                    if line.startswith("event: signed-out"):
                        break
        assert "event: signed-out" in lines
        assert not any("called_after_sign_out" in line for line in lines), lines

    async def test_each_record_once_and_a_store_that_stalls_signs_no_one_out(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The backlog was read after the stream began: a record made in between came twice
        (red-team wave 70). And a session store that did not answer ended the stream with
        ``signed-out``, which signs the page out, the session alive (red-team wave 70)."""
        from gateway.server.console import login as login_module
        from gateway.server.console.feed import DecisionFeed

        feed = DecisionFeed([{"decision_id": "old"}], 100)
        subscriber = feed.subscribe()
        assert subscriber is not None
        subscriber.backlog = list(feed)  # as the endpoint takes it, subscribing
        feed.append({"decision_id": "new"})  # made as the stream began
        answers: list[bool | None] = [True, True, None]

        async def still_signed_in(gateway: Any, cookie: Any) -> bool | None:
            return answers.pop(0)

        monkeypatch.setattr(login_module, "_still_signed_in", still_signed_in)
        monkeypatch.setattr(login_module, "_message", lambda gw, r: r["decision_id"])
        sent = [m async for m in login_module._stream(None, feed, subscriber, {}, "c")]  # type: ignore[arg-type]
        assert [m for m in sent if isinstance(m, str)] == ["old", "new"]
        assert not [m for m in sent if getattr(m, "event", None) == "signed-out"]


class TestSecretArguments:
    async def test_marked_fields_are_masked_and_the_approval_binds_the_real_values(
        self, desk: GatewayProcess
    ) -> None:
        """The digest shown is of what is shown (the masked arguments: a digest of the real
        ones beside the other values gave a short secret to whoever hashed guesses); the
        approval binds the real ones: another password is another request."""
        args = {"id": "acct", "password": "hunter2", "auth": {"token": "tok-123", "user": "u"}}
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            held = await agent.call_tool("delete_item", args)
            approval_id = decision_of(held)["approval_id"]
            other = await agent.call_tool("delete_item", {**args, "password": "hunter3"})
            assert decision_of(other)["approval_id"] != approval_id
        listing = admin(desk, "GET", "/admin/approvals?status=pending")
        assert "hunter2" not in listing.text and "tok-123" not in listing.text
        (row,) = [r for r in listing.json() if r["id"] == approval_id]
        assert row["args"] == {
            "id": "acct",
            "password": "[celgate: secret]",
            "auth": {"token": "[celgate: secret]", "user": "u"},
        }
        assert row["args_digest"] == args_digest(row["args"]) != args_digest(args)
        # The match key hashes the real arguments with grant, agent, server, tool and revision,
        # all shown beside it: hashing guesses of a PIN against it finds the PIN.
        assert "match" not in row
        denied = admin(desk, "POST", f"/admin/approvals/{approval_id}/deny")
        assert denied.status_code == 201 and "match" not in denied.json()
        deny_all(desk)

    def test_a_bad_path_is_a_load_error_with_file_and_line(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.yaml"
        path.write_text(
            'version: "1"\ntools:\n  t:\n    secret_args:\n      - ok.path\n'
            '      - "a..b"\n      - 3\n  u:\n    secret_args: password\n'
        )
        with pytest.raises(ConfigError) as err:
            load_policy([path])
        text = str(err.value)
        assert "rules.yaml:6" in text and "tools.t.secret_args[1]" in text
        assert "rules.yaml:7" in text and "tools.t.secret_args[2]" in text
        assert "rules.yaml:9" in text and "tools.u.secret_args" in text


async def approvals_list(gw: GatewayProcess) -> str:
    """What ``celgate approvals list`` prints for the operator."""
    argv = [sys.executable, "-m", "gateway.cli", "approvals", "list", "--url", gw.base]
    with anyio.fail_after(60):
        done = await anyio.run_process([*argv, "--token", ADMIN_TOKEN], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return str(done.stdout.decode())


class TestApprovalsListText:
    async def test_two_deletes_of_different_notes_look_different(
        self, desk: GatewayProcess
    ) -> None:
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            await agent.call_tool("delete_item", {"id": "note-groceries"})
            await agent.call_tool("delete_item", {"id": "note-taxes\u001b[2J"})
        stdout = await approvals_list(desk)
        assert 'args: {"id": "note-groceries"}' in stdout
        assert 'args: {"id": "note-taxes\\u001b[2J"}' in stdout
        assert "\x1b" not in stdout
        deny_all(desk)

    async def test_reordering_and_invisible_characters_are_shown_escaped(
        self, desk: GatewayProcess
    ) -> None:
        """A bidi override made ``ls /tmp/cache\u202e; rm -rf ~ #`` print as a harmless ``ls``;
        C1 controls (``\x9b`` is a terminal's CSI) went to the terminal as they were."""
        async with client(desk.url("up"), key=BOT_KEY) as agent:
            await agent.call_tool("delete_item", {"id": "ls /tmp/cache\u202e; rm -rf ~ #\x9b2J"})
            # Characters that draw nothing yet are printable to Python: a payload after one
            # visible letter (variation selectors), a combining grapheme joiner, a filler.
            await agent.call_tool("delete_item", {"id": "A\ufe01\ufe02 b\u034fc \u3164 \U000e0041"})
        stdout = await approvals_list(desk)
        assert 'args: {"id": "ls /tmp/cache\\u202e; rm -rf ~ #\\x9b2J"}' in stdout
        assert "\u202e" not in stdout and "\x9b" not in stdout
        assert 'args: {"id": "A\\ufe01\\ufe02 b\\u034fc \\u3164 \\U000e0041"}' in stdout
        assert not any(c in stdout for c in "\ufe01\u034f\u3164\U000e0041")
        deny_all(desk)

    async def test_a_tool_name_with_a_control_character_is_refused(
        self, desk: GatewayProcess
    ) -> None:
        """Under a glob such as ``delete_*`` an agent picks the name: one that erased its own
        row and drew a harmless one in the approver's terminal was held. No tool has such a
        name: the call is refused before policy, and nothing is held."""
        before = {r["id"] for r in pending(desk)}
        names = ("delete_x\r\x1b[2Kfake", "delete_\u202eeman", "delete_\u200b", "delete_\u034f")
        for name in (*names, "delete_x\ufe0f", "delete_\u3164"):
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}
            headers = {
                "authorization": f"Bearer {BOT_KEY}",
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
            }
            body["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
            resp = httpx.post(desk.url("up"), json=body, headers=headers, timeout=10)
            assert resp.json()["error"]["code"] == -32602, name
        assert {r["id"] for r in pending(desk)} == before
