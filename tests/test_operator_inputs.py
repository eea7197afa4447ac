"""What operators paste and look at: an approval ID from anywhere is only ever that ID (never
another path of the admin API), two argument keys cut to one preview name both stay in view,
and the console's live feed gives back the place of a page that stopped reading."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import http.server
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from litestar import Litestar, get
from litestar.response import ServerSentEvent, ServerSentEventMessage

from gateway.approvals.service import CUT, preview_args
from gateway.cli import main
from gateway.config import load_config
from gateway.server.app import build_app
from gateway.server.build import build_gateway
from gateway.server.console import feed as feed_module
from gateway.server.console.feed import (
    MAX_STREAMS,
    STALE_SECONDS,
    DecisionFeed,
    StalledWrites,
    install_feed,
)
from tests.gateway_proc import wait_healthy, write_config
from tests.peers import free_port, start_process

SERVERS = {"up": {"url": "http://127.0.0.1:9/mcp"}}


def get_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An ASGI ``GET`` as a server gives it to an app."""
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8787),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
        "asgi": {"version": "3.0"},
    }


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_POST(self) -> None:
        type(self).seen.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"id": "apr_x", "status": "denied", "decided_by": "erin"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def admin_api() -> Iterator[str]:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("pasted", ["apr_X/approve?", "apr_A/../apr_B", "apr_x#", "../x", "apr_"])
def test_a_pasted_id_that_is_no_approval_id_goes_nowhere(
    admin_api: str, pasted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["approvals", "deny", pasted, "--url", admin_api, "--token", "cga_t"])
    assert "is not an approval ID" in str(ended.value)
    assert _Recorder.seen == []


def test_an_approval_id_reaches_its_own_path(admin_api: str) -> None:
    assert main(["approvals", "deny", "apr_Ab-9_z", "--url", admin_api, "--token", "cga_t"]) == 0
    assert _Recorder.seen == ["/admin/approvals/apr_Ab-9_z/deny"]


class TestPreview:
    def test_keys_cut_to_one_name_are_both_shown(self) -> None:
        same = "p" * 5000
        shown, truncated = preview_args({same + "a": "harmless", same + "b": "rm -rf /"})
        assert truncated
        assert sorted(shown.values(), key=str) == ["harmless", "rm -rf /"]

    def test_a_key_named_as_the_marker_is_not_taken_for_it(self) -> None:
        shown, _ = preview_args({CUT: "drop table users", "a": 1})
        assert "drop table users" in shown.values() and shown["a"] == 1


class TestLiveFeedPlaces:
    def test_a_page_that_stopped_coming_gives_its_place(self) -> None:
        now = [0.0]
        feed = DecisionFeed([], 100, clock=lambda: now[0])
        stuck = [feed.subscribe() for _ in range(MAX_STREAMS)]
        assert feed.subscribe() is None  # every place taken, all of them fresh
        now[0] += STALE_SECONDS / 2
        live = stuck[0]
        assert live is not None
        live.came(now[0])  # this one keeps coming for its records
        now[0] += STALE_SECONDS / 2 + 1
        newcomer = feed.subscribe()
        assert newcomer is not None
        assert live in feed.subscribers and not live.gone
        assert all(s is not None and s.gone for s in stuck[1:])
        assert len(feed.subscribers) == 2

    async def test_a_write_nobody_takes_ends_the_stream(self) -> None:
        """Through Litestar's own SSE response: the stuck write is cut and the stream's
        generator is closed (where the real one gives back its place)."""
        closed: list[bool] = []

        async def records() -> Any:
            try:
                while True:
                    yield ServerSentEventMessage(data="x" * 100, event="decision")
                    await anyio.lowlevel.checkpoint()
            finally:
                closed.append(True)

        @get("/events")
        async def events() -> ServerSentEvent:
            return ServerSentEvent(records())

        app = Litestar([events])
        stuck = asyncio.Event()  # never set: a reader that stopped reading
        sent = 0

        async def receive() -> Any:
            await stuck.wait()

        async def send(message: Any) -> None:
            nonlocal sent
            sent += 1
            if sent > 3:
                await stuck.wait()

        writes = StalledWrites(send, seconds=0.05)
        scope = get_scope("/events", [])
        raised = False
        try:
            await app(scope, receive, writes)  # type: ignore[arg-type]
        except Exception:  # Litestar wraps it; the edge app catches it (app._live_stream)
            raised = True
        assert raised and writes.stalled
        gc.collect()  # as the edge app's frame letting go of the error does
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        assert closed == [True]


