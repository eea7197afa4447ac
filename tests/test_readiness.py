"""``/readyz`` tells the truth: a stdio server whose command does not exist and an HTTP
upstream where nothing listens are ``down`` with their command or URL and the error, the
gateway is not ready (503), and the log names them. A stdio server that cannot start is
logged once for the whole restart loop, with a count, not once per attempt."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from tests.gateway_proc import OPERATOR, GatewayProcess, run_gateway
from tests.peers import REPO_ROOT, PeerProcess, free_port, stdio_upstream_command

POLICY = 'version: "1"\ndefault: allow\ntools: {}\n'


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], within: float = 20.0) -> Any:
    """``fetch()`` again until ``until`` accepts it, or the deadline passes (then the last)."""
    deadline = time.monotonic() + within
    while True:
        value = fetch()
        if until(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    """A missing stdio command and an HTTP URL on a port where nothing listens."""
    dead_url = f"http://127.0.0.1:{free_port()}/mcp"
    servers = {
        "ghost": {"command": "nonexistent-cmd", "args": ["--serve"]},
        "nowhere": {"url": dead_url},
    }
    # as an operator: the causes behind the status are operator data (metrics_public: trusted)
    directory = tmp_path_factory.mktemp("ready")
    with run_gateway(directory, POLICY, servers, admin=OPERATOR) as gw:
        yield gw, dead_url


def readyz(gw: GatewayProcess) -> httpx.Response:
    return httpx.get(gw.base + "/readyz", timeout=10)


class TestDownUpstreams:
    def test_readyz_is_503_and_names_each_cause(self, broken: tuple[GatewayProcess, str]) -> None:
        gw, dead_url = broken
        response = readyz(gw)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not ready"
        assert body["upstreams"] == {"ghost": "down", "nowhere": "down"}
        ghost = body["upstream_health"]["ghost"]
        assert (ghost["state"], ghost["transport"], ghost["command"]) == (
            "down",
            "stdio",
            "nonexistent-cmd",
        )
        assert ghost["error"] == "No such file or directory: 'nonexistent-cmd'"
        nowhere = body["upstream_health"]["nowhere"]
        assert (nowhere["state"], nowhere["transport"], nowhere["url"]) == (
            "down",
            "http",
            dead_url,
        )
        assert "refused" in nowhere["error"].lower() or "connect" in nowhere["error"].lower()

    def test_the_log_names_the_command_and_the_url(
        self, broken: tuple[GatewayProcess, str]
    ) -> None:
        gw, dead_url = broken
        readyz(gw)
        spawn = gw.wait_records(1, "stdio.spawn_failed")[0]
        assert spawn["command"] == "nonexistent-cmd"
        assert spawn["error"] == "No such file or directory: 'nonexistent-cmd'"
        down = gw.wait_records(1, "upstream.down", where=lambda r: r["server"] == "nowhere")
        assert down and down[0]["url"] == dead_url and down[0]["error"]

    def test_a_restart_loop_is_logged_once_with_a_count(
        self, broken: tuple[GatewayProcess, str]
    ) -> None:
        """Several failed starts later: one spawn_failed and one restarting line, and the
        count of failures is on /readyz."""
        gw, _ = broken
        body = poll(
            lambda: readyz(gw).json(),
            lambda b: b["upstream_health"]["ghost"]["failures"] >= 4,
        )
        assert body["upstream_health"]["ghost"]["failures"] >= 4
        shared = "ghost[shared]"  # the server's own process (each client session has its own)
        assert [r["server"] for r in gw.records("stdio.spawn_failed")].count(shared) == 1
        assert [r["server"] for r in gw.records("stdio.restarting")].count(shared) == 1
        probes = [r for r in gw.records("upstream.down") if r["server"] == "nowhere"]
        assert len(probes) == 1  # every probe since found it down: no new line

    def test_without_the_admin_token_only_the_status(
        self, upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """A probe needs the status code; names, URLs, commands and causes are for operators."""
        servers = {"up": {"url": upstream.url}, "ghost": {"command": "nonexistent-cmd"}}
        token = "admin-token-for-readyz"
        admin = {"token_sha256": hashlib.sha256(token.encode()).hexdigest()}
        with run_gateway(tmp_path_factory.mktemp("pub"), POLICY, servers, admin=admin) as gw:
            public = readyz(gw)
            operator = httpx.get(
                gw.base + "/readyz", headers={"authorization": f"Bearer {token}"}, timeout=10
            )
        assert public.status_code == 503 and public.json() == {"status": "not ready"}
        assert upstream.url not in public.text and "nonexistent-cmd" not in public.text
        assert operator.status_code == 503
        assert operator.json()["upstream_health"]["ghost"]["command"] == "nonexistent-cmd"


class TestHealthyUpstreams:
    def test_ready_with_where_each_upstream_is(
        self, upstream: PeerProcess, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        command, args = stdio_upstream_command()
        servers = {"st": {"command": command, "args": args}, "up": {"url": upstream.url}}
        directory = tmp_path_factory.mktemp("ok")
        with run_gateway(directory, POLICY, servers, admin=OPERATOR) as gw:
            response = poll(lambda: readyz(gw), lambda r: r.status_code == 200)
            assert response.status_code == 200, response.text
            health = response.json()["upstream_health"]
        assert health["st"]["state"] == "up" and health["st"]["command"] == command
        assert health["up"] == {**health["up"], "state": "up", "url": upstream.url}
        assert "error" not in health["up"]


class TestComposeHealthcheck:
    """compose.yaml's check asks /healthz on the port the mounted config listens on."""

    def run_check(self, config: Path) -> int:
        compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
        test = compose["services"]["celgate"]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        code = test[3].replace("/etc/celgate/config.yaml", str(config))
        argv = [sys.executable, "-c", code]
        return subprocess.run(argv, capture_output=True, timeout=30, cwd=REPO_ROOT).returncode

    def test_healthy_on_the_configured_port_and_not_elsewhere(
        self, broken: tuple[GatewayProcess, str], tmp_path: Path
    ) -> None:
        gw, _ = broken
        assert gw.port != 8787
        config = tmp_path / "config.yaml"
        config.write_text(f"listen: {{host: 0.0.0.0, port: {gw.port}}}\n")
        assert self.run_check(config) == 0
        config.write_text(f"listen: {{host: 0.0.0.0, port: {free_port()}}}\n")
        assert self.run_check(config) != 0


