"""A URI no server is known to have, on ``/mcp``: the gateway reads every server's resource
lists again to learn its owner. Each made-up URI did so, with no back-off: one agent's stream
of tiny ``resources/read`` requests made every server list all its resources, over and over,
parsed on the loop every caller shares (red-team wave 32). Now at most one reading in each
interval (10 s, doubled while readings learn nothing, to 320 s), shared by the callers that
wait meanwhile, and none for a URI two servers claim."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.auth.identity import hash_key
from gateway.edge.agg.merge import RELEARN_MAX_SECONDS, RELEARN_SECONDS, Catalogue
from gateway.edge.agg.names import Names
from tests.gateway_proc import GatewayProcess, initialize_body, run_gateway
from tests.peers import raw_upstream
from tests.test_stdio_wire import MODERN_META

KEY = "cgk_aggregate-relearn-agent-0123456789"
POLICY = 'version: "1"\ndefault: deny\ntools:\n  echo: {action: allow}\n'
HEADERS = {
    "authorization": f"Bearer {KEY}",
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
}


class TestTheGate:
    """``Catalogue.relearn`` on a clock of its own."""

    def catalogue(self) -> tuple[Catalogue, list[float]]:
        now = [1000.0]
        names = Names({"a": "a", "b": "b"}, "__")
        return Catalogue(None, names, clock=lambda: now[0]), now  # type: ignore[arg-type]

    async def test_one_reading_an_interval_doubled_while_nothing_is_learned(self) -> None:
        catalogue, now = self.catalogue()
        readings: list[float] = []

        async def learn() -> None:
            readings.append(now[0])

        for _ in range(5):
            await catalogue.relearn("x://made-up", learn)
        assert readings == [1000.0]
        while now[0] < 2000.0:  # a made-up URI every 10 s
            now[0] += 10.0
            await catalogue.relearn("x://made-up", learn)
        gaps = [b - a for a, b in itertools.pairwise(readings)]
        assert gaps == [20.0, 40.0, 80.0, 160.0, RELEARN_MAX_SECONDS, RELEARN_MAX_SECONDS]
        assert RELEARN_SECONDS == 10.0

    async def test_a_reading_that_learns_brings_the_interval_back(self) -> None:
        catalogue, now = self.catalogue()

        async def nothing() -> None:
            pass

        async def learns() -> None:
            catalogue.learn_uri("a", {"uri": f"x://new/{now[0]}"})

        await catalogue.relearn("x://1", nothing)
        now[0] += RELEARN_SECONDS
        await catalogue.relearn("x://1", learns)  # interval 20 s was not waited out
        now[0] += RELEARN_SECONDS
        await catalogue.relearn("x://1", learns)
        now[0] += RELEARN_SECONDS
        await catalogue.relearn("x://1", learns)  # 10 s again: it learned
        assert len(catalogue.uris.by_key) == 2

    async def test_callers_meanwhile_wait_for_the_one_reading(self) -> None:
        catalogue, _ = self.catalogue()
        started = 0
        release = asyncio.Event()

        async def learn() -> None:
            nonlocal started
            started += 1
            await release.wait()
            catalogue.learn_uri("a", {"uri": "x://late"})

        waiting = [asyncio.ensure_future(catalogue.relearn("x://late", learn)) for _ in range(8)]
        for _ in range(100):  # until the reading has started (a few turns of the loop)
            await asyncio.sleep(0)
        assert started == 1 and not any(w.done() for w in waiting)
        release.set()
        await asyncio.gather(*waiting)
        assert catalogue.owner("x://late") == "a"

    async def test_a_uri_two_servers_claim_is_final(self) -> None:
        catalogue, _ = self.catalogue()
        catalogue.learn_uri("a", {"uri": "x://both"})
        catalogue.learn_uri("b", {"uri": "x://both"})
        readings = 0

        async def learn() -> None:
            nonlocal readings
            readings += 1

        await catalogue.relearn("x://both", learn)
        assert readings == 0 and catalogue.owner("x://both") is None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    directory = tmp_path_factory.mktemp("aggregate-relearn")
    with contextlib.ExitStack() as stack:
        servers = {
            name: {"url": stack.enter_context(raw_upstream("", directory / f"{name}.jsonl")).url}
            for name in ("one", "two")
        }
        grants = {"agent": {"key_sha256": hash_key(KEY)}}
        yield stack.enter_context(run_gateway(directory, POLICY, servers, grants=grants)), directory


def lists_read(directory: Path) -> int:
    """How many resource list requests the two servers were sent."""
    count = 0
    for name in ("one", "two"):
        for line in (directory / f"{name}.jsonl").read_text().splitlines():
            if json.loads(line).get("rpc") in ("resources/list", "resources/templates/list"):
                count += 1
    return count


def read(msg_id: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"uri": f"file:///made-up/{uuid.uuid4()}"}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": msg_id, "method": "resources/read", "params": params}


def unknown(answer: httpx.Response) -> None:
    assert answer.status_code == 200, answer.text
    assert answer.json()["error"]["code"] == -32602, answer.text
    assert "unknown resource" in answer.json()["error"]["message"]


def test_made_up_uris_do_not_each_reread_every_servers_lists(
    served: tuple[GatewayProcess, Path],
) -> None:
    gw, directory = served
    before = lists_read(directory)
    with httpx.Client(base_url=gw.base, timeout=20) as http:
        modern = {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "resources/read"}
        for i in range(10):
            message = read(i, MODERN_META)
            named = {**modern, "mcp-name": message["params"]["uri"]}
            unknown(http.post("/mcp", json=message, headers=named))
        opened = http.post("/mcp", json=initialize_body("relearn"), headers=HEADERS)
        assert opened.status_code == 200, opened.text
        session = {
            **HEADERS,
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert http.post("/mcp", json=note, headers=session).status_code == 202
        for i in range(10):
            unknown(http.post("/mcp", json=read(100 + i), headers=session))
    # one reading (two lists from each of two servers) at most, for twenty made-up URIs
    assert lists_read(directory) - before <= 4


class _Silent:
    """A server that takes connections and never answers: what a hung upstream looks like."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.sock.accept()[0])

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


