"""What the gateway posts to an upstream on its own (``gateway.edge.tell``): bounded in
flight, per upstream and in all, so an upstream that never answers them cannot take the
gateway's connections (red-team wave 47: a thousand held posts, and other servers' clients
failed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.config.sections import ServerConfig
from gateway.edge import tell
from gateway.upstream.http import HttpUpstream
from tests.peers import raw_upstream


def _records(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


async def test_posts_an_upstream_never_answers_are_bounded(tmp_path: Path) -> None:
    log = tmp_path / "hang.jsonl"
    with raw_upstream("answers-hang", log) as up:
        upstream = HttpUpstream(ServerConfig(name="hang", url=up.url, timeout=30))
        sent = [tell.refuse_server_request(upstream, None, None, n) for n in range(100)]
        assert sent.count(True) == tell.MAX_TOLD_PER_UPSTREAM
        assert tell.in_flight("hang") == tell.MAX_TOLD_PER_UPSTREAM
        async with asyncio.timeout(20):
            while _records(log) < tell.MAX_TOLD_PER_UPSTREAM:  # each reached the upstream
                await asyncio.sleep(0.05)  # polling for the upstream's log, not for time
        assert _records(log) == tell.MAX_TOLD_PER_UPSTREAM
        # another upstream still has its own share, up to the bound of all
        other = HttpUpstream(ServerConfig(name="other", url=up.url, timeout=30))
        assert tell.refuse_server_request(other, None, None, 1)
        for task in list(tell._TOLD):
            task.cancel()
        async with asyncio.timeout(10):
            while tell.in_flight():
                await asyncio.sleep(0.01)  # the cancelled posts' callbacks
    assert tell.in_flight("hang") == 0