class _CountingUpstream:
    """An upstream's probe, counted; it answers only when the test lets it."""

    def __init__(self) -> None:
        self.probes = 0
        self.release: Any = None
        self.healthy = True

    async def probe(self) -> bool:
        self.probes += 1
        await self.release.wait()
        return self.healthy


class TestProbesAreShared:
    async def test_many_asking_at_once_or_soon_after_make_one_round(self) -> None:
        """Anyone may ask /readyz: callers at once share the first round of probes, and a
        round answers for a second; after that, the next caller is answered from it at once
        and starts a new one, which the callers after it are answered from."""
        import asyncio
        from types import SimpleNamespace

        from gateway.server.lifecycle import HEALTH_FRESH_SECONDS, _RecentHealth, recent_health

        now = [100.0]
        upstream = _CountingUpstream()
        upstream.release = asyncio.Event()
        gateway: Any = SimpleNamespace(upstreams={"up": upstream}, metrics=None, extras={})
        gateway.extras["recent_health"] = _RecentHealth(lambda: now[0])
        waiting = [asyncio.ensure_future(recent_health(gateway)) for _ in range(50)]
        await asyncio.sleep(0)
        upstream.release.set()
        assert [await w for w in waiting] == [{"up": True}] * 50
        assert upstream.probes == 1
        now[0] += HEALTH_FRESH_SECONDS - 0.01
        assert await recent_health(gateway) == {"up": True} and upstream.probes == 1
        now[0] += 0.02
        upstream.release = asyncio.Event()  # the next round's probe hangs until released
        upstream.healthy = False
        with anyio.fail_after(5):  # (callers waited for the round under way)
            answered = [await recent_health(gateway) for _ in range(50)]
        assert answered == [{"up": True}] * 50  # at once, from the last round
        for _ in range(10):  # the round under way gets to its probe
            await asyncio.sleep(0)
        assert upstream.probes == 2  # one new round, under way
        upstream.release.set()
        for _ in range(100):  # until the round has ended (a few turns of the loop)
            await asyncio.sleep(0)
        assert await recent_health(gateway) == {"up": False} and upstream.probes == 2

    async def test_a_round_that_never_ends_holds_no_caller(self) -> None:
        """With an upstream whose probe hangs, every caller after the first round is
        answered at once: callers held for a round kept a thousand connections busy and
        honest clients were refused (red-team wave 32)."""
        import asyncio
        from types import SimpleNamespace

        from gateway.server.lifecycle import HEALTH_FRESH_SECONDS, _RecentHealth, recent_health

        now = [100.0]
        upstream = _CountingUpstream()
        upstream.release = asyncio.Event()
        upstream.release.set()
        gateway: Any = SimpleNamespace(upstreams={"up": upstream}, metrics=None, extras={})
        gateway.extras["recent_health"] = _RecentHealth(lambda: now[0])
        assert await recent_health(gateway) == {"up": True}
        upstream.release = asyncio.Event()  # never set: every later probe hangs
        now[0] += HEALTH_FRESH_SECONDS * 5
        with anyio.fail_after(5):
            assert [await recent_health(gateway) for _ in range(20)] == [{"up": True}] * 20
            for _ in range(10):  # the round under way gets to its probe, and hangs there
                await asyncio.sleep(0)
            assert [await recent_health(gateway) for _ in range(20)] == [{"up": True}] * 20
        assert upstream.probes == 2