async def test_initialize_does_not_wait_for_nor_reask_a_hung_server(tmp_path: Path) -> None:
    """A server that hung at start was asked again by every ``/mcp`` initialize, each
    waiting for its whole timeout (red-team wave 33): now each client is told what is known
    at once, and the server is asked again in the background, at most once in 10 s."""
    with beside_a_hung_server(tmp_path, 30) as (gw, silent):
        async with httpx.AsyncClient(base_url=gw.base, timeout=60) as http:

            async def initialize() -> httpx.Response:
                body = initialize_body("relearn")
                return await http.post("/mcp", json=body, headers=HEADERS)

            before = len(silent.accepted)
            with anyio.fail_after(15):  # (it took 30 s, the hung server's timeout)
                opened = await asyncio.gather(*(initialize() for _ in range(20)))
        assert [r.status_code for r in opened] == [200] * 20
        # one asking again (a health probe may come meanwhile), not one per client
        assert len(silent.accepted) - before <= 4


@contextlib.contextmanager
def beside_a_hung_server(
    tmp_path: Path, timeout: float
) -> Iterator[tuple[GatewayProcess, _Silent]]:
    """A gateway in front of a server that answers (``one``) and one that is hung."""
    silent = _Silent()
    try:
        with raw_upstream("", tmp_path / "one.jsonl") as up:
            servers = {
                "one": {"url": up.url},
                "hung": {"url": f"http://127.0.0.1:{silent.port}/mcp", "timeout": timeout},
            }
            grants = {"agent": {"key_sha256": hash_key(KEY)}}
            with run_gateway(tmp_path, POLICY, servers, grants=grants) as gw:
                yield gw, silent
    finally:
        silent.close()


async def test_a_server_whose_link_failed_is_not_waited_for_again(tmp_path: Path) -> None:
    """A server hung after start (its link could not be opened in time): every ``/mcp``
    session's first list waited for it again, its whole timeout each (a mute stdio server
    made every client's tools/list take 60 s, red-team wave 35). Once a link failed, callers
    skip it and it is asked again in the background, at most once an interval."""
    with beside_a_hung_server(tmp_path, 2) as (gw, silent):
        async with httpx.AsyncClient(base_url=gw.base, timeout=60) as http:

            async def listed() -> list[str]:
                body = initialize_body("skips")
                opened = await http.post("/mcp", json=body, headers=HEADERS)
                ours = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
                ask = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
                answer = await http.post("/mcp", json=ask, headers=ours)
                return [t["name"] for t in answer.json()["result"]["tools"]]

            assert await listed() == ["one__echo"]  # the link to hung failed here
            before = len(silent.accepted)
            lists = await asyncio.gather(*(listed() for _ in range(8)))
        assert lists == [["one__echo"]] * 8
        # one reading in the background (a health probe may come meanwhile)
        assert len(silent.accepted) - before <= 3