@pytest.mark.parametrize("path", ["/console/events", "/console/events/", "//console/events"])
async def test_a_stream_cut_mid_write_gives_its_place_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The console's own live feed, in process: a page that signs in, opens the feed and then
    takes no write is cut, and its place is free at once (its generator is never closed, so
    its own ``finally`` never ran: eight such pages shut the feed for every operator). Every
    spelling Litestar routes to the feed (a trailing slash went around the edge's cut)."""
    monkeypatch.setattr(feed_module, "WRITE_SECONDS", 0.05)
    token = "cga_operator-inputs-admin-token-0123"
    servers = {"up": {"url": "http://127.0.0.1:9/mcp"}}
    admin = {"token_sha256": hashlib.sha256(token.encode()).hexdigest()}
    config = write_config(tmp_path, 'version: "1"\ndefault: deny\n', servers, 8787, admin=admin)
    gateway = build_gateway(load_config(config))
    app = build_app(gateway)
    origin = "http://127.0.0.1:8787"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=origin) as http:
        signed = await http.post(
            "/console/login", json={"token": token, "operator": "erin"}, headers={"Origin": origin}
        )
        assert signed.status_code == 200
        cookie = signed.cookies["celgate_console"]
    feed = install_feed(gateway)
    gateway.decisions.recent.append({"event": "policy.decision", "tool": "x"})  # a backlog
    stuck = asyncio.Event()

    async def receive() -> Any:
        await stuck.wait()

    async def send(message: Any) -> None:
        await stuck.wait()  # the reader stopped reading: no write is ever taken

    cookies = [(b"host", b"127.0.0.1:8787"), (b"cookie", f"celgate_console={cookie}".encode())]
    scope = get_scope(path, cookies)
    with anyio.fail_after(10):
        await app(scope, receive, send)  # type: ignore[arg-type]
    assert feed.subscribers == set()
    await gateway.close()


@pytest.mark.parametrize("port", ["70000", "-5", "80a"])
def test_run_refuses_a_port_that_is_none_in_one_line(
    port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each ended in an OverflowError traceback."""
    with pytest.raises(SystemExit) as ended:
        main(["run", "--port", port])
    assert ended.value.code == 2
    assert f"{port!r} is not a port (0 to 65535)" in capsys.readouterr().err


def test_a_sighup_before_the_reloader_is_up_ends_nothing(tmp_path: Path) -> None:
    """A SIGHUP between the banner and the first request (a config sidecar, ExecReload)
    killed celgate run: now it is ignored until the reloader takes it."""
    port = free_port()
    config = write_config(tmp_path, 'version: "1"\ndefault: deny\n', SERVERS, port)
    log = tmp_path / "run.log"
    argv = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)]
    peer = start_process(argv, port=None, url="", log_path=log)
    try:
        deadline = time.monotonic() + 20
        while "serving on" not in log.read_text() and time.monotonic() < deadline:
            assert peer.alive(), log.read_text()
            time.sleep(0.01)  # polling the child's output, not waiting for time to pass
        os.kill(peer.pid, signal.SIGHUP)
        wait_healthy(port, peer)
        assert peer.alive()
    finally:
        peer.stop()


async def test_a_counters_reset_and_listing_are_its_own_buckets_only(tmp_path: Path) -> None:
    """Buckets were found by the prefix ``counter|``: resetting counter ``a`` refilled those
    of a counter named ``a|b`` too, and ``a``'s listing showed them (red-team wave 42)."""
    from gateway.ratelimit import Bucket

    token = "cga_operator-inputs-admin-token-0124"
    admin = {"token_sha256": hashlib.sha256(token.encode()).hexdigest()}
    policy = (
        'version: "1"\ndefault: deny\ntools:\n'
        "  echo: {limits: [{counter: a, window: minute, max: 5, scope: grant}]}\n"
        "  add: {limits: [{counter: 'a|b', window: minute, max: 5, scope: grant}]}\n"
    )
    config = write_config(tmp_path, policy, SERVERS, 8787, admin=admin)
    gateway = build_gateway(load_config(config))
    for counter in ("a", "a|b"):
        await gateway.limiter.acquire([Bucket(counter, f"{counter}|grant=g1", 5, 60.0)])
    app = build_app(gateway)
    auth = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as http:
        listed = (await http.get("/admin/counters", headers=auth)).json()
        shown = {row["counter"]: [b["key"] for b in row["buckets"]] for row in listed}
        assert shown == {"a": ["a|grant=g1"], "a|b": ["a|b|grant=g1"]}
        reset = await http.post("/admin/limits/reset", json={"counter": "a"}, headers=auth)
        assert reset.json()["keys"] == ["a|grant=g1"]
    await gateway.close()