class TestRelist:
    async def test_a_tool_the_catalogue_lacks_reads_its_server_again_not_too_often(
        self, upstream: PeerProcess
    ) -> None:
        """A call to a tool the catalogue does not have (one added since, or a server that was
        down at start) waits for its server's tools to be read again, so the tool's schema is
        known before it is decided; made-up names read it at most every RELIST_SECONDS."""
        import asyncio
        from types import SimpleNamespace

        from gateway.config import ServerConfig
        from gateway.server.lifecycle import RELIST_MAX_SECONDS, RELIST_SECONDS, relister

        now = [0.0]
        seen: list[tuple[str, str]] = []

        def observe(server: str, tool: dict[str, Any], own: bool = False) -> tuple[None, str]:
            seen.append((server, tool["name"]))
            return None, "same"

        gateway: Any = SimpleNamespace(
            upstreams={"up": SimpleNamespace(url=upstream.url)},
            config=SimpleNamespace(servers={"up": ServerConfig(name="up", url=upstream.url)}),
            observe=observe,
        )
        relist = relister(gateway, clock=lambda: now[0])
        await asyncio.gather(relist("up"), relist("up"), relist("up"))  # one reading, shared
        assert ("up", "add") in seen
        read = len(seen)
        await relist("up")
        await relist("nowhere")
        assert len(seen) == read  # not again so soon; an unknown server reads nothing
        now[0] += RELIST_SECONDS
        await relist("up")
        assert len(seen) == 2 * read
        # Nothing new in that reading: the next waits twice as long (a made-up name started
        # a stdio server anew every 10 s for good)
        now[0] += RELIST_SECONDS
        await relist("up")
        assert len(seen) == 2 * read
        now[0] += RELIST_SECONDS
        await relist("up")
        assert len(seen) == 3 * read
        for _ in range(10):
            now[0] += RELIST_MAX_SECONDS
            await relist("up")
        assert len(seen) == 13 * read  # never less often than RELIST_MAX_SECONDS
