"""The operator's console in a real browser: Debian's chromium driven by Playwright, a real
gateway process, the test upstream as a process and the SDK client as the agent.

Skipped only when chromium or Playwright is not installed, and never in CI (``.ci/run``
installs both): there a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth.identity import hash_key
from tests.gateway_proc import GatewayProcess, calls_in, client, decision_of, run_gateway, text_of
from tests.peers import PeerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AGENT_KEY = "cgk_console-test-agent-0123456789"
ADMIN_TOKEN = "console-admin-token-0123456789abcdef"
POLICY = """
version: "1"
default: deny
tools:
  delete_item:
    action: require_approval
    reason: deleting needs a human
    approval: {mode: retry, timeout: 600}
    secret_args: [auth.token]
    limits:
      - {counter: deletes, max: 50, window: hour}
"""
#: Screenshots of the main pages go here when set (docs/ when the docs are refreshed).
SHOTS = os.environ.get("CELGATE_SCREENSHOTS")


def _chromium() -> tuple[str | None, str]:
    """The browser's path, or None and why not."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return None, "Playwright for Python is not installed (pip install -e '.[test]')"
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    return path, "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does)"


@pytest.fixture(scope="module")
def gateway(
    upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    extra = {
        "grants": {"notes-bot": {"key_sha256": hash_key(AGENT_KEY)}},
        "admin": {"token_sha256": hash_key(ADMIN_TOKEN)},
    }
    servers = {"up": {"url": upstream.url}}
    with run_gateway(tmp_path_factory.mktemp("console"), POLICY, servers, **extra) as gw:
        yield gw


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    """A fresh headless chromium page; console errors (a CSP violation included) and dialogs
    are collected on it for the test to check."""
    path, missing = _chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            tab = await browser.new_page()
            tab.problems = []
            tab.on("console", lambda m: m.type == "error" and tab.problems.append(m.text))
            tab.on("pageerror", lambda e: tab.problems.append(str(e)))
            tab.on("dialog", lambda d: tab.problems.append(f"dialog: {d.message}"))
            yield tab
        finally:
            await browser.close()


async def sign_in(page: Any, gw: GatewayProcess, token: str = ADMIN_TOKEN) -> None:
    await page.goto(gw.base + "/console")
    await page.fill("#token", token)
    await page.fill("#operator", "carol")
    await page.click("#sign-in")


class TestApproveInTheBrowser:
    async def test_a_bidi_override_is_shown_not_obeyed(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """An argument holding a right-to-left override read, on the card, as a harmless ``ls``
        followed by a comment (``ls /tmp/cache# ~ fr- mr ;``). Each character that reorders
        or hides text is now shown as its escape, so the card reads as the call is (the
        combining grapheme joiner and the Arabic number sign drew nothing too)."""
        from playwright.async_api import expect

        sneaky = "ls /tmp/cache\u202e; rm -rf ~ #\u202c\u200b staging\u034f-db\u0600"
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            held = await agent.call_tool("delete_item", {"id": sneaky})
            approval_id = decision_of(held)["approval_id"]
            await sign_in(page, gateway)
            card = page.locator(f'article[data-approval-id="{approval_id}"]')
            await expect(card.locator("pre.args")).to_have_text(
                '{\n  "id": "ls /tmp/cache\\u202e; rm -rf ~ #\\u202c\\u200b '
                'staging\\u034f-db\\u0600"\n}'
            )
            await card.locator("button.deny").click()
            await expect(card.locator(".settled-note")).to_contain_text(" by carol")

    async def test_operator_sees_the_arguments_and_approves(
        self, gateway: GatewayProcess, page: Any, call_log: Path
    ) -> None:
        """The held call shows with its arguments; Approve lets the agent's retry pass, once."""
        from playwright.async_api import expect

        args = {"id": "note-from-the-console"}
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            held = await agent.call_tool("delete_item", args)
            approval_id = decision_of(held)["approval_id"]
            await sign_in(page, gateway)
            card = page.locator(f'article[data-approval-id="{approval_id}"]')
            await expect(card.locator("pre.args")).to_have_text(
                '{\n  "id": "note-from-the-console"\n}'
            )
            await expect(card.locator("h3")).to_have_text("up/delete_item")
            await expect(card).to_contain_text("notes-bot")
            await card.locator("button.approve").click()
            status = page.locator("#status")
            await expect(status).to_have_text(f"{approval_id} (up/delete_item): approved by carol")
            await expect(card.locator(".settled-note")).to_contain_text(" by carol")
            (cookie,) = await page.context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
                "celgate_console",
                True,
                "Strict",
            )
            assert ADMIN_TOKEN not in cookie["value"]
            passed = await agent.call_tool("delete_item", args)
            assert not passed.is_error, text_of(passed)
        deleted = [c for c in calls_in(call_log) if c["tool"] == "delete_item"]
        assert [c["arguments"] for c in deleted].count(args) == 1
        (record,) = gateway.wait_records(
            1, "approval.decided", where=lambda r: r["approval_id"] == approval_id
        )
        assert (record["decision"], record["by"], record["tool"]) == (
            "approved",
            "carol",
            "delete_item",
        )
        decided = page.locator("#decided tbody tr", has_text=approval_id)
        # "approved", or "used" once a refresh of the page has seen the retry take it.
        await expect(decided).to_contain_text(re.compile("approved|used"))
        await expect(decided).to_contain_text("carol")
        assert page.problems == []

    async def test_deny_with_a_note_reaches_the_agent(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        from playwright.async_api import expect

        args = {"id": "keep-this-one"}
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            approval_id = decision_of(await agent.call_tool("delete_item", args))["approval_id"]
            await sign_in(page, gateway)
            card = page.locator(f'article[data-approval-id="{approval_id}"]')
            await card.locator("input.note").fill("that note is still needed")
            await card.locator("button.deny").click()
            await expect(page.locator("#status")).to_contain_text("denied by carol")
            refused = await agent.call_tool("delete_item", args)
        assert refused.is_error
        assert "refused by carol: that note is still needed" in text_of(refused)


class TestHostileArguments:
    async def test_markup_in_arguments_is_shown_as_text_and_never_runs(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        from playwright.async_api import expect

        payload = '<img src=x onerror="window.__pwned=1;alert(1)">'
        closing = "</pre><script>window.__pwned=2</script>"
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            held = await agent.call_tool("delete_item", {"id": payload, closing: closing})
            approval_id = decision_of(held)["approval_id"]
        await sign_in(page, gateway)
        card = page.locator(f'article[data-approval-id="{approval_id}"]')
        text = await card.locator("pre.args").text_content()
        assert '"id": "<img src=x onerror=\\"window.__pwned=1;alert(1)\\">"' in text
        assert f'"{closing}": "{closing}"' in text
        await expect(page.locator("#pending img")).to_have_count(0)
        await expect(page.locator("body script")).to_have_count(0)
        assert await page.evaluate("window.__pwned") is None
        assert page.problems == []


class TestSignIn:
    async def test_a_wrong_token_is_refused(self, gateway: GatewayProcess, page: Any) -> None:
        from playwright.async_api import expect

        await sign_in(page, gateway, token="not-the-admin-token")
        await expect(page.locator("#status")).to_have_text("Refused: invalid admin token")
        await expect(page.locator("#desk")).to_be_hidden()
        assert await page.context.cookies() == []
        storage = await page.evaluate(
            "JSON.stringify(sessionStorage) + JSON.stringify(localStorage)"
        )
        assert "not-the-admin-token" not in storage

    async def test_a_reload_keeps_the_session_and_sign_out_ends_it(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        from playwright.async_api import expect

        await sign_in(page, gateway)
        await expect(page.locator("#who")).to_have_text("signed in as carol")
        await page.reload()
        await expect(page.locator("#desk")).to_be_visible()
        storage = await page.evaluate(
            "JSON.stringify(sessionStorage) + JSON.stringify(localStorage)"
        )
        assert ADMIN_TOKEN not in storage
        await page.click("#sign-out")
        await expect(page.locator("#login")).to_be_visible()
        await page.reload()
        await expect(page.locator("#login")).to_be_visible()
        await expect(page.locator("#desk")).to_be_hidden()
        assert page.problems == []

    async def test_a_signed_out_page_keeps_nothing_it_was_shown(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """Signed out, the page kept the live decisions, upstreams, policy, counters and
        tools in its DOM, and a listing answered after sign-out drew held calls' arguments
        back onto the desk (red-team wave 62). Sign-out empties the desk, and an answer
        asked for before it is not drawn."""
        from playwright.async_api import expect

        args = {"id": "wire-transfer-4711"}
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            await agent.call_tool("delete_item", args)
            await sign_in(page, gateway)
            await expect(page.locator("#pending")).to_contain_text("wire-transfer-4711")
            for tab in ("system", "tools", "decisions", "approvals"):
                await page.click(f"button[data-tab={tab}]")
            await expect(page.locator("#upstreams tbody tr")).to_have_count(1)
            asked, released = asyncio.Event(), asyncio.Event()

            async def slow(route: Any) -> None:
                asked.set()
                await released.wait()
                await route.continue_()

            await page.route("**/admin/approvals?status=pending*", slow)
            listing = asyncio.ensure_future(page.evaluate("refresh()"))  # a listing under way
            await asked.wait()
            await page.click("#sign-out")  # ...when the operator signs out
            await expect(page.locator("#login")).to_be_visible()
            released.set()
            await listing  # its answer came, after sign-out
            text = await page.evaluate("document.getElementById('desk').textContent")
            assert "wire-transfer-4711" not in text and "up/" not in text
            for table in ("pending", "decided", "decisions", "upstreams", "counters", "tools"):
                rows = await page.locator(f"#{table} tbody tr, #{table} article").count()
                assert rows == 0, table
            assert await page.locator("#policy").inner_text() == ""
            assert await page.locator("#revision").inner_text() == ""

    async def test_a_page_on_another_port_gets_the_cookie_and_nothing_with_it(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """Browsers send a cookie to every port of its host: a page on another port of
        127.0.0.1 (any local listener the operator opens) had the session's cookie, read its
        CSRF token from /console/session and approved a held call (red-team wave 58). The
        token is the page's alone (its origin's sessionStorage): the cookie opens nothing."""
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from playwright.async_api import expect

        got: list[str] = []

        class Other(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                got.append(self.headers.get("cookie") or "")
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        other = ThreadingHTTPServer(("127.0.0.1", 0), Other)
        threading.Thread(target=other.serve_forever, daemon=True).start()
        try:
            await sign_in(page, gateway)
            await expect(page.locator("#who")).to_have_text("signed in as carol")
            await page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        finally:
            other.shutdown()
        cookie = next(c for c in got if "celgate_console=" in c)  # sent there: not ours to stop
        headers = {"cookie": cookie}
        async with httpx.AsyncClient(base_url=gateway.base, headers=headers, timeout=10) as http:
            assert (await http.get("/console/session")).json() == {"signed_in": False}
            assert (await http.get("/admin/approvals")).status_code == 403
            forged = {"origin": gateway.base, "x-csrf-token": "guess"}
            approve = await http.post("/admin/approvals/apr_x/approve", headers=forged)
            assert approve.status_code == 403
            assert (await http.get("/console/events")).status_code == 403
        await page.goto(gateway.base + "/console")  # the console's own page: still in
        await expect(page.locator("#desk")).to_be_visible()
        assert page.problems == []

    async def test_a_sign_in_elsewhere_signs_this_page_out(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """Another tab's sign-in replaces the session the cookie names: this page's token
        then matched nothing, and its desk kept failing ("could not reach the admin API")
        without ever offering the sign-in its message asked for (red-team wave 60)."""
        from playwright.async_api import expect

        await sign_in(page, gateway)
        await expect(page.locator("#who")).to_have_text("signed in as carol")
        status = await page.evaluate(
            """async (token) => (await fetch("/console/login", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({token, operator: "dave"})})).status""",
            ADMIN_TOKEN,
        )
        assert status == 200  # the cookie now names dave's session, which this page lacks
        await expect(page.locator("#login")).to_be_visible(timeout=15_000)
        await expect(page.locator("#desk")).to_be_hidden()

    async def test_upstreams_policy_limits_and_tools_are_shown(
        self, gateway: GatewayProcess, upstream: PeerProcess, page: Any
    ) -> None:
        from playwright.async_api import expect

        await sign_in(page, gateway)
        await page.click("button[data-tab=system]")
        up = page.locator("#upstreams tbody tr")
        await expect(up).to_have_count(1)
        await expect(up).to_contain_text("up")
        await expect(up).to_contain_text(upstream.url)
        await expect(page.locator("#revision")).to_contain_text("policy revision ")
        await expect(page.locator("#policy")).to_contain_text("none since start")
        counters = page.locator("#counters tbody tr")
        await expect(counters).to_contain_text("deletes")
        await expect(counters).to_contain_text("50 per 3600 s")
        await page.click("button[data-tab=tools]")
        tool = page.locator("#tools tbody tr", has_text="delete_item")
        await expect(tool).to_contain_text("pinned")
        assert page.problems == []

    async def test_a_refused_reload_shows_each_problem_with_file_and_line(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        from playwright.async_api import expect

        policy = gateway.log_path.parent / "policy.yaml"
        good = policy.read_text()
        line = len(good.splitlines()) + 2
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=gateway.base, headers=bearer, timeout=10) as http:
            try:
                policy.write_text(good + "  bad_entry:\n    action: maybe\n")
                refused = await http.post("/admin/reload")
                assert refused.status_code == 409 and refused.json()["reloaded"] is False
                assert any("tools.bad_entry.action" in p for p in refused.json()["problems"])
                await sign_in(page, gateway)
                await page.click("button[data-tab=system]")
                await expect(page.locator("#policy")).to_contain_text("refused (")
                problem = page.locator("#reload-problems li")
                await expect(problem).to_contain_text(f"policy.yaml:{line}")
                await expect(problem).to_contain_text("tools.bad_entry.action")
            finally:
                policy.write_text(good)
                assert (await http.post("/admin/reload")).json()["reloaded"] is True

    async def test_a_warning_and_a_shadow_rule_are_shown(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """An entry naming a server the gateway does not serve loads and matches nothing: it
        was said in the log and in /admin/policy after a reload, never on the console (nor
        at all, from start). A shadow rule's would-be answer, the point of trying one on live
        traffic, was only in the records."""
        from playwright.async_api import expect

        policy = gateway.log_path.parent / "policy.yaml"
        good = policy.read_text()
        extra = "  nosuchserver/drop_table: {action: deny}\n"
        extra += "  tried_out:\n    mode: shadow\n    action: allow\n"
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=gateway.base, headers=bearer, timeout=10) as http:
            try:
                policy.write_text(good + extra)
                assert (await http.post("/admin/reload")).json()["reloaded"] is True
                warnings = (await http.get("/admin/policy")).json()["warnings"]
                assert warnings and "nosuchserver" in warnings[0]
                await sign_in(page, gateway)
                await page.click("button[data-tab=system]")
                await expect(page.locator("#policy-warnings li")).to_contain_text("nosuchserver")
                await page.click("button[data-tab=decisions]")
                await expect(page.locator("#stream-state")).to_have_text("(live)")
                async with client(gateway.url("up"), key=AGENT_KEY) as agent:
                    await agent.call_tool("tried_out", {"x": 1})
                row = page.locator("#decisions tbody tr", has_text="up/tried_out").first
                await expect(row).to_contain_text("deny")  # enforced: the default
                await expect(row.locator("td.shadowed")).to_contain_text("would allow")
            finally:
                policy.write_text(good)
                assert (await http.post("/admin/reload")).json()["reloaded"] is True
        assert page.problems == []


class TestLiveDecisions:
    async def test_decisions_stream_in_filtered_by_effect(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """Opened with effect=deny, the stream shows the refused call as it happens and not
        the held one."""
        from playwright.async_api import expect

        await sign_in(page, gateway)
        await page.click("button[data-tab=decisions]")
        await page.select_option("#f-effect", "deny")
        await page.fill("#f-tool", "")
        await page.click("#stream-filter button[type=submit]")
        await expect(page.locator("#stream-state")).to_have_text("(live)")
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            await agent.call_tool("delete_item", {"id": "streamed-held"})
            await agent.call_tool("not_in_policy", {"x": 1})
        rows = page.locator("#decisions tbody tr", has_text="up/not_in_policy")
        await expect(rows.first).to_contain_text("deny")
        await expect(page.locator("#decisions td.effect-require_approval")).to_have_count(0)
        await expect(page.locator("#decisions td.effect-allow")).to_have_count(0)
        assert page.problems == []


class TestSecretArguments:
    async def test_a_secret_field_is_masked_on_the_card(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        from playwright.async_api import expect

        args = {"id": "with-a-secret", "auth": {"token": "s3cret-value", "user": "ann"}}
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            approval_id = decision_of(await agent.call_tool("delete_item", args))["approval_id"]
        await sign_in(page, gateway)
        card = page.locator(f'article[data-approval-id="{approval_id}"]')
        await expect(card.locator("pre.args")).to_contain_text('"token": "[celgate: secret]"')
        await expect(card.locator("pre.args")).to_contain_text('"user": "ann"')
        assert "s3cret-value" not in (await page.content())
        await card.locator("button.deny").click()
        await expect(card.locator(".settled-note")).to_contain_text(" by carol")

    async def test_a_card_that_leaves_the_desk_stays_in_place_until_dismissed(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """A card removed at once let the one below slide under the pointer: an agent that
        withdrew a harmless held call could have the operator's click on its "Approve"
        approve the dangerous call queued below it. It stays, settled, with no buttons."""
        from playwright.async_api import expect

        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            first = decision_of(await agent.call_tool("delete_item", {"id": "harmless"}))
            second = decision_of(await agent.call_tool("delete_item", {"id": "production-db"}))
        await page.clock.install()  # the page's timers and Date.now: run on by the test
        await sign_in(page, gateway)
        top = page.locator(f'article[data-approval-id="{first["approval_id"]}"]')
        below = page.locator(f'article[data-approval-id="{second["approval_id"]}"]')
        await expect(below.locator("button.approve")).to_be_visible()
        placed = await below.bounding_box()
        elsewhere = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        url = f"{gateway.base}/admin/approvals/{first['approval_id']}/deny"
        assert httpx.post(url, json={}, headers=elsewhere).status_code == 201
        await page.clock.run_for(3500)  # the desk's next refresh
        await expect(top.locator(".settled-note")).to_contain_text("no longer pending")
        await expect(top.locator("button.approve")).to_have_count(0)
        assert await below.bounding_box() == placed  # nothing moved under the pointer
        await top.locator("button.dismiss").click()
        await expect(top).to_have_count(0)
        await below.locator("button.deny").click()  # at once: taken for a slip, ignored
        await page.clock.run_for(1000)  # the desk has been still for a second
        await expect(below.locator(".settled-note")).to_have_count(0)
        await below.locator("button.deny").click()
        await expect(below.locator(".settled-note")).to_contain_text("denied by carol")

    async def test_integers_past_two_to_the_53_are_shown_exactly(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """JavaScript reads 9007199254740993 as ...992: the card shows the server's text."""
        from playwright.async_api import expect

        args = {"id": "snowflake", "n": 9007199254740993, "huge": int("9" * 400)}
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            approval_id = decision_of(await agent.call_tool("delete_item", args))["approval_id"]
        await sign_in(page, gateway)
        card = page.locator(f'article[data-approval-id="{approval_id}"]')
        await expect(card.locator("pre.args")).to_contain_text('"n": 9007199254740993')
        await expect(card.locator("pre.args")).to_contain_text('"huge": ' + "9" * 400)
        await card.locator("button.deny").click()
        await expect(card.locator(".settled-note")).to_contain_text(" by carol")

    async def test_every_argument_is_in_sight_above_approve(
        self, gateway: GatewayProcess, page: Any
    ) -> None:
        """The agent orders its arguments: three long harmless ones first pushed
        ``"path": "/"`` below the end of a box 24rem high, the card marked nothing as cut,
        and Approve sat right under it (red-team wave 41). The card names every argument up
        front, and the box is as tall as what it shows."""
        from playwright.async_api import expect

        args = {
            "id": "tidy",
            **{name: "harmless words " * 132 for name in ("comment", "context", "ticket")},
            "path": "/",
            "recursive": True,
        }
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            approval_id = decision_of(await agent.call_tool("delete_item", args))["approval_id"]
        await sign_in(page, gateway)
        card = page.locator(f'article[data-approval-id="{approval_id}"]')
        names = "id, comment, context, ticket, path, recursive"
        await expect(card.locator("dd.arg-names")).to_have_text(names)
        box = card.locator("pre.args")
        await expect(box).to_contain_text('"path": "/"')
        hidden = await box.evaluate("e => e.scrollHeight - e.clientHeight")
        assert hidden <= 1  # nothing scrolled out of the box's sight
        await card.locator("button.deny").click()
        await expect(card.locator(".settled-note")).to_contain_text(" by carol")


class TestScreenshots:
    async def test_main_pages(self, gateway: GatewayProcess, page: Any, tmp_path: Path) -> None:
        """The sign-in page, the approval desk with a held call, the live decisions and the
        system page, as PNGs (into ``$CELGATE_SCREENSHOTS`` when set, for docs/)."""
        from playwright.async_api import expect

        out = Path(SHOTS) if SHOTS else tmp_path
        await page.set_viewport_size({"width": 1200, "height": 820})
        await page.goto(gateway.base + "/console")
        await page.fill("#operator", "carol")
        await page.screenshot(path=str(out / "console-sign-in.png"))
        args = {"id": "quarterly-report", "auth": {"token": "hidden", "user": "ann"}}
        async with client(gateway.url("up"), key=AGENT_KEY) as agent:
            approval_id = decision_of(await agent.call_tool("delete_item", args))["approval_id"]
            await agent.call_tool("not_in_policy", {"x": 1})
            await sign_in(page, gateway)
            card = page.locator(f'article[data-approval-id="{approval_id}"]')
            await expect(card).to_be_visible()
            await page.screenshot(path=str(out / "console-approvals.png"), full_page=True)
            await page.click("button[data-tab=decisions]")
            await expect(page.locator("#decisions tbody tr").first).to_be_visible()
            await page.screenshot(path=str(out / "console-decisions.png"), full_page=True)
            await page.click("button[data-tab=system]")
            await expect(page.locator("#counters tbody tr")).to_have_count(1)
            await page.screenshot(path=str(out / "console-system.png"), full_page=True)
            await page.click("button[data-tab=approvals]")
            await card.locator("button.deny").click()
            await expect(card.locator(".settled-note")).to_contain_text(" by carol")
        names = sorted(p.name for p in out.glob("console-*.png"))
        assert names == [
            "console-approvals.png",
            "console-decisions.png",
            "console-sign-in.png",
            "console-system.png",
        ]
